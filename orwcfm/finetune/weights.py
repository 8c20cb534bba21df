"""Reward weights of ORW-CFM-W2 and what ``alpha`` is measured against.

The paper's loss (Fan et al., ICLR 2025) weights each policy sample by ``exp(tau * r)``, *unnormalised*::

    loss = mean_i [ exp(tau r_i) ||v - u||^2  +  alpha ||v - v_ref||^2 ]

so the regulariser's strength relative to the reward term is ``alpha / Z`` with ``Z = mean(exp(tau r))``: with
the public README's ``temperature: 0.5`` on a CLIP margin in [-1, 1], Z is near 1 and alpha means itself; with
tau = 5 on a probability, Z is near 100 and alpha = 1 is a weak regulariser. Three weightings (``weighting``):

    paper              w_i = exp(tau r_i), alpha as written (the default; the paper's method)
    buffer-normalized  w_i = exp(tau r_i) / Z_buffer, Z over every sample the policy produced at its last refresh:
                       weights average 1 over the refresh, so alpha is the regulariser's strength relative to
                       the reward term whatever tau and the reward's units are. Another method: here alpha means
                       what alpha / Z means in the paper's.
    batch-normalized   w_i = B * softmax(tau r)_i over each minibatch (the global one with several processes):
                       average 1 per minibatch; Z differs from minibatch to minibatch, so the objective is not one
                       fixed reweighting of the buffer (kept for comparison with earlier releases of orwcfm).

**Groups.** With conditions (k samples per prompt, as group-relative methods draw them) the normalised weightings
can normalise within each condition instead of over everything (``weight_groups: condition``): Z is then the
mean of exp(tau r) over the samples of the same condition, so every prompt gets the same total weight however
hard its reward is. The paper's weights are unnormalised: grouping does not apply to them.

**Floating-point range.** ``exp(tau r)`` overflows float32 for tau r > 88, and Adam's squared gradients leave it
long before. The paper's formula is used exactly (value and gradient) whenever the largest coefficient of the loss,
``c = max(max_i tau r_i, log alpha)`` over the refresh's samples, lies within ``[-LOG_RANGE, LOG_RANGE]``; otherwise
the whole loss is divided by ``exp(c)`` (every coefficient then <= 1). Dividing a loss by a positive constant keeps
its minimiser, and the constant is fixed for the refresh (it is computed from the whole buffer), so the objective
of every refresh keeps its minimiser. The trainer says so once in the log, and logs ``loss_log_scale = -c``.

Everything here is tensor maths on the device: no value is read back to the host (the hot loop never waits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math

import torch

from .. import distributed as dist_util

Weighting = Literal["paper", "buffer-normalized", "batch-normalized"]
WEIGHTINGS: tuple[str, ...] = ("paper", "buffer-normalized", "batch-normalized")

# exp(+-30) ~ 1e+-13: within float32 with room for sums over a batch, for squared gradients in Adam (<= 1e26), and
# for the product with squared errors. Outside, the loss is rescaled (module docstring).
LOG_RANGE = 30.0


def paper_weights(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """The paper's weights ``exp(tau * r)`` (B,) -> (B,), in at least float32 (no rescaling: may overflow).

    >>> paper_weights(torch.tensor([0.0, 1.0]), 2.0).tolist() == [1.0, math.exp(2.0)]
    True
    """
    _check_rewards(rewards)
    return torch.exp(temperature * _at_least_fp32(rewards))


def normalized_weights(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """``B * softmax(tau * r)``: exp(tau r) normalised to average 1 over the batch (B,) -> (B,).

    Stable for any tau * r (softmax subtracts the maximum), unchanged by adding a constant to every reward,
    and all ones for a constant reward (or tau = 0).

    >>> normalized_weights(torch.tensor([1.0, 1.0, 1.0]), 5.0).tolist()
    [1.0, 1.0, 1.0]
    >>> normalized_weights(torch.tensor([0.0, 1e4]), 1.0).tolist()
    [0.0, 2.0]
    """
    _check_rewards(rewards)
    return rewards.shape[0] * torch.softmax(temperature * _at_least_fp32(rewards), dim=0)


def logmeanexp(s: torch.Tensor) -> torch.Tensor:
    """``log(mean(exp(s)))`` of a (N,) tensor, stable for any values; a 0-dim tensor.

    >>> round(logmeanexp(torch.tensor([1000.0, 1000.0])).item(), 3)
    1000.0
    """
    return torch.logsumexp(s, dim=0) - math.log(s.shape[0])


def group_logmeanexp(s: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``log mean exp(s)`` over each sample's group, for every sample: (N,), (N,) int64 -> (N,).

    >>> group_logmeanexp(torch.tensor([0.0, 2.0, 5.0]), torch.tensor([1, 7, 1])).tolist() == [
    ...     math.log((1 + math.exp(5)) / 2), 2.0, math.log((1 + math.exp(5)) / 2)]
    True
    """
    if groups.shape != s.shape:
        raise ValueError(f"group ids must have shape {tuple(s.shape)} like the rewards, got {tuple(groups.shape)}")
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    inverse = inverse.to(s.device)
    peak = torch.full((len(counts),), -math.inf, dtype=s.dtype, device=s.device).scatter_reduce(0, inverse, s, "amax")
    sums = torch.zeros(len(counts), dtype=s.dtype, device=s.device).scatter_add(0, inverse, torch.exp(s - peak[inverse]))
    return (peak + torch.log(sums) - torch.log(counts.to(s.device, s.dtype)))[inverse]


