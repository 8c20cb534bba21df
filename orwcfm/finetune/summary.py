"""The headline numbers of a fine-tuning run (``summary.json``) and the before/after table printed at its end."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..metric_names import SUMMARY_EXTRA_KEYS, label

# Metrics shown in the summary table when the evaluation measured them (key, label): orwcfm/metric_names.py.
SUMMARY_EXTRA_ROWS = tuple((key, label(key)) for key in SUMMARY_EXTRA_KEYS)

def numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The plain numbers of a history row (epoch, step and the reward evaluations spent left out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and k not in ("epoch", "step", "reward_evaluations")}


def curve(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Every evaluation's plain numbers with its epoch, step and the reward evaluations spent by then (the
    learning curve; ``reward_evaluations`` is absent from rows written before it was recorded)."""
    return [{k: row[k] for k in ("epoch", "step", "reward_evaluations") if k in row} | numbers(row)
            for row in history]


@dataclass(frozen=True)
class FinetuneSummary:
    """The headline numbers of a run (written to ``summary.json``)."""

    reward: str
    w2_coefficient: float
    temperature: float
    epochs: int
    steps: int
    reward_evaluations: int
    reward_mean_before: float
    reward_mean_after: float
    diversity_before: float
    diversity_after: float
    wall_seconds: float
    target_fraction_before: float | None = None
    target_fraction_after: float | None = None
    class_histogram_after: list[float] | None = None
    dropped_samples: int = 0
    metrics_before: dict[str, float] | None = None  # every scalar of the first evaluation (epoch 0)
    metrics_after: dict[str, float] | None = None  # and of the last
    weighting: str = "paper"  # what alpha is measured against (finetune/weights.py)
    evaluated_weights: str = "raw"  # the weights every evaluation measured: ema when the run keeps an EMA
    # conditional runs (prompts): the fraction of samples in the prompted class, and the diversity within a prompt
    # (before = the reference's, measured on the same noise and prompts)
    alignment_before: float | None = None
    alignment_after: float | None = None
    diversity_per_prompt_before: float | None = None
    diversity_per_prompt_after: float | None = None
    algorithm: str = "orw-cfm-w2"
    curve: list[dict[str, float]] | None = None  # every evaluation: epoch, step, reward evaluations, its numbers
    # the evaluations' share of the run: seconds spent in them (this train() call), and the share of the run's
    # network work predicted from the config before it started (finetune/cost.py)
    evaluation_seconds: float | None = None
    evaluation_share_predicted: float | None = None
    # how the run evaluated (eval_samples / eval_every as given, or as auto resolved them for this run's length)
    eval_samples: int | None = None
    eval_every: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def table(self) -> str:
        """A small Markdown table: before / after for each metric."""
        rows = [(label("reward_mean"), self.reward_mean_before, self.reward_mean_after),
                (label("diversity"), self.diversity_before, self.diversity_after)]
        if self.target_fraction_before is not None:
            rows.insert(1, (label("target_fraction"), self.target_fraction_before, self.target_fraction_after))
        before, after = self.metrics_before or {}, self.metrics_after or {}
        for key, text in SUMMARY_EXTRA_ROWS:
            if key in before and key in after:
                rows.append((text, before[key], after[key]))
        lines = ["| metric | before | after |", "|---|---|---|"]
        lines += [f"| {name} | {a:.4f} | {b:.4f} |" for name, a, b in rows]
        if self.class_histogram_after is not None:
            lines.append("| class histogram after | | " + " ".join(f"{i}:{f:.0%}" for i, f in enumerate(self.class_histogram_after)) + " |")
        lines.append(f"| alpha / tau / weighting / epochs / steps | | {self.w2_coefficient:g} / {self.temperature:g} / "
                     f"{self.weighting} / {self.epochs} / {self.steps} |")
        lines.append(f"| reward evaluations / wall time | | {self.reward_evaluations} / {self.wall_seconds:.0f} s |")
        if self.evaluation_seconds is not None and self.wall_seconds > 0:
            predicted = ("" if self.evaluation_share_predicted is None
                         else f" (predicted {100 * self.evaluation_share_predicted:.0f} %)")
            lines.append(f"| time in evaluations | | {self.evaluation_seconds:.0f} s, "
                         f"{100 * self.evaluation_seconds / self.wall_seconds:.0f} %{predicted} |")
        return "\n".join(lines)


def summarise(history: list[dict[str, Any]], *, reward: str, config: Any, epochs: int, steps: int,
              reward_evaluations: int, dropped_samples: int, wall_seconds: float,
              evaluated_weights: str) -> FinetuneSummary:
    """Before/after numbers from the evaluation history (first row: before training; last: after)."""
    first, last = history[0], history[-1]
    return FinetuneSummary(
        reward=reward, w2_coefficient=config.w2_coefficient, temperature=config.temperature,
        epochs=epochs, steps=steps, reward_evaluations=reward_evaluations,
        reward_mean_before=first["reward_mean"], reward_mean_after=last["reward_mean"],
        diversity_before=first["diversity"], diversity_after=last["diversity"], wall_seconds=wall_seconds,
        target_fraction_before=first.get("target_fraction"), target_fraction_after=last.get("target_fraction"),
        class_histogram_after=last.get("class_histogram"), dropped_samples=dropped_samples,
        metrics_before=numbers(first), metrics_after=numbers(last), weighting=config.weighting,
        evaluated_weights=evaluated_weights, algorithm=getattr(config, "algorithm", "orw-cfm-w2"),
        alignment_before=first.get("alignment"), alignment_after=last.get("alignment"),
        diversity_per_prompt_before=first.get("diversity_per_condition"),
        diversity_per_prompt_after=last.get("diversity_per_condition"), curve=curve(history),
    )
