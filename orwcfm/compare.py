"""Reward fine-tuning families side by side: the same task, the same budget of reward evaluations, several seeds.

    orwcfm compare --config toy-2d --algorithms orw-cfm-w2,adrpo,flow-grpo --seeds 3 --budget 20480 --out runs/cmp \\
        --sweep orw-cfm-w2:w2_coefficient=0.1,0.3,1 --sweep adrpo:beta0=0.5,1

Data flow::

    plan    every (algorithm, regulariser setting, seed): one validated FinetuneConfig whose gradient steps spend the
            budget (budget_schedule), with the settings the algorithm cannot do without (FIXED_SETTINGS); unknown algorithms, black-box rewards given to gradient methods, group sizes
            that do not divide the samples per refresh and budgets below one refresh are refused here, before any run
    run     interleaved, seed-major (seed 0 of every algorithm and setting, then seed 1, ...), so that a machine that
            slows down part-way slows every method alike; each cell is a sweep cell (finished: skipped, partial:
            resumed), under cells/NAME
    write   compare.csv (one row per run), compare.md (mean and 95 % t-interval over seeds per algorithm and
            setting), tradeoff.png (reward against diversity, one point per algorithm and setting), report.html

The folder is also a sweep folder (sweep.json, cells/), so ``orwcfm report`` renders each run.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import FinetuneConfig, finetune_config, numeric_string
from .errors import UserError
from .sweep import SweepCell, _status, cell_row, reference_row
from .tables import markdown_table

# The rewards that are black boxes (no gradient): a method that back-propagates through the reward refuses them.
BLACK_BOX_REWARDS = ("jpeg-compressibility", "jpeg-incompressibility")
# What an algorithm needs whatever the task says: offline RWR is one buffer from the reference, never refreshed, with
# no W2 term; the methods with signed per-sample coefficients refuse an OT pairing (it would tilt the noise).
FIXED_SETTINGS: dict[str, dict[str, Any]] = {
    "offline-rwr": {"refresh": "offline", "refresh_every": None, "w2_coefficient": 0.0},
    "adrpo": {"coupling": "independent"},
    "diffusion-nft": {"coupling": "independent"},
}
# Columns of the aggregated table, when the runs measured them.
COMPARE_METRICS = ("reward_mean", "gold_reward_mean", "target_fraction", "gold_target_fraction", "alignment",
                   "gold_alignment", "diversity",
                   "diversity_per_condition", "vendi", "w2_to_reference", "w2_to_reference_floor", "digits_fd_data",
                   "digits_fd_target", "evals_to_target", "diversity_at_target", "reward_evaluations",
                   "wall_seconds")
# --quick: every run shrunk to a smoke test (CI): small batches and buffers, 4 steps an epoch, 2-step solvers, 64
# evaluation samples. The budget still sets the epochs; the user's --set values win over these.
QUICK_OVERRIDES = ("batch_size=64", "buffer_size=128", "steps_per_epoch=4", "eval_samples=64", "sampling.steps=2",
                   "eval_sampling.steps=2", "log_every=2")
# Metrics a --target may name: higher is better, so the target is reached at the first evaluation at or above it.
TARGET_METRICS = ("reward_mean", "gold_reward_mean", "target_fraction", "gold_target_fraction", "alignment",
                  "gold_alignment")


@dataclass(frozen=True)
class Schedule:
    """How a run spends the budget: ``epochs`` x ``steps_per_epoch`` gradient steps, and the reward evaluations
    that makes (at most the budget)."""

    epochs: int
    steps_per_epoch: int
    reward_evaluations: int
    overrides: dict[str, Any]


def _algorithm(config: FinetuneConfig) -> Any:
    from .algorithms import make_algorithm
    from .couplings import get_coupling
    from .paths import StraightPath

    return make_algorithm(config, path=StraightPath(config.sigma_min), coupling=get_coupling(config.coupling))


def _epochs_for(steps: int, max_epochs: int) -> int:
    """The most epochs (evaluations), up to ``max_epochs``, among those that spend the most of ``steps`` in whole
    epochs: 32 steps in at most 12 epochs is 8 x 4, not 12 x 2 (24 steps: a quarter of the budget unspent)."""
    return max(range(1, min(max_epochs, steps) + 1), key=lambda e: (e * (steps // e), e))


def budget_schedule(config: FinetuneConfig, budget: int) -> Schedule:
    """The gradient steps of ``config``'s algorithm that spend at most ``budget`` reward evaluations.

    Online methods with a buffer score ``buffer_size`` samples per refresh (``auto``: a whole number of batches, from
    the refresh period) and refresh every ``refresh_every`` steps
    (else once per epoch): budget / buffer_size refreshes. Without a buffer every step scores a fresh batch. Offline
    RWR spends the whole budget on its one buffer from the reference and takes as many steps as the online schedule
    of the same config would. Methods that sample inside their loss (DRaFT, ReFL, Adjoint Matching) score
    ``reward_evaluations(batch)`` samples per step.
    """
    alg = _algorithm(config)
    name = config.algorithm
    epochs = config.epochs
    if not alg.collects:
        per_step = max(1, alg.reward_evaluations(config.batch_size))
        steps = budget // per_step
        if steps < 1:
            raise UserError(f"budget {budget} is smaller than one step of {name} ({per_step} reward evaluations)")
        epochs = _epochs_for(steps, epochs)
        return Schedule(epochs, steps // epochs, (steps // epochs) * epochs * per_step, {})
    buffer = config.samples_per_refresh(config.refresh_every or config.steps_per_epoch)
    per_refresh = buffer or config.batch_size
    if budget < per_refresh:
        what = {"auto": "buffer_size auto", None: "batch_size"}.get(config.buffer_size, "buffer_size")
        raise UserError(f"budget {budget} is smaller than one refresh of {name} ({per_refresh} reward evaluations: "
                        f"{what})")
    refreshes = budget // per_refresh
    if buffer is None:  # a fresh batch every step
        epochs = _epochs_for(refreshes, epochs)
        spe = refreshes // epochs
        return Schedule(epochs, spe, epochs * spe * per_refresh, {})
    if config.refresh_every is None:  # one refresh per epoch
        epochs, spe = refreshes, config.steps_per_epoch
        period = spe
    else:
        steps = refreshes * config.refresh_every
        epochs = min(epochs, steps)
        spe, period = steps // epochs, config.refresh_every
    if config.refresh == "offline":  # the one buffer spends the budget; the steps are the online schedule's
        return Schedule(epochs, spe, budget, {"buffer_size": budget})
    return Schedule(epochs, spe, math.ceil(epochs * spe / period) * per_refresh, {})


@dataclass(frozen=True)
class Target:
    """A level of one metric (higher is better): a run reaches it at its first evaluation at or above ``value``."""

    metric: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.metric} >= {self.value:g}"


def parse_target(text: str) -> Target:
    """``METRIC=VALUE`` (e.g. ``target_fraction=0.9``) -> a Target."""
    metric, sep, value = text.partition("=")
    metric = metric.strip()
    if not (sep and metric and value.strip()):
        raise UserError(f"--target {text!r}: expected METRIC=VALUE (e.g. target_fraction=0.9)")
    if metric not in TARGET_METRICS:
        raise UserError(f"--target {text!r}: {metric} is not a metric a target can name; use one of: "
                        f"{', '.join(TARGET_METRICS)} (higher is better)")
    try:
        level = float(value)
    except ValueError:
        raise UserError(f"--target {text!r}: {value.strip()!r} is not a number") from None
    if not math.isfinite(level):
        raise UserError(f"--target {text!r}: the level must be finite")
    return Target(metric, level)


def reached(curve: Sequence[dict[str, Any]], target: Target) -> tuple[int | None, float | None]:
    """The reward evaluations spent by the first evaluation of ``curve`` (a run's summary ``curve``: epoch 0 is the
    reference) at or above the target, and the diversity there; (None, None) when no evaluation reaches it."""
    for row in curve:
        if row.get(target.metric) is not None and row[target.metric] >= target.value:
            if "reward_evaluations" not in row:
                raise UserError(f"the run's curve has no reward_evaluations (written before they were recorded); "
                                f"rerun it to measure {target.label}")
            return int(row["reward_evaluations"]), row.get("diversity")
    return None, None


def fewest_to_target(agg: Sequence[dict[str, Any]], target: Target) -> str:
    """One sentence per setting that reached the target in every seed, fewest reward evaluations first."""
    every = sorted((a for a in agg if a.get("reached_seeds") == a["seeds"] and "evals_to_target" in a),
                   key=lambda a: a["evals_to_target"])
    lines = [f"Reward evaluations to reach {target.label} (the first evaluation at or above it; mean over seeds), "
             f"fewest first, for the settings that reached it in every seed:", ""]
    for a in every:
        lines.append(f"- {a['algorithm']} ({a['setting']}): {a['evals_to_target']:.0f} ± "
                     f"{a.get('evals_to_target_ci', 0):.2g}, diversity there {a.get('diversity_at_target', float('nan')):.4g}")
    partial = [f"{a['algorithm']} ({a['setting']}) {a.get('reached_seeds', 0)}/{a['seeds']}"
               for a in agg if a.get("reached_seeds", 0) < a["seeds"]]
    if not every:
        lines.append("- no setting reached it in every seed")
    if partial:
        lines += ["", "Reached in fewer seeds than were run: " + "; ".join(partial) + "."]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Setting:
    """One value of an algorithm's regulariser: ``key`` (a top-level config key, or one of ``algorithm_options``)."""

    algorithm: str
    key: str | None = None
    value: Any = None

    @property
    def label(self) -> str:
        return "default" if self.key is None else f"{self.key}={self.value}"


