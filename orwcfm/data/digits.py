"""scikit-learn's bundled 8x8 handwritten digits: 1797 images that ship with the package (no download)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from orwcfm.data.base import TensorData, as_classes


def digits(digits: Sequence[int] | None = None) -> TensorData:
    """The 8x8 digits as ``x: (N, 1, 8, 8)`` float32 and ``labels: (N,)`` int64.

    Pixel values ``0..16`` map linearly to ``[-1, 1]`` (``v / 8 - 1``: 0 -> -1, 16 -> 1).
    ``digits`` keeps only the listed classes (default: all ten, N = 1797).

    >>> d = digits([0, 1])
    >>> d.shape, len(d), sorted(d.labels.unique().tolist())
    ((1, 8, 8), 360, [0, 1])
    """
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import and often unneeded

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 8 - 1  # (1797, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).long()
    keep = None
    if digits is not None:
        keep = as_classes("digits", "digits", digits)
        mask = torch.isin(labels, torch.tensor(keep))
        x, labels = x[mask], labels[mask]
    return TensorData("digits", x.contiguous(), labels, "image", params={"digits": keep})
