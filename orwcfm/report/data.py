"""Reading a run folder for its report: the summary, metrics, config and pictures, and how numbers and settings
are written."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pictures narrower than this (digit grids: 331 px) are shown enlarged with crisp, pixelated scaling; wider ones
# (matplotlib figures) are scaled smoothly.
SMALL_IMAGE_PX = 400
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
_EPOCH_PNG = re.compile(r"^epoch_(\d+)\.png$")

# Metrics whose before/after pair heads the summary table, in this order; others follow alphabetically.
_METRIC_ORDER = ("reward_mean", "target_fraction", "diversity")
# Metrics measured on top of those, shown next (when measured), before the rest in the order recorded.
_SECONDARY = ("gold_target_fraction", "vendi", "class_entropy", "w2_to_reference", "w2_to_reference_floor", "digits_fd_data",
              "digits_fd_target")
_LABELS = {
    "reward_mean": "reward mean",
    "reward_std": "reward std",
    "target_fraction": "target fraction",
    "diversity": "diversity (mean pairwise distance)",
    "gold_target_fraction": "target fraction, gold classifier (held out)",
    "gold_class_entropy": "class entropy, gold classifier (nats)",
    "gold_reward_mean": "reward mean, gold classifier",
    "vendi": "Vendi score",
    "class_entropy": "class entropy (nats)",
    "w2_to_reference": "empirical W2 to reference (N-sample sets, same noise)",
    "w2_to_reference_floor": "its floor: empirical W2 between two independent reference N-sample sets",
    "w2_bound": "W2 bound (∫ E‖v − v_ref‖² dt)",
    "coupled_sq": "E‖X₁ − Y₁‖² (same noise)",
    "digits_fd_data": "digits-FD to the data (all classes)",
    "digits_fd_target": "digits-FD to the target classes' data",
    "digits_fd_ref": "digits-FD to the reference",
    "w2_coefficient": "W2 coefficient α",
    "temperature": "temperature τ",
    "reward_evaluations": "reward evaluations",
    "wall_seconds": "wall time",
    "dropped_samples": "dropped samples",
}
_SETTING_KEYS = ("reward", "w2_coefficient", "temperature", "epochs", "steps", "reward_evaluations", "wall_seconds",
                 "dropped_samples")
_LOSS_KEYS = ("train/loss", "train/fm", "train/w2")


# ---------------------------------------------------------------------------------------------------------------
# Formatting.


def format_number(value: Any) -> str:
    """How the report writes a metric: 4 decimals, or 4 significant digits for very small or large numbers.

    >>> [format_number(v) for v in (-2.7782206535339355, 0.0, 1e-05, 123456.7, 512, True, None, float("nan"))]
    ['-2.7782', '0', '1e-05', '1.235e+05', '512', 'true', '—', 'nan']
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if 1e-3 <= abs(value) < 1e5:
            return f"{value:.4f}"
        return f"{value:.4g}"
    return str(value)


def format_setting(key: str, value: Any) -> str:
    """How the report writes a run setting of ``summary.json`` (alpha 0.1, not 0.1000; wall time in s / min / h).

    >>> format_setting("w2_coefficient", 0.1), format_setting("wall_seconds", 125.4), format_setting("epochs", 12)
    ('0.1', '2 min 05 s', '12')
    """
    if key == "wall_seconds" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_duration(value)
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return format_number(value)


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _label(key: str) -> str:
    return _LABELS.get(key, key.replace("_", " "))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------------------
# Reading a run folder.


@dataclass
class RunData:
    """What a run folder holds (any part may be missing while the run is still going)."""

    path: Path
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    train_rows: list[dict[str, Any]] = field(default_factory=list)
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    samples: list[tuple[int, Path]] = field(default_factory=list)  # (epoch, picture), by epoch
    curves: Path | None = None
    checkpoints: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be read

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def setting(self, key: str) -> Any:
        """A setting from summary.json, else from config.yaml."""
        for source in (self.summary, self.config):
            if source and key in source:
                return source[key]
        return None

    @property
    def steps_per_epoch(self) -> int | None:
        value = (self.config or {}).get("steps_per_epoch")
        return value if isinstance(value, int) and value > 0 else None

    def epoch_of(self, step: Any) -> int | None:
        spe = self.steps_per_epoch
        if spe and isinstance(step, int) and step % spe == 0:
            return step // spe
        return None

    def eval_at_epoch(self, epoch: int) -> dict[str, Any] | None:
        """The (last) evaluation row of ``epoch``."""
        spe = self.steps_per_epoch
        if spe is None:
            return self.eval_rows[epoch] if epoch < len(self.eval_rows) else None
        rows = [r for r in self.eval_rows if r.get("step") == epoch * spe]
        return rows[-1] if rows else None

    def headline(self) -> list[tuple[str, Any, Any]]:
        """(metric, before, after) of the summary; for an unfinished run, the first and the latest evaluation."""
        out = []
        if self.summary is not None:
            for key in _metric_keys(self.summary):
                out.append((key, self.summary.get(f"{key}_before"), self.summary.get(f"{key}_after")))
        elif self.eval_rows:
            first, last = self.eval_rows[0], self.eval_rows[-1]
            for key in ("reward_mean", "target_fraction", "diversity"):
                if f"eval/{key}" in last:
                    out.append((key, first.get(f"eval/{key}"), last.get(f"eval/{key}")))
        return out


