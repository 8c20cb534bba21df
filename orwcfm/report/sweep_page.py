"""The HTML of a sweep's report: the results table and one section per cell."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

from .data import RunData, _e, _metric_keys, format_number, read_run
from .page import _Page, _badge, _config_value, _document, _headline_text, _notes, _sample_caption, _table, _title_bits


@dataclass
class SweepCell:
    name: str
    values: dict[str, Any]
    run_dir: Path
    run: RunData | None  # None: no run folder


def _read_sweep(root: Path) -> tuple[dict[str, Any], list[SweepCell], list[str]]:
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
    return meta, cells, notes


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


def _results_table(root: Path, meta: Mapping[str, Any], cells: Sequence[SweepCell]) -> str:
    grid_keys = list(meta.get("grid", {})) if isinstance(meta.get("grid"), dict) else []
    anchors = {id(c): f"cell-{i + 1}" for i, c in enumerate(cells)}

    def find_cell(row: Mapping[str, str]) -> SweepCell | None:
        for key in ("name", "cell", "run_dir"):
            if key in row:
                for c in cells:
                    if row[key] in (c.name, str(c.run_dir.relative_to(root)) if c.run_dir.is_relative_to(root) else ""):
                        return c
        if grid_keys and all(k in row for k in grid_keys):
            for c in cells:
                if c.values and all(k in c.values and _same(c.values[k], row[k]) for k in grid_keys):
                    return c
        return None

    csv_path = root / "sweep.csv"
    if csv_path.is_file():
        try:
            with open(csv_path, newline="", encoding="utf-8") as fh:
                reader = csv.reader(fh)
                header = next(reader, [])
                records = [r for r in reader if any(f.strip() for f in r)]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            return f'<p class="note">sweep.csv could not be read ({_e(err.__class__.__name__)}: {_e(err)}).</p>'
        if not header:
            return '<p class="note">sweep.csv is empty.</p>'
        numeric = [bool(records) and all(_csv_value(r[i])[1] for r in records if i < len(r) and r[i].strip())
                   for i in range(len(header))]
        rows = []
        for record in records:
            record = record + [""] * (len(header) - len(record))
            cell = find_cell(dict(zip(header, record)))
            # grid values as written (they are settings); measured numbers formatted like the rest of the report
            shown = [_e(v.strip() if h in grid_keys else _csv_value(v)[0]) for h, v in zip(header, record)]
            if cell is not None and shown:
                shown[0] = f'<a href="#{anchors[id(cell)]}">{shown[0]}</a>'
            rows.append(shown)
        return (_table([_e(h) for h in header], rows, numeric)
                + '<p class="note">From sweep.csv; the first column links to the cell.</p>')

    # No sweep.csv (yet): the same table from the cells' summaries.
    metric_keys: list[str] = []
    for c in cells:
        if c.run is not None and c.run.summary is not None:
            metric_keys += [f"{k}_{w}" for k in _metric_keys(c.run.summary) for w in ("before", "after")
                            if f"{k}_{w}" not in metric_keys]
    header = ["cell", *grid_keys, "status", *metric_keys]
    rows = []
    for c in cells:
        status = "missing" if c.run is None else ("finished" if c.run.finished else "unfinished")
        summary = (c.run.summary or {}) if c.run is not None else {}
        rows.append([f'<a href="#{anchors[id(c)]}">{_e(c.name)}</a>', *[_e(_config_value(c.values.get(k))) for k in grid_keys],
                     _e(status), *[_e(format_number(summary.get(k))) for k in metric_keys]])
    numeric = [False] * (2 + len(grid_keys)) + [True] * len(metric_keys)
    numeric[1:1 + len(grid_keys)] = [True] * len(grid_keys)
    return (_table(header, rows, numeric)
            + '<p class="note">No sweep.csv yet: this table is built from the cells\' summary.json files.</p>')


def render_sweep(directory: str | Path) -> str:
    """The HTML page of a sweep folder."""
    root = Path(directory)
    meta, cells, notes = _read_sweep(root)
    page = _Page(root)
    counts = {"finished": 0, "unfinished": 0, "missing": 0}
    for c in cells:
        counts["missing" if c.run is None else ("finished" if c.run.finished else "unfinished")] += 1
    page.add(f"<h1>Sweep {_e(root.resolve().name)}</h1>")
    grid = meta.get("grid") if isinstance(meta.get("grid"), dict) else {}
    sub = []
    if meta.get("config") is not None:
        sub.append(f"config <b>{_e(meta['config'])}</b>")
    if grid:
        axes = []
        for key, values in grid.items():
            values = values if isinstance(values, list) else [values]
            axes.append(f"{_e(key)} ∈ {{{_e(', '.join(_config_value(v) for v in values))}}}")
        sub.append(" × ".join(axes))
    if sub:
        page.add(f'<p class="sub">{" · ".join(sub)}</p>')
    meta_bits = [f"folder <code>{_e(root.resolve())}</code>",
                 f"{len(cells)} cells: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n or k == "finished")]
    overrides = meta.get("overrides")
    if isinstance(overrides, list) and overrides:
        meta_bits.append("overrides " + " ".join(f"<code>{_e(o)}</code>" for o in overrides))
    page.add(f'<p class="meta">{" · ".join(meta_bits)}</p>')
    if cells:
        page.add('<nav class="toc"><a href="#results">Results</a><a href="#tradeoff">Trade-off</a>'
                 + "".join(f'<a href="#cell-{i + 1}">{_e(c.name)}</a>' for i, c in enumerate(cells)) + "</nav>")
    page.add(_notes(notes))

    page.add('<h2 id="results">Results</h2>', _results_table(root, meta, cells))
    page.add('<h2 id="tradeoff">Reward versus diversity</h2>')
    if (root / "tradeoff.png").is_file():
        page.add(page.figure(root / "tradeoff.png", "tradeoff.png: reward against diversity, one point per cell"))
    else:
        page.add('<p class="note">No tradeoff.png yet.</p>')

    for i, c in enumerate(cells):
        anchor = f"cell-{i + 1}"
        status = "missing" if c.run is None else ("finished" if c.run.finished else "unfinished")
        page.add(f'<section class="cell" id="{anchor}"><h2><a href="#{anchor}">{_e(c.name)}</a> {_badge(status)}'
                 f'<a class="top" href="#results">back to the table ↑</a></h2>')
        if c.run is None:
            page.add(f'<p class="note">No run folder at <code>{_e(page.rel(c.run_dir))}</code>.</p></section>')
            continue
        run = c.run
        page.add(f'<p class="headline">{_e(_headline_text(run))}</p>')
        bits = [b for b in (_title_bits(run), f"folder <code>{_e(page.rel(run.path))}</code>") if b]
        page.add(f'<p class="meta">{" · ".join(bits)}</p>')
        if not run.finished:
            page.add('<p class="note">Unfinished: no summary.json yet; the numbers are the first and the latest '
                     "evaluation in metrics.jsonl.</p>")
        page.add(_notes(run.notes))
        if run.curves is not None:
            page.add(page.figure(run.curves, f"{c.name}: curves.png"))
        picks = run.samples[:1] + (run.samples[-1:] if len(run.samples) > 1 else [])
        if picks:
            page.add(page.gallery([(p, f"{c.name}: samples after epoch {e}", _sample_caption(run, e)) for e, p in picks],
                                  extra_class="sample", min_px=300))
        else:
            page.add('<p class="note">No sample grids yet.</p>')
        page.add("</section>")
    if not cells:
        page.add('<p class="note">This sweep has no cells yet.</p>')
    return _document(f"Sweep {root.resolve().name}: orwcfm report", "\n".join(page.parts))
