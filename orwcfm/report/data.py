"""Reading run and sweep folders into dataclasses: config, summary, metrics rows, pictures, checkpoints.

Nothing here raises for a half-written folder: what cannot be read is skipped and described in ``notes``, so the
report of a crashed or running job still shows everything that exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..runlog import read_metrics
from .format import is_number

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
_EPOCH_PNG = re.compile(r"^epoch_(\d+)\.png$")

# Metrics whose before/after pair heads the summary table, in this order; others follow alphabetically.
METRIC_ORDER = ("reward_mean", "target_fraction", "diversity")
# Metrics measured on top of those, shown next (when measured), before the rest in the order recorded.
SECONDARY = ("gold_target_fraction", "vendi", "class_entropy", "w2_to_reference", "w2_to_reference_floor",
             "digits_fd_data", "digits_fd_target")


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

    @property
    def status(self) -> str:
        return "finished" if self.finished else "unfinished"

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
            for key in metric_keys(self.summary):
                out.append((key, self.summary.get(f"{key}_before"), self.summary.get(f"{key}_after")))
        elif self.eval_rows:
            first, last = self.eval_rows[0], self.eval_rows[-1]
            for key in METRIC_ORDER:
                if f"eval/{key}" in last:
                    out.append((key, first.get(f"eval/{key}"), last.get(f"eval/{key}")))
        return out


def order_metrics(keys: Iterable[str]) -> list[str]:
    """Headline metrics first, then the secondary ones, then the rest as given."""
    keys = list(dict.fromkeys(keys))
    first = [k for k in (*METRIC_ORDER, *SECONDARY) if k in keys]
    return first + [k for k in keys if k not in first]


def metric_rows(summary: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(metric, before, after) for every metric of a summary.json: the ``X_before`` / ``X_after`` pairs and the
    ``metrics_before`` / ``metrics_after`` mappings (None where one side is missing)."""
    before = {k[: -len("_before")]: v for k, v in summary.items() if k.endswith("_before") and is_number(v)}
    after = {k[: -len("_after")]: v for k, v in summary.items() if k.endswith("_after") and is_number(v)}
    for side, key in ((before, "metrics_before"), (after, "metrics_after")):
        extra = summary.get(key)
        if isinstance(extra, Mapping):
            for k, v in extra.items():
                if is_number(v) and str(k) not in side:
                    side[str(k)] = v
    keys = order_metrics([*before, *after])
    keys = [k for k in keys if k in before and k in after] + [k for k in keys if not (k in before and k in after)]
    return [(k, before.get(k), after.get(k)) for k in keys]


def metric_keys(summary: Mapping[str, Any]) -> list[str]:
    """Metric names that have a top-level before/after pair in ``summary``, headline ones first."""
    paired = {k[: -len("_before")] for k in summary if k.endswith("_before") and is_number(summary[k])}
    paired |= {k[: -len("_after")] for k in summary if k.endswith("_after") and is_number(summary[k])}
    return order_metrics(sorted(paired))


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{path.name} could not be read ({err.__class__.__name__}: {err})")
        return None


def _read_metrics_into(run: RunData) -> None:
    """Split ``metrics.jsonl`` into training and evaluation rows (a row may be both)."""
    metrics = read_metrics(run.path / "metrics.jsonl")
    if metrics.error is not None:
        run.notes.append(f"metrics.jsonl could not be read ({metrics.error})")
    for row in metrics.rows:
        if any(k.startswith("train/") for k in row):
            run.train_rows.append(row)
        if any(k.startswith("eval/") for k in row):
            run.eval_rows.append(row)
    bad = len(metrics.bad_lines)
    if bad:
        what = "1 line of metrics.jsonl" if bad == 1 else f"{bad} lines of metrics.jsonl"
        run.notes.append(f"{what} could not be parsed and {'was' if bad == 1 else 'were'} skipped")


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
        _read_metrics_into(run)
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


@dataclass
class SweepCell:
    """One cell of a sweep folder as the report sees it (not :class:`orwcfm.sweep.SweepCell`, the plan)."""

    name: str
    values: dict[str, Any]
    run_dir: Path
    run: RunData | None  # None: no run folder

    @property
    def status(self) -> str:
        return "missing" if self.run is None else self.run.status


@dataclass
class SweepData:
    """``sweep.json`` (empty when absent), its cells, and what could not be read."""

    root: Path
    meta: dict[str, Any]
    cells: list[SweepCell]
    notes: list[str]

    @property
    def grid(self) -> dict[str, Any]:
        grid = self.meta.get("grid")
        return grid if isinstance(grid, dict) else {}


def read_sweep(root: Path) -> SweepData:
    """The cells listed in ``sweep.json``, else the folders under ``cells/``; a broken sweep.json is an error."""
    notes: list[str] = []
    meta: dict[str, Any] = {}
    if (root / "sweep.json").is_file():
        try:
            loaded = json.loads((root / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{root / 'sweep.json'} is not readable JSON ({err.__class__.__name__}: {err})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{root / 'sweep.json'} must hold a JSON object with 'grid' and 'cells'")
        meta = loaded
    cells = []
    listed = meta.get("cells")
    if isinstance(listed, list):
        for i, item in enumerate(listed):
            if not isinstance(item, dict):
                notes.append(f"sweep.json cell {i} is not an object and was skipped")
                continue
            name = str(item.get("name", f"cell {i}"))
            run_dir = root / str(item.get("run_dir", Path("cells") / name))
            values = item.get("values") if isinstance(item.get("values"), dict) else {}
            cells.append(SweepCell(name, values, run_dir, read_run(run_dir) if run_dir.is_dir() else None))
    elif (root / "cells").is_dir():
        notes.append(f"{'no cell list in sweep.json' if meta else 'no sweep.json yet'}: the cells are the folders under cells/")
        for d in sorted(p for p in (root / "cells").iterdir() if p.is_dir()):
            cells.append(SweepCell(d.name, {}, d, read_run(d)))
    return SweepData(root, meta, cells, notes)
