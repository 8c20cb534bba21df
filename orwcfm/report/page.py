"""The HTML of a run's report: its tables, sections, style sheet and the whole page."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .data import (
    RunData, _METRIC_ORDER, _SECONDARY, _SETTING_KEYS, _e, _is_number, _label, _metric_keys, _order,
    format_duration, format_number, format_setting, metric_rows, read_run,
)
from .figures import _img, load_picture, loss_figure


class _Page:
    """Collects the body of the page; pictures are embedded relative to the report's folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parts: list[str] = []

    def add(self, *chunks: str) -> None:
        self.parts.extend(chunks)

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def figure(self, path: Path | None, alt: str, caption: str | None = None, *, extra_class: str = "") -> str:
        """A <figure> with the picture at ``path``, or a line saying it is missing."""
        if path is None:
            return f'<p class="note">{_e(alt)}: no picture yet.</p>'
        picture = load_picture(path)
        if picture is None:
            return f'<p class="note">{_e(self.rel(path))} is not a readable PNG.</p>'
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        return f"<figure>{_img(picture, alt, source=self.rel(path), extra_class=extra_class)}{cap}</figure>"

    def gallery(self, items: Sequence[tuple[Path, str, str]], *, extra_class: str = "", min_px: int = 260) -> str:
        """Pictures in a responsive grid: (path, alt, caption HTML). Small pictures are shown at their own size
        (pixel-exact, crisp on high-density screens); columns are at least that wide."""
        pictures = [(load_picture(p), p, alt, cap) for p, alt, cap in items]
        widths = [pic.width for pic, *_ in pictures if pic is not None and pic.small]
        column = max([min_px, *(w + 14 for w in widths)])  # 14: the figure's padding and border
        cells = []
        for pic, path, alt, cap in pictures:
            body = (_img(pic, alt, source=self.rel(path), extra_class=extra_class) if pic is not None
                    else f'<p class="note">{_e(self.rel(path))} is not a readable PNG.</p>')
            cells.append(f"<figure>{body}<figcaption>{cap}</figcaption></figure>")
        style = f"grid-template-columns:repeat(auto-fill,minmax(min(100%,{column}px),1fr))"
        return f'<div class="gallery" style="{style}">{"".join(cells)}</div>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] | None = None,
           cls: str = "") -> str:
    """A table in a horizontally scrolling box; header and cells are HTML already (escape before)."""
    numeric = numeric or [False] * len(header)
    head = "".join(f'<th{" class=num" if n else ""}>{h}</th>' for h, n in zip(header, numeric))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if n else ""}>{c}</td>' for c, n in zip(row, numeric)) + "</tr>"
                   for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f'<div class="table-wrap"><table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _change(before: Any, after: Any) -> str:
    if _is_number(before) and _is_number(after) and math.isfinite(before) and math.isfinite(after):
        delta = after - before
        return ("+" if delta > 0 else "") + format_number(float(delta))
    return ""


