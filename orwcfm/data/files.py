"""Readers for the standard MNIST (IDX) and CIFAR-10 (python pickle) files in a local folder; nothing is downloaded.

The CIFAR-10 batches are pickles, and unpickling runs whatever a file asks for, so they are read with an
unpickler that only resolves the few globals these files need (numpy array reconstruction) and refuses the rest.
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from orwcfm.data.base import TensorData, as_choice, as_int
from orwcfm.errors import UserError

SPLITS = ("train", "test")
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def _folder(dataset: str, root: str | os.PathLike) -> Path:
    path = Path(os.fspath(root)).expanduser()
    if not path.is_dir():
        raise UserError(f"root folder '{path}' of data set '{dataset}' does not exist or is not a folder")
    return path


def _to_images(pixels: np.ndarray) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 -> float32 in ``[-1, 1]`` (0 -> -1, 255 -> 1); copies, so the source may be read-only."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).float() / 127.5 - 1


# ---------------------------------------------------------------- MNIST


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    # Decide by content, not suffix: an IDX file starts with two zero bytes, a gzip stream with 1f 8b.
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"file '{path}' is not a valid gzip file ({err})") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (magic ``0x000008<ndim>``) as a uint8 array.

    Layout: 2 zero bytes, type code 0x08, number of dimensions, then ``ndim`` big-endian uint32 sizes, then the data.
    """
    data = _read_maybe_gzip(path)
    want = 0x0800 | ndim
    if len(data) < 4:
        raise UserError(f"file '{path}' is truncated: {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != want:
        raise UserError(
            f"file '{path}' has magic number 0x{magic:08x}, expected 0x{want:08x} "
            f"(an IDX file of unsigned bytes with {ndim} dimension{'s' * (ndim > 1)})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"file '{path}' is truncated: the IDX header needs {header} bytes, the file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected, found = math.prod(dims), len(data) - header
    if found != expected:
        problem = "is truncated" if found < expected else "has trailing bytes"
        raise UserError(f"file '{path}' {problem}: its header {dims} needs {expected} data bytes, found {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def mnist(root: str | os.PathLike, split: str = "train", limit: int | None = None) -> TensorData:
    """MNIST from the IDX files in ``root`` (or ``root/MNIST/raw``, torchvision's layout); plain or ``.gz``.

    Returns ``x: (N, 1, H, W)`` float32 in ``[-1, 1]`` (H, W from the file header, 28 for real MNIST) and
    ``labels: (N,)`` int64. ``limit`` keeps only the first ``limit`` images.
    """
    split = as_choice("mnist", "split", split, SPLITS)
    limit = None if limit is None else as_int("mnist", "limit", limit)
    folder = _folder("mnist", root)
    folders = [folder, folder / "MNIST" / "raw"]
    names = MNIST_FILES[split]
    found = {}
    for name in names:
        candidates = [f / n for f in folders for n in (name, name + ".gz")]
        found[name] = next((c for c in candidates if c.is_file()), None)
    if None in found.values():
        raise UserError(
            f"MNIST {split} files not found in '{folder}' (nor in its MNIST/raw subfolder): expected "
            f"{' and '.join(names)} (each optionally gzip-compressed with a .gz suffix)"
        )
    images = read_idx(found[names[0]], 3)
    labels = read_idx(found[names[1]], 1)
    if len(images) != len(labels):
        raise UserError(
            f"MNIST {split} files disagree: '{found[names[0]]}' has {len(images)} images "
            f"but '{found[names[1]]}' has {len(labels)} labels"
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = _to_images(images[:, None])  # (N, 1, H, W)
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorData("mnist", x, y, "image", params={"root": str(folder), "split": split, "limit": limit})


# ---------------------------------------------------------------- CIFAR-10


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, 'latin1'); nothing else is needed.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2 keeps it in numpy._core; pickles written by numpy 1.x name numpy.core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only; any other global (``os.system``...) raises :class:`UserError`."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR-10 was pickled by Python 2: keep its strings as bytes
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UserError(
                f"refusing to unpickle '{self.path}': it asks for the Python global '{module}.{name}', "
                "but a CIFAR-10 batch needs only numpy arrays (the file may be malicious)"
            ) from None


def _get(batch: dict, key: str) -> object:
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch as ``(data (N, 3072) uint8, labels (N,) int64)``, safely unpickled."""
    try:
        with path.open("rb") as f:
            batch = RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as err:  # a damaged pickle can fail in many ways; all mean "not a CIFAR-10 batch"
        raise UserError(
            f"file '{path}' is not a readable CIFAR-10 python batch ({type(err).__name__}: {err})"
        ) from None
    data = _get(batch, "data") if isinstance(batch, dict) else None
    labels = _get(batch, "labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"file '{path}' is not a CIFAR-10 batch: expected b'data' to be an (N, 3072) uint8 array")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.shape != (data.shape[0],):
        raise UserError(f"file '{path}' is not a CIFAR-10 batch: expected b'labels' to be {data.shape[0]} integers")
    return data, labels


def cifar10(root: str | os.PathLike, split: str = "train", limit: int | None = None) -> TensorData:
    """CIFAR-10 from the python distribution: ``root`` is ``cifar-10-batches-py`` or the folder containing it.

    Returns ``x: (N, 3, 32, 32)`` float32 in ``[-1, 1]`` and ``labels: (N,)`` int64. Each row of ``b'data'`` is
    1024 red, then 1024 green, then 1024 blue values, each a row-major 32x32 image. ``limit`` keeps the first
    ``limit`` images (and reads only the batches needed for them).
    """
    split = as_choice("cifar10", "split", split, SPLITS)
    limit = None if limit is None else as_int("cifar10", "limit", limit)
    folder = _folder("cifar10", root)
    if (folder / CIFAR_FOLDER).is_dir():
        folder = folder / CIFAR_FOLDER
    names = CIFAR_FILES[split]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        partly = f"; missing {', '.join(missing)}" if len(missing) < len(names) else ""
        raise UserError(
            f"CIFAR-10 {split} files not found in '{folder}' (nor in a {CIFAR_FOLDER} subfolder): "
            f"expected {', '.join(names)}{partly}"
        )
    datas, labels, count = [], [], 0
    for name in names:
        data, y = read_cifar_batch(folder / name)
        datas.append(data)
        labels.append(y)
        count += len(y)
        if limit is not None and count >= limit:
            break
    data, y = np.concatenate(datas)[:limit], np.concatenate(labels)[:limit]
    x = _to_images(data.reshape(-1, 3, 32, 32))
    params = {"root": str(folder), "split": split, "limit": limit}
    return TensorData("cifar10", x, torch.from_numpy(y), "image", params=params)
