"""Grids of fine-tuning runs: ``orwcfm sweep --config FILE --grid w2_coefficient=0,0.3,1 --grid temperature=1,2``.

Data flow::

    --grid KEY=V1,V2 ...  --parse_grid-->  {key: [values]}  --plan_sweep-->  one validated FinetuneConfig per cell
    (every cell is checked before any run starts: an unknown key, an empty list or a wrong type stops here)
    for each cell:  finished (summary.json, same config)? skip  |  checkpoints? resume  |  else run
                    -> row of the cell's final metrics -> sweep.csv, sweep.md, tradeoff.png (rewritten after each cell)

The sweep folder holds ``sweep.json`` (the plan), ``cells/NAME/`` (one run folder per cell, NAME like
``w2_coefficient=0.3,temperature=2``), the tables and the trade-off plot. Running the same command again
skips finished cells and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import (FinetuneConfig, fill_defaults, finetune_config, numeric_string, parse_overrides, set_dotted,
                     to_dict)
from .errors import UserError, did_you_mean
from .metric_names import short
from .tables import markdown_table

GRID_FORM = "--grid KEY=V1,V2,... (KEY a fine-tuning config key such as w2_coefficient or sampling.steps)"
# Keys that name the run rather than a setting: a sweep sets them itself.
RESERVED_KEYS = ("savedir", "run_name")
# Columns of the results table, in order, when the runs measured them.
METRIC_COLUMNS = (
    "reward_mean", "reward_q50", "reward_max", "target_fraction", "gold_target_fraction", "diversity", "vendi",
    "class_entropy", "w2_to_reference", "w2_to_reference_floor", "digits_fd_data", "digits_fd_target", "digits_fd_ref",
)


@dataclass(frozen=True)
class SweepCell:
    """One point of the grid.

    Attributes:
        name: folder name, ``key=value`` pairs joined by commas.
        values: {grid key: value} of this cell.
        config: the cell's resolved configuration.
    """

    name: str
    values: dict[str, Any]
    config: FinetuneConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.savedir) / str(self.config.run_name)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip().replace(" ", "")
    return str(value)


def _field_type(key: str) -> Any:
    """The declared type of a dotted FinetuneConfig key, or raise UserError for an unknown key."""
    cls: Any = FinetuneConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        prefix = ".".join(parts[:i])
        full = [f"{prefix}.{n}" if prefix else n for n in names]
        if part not in names:
            raise UserError(f"--grid {key}: unknown config key{did_you_mean(key, full)}; accepted form: {GRID_FORM}")
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            return tp
        if dataclasses.is_dataclass(tp):
            cls = tp
        elif typing.get_origin(tp) is dict:  # free-form mapping (reward_options.*): any inner key
            return Any
        else:
            raise UserError(f"--grid {key}: '{'.'.join(parts[: i + 1])}' is a plain setting, it has no '{parts[i + 1]}'; "
                            f"accepted form: {GRID_FORM}")
    return Any


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["w2_coefficient=0,0.3", "sampling.solver=euler,midpoint"]`` -> {key: [values]} (values read as YAML).

    Lists inside a value keep their brackets: ``reward_options.point=[5,0],[0,5]``.

    >>> parse_grid(["w2_coefficient=0,0.3,1e-2", "coupling=ot,independent"])
    {'w2_coefficient': [0, 0.3, 0.01], 'coupling': ['ot', 'independent']}
    """
    if not items:
        raise UserError(f"a sweep needs at least one grid: {GRID_FORM}")
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--grid expects KEY=V1,V2,..., got '{item}'; accepted form: {GRID_FORM}")
        if key in RESERVED_KEYS:
            raise UserError(f"--grid {key}: a sweep names its own runs (cells/KEY=VALUE,...); use --out for the folder")
        if key in grid:
            raise UserError(f"--grid {key} is given twice; put all its values in one --grid {key}=V1,V2,...")
        _field_type(key)
        try:
            values = yaml.safe_load(f"[{raw}]")
        except yaml.YAMLError as err:
            raise UserError(f"--grid {key}: '{raw}' is not a comma-separated list of values ({err.__class__.__name__}); "
                            f"accepted form: {GRID_FORM}") from None
        values = [numeric_string(v) for v in values]
        if not values:
            raise UserError(f"--grid {key}: empty value list; accepted form: {GRID_FORM}")
        if len({_format_value(v) for v in values}) != len(values):
            raise UserError(f"--grid {key}: a value is repeated in {values}")
        grid[key] = values
    return grid


