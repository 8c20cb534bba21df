"""The velocity-field convention, time handling shared by every model, and an argument-order adapter.

Convention (torchcfm's, so its ``UNetModelWrapper`` works unchanged): a velocity field is any
``nn.Module`` called as ``model(t, x)`` with

- ``t``: float tensor of shape ``(B,)`` with values in ``[0, 1]`` (our models also accept a 0-dim ``t``,
  broadcast to every sample);
- ``x``: tensor of shape ``(B, *event_shape)``;

returning the velocity ``v(t, x)``, a tensor shaped like ``x``. A *conditional* field is also called with the
conditions of the batch, ``model(t, x, cond)`` (``cond`` an :mod:`orwcfm.conditions` type of length B; ``None`` or
``cond.null()`` asks for the unconditional velocity). Callers go through :func:`call_field`, which calls an
unconditional model exactly as before, so a torchcfm UNet needs nothing new.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

# t in [0, 1] is multiplied by this before the sinusoids: it puts t on the familiar diffusion scale
# [0, 1000], so the highest frequency (1 rad per unit) turns ~160 times over [0, 1] and the lowest still
# moves by 0.1 rad. Without it (scale 1) nearly every channel would be ~constant for t in [0, 1].
TIME_SCALE = 1000.0
MAX_PERIOD = 10_000.0


@runtime_checkable
class VelocityField(Protocol):
    """Anything called as ``model(t, x) -> v``: ``t`` (B,) in [0, 1], ``x`` and ``v`` (B, *event_shape)."""

    def __call__(self, t: Tensor, x: Tensor) -> Tensor: ...


def call_field(model, t: Tensor, x: Tensor, cond=None) -> Tensor:
    """``model(t, x)`` without conditions, ``model(t, x, cond)`` with them: the one place that decides."""
    return model(t, x) if cond is None else model(t, x, cond)


def broadcast_time(t: Tensor | float, batch_size: int) -> Tensor:
    """Return ``t`` as a floating tensor of shape ``(batch_size,)``.

    A 0-dim ``t`` (or a Python number) is repeated for every sample; a ``(batch_size,)`` tensor is returned
    as is. Any other shape is an error rather than a silent broadcast: a ``(B, 1)`` time would otherwise
    broadcast against ``(B, dim)`` features into something wrong but plausible-looking.

    >>> broadcast_time(torch.tensor(0.5), 3)
    tensor([0.5000, 0.5000, 0.5000])
    >>> broadcast_time(torch.zeros(3, 1), 3)
    Traceback (most recent call last):
    ...
    ValueError: t must have shape () or (3,) for a batch of 3 samples, got shape (3, 1)
    """
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.float()
    if t.dim() == 0:
        return t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(
            f"t must have shape () or ({batch_size},) for a batch of {batch_size} samples, "
            f"got shape {tuple(t.shape)}"
        )
    return t


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of times ``t`` (B,) in [0, 1] -> ``(B, dim)``.

    Channels are ``[cos(f_k * s * t), sin(f_k * s * t)]`` with ``s = TIME_SCALE = 1000`` and frequencies
    ``f_k = MAX_PERIOD ** (-k / (dim // 2))`` (the transformer / DDPM recipe); an odd ``dim`` gets one
    zero channel. Computed in at least float32 so that half-precision inputs keep distinct times apart.

    >>> e = time_embedding(torch.tensor([0.1, 0.2]), 8)
    >>> e.shape, bool((e[0] - e[1]).abs().max() > 0.1)
    (torch.Size([2, 8]), True)
    """
    if t.dim() != 1:
        raise ValueError(f"time_embedding expects t of shape (B,), got shape {tuple(t.shape)}")
    if dim < 1:
        raise ValueError(f"time embedding dim must be >= 1, got {dim}")
    dtype = torch.promote_types(t.dtype, torch.float32)
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=dtype)
    freqs = torch.exp(-math.log(MAX_PERIOD) * k / max(half, 1))
    args = TIME_SCALE * t.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(t.shape[0], 1)], dim=-1)
    return emb


class XTAdapter(nn.Module):
    """Make a module called as ``module(x, t)`` usable as a velocity field ``adapter(t, x)``.

    The wrapped module is stored as ``self.module``, so the adapter's ``state_dict`` keys are the wrapped
    module's keys prefixed with ``"module."`` (load a bare checkpoint with ``adapter.module.load_state_dict``).

    >>> class XT(nn.Module):
    ...     def forward(self, x, t):
    ...         return x * t[:, None]
    >>> XTAdapter(XT())(torch.tensor([2.0]), torch.ones(1, 3))
    tensor([[2., 2., 2.]])
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.module(x, t)


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``).

    >>> num_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
