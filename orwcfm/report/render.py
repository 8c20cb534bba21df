"""The pages as HTML: the folder data turned into template context and rendered with Jinja2.

The environment escapes every value (``autoescape=True``) and refuses a name the context lacks
(``StrictUndefined``), so a template typo fails loudly instead of leaving a silent gap in the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2

from .data import SweepCell, read_run, read_sweep
from .figures import Picture, loss_figure
from .sweep_views import anchor, cell_counts, grid_axes, headline_text, results
from .views import (Figure, Gallery, Img, Pictures, config_table, eval_tables, sample_caption, summary_view,
                    title_bits)


@cache
def environment() -> jinja2.Environment:
    """The one Jinja2 environment of the report, loading ``orwcfm/report/templates/*.j2``."""
    # FileSystemLoader on the package folder: works from a wheel, a source tree and a zip-free install alike
    return jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                              autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def render(template: str, **context: object) -> str:
    """Render ``templates/TEMPLATE`` with ``context``."""
    return environment().get_template(template).render(**context)


def _where(run) -> str:
    """Where an unfinished run got to, for its notice."""
    last = run.eval_rows[-1].get("step") if run.eval_rows else None
    if last is None:
        return "nothing evaluated yet"
    epochs = (run.config or {}).get("epochs")
    epoch = run.epoch_of(last)
    where = f"latest evaluation at step {last}"
    if epoch is not None:
        where += f", epoch {epoch}" + (f" of {epochs}" if epochs else "")
    return where


def render_run(directory: str | Path) -> str:
    """The HTML page of a fine-tuning run folder."""
    root = Path(directory)
    run = read_run(root)
    pictures = Pictures(root)
    loss: Picture | None = loss_figure(run.train_rows)
    samples = (pictures.gallery([(p, f"samples after epoch {e}", sample_caption(run, e)) for e, p in run.samples],
                                extra_class="sample") if run.samples else None)
    return render("run.html.j2", title=f"{run.name}: orwcfm run report", run=run, bits=title_bits(run),
                  folder=str(root.resolve()), epochs=(run.config or {}).get("epochs"), where=_where(run),
                  summary=summary_view(run), curves=pictures.figure(run.curves, "curves.png") if run.curves else None,
                  loss=Img(loss, "training loss against step") if loss is not None else None,
                  evals=eval_tables(run), samples=samples, config=config_table(run.config))


@dataclass(frozen=True)
class CellView:
    """One cell's section of the sweep page."""

    cell: SweepCell
    anchor: str
    folder: str
    headline: str = ""
    bits: tuple = ()
    curves: Figure | None = None
    samples: Gallery | None = None


def _cell_view(cell: SweepCell, index: int, pictures: Pictures) -> CellView:
    folder = pictures.rel(cell.run_dir if cell.run is None else cell.run.path)
    run = cell.run
    if run is None:
        return CellView(cell, anchor(index), folder)
    # the first and the last sample grid: the change the cell made, without the page growing with the epochs
    picks = run.samples[:1] + (run.samples[-1:] if len(run.samples) > 1 else [])
    samples = (pictures.gallery([(p, f"{cell.name}: samples after epoch {e}", sample_caption(run, e)) for e, p in picks],
                                extra_class="sample", min_px=300) if picks else None)
    curves = pictures.figure(run.curves, f"{cell.name}: curves.png") if run.curves is not None else None
    return CellView(cell, anchor(index), folder, headline_text(cell), tuple(title_bits(run)), curves, samples)


def render_sweep(directory: str | Path) -> str:
    """The HTML page of a sweep folder."""
    root = Path(directory)
    sweep = read_sweep(root)
    pictures = Pictures(root)
    overrides = sweep.meta.get("overrides")
    tradeoff = root / "tradeoff.png"
    return render("sweep.html.j2", title=f"Sweep {root.resolve().name}: orwcfm report", sweep=sweep,
                  name=root.resolve().name, folder=str(root.resolve()), axes=grid_axes(sweep),
                  counts=cell_counts(sweep.cells), overrides=overrides if isinstance(overrides, list) else [],
                  cells=[_cell_view(c, i, pictures) for i, c in enumerate(sweep.cells)], results=results(sweep),
                  tradeoff=(pictures.figure(tradeoff, "tradeoff.png: reward against diversity, one point per cell")
                            if tradeoff.is_file() else None))
