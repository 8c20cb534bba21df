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
