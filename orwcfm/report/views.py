"""What the templates show, built from the folder data: tables, pictures and galleries as plain dataclasses.

Every value here is plain text; the templates escape it (``autoescape``), so a run name or config value can hold
any characters. Markup is chosen by the templates from the type: :class:`Link` and :class:`Code` cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import METRIC_ORDER, SECONDARY, RunData, metric_keys, metric_rows, order_metrics
from .figures import Picture, load_picture
from .format import config_value, flatten, format_change, format_number, format_setting, is_number, label

SETTING_KEYS = ("reward", "w2_coefficient", "temperature", "epochs", "steps", "reward_evaluations", "wall_seconds",
                "dropped_samples")


@dataclass(frozen=True)
class Link:
    """A table cell or heading that links to an anchor of the page."""

    text: str
    href: str


@dataclass(frozen=True)
class Code:
    """Text shown in a monospace ``<code>``."""

    text: str


Cell = str | Link | Code


@dataclass
class Table:
    """A table in a horizontally scrolling box; ``numeric`` columns are right-aligned."""

    header: list[Cell]
    rows: list[list[Cell]]
    numeric: list[bool] = field(default_factory=list)
    cls: str = ""

    def __post_init__(self) -> None:
        self.numeric = list(self.numeric) or [False] * len(self.header)


@dataclass(frozen=True)
class Img:
    """An embedded picture; ``source`` is its file relative to the report's folder (None when drawn here)."""

    picture: Picture
    alt: str
    source: str | None = None
    extra_class: str = ""

    @property
    def classes(self) -> str:
        return " ".join(c for c in (self.extra_class, "pixelated" if self.picture.small else "") if c)


@dataclass(frozen=True)
class Figure:
    """A picture with its caption, or a note saying why there is none."""

    img: Img | None
    note: str = ""
    caption: str = ""


@dataclass(frozen=True)
class Gallery:
    """Pictures in a responsive grid whose columns are at least ``column`` pixels wide."""

    items: list[Figure]
    column: int


