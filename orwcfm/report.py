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

All text read from files is HTML-escaped.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

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
# Pictures.


@dataclass(frozen=True)
class Picture:
    """PNG bytes and their size in pixels."""

    data: bytes
    width: int
    height: int

    @property
    def small(self) -> bool:
        return self.width < SMALL_IMAGE_PX

    def uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of PNG bytes (from the IHDR chunk), or None for anything that is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def load_picture(path: Path) -> Picture | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    size = png_size(data)
    return Picture(data, *size) if size else None


def _img(picture: Picture, alt: str, *, source: str | None = None, extra_class: str = "") -> str:
    classes = " ".join(c for c in (extra_class, "pixelated" if picture.small else "") if c)
    attrs = [f'src="{picture.uri()}"', f'alt="{_e(alt)}"', f'width="{picture.width}"', f'height="{picture.height}"']
    if classes:
        attrs.append(f'class="{classes}"')
    if source is not None:
        attrs.append(f'data-source="{_e(source)}"')
    return f"<img {' '.join(attrs)}>"


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


def loss_figure(train_rows: Sequence[Mapping[str, Any]], title: str = "") -> Picture | None:
    """A PNG of train/loss, train/fm and train/w2 against step (one panel each), or None without such rows."""
    keys = [k for k in _LOSS_KEYS if any(_is_number(r.get(k)) for r in train_rows)]
    if not keys:
        return None
    from .plotting import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in train_rows if _is_number(r.get(key)) and _is_number(r.get("step"))]
        ax.plot([s for s, _ in points], [v for _, v in points], "o-" if len(points) < 30 else "-", ms=3, lw=1.3)
        ax.set_xlabel("step")
        ax.set_title(key.split("/", 1)[1] if key != "train/fm" else "fm (reward-weighted)", fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    data = buffer.getvalue()
    return Picture(data, *png_size(data))


# ---------------------------------------------------------------------------------------------------------------
# HTML pieces.


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


# ---------------------------------------------------------------------------------------------------------------
# Entry points.


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of a fine-tuning run folder or a sweep folder; returns its path.

    ``out`` defaults to ``DIRECTORY/report.html``. Raises :class:`~orwcfm.errors.UserError` when ``directory``
    does not exist or is neither kind of folder.
    """
    directory = Path(directory)
    kind = folder_kind(directory)
    text = render_sweep(directory) if kind == "sweep" else render_run(directory)
    target = Path(out) if out is not None else directory / "report.html"
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