def parse_sweeps(items: Sequence[str], algorithms: Sequence[str]) -> dict[str, list[Setting]]:
    """``ALG:KEY=V1,V2`` items -> the settings of each algorithm (its defaults when it has no item)."""
    out: dict[str, list[Setting]] = {a: [] for a in algorithms}
    for item in items:
        head, sep, values = item.partition("=")
        alg, colon, key = head.partition(":")
        if not (sep and colon and alg and key and values):
            raise UserError(f"--sweep {item!r}: expected ALGORITHM:KEY=V1,V2 (e.g. orw-cfm-w2:w2_coefficient=0.1,1)")
        if alg not in out:
            raise UserError(f"--sweep {item!r} names {alg}, which is not among --algorithms ({', '.join(algorithms)})")
        if out[alg]:
            raise UserError(f"--sweep gives {alg} twice: sweep one regulariser per algorithm")
        out[alg] = [Setting(alg, key, numeric_string(v.strip())) for v in values.split(",") if v.strip()]
    return {a: s or [Setting(a)] for a, s in out.items()}


@dataclass(frozen=True)
class CompareCell:
    """One run of the comparison."""

    algorithm: str
    setting: Setting
    seed: int
    cell: SweepCell
    schedule: Schedule


def _settings_for(setting: Setting) -> dict[str, Any]:
    if setting.key is None:
        return {}
    if setting.key in FinetuneConfig.__dataclass_fields__:
        return {setting.key: setting.value}
    return {"algorithm_options": {setting.key: setting.value}}


