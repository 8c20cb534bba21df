"""Small helpers shared by the reproduction scripts: read a run folder's per-epoch numbers, print tables."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The flags every reproduction script takes: --out (run folders), --cache (built-in assets), --images
    (where the figures go) and --set KEY=VALUE (config overrides for every run); the script adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=out, help=f"run folders (default {out})")
    parser.add_argument("--cache", default=None, help="cache of built-in assets (default $ORWCFM_CACHE or ~/.cache/orwcfm)")
    parser.add_argument("--images", default="docs/images", help="where the figures go")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], help="config overrides for every run")
    return parser


def metric_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of a run's metrics.jsonl (the package's one reader); an unreadable file stops the script."""
    from orwcfm.runlog import read_metrics

    metrics = read_metrics(Path(run_dir, "metrics.jsonl"))
    if metrics.error:
        raise SystemExit(f"{run_dir}/metrics.jsonl: {metrics.error}")
    return metrics.rows


def eval_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluation rows of a run (epoch 0 = the reference), from metrics.jsonl, keys without 'eval/'.

    A resumed run may have logged an evaluation twice; the last row of each step wins.
    """
    rows: dict[int, dict[str, Any]] = {}
    for row in metric_rows(run_dir):
        if any(k.startswith("eval/") for k in row):
            rows[row["step"]] = {"step": row["step"], **{k[5:]: v for k, v in row.items() if k.startswith("eval/")}}
    return [rows[s] for s in sorted(rows)]


def train_epoch_means(run_dir: str | Path, key: str, steps_per_epoch: int) -> list[float]:
    """Mean of a logged training number (e.g. 'w2') over each epoch's logging rows."""
    sums: dict[int, list[float]] = {}
    for row in metric_rows(run_dir):
        if f"train/{key}" in row:
            sums.setdefault((row["step"] - 1) // steps_per_epoch, []).append(row[f"train/{key}"])
    return [sum(v) / len(v) for _, v in sorted(sums.items())]


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A Markdown table; floats get ``digits`` decimals."""
    from orwcfm.tables import markdown_table  # the package's one table writer

    def cell(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    return markdown_table(list(header), [[cell(v) for v in row] for row in rows]).rstrip("\n")


class Clock:
    """Wall time since creation, for the 'ran in N minutes' line every script prints."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __str__(self) -> str:
        s = time.perf_counter() - self.start
        return f"{s / 60:.1f} min ({s:.0f} s)"


def plot_epochs(runs: dict[str, list[dict[str, Any]]], keys: Sequence[str], path: str | Path, title: str = "") -> Path:
    """One panel per metric key, one line per run, epoch on the x axis (epoch = row index)."""
    from orwcfm.plotting import _pyplot, _save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), dpi=120, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, rows in runs.items():
            ax.plot(range(len(rows)), [r.get(key, float("nan")) for r in rows], "o-", ms=2.5, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save_figure(fig, path)


def image_strip(paths: Sequence[str | Path], labels: Sequence[str], out: str | Path) -> Path:
    """Place PNG pictures (sample grids) side by side with a caption under each."""
    from PIL import Image, ImageDraw

    images = [Image.open(p).convert("RGB") for p in paths]
    h = max(i.height for i in images)
    canvas = Image.new("RGB", (sum(i.width for i in images) + 10 * (len(images) - 1), h + 18), "white")
    x = 0
    draw = ImageDraw.Draw(canvas)
    for image, label in zip(images, labels):
        canvas.paste(image, (x, 0))
        draw.text((x + 4, h + 3), label, fill="black")
        x += image.width + 10
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return Path(out)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (``level``) over seeds; half-width nan for one.

    >>> m, h = mean_ci([1.0, 2.0, 3.0]); round(m, 3), round(h, 3)
    (2.0, 2.484)
    """
    import math
    import statistics

    from scipy.stats import t as student_t

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan")
    return mean, float(student_t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def fmt_ci(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± half-width`` (95 % t-interval over seeds), e.g. for a table cell."""
    m, h = mean_ci(values)
    return f"{m:.{digits}f}" if h != h else f"{m:.{digits}f} ± {h:.{digits}f}"
