"""ADM UNet: guided-diffusion's ``UNetModel`` as torchcfm's ``UNetModelWrapper`` builds it, state-dict compatible.

:class:`ADMUNet` takes the constructor arguments of ``torchcfm.models.unet.UNetModelWrapper`` (torchcfm 1.0.7,
the guided-diffusion UNet of Dhariwal & Nichol, MIT licensed) and builds the same network: same module tree,
so the same ``state_dict`` keys and shapes, and the same forward pass (to float rounding). Checkpoints written by
torchcfm therefore load into it with ``load_state_dict(strict=True)``, e.g. torchcfm's released CIFAR-10 weights
``otcfm_cifar10_weights_step_400000.pt`` (a dict with ``net_model``, ``ema_model``, ``optim``, ``sched``,
``step``)::

    from orwcfm.checkpoint import load_foreign_state_dict, load_weights
    model = ADMUNet((3, 32, 32), num_channels=128, num_res_blocks=2, num_heads=4, num_head_channels=64,
                    attention_resolutions="16", dropout=0.1)
    load_weights(model, load_foreign_state_dict("otcfm_cifar10_weights_step_400000.pt"), source="torchcfm")

That configuration (the public ORW-CFM README's) has 35,746,307 parameters: channel_mult (1, 2, 2, 2), so widths
128, 256, 256, 256 on maps 32, 16, 8, 4 pixels wide, and attention (4 heads of 64 channels) at 16x16 and in the
middle block.

Layout (``C_l = int(channel_mult[l] * num_channels)``, ``L = len(channel_mult)``, time width ``4 * num_channels``):

- time: sinusoidal embedding of ``t`` *as is* (t in [0, 1] is not rescaled, unlike :func:`.base.time_embedding`),
  ``num_channels`` channels -> Linear -> SiLU -> Linear; a class-conditional model adds a label embedding;
- ``input_blocks``: a 3x3 conv stem, then per level ``num_res_blocks`` residual blocks (+ attention where the map
  is listed in ``attention_resolutions``), then a stride-2 conv (or a downsampling residual block) between levels;
- ``middle_block``: residual block, attention, residual block;
- ``output_blocks``: per level ``num_res_blocks + 1`` residual blocks, each fed one encoder output (channel
  concatenation), + attention, then nearest upsampling + 3x3 conv (or an upsampling residual block);
- ``out``: GroupNorm -> SiLU -> zero-initialised 3x3 conv, so the untrained network outputs exactly 0.

Every GroupNorm has 32 groups (computed in float32), so every width ``C_l`` must be a multiple of 32.

Where torchcfm would silently do something else, :class:`ADMUNet` refuses with a ``ValueError``: an attention
resolution that is not the width of one of the network's feature maps (torchcfm rounds ``image_size // res`` and
puts the attention elsewhere or nowhere; write the size it lands on instead), an image size not divisible by
``2 ** (L - 1)``, a head count that does not divide an attention block's channels, ``use_fp16=True`` (torchcfm casts
only the convolutions to half; use ``torch.autocast`` instead). ``use_checkpoint=True`` (gradient checkpointing)
is supported: same outputs and gradients, less memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from orwcfm.conditions import Labels
from orwcfm.models.base import broadcast_time

GROUPS = 32
MAX_PERIOD = 10_000.0
NUM_CLASSES = 1000  # torchcfm's default (ImageNet)

# torchcfm's channel_mult for channel_mult=None, by image width.
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
    28: (1, 2, 2),
}


# ---------------------------------------------------------------------------------------------------------------
# Building blocks (their attribute names are torchcfm's: they are the state-dict keys).


def adm_time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of ``t`` (B,) -> (B, dim), float32: ``[cos(f_k t), sin(f_k t)]``.

    ``f_k = MAX_PERIOD ** (-k / (dim // 2))``; ``t`` is used as given (no rescaling); an odd ``dim`` gets one zero
    channel. This is guided-diffusion's ``timestep_embedding``, which torchcfm feeds with t in [0, 1].

    >>> adm_time_embedding(torch.tensor([0.0]), 4)
    tensor([[1., 1., 0., 0.]])
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(MAX_PERIOD) * k / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 and cast back: (B, C, *) -> (B, C, *)."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def _zeroed(module: nn.Module) -> nn.Module:
    """``module`` with every parameter set to zero (output layers of residual branches and of the network)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _resample(x: Tensor, how: str | None) -> Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W) nearest for ``"up"``, (B, C, H/2, W/2) 2x2 average for ``"down"``."""
    if how == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if how == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return x


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding: ``x`` (B, channels, H, W), ``emb`` (B, emb_channels) ->
    (B, out_channels, H', W'), with ``H' = 2H`` for ``resample="up"``, ``H / 2`` for ``"down"``, else ``H``.

    ``in_layers`` (GroupNorm, SiLU, 3x3 conv), + embedding (added, or ``norm(h) * (1 + scale) + shift`` with
    ``scale_shift``), ``out_layers`` (GroupNorm, SiLU, dropout, zero-initialised 3x3 conv), + skip (identity, or a
    1x1 conv when the width changes). A resampling block resamples both branches after the first SiLU.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 scale_shift: bool = False, resample: str | None = None, use_checkpoint: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        self.resample = resample
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )  # fmt: skip
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](_resample(h, self.resample))
        x = _resample(x, self.resample)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def attend(qkv: Tensor, num_heads: int, legacy_order: bool) -> Tensor:
    """Multi-head softmax attention over the T positions: ``qkv`` (B, 3 * C, T) -> (B, C, T).

    ``legacy_order`` (guided-diffusion's default, ``use_new_attention_order=False``) reads the channels as
    (head, q|k|v, C / heads); otherwise as (q|k|v, head, C / heads).
    """
    b, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if legacy_order:
        q, k, v = qkv.reshape(b, num_heads, 3 * ch, length).split(ch, dim=2)
    else:
        q, k, v = (part.reshape(b, num_heads, ch, length) for part in qkv.chunk(3, dim=1))
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, num_heads * ch, length)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, pre-GroupNorm, residual: (B, C, H, W) -> (B, C, H, W).

    ``qkv`` and ``proj_out`` are 1x1 ``Conv1d`` (torchcfm's parameter shapes); ``proj_out`` starts at zero.
    """

    def __init__(self, channels: int, num_heads: int, legacy_order: bool = True, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        h = attend(self.qkv(self.norm(flat)), self.num_heads, self.legacy_order)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """``nn.Sequential`` whose residual blocks also receive the embedding: (x, emb) -> x."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


# ---------------------------------------------------------------------------------------------------------------
# Argument checks: one clear ValueError each.


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ADMUNet {name} must be a positive integer, got {value!r}")


def _check_dim(dim: object) -> tuple[int, int, int]:
    values = tuple(dim) if isinstance(dim, (list, tuple, torch.Size)) else ()
    if len(values) != 3 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"ADMUNet dim must be an image shape (C, H, W) of three positive integers, got {dim!r}")
    return values  # type: ignore[return-value]


def resolve_channel_mult(channel_mult: Sequence[float] | None, image_size: int) -> tuple[float, ...]:
    """``channel_mult`` as a tuple; ``None`` gives torchcfm's default for the image width (a ValueError if none).

    >>> resolve_channel_mult(None, 32)
    (1, 2, 2, 2)
    """
    if channel_mult is None:
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"ADMUNet has no default channel_mult for images {image_size} pixels wide (torchcfm's "
                             f"defaults cover {sorted(DEFAULT_CHANNEL_MULT)}); pass channel_mult, e.g. [1, 2, 2]")
        return DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str) or not isinstance(channel_mult, Sequence) or not channel_mult or any(
            isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 for m in channel_mult):
        raise ValueError(f"ADMUNet channel_mult must be a non-empty list of positive numbers, got {channel_mult!r}")
    return tuple(channel_mult)


def _check_levels(dim: tuple[int, int, int], channel_mult: tuple[float, ...], widths: list[int]) -> None:
    factor = 2 ** (len(channel_mult) - 1)
    if dim[1] % factor or dim[2] % factor:
        raise ValueError(f"ADMUNet channel_mult={list(channel_mult)} has {len(channel_mult)} levels, so the image "
                         f"height and width must be divisible by 2**{len(channel_mult) - 1} = {factor}; got "
                         f"{dim[1]}x{dim[2]}: use fewer levels")
    if any(w < 1 or w % GROUPS for w in widths):
        raise ValueError(f"ADMUNet widths int(channel_mult * num_channels) = {widths} must all be positive multiples "
                         f"of {GROUPS} (the GroupNorm groups)")


def attention_rates(attention_resolutions: str | Sequence[int], image_size: int, num_levels: int) -> set[int]:
    """Downsampling rates (1, 2, 4, ...) that get attention, from torchcfm's comma string of feature-map widths.

    ``"16,8"`` on 32-pixel images -> {2, 4}. Every width must be one of the network's feature maps
    ``image_size / 2**l`` (l < ``num_levels``); an empty string means attention only in the middle block.

    >>> sorted(attention_rates("16,8", 32, 4))
    [2, 4]
    """
    if isinstance(attention_resolutions, str):
        parts = [p for p in attention_resolutions.split(",") if p.strip()]
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"ADMUNet attention_resolutions must be comma-separated integers such as \"16\" or "
                             f"\"16,8\", got {attention_resolutions!r}") from None
    elif isinstance(attention_resolutions, int) and not isinstance(attention_resolutions, bool):
        sizes = [attention_resolutions]  # one resolution, e.g. 16 from a YAML file or --set
    elif isinstance(attention_resolutions, Sequence) and all(
            isinstance(r, int) and not isinstance(r, bool) for r in attention_resolutions):
        sizes = list(attention_resolutions)
    else:
        raise ValueError(
            f"ADMUNet attention_resolutions must be a string such as \"16,8\", an integer or a list of integers, "
            f"got {attention_resolutions!r}"
        )
    maps = [image_size >> level for level in range(num_levels)]
    for size in sizes:
        if size not in maps:
            raise ValueError(f"ADMUNet attention resolution {size} is not the width of a feature map of this network: "
                             f"its maps are {', '.join(map(str, maps))} pixels wide (image width {image_size}, "
                             f"{num_levels} levels of channel_mult)")
    return {image_size // size for size in sizes}


def _heads(channels: int, num_heads: int, num_head_channels: int, where: str) -> int:
    """Number of heads of an attention block of ``channels`` channels (``num_head_channels`` wins unless -1)."""
    if num_head_channels != -1:
        if channels % num_head_channels:
            raise ValueError(f"ADMUNet num_head_channels={num_head_channels} does not divide the {channels} channels "
                             f"of the attention {where}")
        return channels // num_head_channels
    if channels % num_heads:
        raise ValueError(f"ADMUNet num_heads={num_heads} does not divide the {channels} channels of the attention "
                         f"{where}")
    return num_heads


# ---------------------------------------------------------------------------------------------------------------
# The network.


class ADMUNet(nn.Module):
    """torchcfm's ``UNetModelWrapper``: velocity field ``v(t, x)``, ``x`` (B, C, H, W) -> (B, C, H, W) (2C channels
    with ``learn_sigma``); ``t`` (B,) or () in [0, 1].

    Args:
        dim: the image shape (C, H, W). Attention resolutions and the default ``channel_mult`` refer to W.
        num_channels: base width; level l has ``int(channel_mult[l] * num_channels)`` channels.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        channel_mult: width multipliers per level; ``None``: torchcfm's default for W (32 -> (1, 2, 2, 2)).
        learn_sigma: output 2C channels (guided-diffusion's learned variance).
        class_cond: class-conditional, ``v(t, x, y)`` with ``y`` (B,) labels in [0, ``num_classes``).
        num_classes: classes of a class-conditional model (ignored otherwise).
        use_checkpoint: gradient checkpointing of every residual and attention block.
        attention_resolutions: comma-separated feature-map widths with attention, e.g. "16" or "16,8".
        num_heads: attention heads (when ``num_head_channels`` is -1).
        num_head_channels: channels per head (-1: use ``num_heads``).
        num_heads_upsample: heads in the decoder when ``num_head_channels`` is -1 (-1: ``num_heads``).
        use_scale_shift_norm: the embedding modulates the second GroupNorm as scale and shift (FiLM).
        dropout: dropout in every residual block.
        resblock_updown: resample with residual blocks instead of (strided / upsampling) convolutions.
        use_fp16: refused (``ValueError``); use ``torch.autocast``.
        use_new_attention_order: split q, k, v before the heads (a different reading of the qkv channels).

    A class-conditional model has no null label (torchcfm's embedding has ``num_classes`` rows): it must be called
    with labels, an :class:`orwcfm.conditions.Labels` without withheld conditions or a (B,) integer tensor, so
    classifier-free guidance is not available. ``num_classes`` is ``None`` for an unconditional model.

    >>> m = ADMUNet((1, 32, 32), num_channels=32, num_res_blocks=1, channel_mult=[1, 2], attention_resolutions="16")
    >>> m(torch.rand(2), torch.randn(2, 1, 32, 32)).abs().max().item()  # zero-initialised output conv
    0.0
    """

    def __init__(
        self,
        dim: Sequence[int],
        num_channels: int,
        num_res_blocks: int,
        channel_mult: Sequence[float] | None = None,
        learn_sigma: bool = False,
        class_cond: bool = False,
        num_classes: int = NUM_CLASSES,
        use_checkpoint: bool = False,
        attention_resolutions: str = "16",
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        dropout: float = 0.0,
        resblock_updown: bool = False,
        use_fp16: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        self.dim = _check_dim(dim)
        _check_positive_int("num_channels", num_channels)
        _check_positive_int("num_res_blocks", num_res_blocks)
        _check_positive_int("num_heads", num_heads)
        for name, value in (("num_head_channels", num_head_channels), ("num_heads_upsample", num_heads_upsample)):
            if value != -1:
                _check_positive_int(f"{name} (or -1)", value)
        flags = {"learn_sigma": learn_sigma, "class_cond": class_cond, "use_checkpoint": use_checkpoint,
                 "use_scale_shift_norm": use_scale_shift_norm, "resblock_updown": resblock_updown,
                 "use_fp16": use_fp16, "use_new_attention_order": use_new_attention_order}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"ADMUNet {name} must be True or False, got {value!r}")
        if use_fp16:
            raise ValueError("ADMUNet does not support use_fp16=True (torchcfm casts only the convolutions to half); "
                             "keep float32 weights and run under torch.autocast, or call .half() on the model")
        if class_cond:
            _check_positive_int("num_classes", num_classes)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"ADMUNet dropout must be in [0, 1), got {dropout!r}")

        in_channels, image_size = self.dim[0], self.dim[2]
        mult = resolve_channel_mult(channel_mult, image_size)
        widths = [int(m * num_channels) for m in mult]
        _check_levels(self.dim, mult, widths)
        rates = attention_rates(attention_resolutions, image_size, len(mult))
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample

        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.image_size = image_size
        self.num_channels = num_channels
        self.channel_mult = mult
        self.attention_resolutions = attention_resolutions
        self.num_classes = num_classes if class_cond else None
        emb_dim = 4 * num_channels

        def res(ch: int, out: int, resample: str | None = None) -> ResBlock:
            return ResBlock(ch, emb_dim, dropout, out, use_scale_shift_norm, resample, use_checkpoint)

        def attn(ch: int, heads: int, where: str) -> AttentionBlock:
            return AttentionBlock(ch, _heads(ch, heads, num_head_channels, where), not use_new_attention_order,
                                  use_checkpoint)

        self.time_embed = nn.Sequential(nn.Linear(num_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if class_cond:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        ch = widths[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chs, rate = [ch], 1
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if rate in rates:
                    layers.append(attn(ch, num_heads, f"at {image_size // rate}x{image_size // rate}"))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chs.append(ch)
            if level < len(widths) - 1:
                self.input_blocks.append(EmbedSequential(res(ch, ch, "down") if resblock_updown else Downsample(ch)))
                skip_chs.append(ch)
                rate *= 2

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, num_heads, "of the middle block"), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), widths[level])]
                ch = widths[level]
                if rate in rates:
                    layers.append(attn(ch, heads_up, f"at {image_size // rate}x{image_size // rate} (decoder)"))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, "up") if resblock_updown else Upsample(ch))
                    rate //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zeroed(nn.Conv2d(ch, self.out_channels, 3, padding=1)))

    def _label_index(self, y: Labels | Tensor | None, batch: int) -> Tensor:
        """(B,) int64 rows of ``label_emb`` for the labels of a class-conditional model."""
        if y is None:
            raise ValueError("this ADMUNet is class-conditional (class_cond=True): call it as model(t, x, y) with "
                             "labels; its label embedding has no null row, so it has no unconditional velocity")
        if isinstance(y, Labels):
            if y.num_classes != self.num_classes:
                raise ValueError(f"ADMUNet built for {self.num_classes} classes got labels of {y.num_classes} classes")
            if y.dropped is not None and bool(y.dropped.any()):
                raise ValueError("ADMUNet (torchcfm's class-conditional UNet) has no null label: withheld conditions "
                                 "(condition dropout, classifier-free guidance) need a model trained with one")
            y = y.values
        if not isinstance(y, Tensor) or y.shape != (batch,) or y.is_floating_point() or y.dtype == torch.bool:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"ADMUNet labels must be orwcfm.conditions.Labels or an integer tensor of shape "
                             f"({batch},), got {got}")
        return y.long()

    def forward(self, t: Tensor | float, x: Tensor, y: Labels | Tensor | None = None) -> Tensor:
        """``t`` (B,) or (), ``x`` (B, C, H, W), ``y`` (B,) labels of a class-conditional model -> (B, out, H, W)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.dim:
            raise ValueError(f"ADMUNet expects x of shape (B, {', '.join(map(str, self.dim))}), got {tuple(x.shape)}")
        t = broadcast_time(t, x.shape[0]).to(x.device)
        emb = self.time_embed(adm_time_embedding(t, self.num_channels).to(self.time_embed[0].weight.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(self._label_index(y, x.shape[0]).to(x.device))
        elif y is not None:
            raise ValueError("this ADMUNet is unconditional (class_cond=False) but was called with labels")

        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
