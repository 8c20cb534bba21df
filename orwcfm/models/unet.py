"""A compact image UNet velocity field: ``x`` (B, C, H, W), ``t`` (B,) or () -> (B, out_channels, H, W).

Layout (a slimmed-down ADM / DDPM UNet, sized for small images on a CPU):

- time: sinusoidal embedding (``base_channels`` channels) -> Linear -> SiLU -> Linear (4 * base_channels);
- encoder: 3x3 conv stem, then per level ``num_res_blocks`` residual blocks (+ self-attention where the
  feature map is listed in ``attention_resolutions``), then a stride-2 3x3 conv between levels;
- bottleneck: one residual block (+ attention if its resolution is listed);
- decoder: per level ``num_res_blocks`` residual blocks, each fed the matching encoder output through a
  skip connection (channel concatenation), then nearest-neighbour upsampling + 3x3 conv between levels;
- head: GroupNorm -> SiLU -> 3x3 conv with weights and bias initialised to zero, so the untrained network
  outputs exactly 0 (the velocity field starts as "do nothing"; common practice that stabilises early
  training). Consequence: at init no gradient reaches the layers below the head; it does after one step.

Cost-driven departures from ADM: only the residual blocks' outputs are skipped (not the stem /
downsampling outputs), the decoder has ``num_res_blocks`` (not ``+ 1``) blocks per level and the
bottleneck has one residual block (not two). The highest resolution dominates the run time on a CPU.

Default size: ``UNet(1, 8)`` (base_channels=16, channel_mult=(1, 2), attention at 4x4) has ~117k
parameters and one forward+backward at batch 128 takes ~25-30 ms on 2 CPU threads (AMD EPYC, AVX-512);
base_channels=32 would take ~60-70 ms (the cost grows with base_channels**2), hence the default of 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orwcfm.conditions import Labels
from orwcfm.models.base import broadcast_time, time_embedding


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + time (scale, shift), GroupNorm -> SiLU -> dropout -> conv, + skip.

    ``x`` (B, in_ch, H, W), ``emb`` (B, time_dim) -> (B, out_ch, H, W). The time embedding modulates the
    second normalisation as ``norm(h) * (1 + scale) + shift`` (FiLM / ADM's "scale-shift norm").
    """

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, pre-GroupNorm, residual: (B, C, H, W) -> same.

    Projections are ``nn.Linear`` on (B, HW, C) tokens: on a CPU this is ~2x faster than 1x1 convolutions.
    """

    def __init__(self, channels: int, groups: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, HW, C / heads)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """Image velocity field ``v(t, x)``: ``x`` (B, in_channels, image_size, image_size) -> (B, out_channels, ..).

    ``channel_mult[i] * base_channels`` channels at level ``i``; level ``i`` works at
    ``image_size / 2**i`` pixels, so ``image_size`` must be divisible by ``2 ** (len(channel_mult) - 1)``.
    ``attention_resolutions`` lists feature-map sizes in pixels (4 = the 4x4 map) that get self-attention.
    ``out_channels`` defaults to ``in_channels``. Non-square images are not supported.

    ``num_classes`` makes it class-conditional, ``v(t, x, labels)``: a learned embedding of the label (one row per
    class plus a null row for a withheld condition, :class:`orwcfm.conditions.Labels`) is added to the time
    embedding. Called without labels (``v(t, x)``) a conditional UNet gives its unconditional velocity (the null row).

    >>> import torch
    >>> UNet(1, 8)(torch.rand(2), torch.randn(2, 1, 8, 8)).abs().max().item()  # zero-initialised head
    0.0
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        base_channels: int = 16,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (4,),
        dropout: float = 0.0,
        num_groups: int = 8,
        out_channels: int | None = None,
        num_heads: int = 1,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        attention_resolutions = tuple(attention_resolutions)
        self._validate(in_channels, image_size, base_channels, channel_mult, num_res_blocks, dropout, num_groups)
        sizes = [image_size >> level for level in range(len(channel_mult))]
        if not set(attention_resolutions) <= set(sizes):
            raise ValueError(
                f"UNet attention_resolutions={list(attention_resolutions)} must be feature-map sizes of this "
                f"network, i.e. among {sizes} (image_size={image_size}, channel_mult={list(channel_mult)})"
            )
        self.in_channels = in_channels
        self.image_size = image_size
        self.out_channels = in_channels if out_channels is None else out_channels
        self.base_channels = base_channels
        time_dim = 4 * base_channels
        g = num_groups

        def attn(ch: int, res: int) -> nn.Module:
            return SelfAttention(ch, g, num_heads) if res in attention_resolutions else nn.Identity()

        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Encoder: remember the channel count of every skipped activation.
        self.down_blocks, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        ch, res, skip_chs = base_channels, image_size, []
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down_blocks.append(ResBlock(ch, base_channels * mult, time_dim, dropout, g))
                ch = base_channels * mult
                self.down_attn.append(attn(ch, res))
                skip_chs.append(ch)
            if level < len(channel_mult) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                res //= 2

        self.mid1 = ResBlock(ch, ch, time_dim, dropout, g)
        self.mid_attn = attn(ch, res)

        # Decoder mirrors the encoder; the upsampling conv already maps to the next level's width.
        self.up_blocks, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            out_ch = base_channels * channel_mult[level]
            for _ in range(num_res_blocks):
                self.up_blocks.append(ResBlock(ch + skip_chs.pop(), out_ch, time_dim, dropout, g))
                ch = out_ch
                self.up_attn.append(attn(ch, res))
            if level > 0:
                next_ch = base_channels * channel_mult[level - 1]
                self.upsample.append(nn.Conv2d(ch, next_ch, 3, padding=1))
                ch, res = next_ch, res * 2

        self.head_norm = nn.GroupNorm(g, ch)
        self.head = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.channel_mult = channel_mult
        self.num_res_blocks = num_res_blocks
        # Created last, and only for a conditional UNet, so that an unconditional one draws exactly the same
        # initial weights (and has exactly the same state dict) as before conditions existed.
        self.num_classes = num_classes
        if num_classes is not None:
            if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
                raise ValueError(f"UNet num_classes must be a positive integer or None, got {num_classes!r}")
            self.label_emb = nn.Embedding(num_classes + 1, time_dim)

    def _label_rows(self, cond: Labels | None, batch: int) -> Tensor:
        """(B,) rows of the label embedding: the null row for every sample when there are no labels."""
        if cond is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long)
        if not isinstance(cond, Labels):
            raise ValueError(f"a class-conditional UNet takes orwcfm.conditions.Labels, got {type(cond).__name__}")
        if len(cond) != batch or cond.num_classes != self.num_classes:
            raise ValueError(f"UNet built for {self.num_classes} classes and a batch of {batch} got {len(cond)} "
                             f"labels of {cond.num_classes} classes")
        return cond.embedding_index()

    @staticmethod
    def _validate(in_channels, image_size, base_channels, channel_mult, num_res_blocks, dropout, num_groups):
        for name, value in (
            ("in_channels", in_channels), ("image_size", image_size), ("base_channels", base_channels),
            ("num_res_blocks", num_res_blocks), ("num_groups", num_groups),
        ):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet {name} must be a positive integer, got {value!r}")
        if not channel_mult or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"UNet channel_mult must be a non-empty list of positive integers, got {channel_mult}")
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(
                f"UNet image_size={image_size} is not divisible by 2**(len(channel_mult) - 1) = {factor} "
                f"needed by channel_mult={list(channel_mult)}; use fewer levels or another image size"
            )
        widths = [base_channels * m for m in channel_mult]
        if any(c % num_groups for c in widths):
            raise ValueError(
                f"UNet num_groups={num_groups} must divide every channel count "
                f"(base_channels * channel_mult = {widths})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet dropout must be in [0, 1), got {dropout!r}")

    def forward(self, t: Tensor, x: Tensor, cond: Labels | None = None) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"UNet expects x of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        t = broadcast_time(t, x.shape[0]).to(x.device)
        emb = self.time_mlp(time_embedding(t, self.base_channels).to(x.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(self._label_rows(cond, x.shape[0]).to(x.device)).to(emb.dtype)
        elif cond is not None:
            raise ValueError("this UNet is unconditional (num_classes=None) but was called with conditions")

        h = self.stem(x)
        skips = []
        blocks = iter(zip(self.down_blocks, self.down_attn))
        for level in range(len(self.channel_mult)):
            for _ in range(self.num_res_blocks):
                block, attn = next(blocks)
                h = attn(block(h, emb))
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)

        h = self.mid_attn(self.mid1(h, emb))

        blocks = iter(zip(self.up_blocks, self.up_attn))
        for i in range(len(self.channel_mult)):
            for _ in range(self.num_res_blocks):
                block, attn = next(blocks)
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(F.silu(self.head_norm(h)))