def _badge(status: str) -> str:
    return f'<span class="badge {status}">{status}</span>'


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _config_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _summary_tables(run: RunData) -> str:
    """Metrics before/after (from summary.json, or from metrics.jsonl for an unfinished run) and run settings."""
    s = run.summary
    parts = []
    if s is not None:
        triples = metric_rows(s)
        header = ["metric", "before", "after", "change"]
    else:
        first = run.eval_rows[0] if run.eval_rows else {}
        last = run.eval_rows[-1] if run.eval_rows else {}
        keys = _order(k[len("eval/"):] for k in last if k.startswith("eval/") and _is_number(last[k]))
        triples = [(k, first.get(f"eval/{k}"), last.get(f"eval/{k}")) for k in keys]
        step = last.get("step")
        epoch = run.epoch_of(step)
        latest = f"latest (step {_e(step)}{f', epoch {epoch}' if epoch is not None else ''})"
        header = ["metric", "before", latest, "change"]
    # The headline metrics in view; the rest (reward quantiles, ...) one click away.
    top = {*_METRIC_ORDER, *_SECONDARY, *(_metric_keys(s) if s is not None else ())}
    main = [t for t in triples if t[0] in top] or triples
    more = [t for t in triples if t not in main]

    def rows(items: Sequence[tuple[str, Any, Any]]) -> list[tuple[str, ...]]:
        return [(_e(_label(k)), _e(format_number(a)), _e(format_number(b)), _e(_change(a, b))) for k, a, b in items]

    if main:
        block = _table(header, rows(main), [False, True, True, True], cls="summary")
        if more:
            block += (f"<details><summary>{len(more)} more metric{'s' * (len(more) != 1)}</summary>"
                      + _table(header, rows(more), [False, True, True, True], cls="summary-more") + "</details>")
        parts.append(f"<div>{block}</div>")
    else:
        parts.append('<p class="note">No evaluation recorded yet.</p>')

    settings = []
    for key in _SETTING_KEYS:
        value = s.get(key) if s is not None else (run.config or {}).get(key)
        if key == "steps" and s is None and run.train_rows:
            value = run.train_rows[-1].get("step")
        if value is not None:
            settings.append((_e(_label(key)), _e(format_setting(key, value))))
    if s is not None:  # anything else summary.json holds, so nothing in it is left out
        shown = set(_SETTING_KEYS) | {"metrics_before", "metrics_after", "class_histogram_after"}
        shown |= {f"{k}_{w}" for k in _metric_keys(s) for w in ("before", "after")}
        settings += [(_e(_label(k)), _e(format_setting(k, v) if not isinstance(v, (list, dict)) else _config_value(v)))
                     for k, v in s.items() if k not in shown]
    if settings:
        parts.append(_table(["setting", "value"], settings, cls="settings"))
    html_tables = f'<div class="tables">{"".join(parts)}</div>'

    hist = s.get("class_histogram_after") if s is not None else None
    if isinstance(hist, list) and hist and all(_is_number(v) for v in hist):
        peak = max(max(hist), 1e-12)
        cells = []
        for v in hist:
            fill = 100 * v / peak
            cells.append(f'<td class="num" style="background:linear-gradient(to top,#b6d7f7 {fill:.1f}%,transparent {fill:.1f}%)">'
                         f"{_e(f'{v:.0%}')}</td>")
        html_tables += ('<h3>Class histogram after fine-tuning</h3><div class="table-wrap"><table class="hist"><thead><tr>'
                        + "".join(f"<th class=num>{i}</th>" for i in range(len(hist)))
                        + f"</tr></thead><tbody><tr>{''.join(cells)}</tr></tbody></table></div>")
    return html_tables


def _eval_table(run: RunData) -> str:
    """One row per evaluation: the headline metrics, and every metric in a collapsed table when there are more."""
    if not run.eval_rows:
        return '<p class="note">No evaluation recorded yet.</p>'
    keys: list[str] = []
    for row in run.eval_rows:
        keys += [k[len("eval/"):] for k in row if k.startswith("eval/") and _is_number(row[k])]
    keys = _order(keys)
    main = [k for k in keys if k in (*_METRIC_ORDER, *_SECONDARY)] or keys

    def table(columns: Sequence[str], cls: str) -> str:
        header = ["epoch", "step"] + [_e(k.replace("_", " ")) for k in columns]
        rows = []
        for row in run.eval_rows:
            epoch = run.epoch_of(row.get("step"))
            rows.append([_e("" if epoch is None else epoch), _e(format_number(row.get("step")))]
                        + [_e(format_number(row.get(f"eval/{k}"))) for k in columns])
        return _table(header, rows, [True] * len(header), cls=cls)

    out = table(main, "evals")
    if len(main) < len(keys):
        out += (f"<details><summary>All {len(keys)} evaluation metrics</summary>{table(keys, 'evals-all')}</details>")
    return out


def _config_details(config: Mapping[str, Any] | None, *, open_: bool = False) -> str:
    if not config:
        return '<p class="note">No config.yaml.</p>'
    rows = [(f"<code>{_e(k)}</code>", _e(_config_value(v))) for k, v in _flatten(config)]
    return (f"<details{' open' if open_ else ''}><summary>Resolved config ({len(rows)} keys, config.yaml)</summary>"
            + _table(["key", "value"], rows, cls="config") + "</details>")


def _notes(notes: Sequence[str]) -> str:
    return "".join(f'<p class="note">Note: {_e(n)}.</p>' for n in notes)


