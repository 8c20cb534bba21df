"""JPEG (in)compressibility rewards of DDPO (Black et al., 2023): the size of each image saved as a JPEG."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

QUALITY = 95  # DDPO's setting


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images (B, C, H, W) in [-1, 1] -> uint8 array (B, H, W, C): round((x + 1) * 127.5), clamped to 0..255.

    >>> to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4))[0, 0, :, 0].tolist()
    [0, 128, 255, 255]
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"JPEG rewards take images of shape (B, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    pixels = ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def jpeg_sizes(x: torch.Tensor, quality: int = QUALITY) -> torch.Tensor:
    """Size in kilobytes (bytes / 1000) of each image of x (B, C, H, W) in [-1, 1] saved by PIL as a JPEG.

    C = 1 is saved as grayscale ("L"), C = 3 as RGB. Returns (B,) float32 on x's device.
    """
    sizes = []
    for image in to_uint8(x):
        buffer = io.BytesIO()
        pil = Image.fromarray(image[:, :, 0], mode="L") if image.shape[2] == 1 else Image.fromarray(image, mode="RGB")
        pil.save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32, device=x.device)


def jpeg_compressibility(x: torch.Tensor) -> torch.Tensor:
    """Reward for images that compress well: minus the JPEG size in kB (quality 95). (B, C, H, W) -> (B,).

    >>> flat = torch.zeros(1, 3, 32, 32)
    >>> noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> bool(jpeg_compressibility(flat) > jpeg_compressibility(noise))
    True
    """
    return -jpeg_sizes(x)


def jpeg_incompressibility(x: torch.Tensor) -> torch.Tensor:
    """Reward for images that compress badly: the JPEG size in kB (quality 95). (B, C, H, W) -> (B,).

    >>> jpeg_incompressibility(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2])
    """
    return jpeg_sizes(x)


jpeg_compressibility.name = "jpeg-compressibility"  # type: ignore[attr-defined]
jpeg_incompressibility.name = "jpeg-incompressibility"  # type: ignore[attr-defined]


class ShiftedJpegReward:
    """A JPEG reward measured from a baseline size: compressibility ``baseline_kb - kB``, incompressibility
    ``kB - baseline_kb``. (B, C, H, W) -> (B,).

    Why a baseline: the paper's weights ``exp(tau r)`` are not invariant to a constant added to r. Adding c to the
    reward multiplies every weight by ``exp(tau c)``, which is the same as dividing the W2 coefficient alpha by
    ``exp(tau c)``. With r = -kB and the tau that JPEG sizes need (tens per kB), ``Z = mean(exp(tau r))`` is about
    e^-40 and the paper's alpha loses its meaning; measured from a size typical of the reference (its mean), r is
    near 0 and Z within a few e-folds of 1 (log Z = 2.2 at the start of the 16x16 run of docs/reproduction.md
    section 5, growing as the model compresses: train/log_z shows it). The fine-tuning is otherwise the same.

    >>> r = ShiftedJpegReward(compress=True, baseline_kb=0.5)
    >>> x = torch.zeros(1, 1, 8, 8)
    >>> float(r(x)) == 0.5 + float(jpeg_compressibility(x))
    True
    """

    def __init__(self, compress: bool, baseline_kb: float) -> None:
        if not isinstance(baseline_kb, (int, float)) or isinstance(baseline_kb, bool) or not np.isfinite(baseline_kb):
            raise ValueError(f"baseline_kb must be a finite number of kilobytes, got {baseline_kb!r}")
        self.compress = compress
        self.baseline_kb = float(baseline_kb)
        self.name = "jpeg-compressibility" if compress else "jpeg-incompressibility"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sizes = jpeg_sizes(x)
        return self.baseline_kb - sizes if self.compress else sizes - self.baseline_kb

    def __repr__(self) -> str:
        return f"ShiftedJpegReward(compress={self.compress}, baseline_kb={self.baseline_kb})"