def grouped_log_z(rewards: torch.Tensor, groups: torch.Tensor, temperature: float,
                  ctx: dist_util.DistContext = dist_util.DistContext()) -> torch.Tensor:
    """Each sample's ``log Z`` of its condition group over every rank's buffer: (N,) rewards and group ids (this
    rank's share) -> (N,), the normaliser of ``buffer-normalized`` weights under ``weight_groups: condition``."""
    _check_rewards(rewards)
    everyone, sizes = dist_util.gather_with_sizes(temperature * _at_least_fp32(rewards), ctx)
    all_groups, _ = dist_util.gather_with_sizes(groups.to(rewards.device), ctx)
    start = sum(sizes[: ctx.rank])
    return group_logmeanexp(everyone, all_groups)[start : start + rewards.shape[0]]


@dataclass(frozen=True)
class RefreshScale:
    """Constants of one policy refresh, from every sample it produced (all ranks); 0-dim tensors.

    Attributes:
        log_z: ``log mean exp(tau r)`` over the buffer (the normaliser of ``buffer-normalized``).
        shift: ``c``: the paper's loss is divided by ``exp(c)`` to stay within float range; 0 when it is exact.
    """

    log_z: torch.Tensor
    shift: torch.Tensor


def refresh_scale(rewards: torch.Tensor, temperature: float, alpha: float,
                  ctx: dist_util.DistContext = dist_util.DistContext()) -> RefreshScale:
    """The :class:`RefreshScale` of a buffer's rewards (N,) (this rank's share; gathered over ranks)."""
    _check_rewards(rewards)
    s = temperature * _at_least_fp32(dist_util.gather_cat(rewards, ctx))
    largest = s.max()
    if alpha > 0:
        largest = torch.maximum(largest, torch.tensor(math.log(alpha), dtype=s.dtype, device=s.device))
    shift = torch.where(largest.abs() <= LOG_RANGE, torch.zeros_like(largest), largest)
    return RefreshScale(log_z=logmeanexp(s), shift=shift)


@dataclass(frozen=True)
class LossWeights:
    """The coefficients of one minibatch's loss ``mean_i [weights_i fm_i + w2_coefficient w2_i]``.

    Attributes:
        weights: (B,) each sample's coefficient of its flow-matching term.
        w2_coefficient: 0-dim, the coefficient of the W2 term (alpha, divided by exp(shift) under ``paper``).
        log_z: 0-dim, ``log mean exp(tau r)`` over this minibatch (this rank's share): the scale of the paper's
            weights, logged so that a user sees how strong alpha is against them.
        shift: 0-dim, the loss was divided by ``exp(shift)`` (0: the exact formula).
    """

    weights: torch.Tensor
    w2_coefficient: torch.Tensor
    log_z: torch.Tensor
    shift: torch.Tensor

    @property
    def alpha_relative(self) -> torch.Tensor:
        """The W2 coefficient over the mean reward weight: alpha / Z under ``paper``, alpha under the normalised
        weightings (0-dim). This is what sets the balance of the two terms."""
        return self.w2_coefficient / self.weights.mean()


def loss_weights(rewards: torch.Tensor, temperature: float, alpha: float, weighting: Weighting,
                 scale: RefreshScale, ctx: dist_util.DistContext = dist_util.DistContext(), *,
                 groups: torch.Tensor | None = None, sample_log_z: torch.Tensor | None = None) -> LossWeights:
    """The loss coefficients of a minibatch with rewards (B,) (this rank's slice), under ``weighting``.

    ``scale`` is the :class:`RefreshScale` of the buffer the minibatch came from. Under ``batch-normalized`` the
    softmax runs over the global minibatch (one all_gather of B floats), so the mean of the per-rank losses (what
    DDP's gradient averaging takes) is the one-process loss; the other weightings are per sample.

    Grouped normalisation (module docstring): ``groups`` (B,) int64 normalises ``batch-normalized`` weights within
    each group of the minibatch; ``sample_log_z`` (B,) (from :func:`grouped_log_z` over the buffer) normalises
    ``buffer-normalized`` weights by each sample's own group.
    """
    _check_rewards(rewards)
    if weighting == "paper" and (groups is not None or sample_log_z is not None):
        raise ValueError("the paper's weights exp(tau r) are unnormalised: grouped normalisation needs "
                         "weighting buffer-normalized or batch-normalized")
    s = temperature * _at_least_fp32(rewards)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    alpha_t = torch.full((), float(alpha), dtype=s.dtype, device=s.device)
    if weighting == "paper":
        # alpha * exp(-shift) as one exponential: 0 * exp(200) would be nan
        coef = torch.exp(math.log(alpha) - scale.shift) if alpha > 0 else zero
        w, shift = torch.exp(s - scale.shift), scale.shift
    elif weighting == "buffer-normalized":
        w = torch.exp(s - (scale.log_z if sample_log_z is None else sample_log_z.to(s.dtype)))
        coef, shift = alpha_t, zero
    elif weighting == "batch-normalized":
        everyone, sizes = dist_util.gather_with_sizes(rewards, ctx)
        start = sum(sizes[: ctx.rank])
        if groups is None:
            w = normalized_weights(everyone, temperature)[start : start + rewards.shape[0]]
        else:
            s_all = temperature * _at_least_fp32(everyone)
            g_all, _ = dist_util.gather_with_sizes(groups.to(rewards.device), ctx)
            w = torch.exp(s_all - group_logmeanexp(s_all, g_all))[start : start + rewards.shape[0]]
        coef, shift = alpha_t, zero
    else:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    return LossWeights(weights=w, w2_coefficient=coef, log_z=logmeanexp(s), shift=shift)


def _check_rewards(rewards: torch.Tensor) -> None:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # half-precision exponentials would quantise the weights of a large batch
    return x.to(torch.promote_types(x.dtype, torch.float32))