def _title_bits(run: RunData) -> str:
    bits = []
    reward = run.setting("reward")
    if reward is None and run.config and run.config.get("text_prompts"):
        reward = "clip"
    if reward is not None:
        bits.append(f"reward <b>{_e(reward)}</b>")
    for key, symbol in (("w2_coefficient", "α"), ("temperature", "τ")):
        value = run.setting(key)
        if value is not None:
            bits.append(f"{symbol} = {_e(format_setting(key, value))}")
    return " · ".join(bits)


def _sample_caption(run: RunData, epoch: int) -> str:
    text = f"epoch {epoch}" + (" (before)" if epoch == 0 else "")
    row = run.eval_at_epoch(epoch)
    if row is not None and _is_number(row.get("eval/reward_mean")):
        text += f" · reward {format_number(row['eval/reward_mean'])}"
    return _e(text)


def _run_status_line(run: RunData) -> str:
    if run.finished:
        return ""
    last = run.eval_rows[-1].get("step") if run.eval_rows else None
    epochs = (run.config or {}).get("epochs")
    where = "nothing evaluated yet"
    if last is not None:
        epoch = run.epoch_of(last)
        where = f"latest evaluation at step {last}"
        if epoch is not None:
            where += f", epoch {epoch}" + (f" of {epochs}" if epochs else "")
    return (f'<div class="notice"><b>This run is unfinished</b>: {_e(run.name)} has no summary.json yet '
            f"(still running, stopped or crashed). The numbers below come from metrics.jsonl ({_e(where)}).</div>")


def _headline_text(run: RunData) -> str:
    bits = [f"{_label(k)} {format_number(a)} → {format_number(b)}" for k, a, b in run.headline()]
    steps = run.summary.get("steps") if run.summary else (run.train_rows[-1].get("step") if run.train_rows else None)
    if steps is not None:
        bits.append(f"{steps} steps")
    if run.summary and _is_number(run.summary.get("wall_seconds")):
        bits.append(format_duration(run.summary["wall_seconds"]))
    return " · ".join(bits) if bits else "no evaluation yet"


