"""What the sweep page shows: the results table (from ``sweep.csv``, else from the cells' summaries) and the
headline line of each cell."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .data import SweepCell, SweepData, metric_keys
from .format import config_value, format_duration, format_number, is_number, label
from .views import Cell, Link, Table


@dataclass(frozen=True)
class Results:
    """The results table (None when sweep.csv is unreadable or empty) and the note below it."""

    table: Table | None
    note: str


def anchor(index: int) -> str:
    """The id of the section of the ``index``-th cell (0-based)."""
    return f"cell-{index + 1}"


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _csv_value(text: str) -> tuple[str, bool]:
    """(display text, is numeric) of a CSV field: floats are formatted like the rest of the report."""
    stripped = text.strip()
    try:
        number = float(stripped)
    except ValueError:
        return text, False
    if re.fullmatch(r"[+-]?\d+", stripped):
        return stripped, True
    return format_number(number), True


def _find_cell(sweep: SweepData, row: Mapping[str, str]) -> int | None:
    """The index of the cell a sweep.csv row belongs to: by name or folder, else by its grid values."""
    root, cells, grid_keys = sweep.root, sweep.cells, list(sweep.grid)
    for key in ("name", "cell", "run_dir"):
        if key in row:
            for i, c in enumerate(cells):
                if row[key] in (c.name, str(c.run_dir.relative_to(root)) if c.run_dir.is_relative_to(root) else ""):
                    return i
    if grid_keys and all(k in row for k in grid_keys):
        for i, c in enumerate(cells):
            if c.values and all(k in c.values and _same(c.values[k], row[k]) for k in grid_keys):
                return i
    return None


def results(sweep: SweepData) -> Results:
    """The table of sweep.csv, its first column linking to the cell; without sweep.csv, one built from the cells."""
    csv_path = sweep.root / "sweep.csv"
    if not csv_path.is_file():
        return _results_from_cells(sweep)
    grid_keys = list(sweep.grid)
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            records = [r for r in reader if any(f.strip() for f in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return Results(None, f"sweep.csv could not be read ({err.__class__.__name__}: {err}).")
    if not header:
        return Results(None, "sweep.csv is empty.")
    numeric = [bool(records) and all(_csv_value(r[i])[1] for r in records if i < len(r) and r[i].strip())
               for i in range(len(header))]
    rows: list[list[Cell]] = []
    for record in records:
        record = record + [""] * (len(header) - len(record))
        index = _find_cell(sweep, dict(zip(header, record)))
        # grid values as written (they are settings); measured numbers formatted like the rest of the report
        shown: list[Cell] = [v.strip() if h in grid_keys else _csv_value(v)[0] for h, v in zip(header, record)]
        if index is not None and shown:
            shown[0] = Link(str(shown[0]), f"#{anchor(index)}")
        rows.append(shown)
    return Results(Table(list(header), rows, numeric), "From sweep.csv; the first column links to the cell.")


def _results_from_cells(sweep: SweepData) -> Results:
    """No sweep.csv (yet): the same table from the cells' summaries."""
    grid_keys = list(sweep.grid)
    keys: list[str] = []
    for c in sweep.cells:
        if c.run is not None and c.run.summary is not None:
            keys += [f"{k}_{w}" for k in metric_keys(c.run.summary) for w in ("before", "after") if f"{k}_{w}" not in keys]
    rows: list[list[Cell]] = []
    for i, c in enumerate(sweep.cells):
        summary = (c.run.summary or {}) if c.run is not None else {}
        rows.append([Link(c.name, f"#{anchor(i)}"), *(config_value(c.values.get(k)) for k in grid_keys), c.status,
                     *(format_number(summary.get(k)) for k in keys)])
    numeric = [False] + [True] * len(grid_keys) + [False] + [True] * len(keys)
    return Results(Table(["cell", *grid_keys, "status", *keys], rows, numeric),
                   "No sweep.csv yet: this table is built from the cells' summary.json files.")


def grid_axes(sweep: SweepData) -> list[tuple[str, str]]:
    """(key, "v1, v2, ...") of each grid axis."""
    return [(key, ", ".join(config_value(v) for v in (values if isinstance(values, list) else [values])))
            for key, values in sweep.grid.items()]


def cell_counts(cells: list[SweepCell]) -> str:
    """``3 finished, 1 missing``: the finished count always, the others when non-zero."""
    counts = {"finished": 0, "unfinished": 0, "missing": 0}
    for c in cells:
        counts[c.status] += 1
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n or k == "finished")


def headline_text(cell: SweepCell) -> str:
    """The cell's headline metrics before → after, its steps and wall time."""
    run = cell.run
    assert run is not None
    bits = [f"{label(k)} {format_number(a)} → {format_number(b)}" for k, a, b in run.headline()]
    steps = run.summary.get("steps") if run.summary else (run.train_rows[-1].get("step") if run.train_rows else None)
    if steps is not None:
        bits.append(f"{steps} steps")
    if run.summary and is_number(run.summary.get("wall_seconds")):
        bits.append(format_duration(run.summary["wall_seconds"]))
    return " · ".join(bits) if bits else "no evaluation yet"
