"""Pictures: sample grids for images, scatter plots / histograms for 1-D and 2-D data, curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1, scale: int = 1) -> np.ndarray:
    """Tile images into one picture.

    Args:
        images: (N, C, H, W) with C in {1, 3}, values in [-1, 1] (clipped).
        nrow: images per row (default: a square-ish grid).
        padding: pixels of white between images.
        scale: integer upscaling (nearest neighbour) so that 8x8 digits are visible.

    Returns:
        (rows*(H+p)+p, nrow*(W+p)+p, 3) uint8 RGB array.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"make_grid expects (N, C, H, W) with C in (1, 3), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, _, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = x[i].permute(1, 2, 0).numpy()
    return grid


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Write a PNG grid of (N, C, H, W) images in [-1, 1]; small images are upscaled to at least 32 pixels."""
    from PIL import Image

    scale = scale or max(1, math.ceil(32 / images.shape[-1]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, nrow=nrow, scale=scale)).save(path)
    return path


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | Path) -> Path:
    """Lay out, write and close a figure; the folder is created."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def save_scatter(points: torch.Tensor, path: str | Path, title: str = "", reference: torch.Tensor | None = None) -> Path:
    """Scatter plot of (N, 2) points, or a histogram of (N, 1) values; ``reference`` is drawn underneath in grey."""
    plt = _pyplot()

    pts = points.detach().float().cpu().numpy()
    ref = reference.detach().float().cpu().numpy() if reference is not None else None
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    if pts.shape[1] == 1:
        bins = 60
        if ref is not None:
            ax.hist(ref[:, 0], bins=bins, density=True, color="0.8", label="reference")
        ax.hist(pts[:, 0], bins=bins, density=True, histtype="step", color="C0", lw=1.5, label="samples")
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    elif pts.shape[1] == 2:
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8", label="reference")
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="C0", alpha=0.6, label="samples")
        ax.set_aspect("equal")
    else:
        plt.close(fig)
        raise ValueError(f"save_scatter draws 1-D or 2-D points, got shape {tuple(points.shape)}")
    if ref is not None:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save_figure(fig, path)


def save_samples(samples: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """A grid for images (N, C, H, W), a scatter/histogram for vectors (N, 1|2)."""
    if samples.ndim == 4:
        return save_image_grid(samples, path)
    return save_scatter(samples, path, title=title)


def save_prompt_grid(images: torch.Tensor, prompts: list[str], path: str | Path, per_prompt: int = 4,
                     max_prompts: int = 8, title: str = "") -> Path:
    """One row per prompt (the first ``max_prompts`` distinct ones, in order of appearance), its first
    ``per_prompt`` images (N, 3, H, W) in [0, 1] side by side, the prompt as the row's caption."""
    plt = _pyplot()
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        if p in rows or len(rows) < max_prompts:
            rows.setdefault(p, [])
            if len(rows[p]) < per_prompt:
                rows[p].append(i)
    cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.75 * len(rows)), dpi=110, squeeze=False)
    for r, (prompt, idx) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(images[idx[c]].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy())
        caption = prompt if len(prompt) <= 12 * cols else prompt[:12 * cols - 3] + "..."
        axes[r][0].set_title(caption, fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=8)
    return _save_figure(fig, path)


def save_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Plot per-epoch evaluation rows (``epoch`` plus numbers) as one panel per metric: reward, target fraction
    (when present), diversity."""
    plt = _pyplot()

    keys = [k for k in ("reward_mean", "target_fraction", "diversity") if all(k in row for row in history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), dpi=110, squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [row[key] for row in history], "o-", ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return _save_figure(fig, path)