class Pictures:
    """Loads pictures named relative to the report's folder (the name is shown as the picture's source)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def figure(self, path: Path | None, alt: str, caption: str = "", *, extra_class: str = "") -> Figure:
        """The picture at ``path``, or a note that it is missing or not a readable PNG."""
        if path is None:
            return Figure(None, note=f"{alt}: no picture yet.", caption=caption)
        picture = load_picture(path)
        if picture is None:  # a gallery still shows the caption, saying which epoch is missing
            return Figure(None, note=f"{self.rel(path)} is not a readable PNG.", caption=caption)
        return Figure(Img(picture, alt, self.rel(path), extra_class), caption=caption)

    def gallery(self, items: Sequence[tuple[Path, str, str]], *, extra_class: str = "", min_px: int = 260) -> Gallery:
        """(path, alt, caption) pictures. Small pictures are shown at their own size (pixel-exact, crisp on
        high-density screens), so the columns are at least that wide."""
        figures = [self.figure(p, alt, cap, extra_class=extra_class) for p, alt, cap in items]
        widths = [f.img.picture.width for f in figures if f.img is not None and f.img.picture.small]
        return Gallery(figures, max([min_px, *(w + 14 for w in widths)]))  # 14: the figure's padding and border


@dataclass
class Summary:
    """The before/after tables of a run, its settings and its class histogram (each None when absent)."""

    main: Table | None
    more: Table | None
    settings: Table | None
    histogram: list[tuple[float, str]] | None  # (bar height in %, text) per class


def summary_view(run: RunData) -> Summary:
    """Metrics before/after (from summary.json, or from metrics.jsonl for an unfinished run) and run settings."""
    s = run.summary
    if s is not None:
        triples = metric_rows(s)
        header: list[Cell] = ["metric", "before", "after", "change"]
    else:
        first = run.eval_rows[0] if run.eval_rows else {}
        last = run.eval_rows[-1] if run.eval_rows else {}
        keys = order_metrics(k[len("eval/"):] for k in last if k.startswith("eval/") and is_number(last[k]))
        triples = [(k, first.get(f"eval/{k}"), last.get(f"eval/{k}")) for k in keys]
        step = last.get("step")
        epoch = run.epoch_of(step)
        header = ["metric", "before", f"latest (step {step}{f', epoch {epoch}' if epoch is not None else ''})", "change"]
    # The headline metrics in view; the rest (reward quantiles, ...) one click away.
    top = {*METRIC_ORDER, *SECONDARY, *(metric_keys(s) if s is not None else ())}
    main = [t for t in triples if t[0] in top] or triples
    more = [t for t in triples if t not in main]

    def table(items: Sequence[tuple[str, Any, Any]], cls: str) -> Table | None:
        rows: list[list[Cell]] = [[label(k), format_number(a), format_number(b), format_change(a, b)] for k, a, b in items]
        return Table(header, rows, [False, True, True, True], cls) if items else None

    return Summary(table(main, "summary"), table(more, "summary-more"), _settings_table(run), _histogram(s))


def _settings_table(run: RunData) -> Table | None:
    s = run.summary
    settings: list[list[Cell]] = []
    for key in SETTING_KEYS:
        value = s.get(key) if s is not None else (run.config or {}).get(key)
        if key == "steps" and s is None and run.train_rows:
            value = run.train_rows[-1].get("step")
        if value is not None:
            settings.append([label(key), format_setting(key, value)])
    if s is not None:  # anything else summary.json holds, so nothing in it is left out
        # the learning curve is drawn (curves.png), not listed
        shown = set(SETTING_KEYS) | {"metrics_before", "metrics_after", "class_histogram_after", "curve"}
        shown |= {f"{k}_{w}" for k in metric_keys(s) for w in ("before", "after")}
        settings += [[label(k), format_setting(k, v) if not isinstance(v, (list, dict)) else config_value(v)]
                     for k, v in s.items() if k not in shown]
    return Table(["setting", "value"], settings, cls="settings") if settings else None


def _histogram(summary: dict[str, Any] | None) -> list[tuple[float, str]] | None:
    hist = summary.get("class_histogram_after") if summary is not None else None
    if not (isinstance(hist, list) and hist and all(is_number(v) for v in hist)):
        return None
    peak = max(max(hist), 1e-12)
    return [(100 * v / peak, f"{v:.0%}") for v in hist]


def eval_tables(run: RunData) -> tuple[Table, Table | None] | None:
    """One row per evaluation with the headline metrics, and every metric when there are more (None: no rows)."""
    if not run.eval_rows:
        return None
    keys: list[str] = []
    for row in run.eval_rows:
        keys += [k[len("eval/"):] for k in row if k.startswith("eval/") and is_number(row[k])]
    keys = order_metrics(keys)
    main = [k for k in keys if k in (*METRIC_ORDER, *SECONDARY)] or keys

    def table(columns: Sequence[str], cls: str) -> Table:
        header: list[Cell] = ["epoch", "step", *(k.replace("_", " ") for k in columns)]
        rows: list[list[Cell]] = []
        for row in run.eval_rows:
            epoch = run.epoch_of(row.get("step"))
            rows.append(["" if epoch is None else str(epoch), format_number(row.get("step")),
                         *(format_number(row.get(f"eval/{k}")) for k in columns)])
        return Table(header, rows, [True] * len(header), cls=cls)

    return table(main, "evals"), (table(keys, "evals-all") if len(main) < len(keys) else None)


def config_table(config: dict[str, Any] | None) -> Table | None:
    """The resolved config, one dotted key per row."""
    if not config:
        return None
    return Table(["key", "value"], [[Code(k), config_value(v)] for k, v in flatten(config)], cls="config")


def title_bits(run: RunData) -> list[tuple[str, str, bool]]:
    """(label, value, bold) of the run's reward, alpha and tau."""
    bits = []
    reward = run.setting("reward")
    if reward is None and run.config and run.config.get("text_prompts"):
        reward = "clip"
    if reward is not None:
        bits.append(("reward", str(reward), True))
    for key, symbol in (("w2_coefficient", "α"), ("temperature", "τ")):
        value = run.setting(key)
        if value is not None:
            bits.append((symbol, format_setting(key, value), False))
    return bits


def sample_caption(run: RunData, epoch: int) -> str:
    text = f"epoch {epoch}" + (" (before)" if epoch == 0 else "")
    row = run.eval_at_epoch(epoch)
    if row is not None and is_number(row.get("eval/reward_mean")):
        text += f" · reward {format_number(row['eval/reward_mean'])}"
    return text
