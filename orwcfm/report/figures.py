"""Pictures for the page: PNG files read and measured, the training-loss figure drawn, both as data URIs."""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .format import is_number

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pictures narrower than this (digit grids: 331 px) are shown enlarged with crisp, pixelated scaling; wider ones
# (matplotlib figures) are scaled smoothly.
SMALL_IMAGE_PX = 400
LOSS_KEYS = ("train/loss", "train/fm", "train/w2")


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
        """The picture as a ``data:`` URI, so the page needs no file beside it."""
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of PNG bytes (from the IHDR chunk), or None for anything that is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def load_picture(path: Path) -> Picture | None:
    """The PNG at ``path``, or None when it is unreadable or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    size = png_size(data)
    return Picture(data, *size) if size else None


def loss_figure(train_rows: Sequence[Mapping[str, Any]], title: str = "") -> Picture | None:
    """A PNG of train/loss, train/fm and train/w2 against step (one panel each), or None without such rows."""
    keys = [k for k in LOSS_KEYS if any(is_number(r.get(k)) for r in train_rows)]
    if not keys:
        return None
    from ..plotting import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in train_rows if is_number(r.get(key)) and is_number(r.get("step"))]
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
