"""The ORW-CFM-W2 objective (Fan et al., ICLR 2025), as one small function.

Given policy samples ``x1`` with rewards ``r``::

    w_i  = B * softmax(tau * r)_i                           weights averaging 1 over the (global) batch
    x0 ~ N(0, I),  t ~ p(t),  pairing = coupling(x0, x1)    weights follow their samples through the pairing
    x_t, u_t = path(x0, x1[perm], t)
    loss = mean_i [ w_i ||v_theta(t, x_t) - u_t||^2  +  alpha ||v_theta(t, x_t) - v_ref(t, x_t)||^2 ]

The second term is the tractable bound on W2^2(p_theta, p_ref) (up to e^{2L}); alpha = 0 is plain ORW-CFM.

Weights and couplings that look at x1 (minibatch OT) do not mix: a weight on the pair (x0_i, x1_sigma(i)) tilts
the *noise* x0_i as much as the sample, so the learned flow maps a tilted noise distribution to the tilted data,
while sampling starts from plain N(0, I). In 1-D (OT = the monotone map) the two tilts cancel exactly and the
model does not move at all. The cure is to apply the weights *before* pairing: resample the minibatch with
probabilities w_i / B (systematic resampling: each sample is drawn floor or ceil of w_i times) and use unit
weights. The expected loss is the same as with weights under independent pairing; only then is x1 OT-paired.
``resample=None`` (the default) does this exactly when the coupling is not the independent one.

Squared norms are averaged over the event dimensions (as in the pretraining loss): this rescales both terms by
the same 1/D, so alpha means the same thing, and learning rates carry over between image sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..couplings import Pairing, independent_coupling
from ..paths import StraightPath


def reward_weights(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """``B * softmax(temperature * rewards)``: exp(tau r) normalised to average 1 over the batch.

    Stable for any tau * r (softmax subtracts the maximum), unchanged by adding a constant to every reward,
    and all ones for a constant reward (or tau = 0). ``rewards``: (B,) -> (B,).

    >>> reward_weights(torch.tensor([1.0, 1.0, 1.0]), 5.0).tolist()
    [1.0, 1.0, 1.0]
    >>> reward_weights(torch.tensor([0.0, 1e4]), 1.0).tolist()
    [0.0, 2.0]
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    # at least float32: half-precision softmax would quantise the weights of a large batch
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    return rewards.shape[0] * torch.softmax(temperature * r, dim=0)


@dataclass(frozen=True)
class ORWLoss:
    """The loss and its parts.

    Attributes:
        loss: scalar to minimise (carries the graph to the model's parameters).
        fm: detached scalar, mean_i w_i ||v - u||^2 (the reward-weighted flow-matching term).
        w2: detached scalar, mean_i ||v - v_ref||^2 (the W2 bound term, before multiplying by alpha);
            exactly 0 when the model equals the reference.
    """

    loss: torch.Tensor
    fm: torch.Tensor
    w2: torch.Tensor


def _per_sample_sq(diff: torch.Tensor) -> torch.Tensor:
    """(B, *shape) -> (B,) squared norm averaged over the event dimensions."""
    return diff.pow(2).flatten(1).mean(1)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Network outputs under bf16 autocast come back in bfloat16: the loss is formed in float32 (no copy in fp32)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def systematic_resample(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (B,) drawing each of B samples floor or ceil of ``B * w_i / sum(w)`` times (systematic resampling).

    Unbiased (E[count_i] = B w_i / sum w) with the least spread of any resampling scheme; one uniform number,
    drawn on the CPU from ``generator`` so that the device never has to synchronise. ``weights``: (B,) >= 0.

    >>> systematic_resample(torch.tensor([0.0, 3.0, 1.0, 0.0]), torch.Generator().manual_seed(0)).tolist()
    [1, 1, 1, 2]
    """
    b = weights.shape[0]
    u = torch.rand((), generator=generator).to(weights.device)
    positions = (torch.arange(b, device=weights.device, dtype=torch.float64) + u) / b
    cdf = torch.cumsum(weights.double(), 0)
    cdf = cdf / cdf[-1]
    return torch.searchsorted(cdf, positions, right=True).clamp_max(b - 1)


def orw_cfm_w2_loss(
    model: nn.Module,
    reference: nn.Module | None,
    x1: torch.Tensor,
    weights: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    alpha: float,
    path: StraightPath = StraightPath(),
    coupling: Callable[[torch.Tensor, torch.Tensor], Pairing] = independent_coupling,
    resample: bool | None = None,
    generator: torch.Generator | None = None,
    keep_weight_mass: bool = False,
) -> ORWLoss:
    """The ORW-CFM-W2 loss of one batch.

    Args:
        model: the velocity field being trained, ``model(t, x)``.
        reference: the frozen pretrained velocity field (may be ``None`` when ``alpha == 0``).
        x1: (B, *shape) samples of the sampling policy.
        weights: (B,) reward weights of ``x1`` (see :func:`reward_weights`), in the order of ``x1``.
        x0: (B, *shape) fresh noise.
        t: (B,) times.
        alpha: the W2 coefficient (``w2_coefficient``), >= 0.
        path: the probability path.
        coupling: how ``x0`` and ``x1`` are paired; its permutation is applied to ``weights`` too.
        resample: apply the weights by resampling ``x1`` before pairing (unit weights after); default: when
            ``coupling`` is not the independent one (see the module docstring for why).
        generator: the random source of the resampling.
        keep_weight_mass: when resampling, multiply the loss by ``mean(weights)``. One rank of several holds a
            slice of the global weights, whose mean is not 1; resampling alone would give every rank the same
            total weight. With the factor, E[loss] is the weighted loss of the slice, and the average over ranks
            is the one-process loss. (One process: the mean is 1 up to rounding, and the factor is left out.)
    """
    if weights.shape != (x1.shape[0],):
        raise ValueError(f"weights must have shape ({x1.shape[0]},) to match x1 {tuple(x1.shape)}, got {tuple(weights.shape)}")
    mass = None
    if resample if resample is not None else coupling is not independent_coupling:
        mass = weights.mean() if keep_weight_mass else None
        x1 = x1[systematic_resample(weights, generator)]
        weights = torch.ones_like(weights)
    pair = coupling(x0, x1)
    w = weights[pair.index]  # the weight travels with its sample (the published code forgot this)
    target = path.sample(pair.x0, pair.x1, t)
    v = _at_least_fp32(model(t, target.x_t))
    fm = w * _per_sample_sq(v - target.u_t)
    if alpha > 0:
        if reference is None:
            raise ValueError("alpha > 0 needs a reference model")
        # The reference is frozen: no graph, no saved activations. Its output is a constant target for v.
        with torch.inference_mode():
            v_ref = reference(t, target.x_t)
        w2 = _per_sample_sq(v - _at_least_fp32(v_ref.clone()))
        loss = (fm + alpha * w2).mean()
    else:
        w2 = torch.zeros_like(fm)
        loss = fm.mean()
    if mass is not None:
        loss, fm = mass * loss, mass * fm
    return ORWLoss(loss=loss, fm=fm.detach().mean(), w2=w2.detach().mean())