def parse_options(items: Sequence[str], algorithms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``ALG:KEY=VALUE`` items -> settings fixed for one algorithm only (top-level keys or its algorithm_options)."""
    out: dict[str, dict[str, Any]] = {a: {} for a in algorithms}
    for item in items:
        head, sep, value = item.partition("=")
        alg, colon, key = head.partition(":")
        if not (sep and colon and alg and key and value):
            raise UserError(f"--option {item!r}: expected ALGORITHM:KEY=VALUE (e.g. flow-grpo:clip_range=0.2)")
        if alg not in out:
            raise UserError(f"--option {item!r} names {alg}, which is not among --algorithms ({', '.join(algorithms)})")
        settings = _settings_for(Setting(alg, key, numeric_string(value.strip())))
        options = {**out[alg].get("algorithm_options", {}), **settings.pop("algorithm_options", {})}
        out[alg].update(settings)
        if options:
            out[alg]["algorithm_options"] = options
    return out


def plan_compare(config: str | Path, algorithms: Sequence[str], seeds: Sequence[int], budget: int, out: str | Path,
                 sweeps: Sequence[str] = (), overrides: Sequence[str] = (),
                 options: Sequence[str] = (), quick: bool = False) -> list[CompareCell]:
    """Every run of the comparison, validated, in the order they run (seed-major, interleaved). ``options``
    (``ALG:KEY=VALUE``) fix a setting of one algorithm; ``sweeps`` (``ALG:KEY=V1,V2``) vary one; ``quick`` shrinks
    every run (QUICK_OVERRIDES, under ``overrides``)."""
    from .algorithms import ALGORITHMS

    if not algorithms:
        raise UserError("--algorithms is empty; known: " + ", ".join(sorted(ALGORITHMS)))
    for name in algorithms:
        if name not in ALGORITHMS:
            raise UserError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise UserError(f"--budget must be a positive number of reward evaluations, got {budget!r}")
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    if any(o.split("=", 1)[0].strip() == "epochs" for o in overrides):
        raise UserError("--set epochs: a comparison sets each run's epochs from --budget (the reward evaluations "
                        "every run spends); set the budget instead")
    if quick:
        overrides = [*QUICK_OVERRIDES, *overrides]
    per_alg = parse_sweeps(sweeps, algorithms)
    fixed_options = parse_options(options, algorithms)
    cells: list[CompareCell] = []
    for seed in seeds:
        for name in algorithms:
            for setting in per_alg[name]:
                fixed_text = "".join(f",{o.split(':', 1)[1]}" for o in options if o.split(":", 1)[0] == name)
                label = f"{name}{fixed_text},{setting.label},seed={seed}".replace("/", "_")
                extra = dict(fixed_options[name])
                swept = _settings_for(setting)
                extra["algorithm_options"] = {**extra.get("algorithm_options", {}), **swept.pop("algorithm_options", {})}
                if not extra["algorithm_options"]:
                    del extra["algorithm_options"]
                extra.update(swept)
                # what the algorithm cannot do without wins over the same key in --option
                settings = {**extra, **FIXED_SETTINGS.get(name, {})}
                try:
                    base = finetune_config(config_file=config, overrides=overrides, algorithm=name, seed=seed,
                                           **settings)
                    _check_cell(base)
                    schedule = budget_schedule(base, budget)
                    # the schedule last, so that it wins over the task's and the user's settings
                    spend = [f"epochs={schedule.epochs}", f"steps_per_epoch={schedule.steps_per_epoch}",
                             *(f"{k}={v}" for k, v in schedule.overrides.items()), *_one_instrument(base)]
                    cfg = finetune_config(config_file=config, overrides=[*overrides, *spend], algorithm=name,
                                          seed=seed, savedir=str(Path(out) / "cells"), run_name=label, **settings)
                except UserError as err:
                    raise UserError(f"compare run {label}: {err}") from None
                shown = f"{name} ({fixed_text[1:].replace(',', ', ')})" if fixed_text else name
                values = {"algorithm": shown, "setting": setting.label, "seed": seed}
                cells.append(CompareCell(name, setting, seed, SweepCell(label, values, cfg), schedule))
    return cells


def _one_instrument(config: FinetuneConfig) -> list[str]:
    """Overrides that fix what ``auto`` would size per run: every run of a comparison is measured by the same
    instrument (AUTO_EVAL_SAMPLES samples) after every epoch (its learning curve, which --target reads), whatever its
    training costs. Values the task or the user set are kept."""
    from .finetune.cost import AUTO_EVAL_SAMPLES

    return [f"{key}={value}" for key, value in (("eval_samples", AUTO_EVAL_SAMPLES), ("eval_every", 1))
            if getattr(config, key) == "auto"]


def _check_cell(config: FinetuneConfig) -> None:
    """What the trainer would refuse at its start, refused before any run of the comparison starts."""
    from .algorithms import ALGORITHMS, black_box_algorithms

    cls = ALGORITHMS[config.algorithm][0]
    if cls.needs_reward_gradient and config.reward in BLACK_BOX_REWARDS:
        raise UserError(f"algorithm {config.algorithm} back-propagates through the reward, but reward {config.reward} "
                        f"is a black box; use one of: {', '.join(black_box_algorithms())}")
    per_refresh = config.buffer_size if isinstance(config.buffer_size, int) else config.batch_size
    if config.samples_per_prompt > 1 and per_refresh % config.samples_per_prompt:
        raise UserError(f"the group size samples_per_prompt {config.samples_per_prompt} does not divide the samples "
                        f"per refresh ({per_refresh})")
    if config.batch_size % config.samples_per_prompt:
        raise UserError(f"the group size samples_per_prompt {config.samples_per_prompt} does not divide batch_size "
                        f"{config.batch_size}")


def interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    from scipy.stats import t

    return mean, float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (algorithm, setting): each metric's mean and 95 % interval over its seeds, in plan order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["algorithm"], row["setting"]), []).append(row)
    out = []
    for (alg, setting), members in groups.items():
        agg: dict[str, Any] = {"algorithm": alg, "setting": setting, "seeds": len(members)}
        if any("reached_target" in m for m in members):
            agg["reached_seeds"] = sum(bool(m.get("reached_target")) for m in members)
        for key in COMPARE_METRICS:
            values = [float(m[key]) for m in members if m.get(key) is not None]
            if values:
                agg[key], agg[f"{key}_ci"] = interval(values)
        out.append(agg)
    return out


def write_outputs(rows: list[dict[str, Any]], reference: dict[str, Any], out: Path,
                  target: Target | None = None) -> list[dict[str, Any]]:
    """compare.csv, compare.md and tradeoff.png from the finished runs' rows (with the reward evaluations each
    setting took to reach ``target``, when one is given)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    agg = aggregate(rows)
    shown = [k for k in COMPARE_METRICS if any(k in a for a in agg)]

    def cell(a: dict[str, Any], k: str) -> str:
        if k not in a:
            return ""
        scale = f"{a[k]:.4g}" if abs(a[k]) < 1e4 else f"{a[k]:.0f}"
        return scale if a["seeds"] < 2 else f"{scale} ± {a[k + '_ci']:.2g}"

    reach = ["reached"] if target is not None else []
    body = [["reference", "", "", *(["" for _ in reach]), *(f"{reference[k]:.4g}" if k in reference else "" for k in shown)]]
    body += [[a["algorithm"], a["setting"], str(a["seeds"]),
              *([f"{a.get('reached_seeds', 0)}/{a['seeds']}"] if target is not None else []),
              *(cell(a, k) for k in shown)] for a in agg]
    text = (markdown_table(["algorithm", "setting", "seeds", *reach, *shown], body)
            + "\n\nMean ± half-width of the 95 % t-interval over seeds; the reference row is the pretrained model "
              "(every run's epoch 0).")
    if target is not None:
        text += (f" evals_to_target and diversity_at_target: over the seeds that reached {target.label} (column "
                 f"reached), measured at the run's evaluations (one per epoch).\n\n" + fewest_to_target(agg, target))
    (out / "compare.md").write_text(text + "\n")
    save_tradeoff(agg, reference, out / "tradeoff.png")
    return agg