def plan_sweep(config: str | Path, grid: dict[str, list[Any]], out: str | Path,
               overrides: Sequence[str] = ()) -> list[SweepCell]:
    """Resolve and validate the configuration of every cell (the cartesian product of ``grid``) before any run.

    ``config`` is a YAML file or a built-in task name (``digits-even``); ``overrides`` (``key=value``) apply to
    every cell and must not name a grid key.
    """
    fixed = parse_overrides(overrides)
    for key in grid:
        node: Any = fixed
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise UserError(f"--grid {key} and --set {key} both set '{key}'; give it in one place")
    keys = list(grid)
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = ",".join(f"{k}={_format_value(v)}" for k, v in values.items()).replace("/", "_")
        settings: dict[str, Any] = {}
        for k, v in values.items():
            set_dotted(settings, k, v, what="--grid")
        try:
            cfg = finetune_config(config_file=config, overrides=overrides,
                                  **settings, savedir=str(Path(out) / "cells"), run_name=name)
        except UserError as err:
            raise UserError(f"sweep cell {name}: {err}; accepted form: {GRID_FORM}") from None
        cells.append(SweepCell(name=name, values=values, config=cfg))
    return cells


def _status(cell: SweepCell) -> str:
    """``finished``, ``partial`` (checkpoints to resume from) or ``new``; a folder made by other settings is refused."""
    from .checkpoint import list_checkpoints

    saved = cell.run_dir / "config.yaml"
    if saved.exists():
        # A folder saved before a config key existed lacks it: that key held its default (fill_defaults).
        previous = fill_defaults(FinetuneConfig, yaml.safe_load(saved.read_text()) or {})
        current = to_dict(cell.config)
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise UserError(f"{cell.run_dir} was run with other settings ({', '.join(changed)} differ); "
                            "use another --out, or delete that folder to rerun it")
    if (cell.run_dir / "summary.json").exists():
        return "finished"
    return "partial" if list_checkpoints(cell.run_dir) else "new"


def cell_row(cell: SweepCell, summary: dict[str, Any]) -> dict[str, Any]:
    """One table row: the grid values, then the final metrics the run measured, then its cost."""
    after = summary.get("metrics_after", {})
    row: dict[str, Any] = {"cell": cell.name, **{k: _format_value(v) for k, v in cell.values.items()}}
    row.update({k: after[k] for k in METRIC_COLUMNS if k in after})
    row["reward_evaluations"] = summary.get("reward_evaluations")
    row["wall_seconds"] = summary.get("wall_seconds")
    return row


