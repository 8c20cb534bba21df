"""RGB patches cut on a regular grid from scikit-learn's two bundled photographs (china.jpg, flower.jpg).

The photos ship inside scikit-learn (427 x 640 pixels each), so this image data set needs no download.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from orwcfm.data.base import TensorData, as_int
from orwcfm.errors import UserError

MAX_BYTES = 2 * 1024**3  # refuse grids that would not fit comfortably in memory (e.g. stride=1)


def grid_count(height: int, width: int, patch_size: int, stride: int) -> int:
    """Number of ``patch_size`` patches at ``stride`` that fit in a ``height x width`` image.

    >>> grid_count(427, 640, 32, 16)  # 25 rows x 39 columns
    975
    """
    if patch_size > min(height, width):
        return 0
    return ((height - patch_size) // stride + 1) * ((width - patch_size) // stride + 1)


def patches(patch_size: int = 32, stride: int = 16, downsample: int = 1) -> TensorData:
    """Patches as ``x: (N, 3, patch_size, patch_size)`` float32 in ``[-1, 1]``, ``labels: (N,)`` = source photo.

    Label 0 is china.jpg, 1 is flower.jpg. Within a photo, patches are in row-major grid order, the top-left
    corners at multiples of ``stride``. With ``downsample = k > 1`` each photo is first average-pooled by
    ``k`` (edges that do not fill a ``k x k`` block are dropped), so a patch covers a ``k``-times larger region.
    Defaults give ``2 * 975 = 1950`` patches.
    """
    patch_size = as_int("patches", "patch_size", patch_size)
    stride = as_int("patches", "stride", stride)
    downsample = as_int("patches", "downsample", downsample)

    from sklearn.datasets import load_sample_images  # imported here: sklearn is slow to import

    bunch = load_sample_images()
    order = sorted(range(len(bunch.filenames)), key=lambda i: os.path.basename(bunch.filenames[i]))
    photos = []
    for i in order:
        photo = torch.tensor(bunch.images[i]).permute(2, 0, 1).float()  # (3, H, W), 0..255
        if downsample > 1:
            photo = F.avg_pool2d(photo[None], downsample)[0]
        photos.append(photo)

    smallest = min(min(p.shape[1:]) for p in photos)
    if patch_size > smallest:
        raise UserError(
            f"option 'patch_size' of data set 'patches' must be at most {smallest} "
            f"(the shorter side of the photos after downsample={downsample}), got {patch_size}"
        )
    total = sum(grid_count(p.shape[1], p.shape[2], patch_size, stride) for p in photos)
    if total * 3 * patch_size**2 * 4 > MAX_BYTES:
        raise UserError(
            f"data set 'patches' with stride={stride} and patch_size={patch_size} would hold {total} patches "
            f"(over {MAX_BYTES // 1024**3} GiB); use a larger stride"
        )

    xs, labels = [], []
    for label, photo in enumerate(photos):
        grid = photo.unfold(1, patch_size, stride).unfold(2, patch_size, stride)  # (3, rows, cols, p, p)
        grid = grid.permute(1, 2, 0, 3, 4).reshape(-1, 3, patch_size, patch_size)
        xs.append(grid)
        labels.append(torch.full((grid.shape[0],), label, dtype=torch.int64))
    x = torch.cat(xs) / 127.5 - 1  # 0..255 -> [-1, 1]
    params = {"patch_size": patch_size, "stride": stride, "downsample": downsample}
    return TensorData("patches", x, torch.cat(labels), "image", params=params)