def tradeoff_axes(agg: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """(x, y) metrics of the trade-off plot: the diversity within a prompt where every row has it (across prompts a
    run that collapses each prompt onto one sample still looks diverse), else the diversity; the target fraction or
    the alignment where every row has it, else the reward."""
    x_key = "diversity_per_condition" if agg and all("diversity_per_condition" in a for a in agg) else "diversity"
    y_key = next((k for k in ("target_fraction", "alignment") if agg and all(k in a for a in agg)), "reward_mean")
    return x_key, y_key


def save_tradeoff(agg: Sequence[dict[str, Any]], reference: dict[str, Any], path: Path) -> Path | None:
    """Reward (target fraction or alignment when the task has one) against diversity (within a prompt when the task
    has prompts): one point per algorithm and setting, the 95 % intervals as bars, one colour per algorithm, the
    reference as a star."""
    from .plotting import _pyplot, _save_figure

    x_key, y_key = tradeoff_axes(agg)
    points = [a for a in agg if y_key in a and x_key in a]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.5), dpi=120)
    names = list(dict.fromkeys(a["algorithm"] for a in points))
    for i, name in enumerate(names):
        mine = [a for a in points if a["algorithm"] == name]
        ax.errorbar([a[x_key] for a in mine], [a[y_key] for a in mine],
                    xerr=[a.get(f"{x_key}_ci", 0) for a in mine], yerr=[a.get(f"{y_key}_ci", 0) for a in mine],
                    fmt="o-" if len(mine) > 1 else "o", color=f"C{i}", ms=6, capsize=2, lw=1, label=name)
        for a in mine:
            if a["setting"] != "default":
                ax.annotate(a["setting"], (a[x_key], a[y_key]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
    if x_key in reference and y_key in reference:
        ax.plot([reference[x_key]], [reference[y_key]], "*", color="k", ms=12, label="reference")
    ax.legend(fontsize=7, frameon=False)
    within = " within a prompt" if x_key == "diversity_per_condition" else ""
    ax.set_xlabel(f"diversity{within} (mean pairwise distance)  ->  more diverse")
    ax.set_ylabel(y_key.replace("_", " "))
    ax.set_title("reward against diversity, same budget of reward evaluations (mean, 95 % interval)", fontsize=8)
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


@dataclass(frozen=True)
class CompareResult:
    rows: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    reference: dict[str, Any]
    out: Path


def run_compare(cells: Sequence[CompareCell], out: str | Path, *, plan: dict[str, Any], cache: str | Path | None = None,
                progress: bool = True, target: Target | None = None) -> CompareResult:
    """Run the cells in plan order (finished ones skipped, interrupted ones resumed) and write the outputs; with a
    ``target``, each run's reward evaluations to reach it (from its learning curve)."""
    from .finetune.run import run_finetune
    from .report import write_report

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create comparison folder {out}: {err.strerror}") from None
    statuses = [_status(c.cell) for c in cells]
    grid = {"algorithm": list(dict.fromkeys(c.algorithm for c in cells)),
            "setting": list(dict.fromkeys(c.setting.label for c in cells)),
            "seed": list(dict.fromkeys(c.seed for c in cells))}
    (out / "sweep.json").write_text(json.dumps(
        {**plan, "grid": grid, "cells": [{"name": c.cell.name, "values": c.cell.values, "run_dir": f"cells/{c.cell.name}",
                                          "epochs": c.schedule.epochs, "steps_per_epoch": c.schedule.steps_per_epoch,
                                          "reward_evaluations": c.schedule.reward_evaluations} for c in cells]},
        indent=2, default=str))
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] = {}
    agg: list[dict[str, Any]] = []
    for i, (c, status) in enumerate(zip(cells, statuses), 1):
        what = {"finished": "finished earlier, skipped", "partial": "resuming", "new": "running"}[status]
        print(f"[{i}/{len(cells)}] {c.cell.name} ({c.schedule.epochs} x {c.schedule.steps_per_epoch} steps, "
              f"{c.schedule.reward_evaluations} reward evaluations): {what}", flush=True)
        if status != "finished":
            run_finetune(c.cell.config, resume=status == "partial", cache=cache, progress=progress)
        summary = json.loads((c.cell.run_dir / "summary.json").read_text())
        row = cell_row(c.cell, summary)
        for key in COMPARE_METRICS:  # what the sweep table leaves out (alignment, gold metrics, ...)
            if key not in row and key in summary.get("metrics_after", {}):
                row[key] = summary["metrics_after"][key]
        if target is not None:
            evals, diversity = reached(summary.get("curve", []), target)
            row["reached_target"] = evals is not None
            row["evals_to_target"], row["diversity_at_target"] = evals, diversity
        rows.append(row)
        reference = reference or {**{k: v for k, v in summary.get("metrics_before", {}).items()
                                     if k in COMPARE_METRICS}, **reference_row(summary)}
        agg = write_outputs(rows, reference, out, target)
    write_report(out, out / "report.html")
    return CompareResult(rows, agg, reference, out)
