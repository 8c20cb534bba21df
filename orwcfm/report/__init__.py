"""``orwcfm report DIR``: one self-contained HTML page for a fine-tuning run folder or a sweep folder.

    write_report("runs/demo")                 # -> runs/demo/report.html
    write_report("sweeps/alpha", "alpha.html")

The page needs nothing but itself: every picture is embedded as a ``data:image/png;base64`` URI, the style sheet
is inline, there is no JavaScript and no external address (fonts are the system's own), so it can be mailed,
attached to an issue or opened from a laptop long after the run folder is gone.

A **run folder** (``orwcfm finetune``) gives: title (run name, reward, alpha, tau), the before/after summary as a
table, ``curves.png``, a training-loss figure drawn here from ``metrics.jsonl``, the evaluation rows, the sample
grid of every epoch, and the resolved config (collapsed). A run without ``summary.json`` is reported as
unfinished, with the numbers ``metrics.jsonl`` holds so far.

A **sweep folder** (``orwcfm sweep``) gives: the results table (``sweep.csv``), ``tradeoff.png``, and one section
per cell with its headline numbers, curves and first and last sample grids. Missing or unfinished cells are shown
as such; nothing in a half-written sweep stops the report.

The package: :mod:`.data` reads the folders, :mod:`.figures` the pictures, :mod:`.views` and :mod:`.sweep_views`
shape what the page shows, :mod:`.render` fills the Jinja2 templates in ``templates/`` (every value HTML-escaped).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UserError
from .data import RunData, SweepCell, SweepData, folder_kind, metric_rows, read_run, read_sweep
from .figures import Picture, load_picture, loss_figure, png_size
from .format import format_duration, format_number, format_setting
from .render import environment, render_run, render_sweep

__all__ = ["Picture", "RunData", "SweepCell", "SweepData", "cmd_report", "environment", "folder_kind",
           "format_duration", "format_number", "format_setting", "load_picture", "loss_figure", "metric_rows",
           "png_size", "read_run", "read_sweep", "render_run", "render_sweep", "write_report"]


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of a fine-tuning run folder or a sweep folder; returns its path.

    ``out`` defaults to ``DIRECTORY/report.html``. Raises :class:`~orwcfm.errors.UserError` when ``directory``
    does not exist or is neither kind of folder.
    """
    directory = Path(directory)
    kind = folder_kind(directory)
    text = render_sweep(directory) if kind == "sweep" else render_run(directory)
    target = Path(out) if out is not None else directory / "report.html"
    # written beside the target and renamed: a reader never sees half a page
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as err:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    return target


def cmd_report(args: argparse.Namespace) -> int:
    """``orwcfm report DIR [--out FILE]``."""
    path = write_report(args.dir, getattr(args, "out", None))
    print(f"wrote report: {path}")
    return 0