def reference_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The metrics of the reference (every cell's epoch 0) in the same columns."""
    before = summary.get("metrics_before", {})
    return {k: before[k] for k in METRIC_COLUMNS if k in before}


@dataclass(frozen=True)
class SweepResult:
    """What a sweep produced: one row per finished cell, the reference's metrics, and the files written."""

    rows: list[dict[str, Any]]
    reference: dict[str, Any]
    csv_path: Path
    markdown_path: Path
    plot_path: Path | None


def run_sweep(cells: Sequence[SweepCell], out: str | Path, *, grid: dict[str, list[Any]] | None = None,
              config: str | Path | None = None, overrides: Sequence[str] = (), cache: str | Path | None = None,
              progress: bool = True) -> SweepResult:
    """Run the cells in order (skipping finished ones, resuming interrupted ones) and write the tables and plot."""
    from .finetune.run import run_finetune

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create sweep folder {out}: {err.strerror}") from None
    statuses = [_status(c) for c in cells]  # refuses a folder of other settings before any run
    plan = {"config": str(config) if config is not None else None, "grid": grid or {}, "overrides": list(overrides),
            "cells": [{"name": c.name, "values": c.values, "run_dir": f"cells/{c.name}"} for c in cells]}
    (out / "sweep.json").write_text(json.dumps(plan, indent=2, default=str))

    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] = {}
    written: tuple[Path, Path, Path | None] = (out / "sweep.csv", out / "sweep.md", None)
    for i, (cell, status) in enumerate(zip(cells, statuses), 1):
        if status == "finished":
            print(f"[{i}/{len(cells)}] {cell.name}: finished earlier, skipped", flush=True)
        else:
            print(f"[{i}/{len(cells)}] {cell.name}: {'resuming' if status == 'partial' else 'running'}", flush=True)
            run_finetune(cell.config, resume=status == "partial", cache=cache, progress=progress)
        summary = json.loads((cell.run_dir / "summary.json").read_text())
        rows.append(cell_row(cell, summary))
        reference = reference or reference_row(summary)
        written = write_tables(rows, reference, out, grid_keys=list(cells[0].values))
    return SweepResult(rows, reference, *written)


def write_tables(rows: list[dict[str, Any]], reference: dict[str, Any], out: Path,
                 grid_keys: list[str]) -> tuple[Path, Path, Path | None]:
    """sweep.csv (every column), sweep.md (with the reference as the first row) and tradeoff.png."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv_path = out / "sweep.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell_text(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return "" if v is None else str(v)

    shown = [c for c in columns if c != "cell"]
    body = []
    if reference:  # the reference first, named in the first grid column (its grid values are not a cell's)
        body.append(["reference" if c == grid_keys[0] else cell_text(reference.get(c)) if c not in grid_keys else ""
                     for c in shown])
    body += [[cell_text(row.get(c)) for c in shown] for row in rows]
    md_path = out / "sweep.md"
    md_path.write_text(markdown_table(shown, body))
    return csv_path, md_path, save_tradeoff(rows, reference, out / "tradeoff.png", grid_keys)


def save_tradeoff(rows: list[dict[str, Any]], reference: dict[str, Any], path: Path, grid_keys: list[str]) -> Path | None:
    """Reward (target fraction when the task has one) against diversity, one labelled point per cell, the
    reference as a star. Returns ``None`` when the rows lack the two numbers."""
    from .plotting import _pyplot, _save_figure

    y_key = "target_fraction" if all("target_fraction" in r for r in rows) else "reward_mean"
    x_key = "diversity"
    points = [r for r in rows if y_key in r and x_key in r]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.5), dpi=120)
    if len(grid_keys) == 1:  # one key: a thin line through the cells in grid order shows the path
        ax.plot([r[x_key] for r in points], [r[y_key] for r in points], "-", color="0.75", lw=1, zorder=1)
    # One colour and legend entry per cell: labels next to points become ambiguous when cells sit close together.
    colours = plt.get_cmap("viridis")([i / max(1, len(points) - 1) for i in range(len(points))])
    for r, colour in zip(points, colours):
        label = ", ".join(f"{short(k)}={r[k]}" for k in grid_keys)
        ax.plot([r[x_key]], [r[y_key]], "o", color=colour, ms=7, label=label, zorder=2)
    if x_key in reference and y_key in reference:
        ax.plot([reference[x_key]], [reference[y_key]], "*", color="C3", ms=13, label="reference", zorder=2)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    ax.set_xlabel("diversity (mean pairwise distance)  ->  more diverse")
    ax.set_ylabel(y_key.replace("_", " "))
    ax.set_title("reward / diversity trade-off, one point per sweep cell", fontsize=9)
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)