# ---------------------------------------------------------------------------------------------------------------
# Pages.


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--border:#d0d7de;--zebra:#f6f8fa;--head:#eaeef2;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 24px 56px}
h1{font-size:1.75rem;line-height:1.25;margin:0 0 .3rem;overflow-wrap:anywhere}
h2{font-size:1.25rem;margin:2.2rem 0 .8rem;padding-bottom:.3rem;border-bottom:1px solid var(--border);overflow-wrap:anywhere}
h3{font-size:1rem;margin:1.3rem 0 .5rem}
a{color:var(--accent);text-decoration:none}
a:hover{text-decoration:underline}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:.85em}
.sub{font-size:1.05rem;margin:0 0 .25rem}
.headline{margin:0 0 .2rem}
.meta{color:var(--muted);font-size:.875rem;margin:.15rem 0;overflow-wrap:anywhere}
nav.toc{margin:.9rem 0 0;font-size:.9rem;display:flex;flex-wrap:wrap;gap:.2rem 1.1rem}
.badge{display:inline-block;padding:.05em .6em;border-radius:1em;font-size:.72rem;font-weight:600;vertical-align:.25em;border:1px solid currentColor;letter-spacing:.02em}
.badge.finished{color:#1a7f37;background:#dafbe1}
.badge.unfinished{color:#9a6700;background:#fff8c5}
.badge.missing{color:#cf222e;background:#ffebe9}
.notice{border:1px solid #d4a72c;background:#fff8c5;border-radius:6px;padding:.6rem .9rem;margin:1rem 0}
.note{color:var(--muted);font-size:.875rem;margin:.4rem 0}
.table-wrap{overflow-x:auto;margin:.4rem 0 1rem;max-width:100%}
table{border-collapse:collapse;font-size:.875rem}
th,td{border:1px solid var(--border);padding:.28rem .7rem;text-align:left;vertical-align:top}
thead th{background:var(--head);font-weight:600;white-space:nowrap}
tbody tr:nth-child(even){background:var(--zebra)}
tbody tr:hover{background:#eef4fc}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.tables{display:flex;flex-wrap:wrap;gap:0 2rem;align-items:flex-start}
table.config td:last-child{overflow-wrap:anywhere}
table.settings td:last-child{font-variant-numeric:tabular-nums}
table.evals thead th{white-space:normal;vertical-align:bottom;min-width:4.5em}
table.hist td{min-width:3.2em;height:3.2em;vertical-align:bottom}
img{max-width:100%;height:auto;display:block}
img.pixelated{image-rendering:crisp-edges;image-rendering:pixelated}
figure{margin:0 0 1rem}
figcaption{color:var(--muted);font-size:.85rem;margin-top:.35rem;text-align:center}
.gallery{display:grid;gap:12px;margin:.5rem 0 1rem}
.gallery figure{margin:0;border:1px solid var(--border);border-radius:6px;padding:6px;background:#fff}
.gallery img{width:100%}
.gallery img.pixelated{width:auto;margin:0 auto}
details{border:1px solid var(--border);border-radius:6px;padding:.5rem .9rem;margin:.5rem 0}
details[open]>summary{margin-bottom:.5rem}
summary{cursor:pointer;font-weight:600}
section.cell{margin-top:2.2rem}
section.cell h2{display:flex;flex-wrap:wrap;align-items:center;gap:.6rem}
.top{font-size:.8rem;font-weight:400;margin-left:auto}
footer{margin-top:3rem;padding-top:.8rem;border-top:1px solid var(--border);color:var(--muted);font-size:.8rem}
@media (max-width:600px){main{padding:16px 12px 40px}h1{font-size:1.45rem}}
@media print{main{max-width:none;padding:0}details{border:none}tbody tr:hover{background:inherit}}
"""


def _document(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"generator\" content=\"orwcfm report\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
            "<footer>Written by <code>orwcfm report</code>: a single file with every picture embedded.</footer>\n"
            "</main>\n</body>\n</html>\n")


def render_run(directory: str | Path) -> str:
    """The HTML page of a fine-tuning run folder."""
    root = Path(directory)
    run = read_run(root)
    page = _Page(root)
    status = "finished" if run.finished else "unfinished"
    page.add(f"<h1>{_e(run.name)} {_badge(status)}</h1>")
    bits = _title_bits(run)
    if bits:
        page.add(f'<p class="sub">{bits}</p>')
    meta = [f"folder <code>{_e(root.resolve())}</code>"]
    epochs, spe = (run.config or {}).get("epochs"), run.steps_per_epoch
    if epochs and spe:
        meta.append(f"{_e(epochs)} epochs × {_e(spe)} steps")
    if run.checkpoints:
        meta.append("checkpoints " + ", ".join(f"<code>{_e(c)}</code>" for c in run.checkpoints))
    page.add(f'<p class="meta">{" · ".join(meta)}</p>')
    page.add('<nav class="toc"><a href="#summary">Summary</a><a href="#curves">Curves</a><a href="#loss">Training loss</a>'
             '<a href="#evaluations">Evaluations</a><a href="#samples">Samples</a><a href="#config">Config</a></nav>')
    page.add(_run_status_line(run), _notes(run.notes))

    page.add('<h2 id="summary">Summary</h2>', _summary_tables(run))
    page.add('<h2 id="curves">Evaluation curves</h2>',
             page.figure(run.curves, "curves.png") if run.curves else '<p class="note">No curves.png yet.</p>')
    page.add('<h2 id="loss">Training loss</h2>')
    loss = loss_figure(run.train_rows)
    if loss is None:
        page.add('<p class="note">No training step logged yet (metrics.jsonl has no train/* rows).</p>')
    else:
        page.add(f'<figure>{_img(loss, "training loss against step")}'
                 f"<figcaption>train/loss, train/fm and train/w2 from metrics.jsonl "
                 f"({len(run.train_rows)} logged steps)</figcaption></figure>")
    page.add('<h2 id="evaluations">Evaluations</h2>', _eval_table(run))
    page.add(f'<h2 id="samples">Samples <span class="note">({len(run.samples)} epochs, from fixed noise)</span></h2>')
    if run.samples:
        page.add(page.gallery([(p, f"samples after epoch {e}", _sample_caption(run, e)) for e, p in run.samples],
                              extra_class="sample"))
    else:
        page.add('<p class="note">No sample grids yet.</p>')
    page.add('<h2 id="config">Config</h2>', _config_details(run.config))
    return _document(f"{run.name}: orwcfm run report", "\n".join(page.parts))