def _order(keys: Iterable[str]) -> list[str]:
    """Headline metrics first, then the secondary ones, then the rest as given."""
    keys = list(dict.fromkeys(keys))
    first = [k for k in (*_METRIC_ORDER, *_SECONDARY) if k in keys]
    return first + [k for k in keys if k not in first]


def metric_rows(summary: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(metric, before, after) for every metric of a summary.json: the ``X_before`` / ``X_after`` pairs and the
    ``metrics_before`` / ``metrics_after`` mappings (None where one side is missing)."""
    before = {k[: -len("_before")]: v for k, v in summary.items() if k.endswith("_before") and _is_number(v)}
    after = {k[: -len("_after")]: v for k, v in summary.items() if k.endswith("_after") and _is_number(v)}
    for side, key in ((before, "metrics_before"), (after, "metrics_after")):
        extra = summary.get(key)
        if isinstance(extra, Mapping):
            for k, v in extra.items():
                if _is_number(v) and str(k) not in side:
                    side[str(k)] = v
    keys = _order([*before, *after])
    keys = [k for k in keys if k in before and k in after] + [k for k in keys if not (k in before and k in after)]
    return [(k, before.get(k), after.get(k)) for k in keys]


def _metric_keys(summary: Mapping[str, Any]) -> list[str]:
    """Metric names that have a top-level before/after pair in ``summary``, headline ones first."""
    paired = {k[: -len("_before")] for k in summary if k.endswith("_before") and _is_number(summary[k])}
    paired |= {k[: -len("_after")] for k in summary if k.endswith("_after") and _is_number(summary[k])}
    return _order(sorted(paired))


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{path.name} could not be read ({err.__class__.__name__}: {err})")
        return None


def read_run(path: str | Path) -> RunData:
    """Read what exists of a run folder; unreadable parts are skipped and described in ``notes``."""
    run = RunData(Path(path))
    p = run.path
    if (p / "config.yaml").is_file():
        try:
            config = yaml.safe_load((p / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            run.notes.append(f"config.yaml could not be read ({err.__class__.__name__})")
        else:
            if isinstance(config, dict):
                run.config = config
            else:
                run.notes.append("config.yaml does not hold a mapping")
    if (p / "summary.json").is_file():
        summary = _read_json(p / "summary.json", run.notes)
        if isinstance(summary, dict):
            run.summary = summary
        elif summary is not None:
            run.notes.append("summary.json does not hold a JSON object")
    if (p / "metrics.jsonl").is_file():
        bad = 0
        try:
            lines = (p / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as err:
            run.notes.append(f"metrics.jsonl could not be read ({err.strerror})")
            lines = []
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(row, dict):
                bad += 1
                continue
            if any(k.startswith("train/") for k in row):
                run.train_rows.append(row)
            if any(k.startswith("eval/") for k in row):
                run.eval_rows.append(row)
        if bad:
            what = "1 line of metrics.jsonl" if bad == 1 else f"{bad} lines of metrics.jsonl"
            run.notes.append(f"{what} could not be parsed and {'was' if bad == 1 else 'were'} skipped")
    samples_dir = p / "samples"
    if samples_dir.is_dir():
        found = [(int(m.group(1)), f) for f in samples_dir.iterdir() if f.is_file() and (m := _EPOCH_PNG.match(f.name))]
        run.samples = sorted(found)
    if (p / "curves.png").is_file():
        run.curves = p / "curves.png"
    if (p / "checkpoints").is_dir():
        run.checkpoints = sorted(d.name for d in (p / "checkpoints").iterdir() if d.is_dir() and d.name.startswith("step_"))
    return run


def _is_pretrain_folder(path: Path) -> bool:
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and "data" in config and "w2_coefficient" not in config


def folder_kind(directory: str | Path) -> str:
    """``"run"`` or ``"sweep"``; a :class:`UserError` naming the folder when it is neither (or does not exist)."""
    path = Path(directory)
    expected = ("expected a fine-tuning run folder (config.yaml, metrics.jsonl, summary.json) "
                "or a sweep folder (sweep.json, cells/)")
    if not path.exists():
        raise UserError(f"folder not found: {path} ({expected})")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder ({expected})")
    if (path / "sweep.json").is_file() or ((path / "cells").is_dir() and not any((path / f).exists() for f in RUN_FILES)):
        return "sweep"
    if any((path / f).is_file() for f in RUN_FILES):
        if not (path / "summary.json").exists() and _is_pretrain_folder(path):
            raise UserError(f"{path} is a pretraining run folder; {expected}")
        return "run"
    raise UserError(f"{path} is neither a fine-tuning run folder (config.yaml, metrics.jsonl, summary.json) "
                    "nor a sweep folder (sweep.json, cells/)")


# ---------------------------------------------------------------------------------------------------------------
