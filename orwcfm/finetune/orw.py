"""The ORW-CFM-W2 objective (Fan et al., ICLR 2025), as one small function.

Given policy samples ``x1`` and their loss coefficients (``weights.py``: the paper's ``w_i = exp(tau r_i)`` by
default, and the W2 coefficient alpha)::

    x0 ~ N(0, I),  t ~ p(t)
    fm  = mean_i  w_i ||v_theta(t, x_t) - u_t||^2          x_t, u_t on the pairing coupling(x0, x1)
    w2  = mean_i      ||v_theta(t, x_t) - v_ref(t, x_t)||^2  x_t on independent pairs of the policy's samples
    loss = fm + alpha * w2

The second term is the tractable bound on W2^2(p_theta, p_ref) (up to e^{2L}); alpha = 0 is plain ORW-CFM. Its
expectation is over the *policy's* samples, unweighted.

Weights and couplings that look at x1 (minibatch OT) do not mix: a weight on the pair (x0_i, x1_sigma(i)) tilts
the *noise* x0_i as much as the sample, so the learned flow maps a tilted noise distribution to the tilted data,
while sampling starts from plain N(0, I). In 1-D (OT = the monotone map) the two tilts cancel exactly and the
model does not move at all. The cure is to apply the weights *before* pairing: resample the minibatch with
probabilities w_i / sum(w) (systematic resampling: each sample is drawn floor or ceil of B w_i / sum(w) times),
use unit weights and multiply the term by mean(w), so that its expectation is the weighted term's. Only then is
x1 OT-paired. ``resample=None`` (the default) does this exactly when the coupling is not the independent one.

Resampling tilts whatever is computed on the resampled batch, so the W2 term is *not* evaluated there (that made
it ``mean_i w_i w2_i``: a regulariser that vanishes where the weights are small). With a coupling other than the
independent one, it is evaluated on a second set of interpolants, the un-resampled batch paired independently with
the same noise and times: one more forward pass of the model (batched with the first) and of the reference.

Squared norms are averaged over the event dimensions (as in the pretraining loss): this rescales both terms by
the same 1/D, so alpha means the same thing, and learning rates carry over between image sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..conditions import Cond, check_cond, index_cond
from ..couplings import Pairing, independent_coupling
from ..models.base import call_field
from ..paths import StraightPath


@dataclass(frozen=True)
class ORWLoss:
    """The loss and its parts.

    Attributes:
        loss: scalar to minimise (carries the graph to the model's parameters): ``fm + alpha * w2``.
        fm: detached scalar, mean_i w_i ||v - u||^2 (the reward-weighted flow-matching term, in the loss's units).
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
    drawn on the CPU from ``generator`` so that the device never has to synchronise. ``weights``: (B,) >= 0; when
    they are all 0 (every weight underflowed) the draw is uniform, and the caller's factor mean(w) = 0 removes the term.

    >>> systematic_resample(torch.tensor([0.0, 3.0, 1.0, 0.0]), torch.Generator().manual_seed(0)).tolist()
    [1, 1, 1, 2]
    """
    b = weights.shape[0]
    u = torch.rand((), generator=generator).to(weights.device)
    positions = (torch.arange(b, device=weights.device, dtype=torch.float64) + u) / b
    cdf = torch.cumsum(weights.double(), 0)
    uniform = torch.arange(1, b + 1, device=weights.device, dtype=torch.float64) / b
    cdf = torch.where(cdf[-1] > 0, cdf / cdf[-1].clamp_min(torch.finfo(torch.float64).tiny), uniform)
    return torch.searchsorted(cdf, positions, right=True).clamp_max(b - 1)


def resamples(coupling: Callable[..., Pairing], resample: bool | None = None) -> bool:
    """Whether the loss applies the weights by resampling: as asked, else exactly when ``coupling`` looks at x1."""
    return resample if resample is not None else coupling is not independent_coupling


def separate_w2_pass(has_reference: bool, coupling: Callable[..., Pairing], resample: bool | None = None) -> bool:
    """Whether the W2 term needs interpolants of its own, so that the trained model sees 2B rows per step, not B
    (module docstring): when there is a reference and the flow-matching term's batch is resampled or re-paired."""
    return has_reference and (resamples(coupling, resample) or coupling is not independent_coupling)


def orw_cfm_w2_loss(
    model: nn.Module,
    reference: nn.Module | None,
    x1: torch.Tensor,
    weights: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    alpha: float | torch.Tensor,
    path: StraightPath = StraightPath(),
    coupling: Callable[[torch.Tensor, torch.Tensor], Pairing] = independent_coupling,
    resample: bool | None = None,
    generator: torch.Generator | None = None,
    cond: Cond | None = None,
) -> ORWLoss:
    """The ORW-CFM-W2 loss of one batch: ``mean_i [w_i ||v - u||^2 + alpha ||v - v_ref||^2]``.

    Args:
        model: the velocity field being trained, ``model(t, x)``.
        reference: the frozen pretrained velocity field; ``None`` leaves the W2 term out (then ``alpha`` must be 0).
        x1: (B, *shape) samples of the sampling policy.
        weights: (B,) the coefficients of the flow-matching terms, in the order of ``x1`` (``weights.py``).
        x0: (B, *shape) fresh noise.
        t: (B,) times.
        alpha: the coefficient of the W2 term, >= 0 (a float, or a 0-dim tensor such as
            ``LossWeights.w2_coefficient``, which then stays on the device).
        path: the probability path.
        coupling: how ``x0`` and ``x1`` are paired for the flow-matching term; its permutation is applied to
            ``weights`` too. The W2 term always uses independent pairs of the un-resampled batch.
        resample: apply the weights by resampling ``x1`` before pairing (unit weights, times mean(w), after);
            default: when ``coupling`` is not the independent one (see the module docstring for why).
        generator: the random source of the resampling.
        cond: the conditions of ``x1`` (one per sample) for a conditional field, or None. They follow every
            reordering (resampling, pairing; OT pairs only within a condition), and the reference sees them too.
    """
    if weights.shape != (x1.shape[0],):
        raise ValueError(f"weights must have shape ({x1.shape[0]},) to match x1 {tuple(x1.shape)}, got {tuple(weights.shape)}")
    if reference is None and isinstance(alpha, (int, float)) and alpha > 0:
        raise ValueError("alpha > 0 needs a reference model")
    check_cond(cond, x1.shape[0], "policy samples")
    fm_x1, mass, drawn = x1, None, None  # mass: set when the weights were applied by resampling (unit weights after)
    if resamples(coupling, resample):
        mass = weights.mean()  # E[mass * mean_j fm(resampled_j)] = mean_i w_i fm_i
        drawn = systematic_resample(weights, generator)
        fm_x1 = x1[drawn]
    fm_cond = index_cond(cond, drawn) if drawn is not None else cond
    pair = coupling(x0, fm_x1) if cond is None else coupling(x0, fm_x1, groups=fm_cond.group_ids())
    # the condition of row i is that of the sample it now holds: indices into the original batch
    fm_rows = pair.index if drawn is None else drawn[pair.index]
    target = path.sample(pair.x0, pair.x1, t)
    # The W2 term's interpolants: the policy's samples as drawn, independently paired. They are the FM term's own
    # interpolants exactly when that term uses independent pairs of the un-resampled batch.
    separate = separate_w2_pass(reference is not None, coupling, resample)
    if separate:
        x_w2 = path.sample(x0, x1, t).x_t
        both = index_cond(cond, torch.cat([fm_rows, torch.arange(len(t), device=fm_rows.device)]))
        v_both = _at_least_fp32(call_field(model, torch.cat([t, t]), torch.cat([target.x_t, x_w2]), both))
        v, v_w2 = v_both[: len(t)], v_both[len(t):]
        w2_cond = cond
    else:
        w2_cond = index_cond(cond, fm_rows)
        v = _at_least_fp32(call_field(model, t, target.x_t, w2_cond))
        v_w2, x_w2 = v, target.x_t
    fm = _per_sample_sq(v - target.u_t)
    fm = fm * weights[pair.index] if mass is None else fm  # the weight travels with its sample (the published code forgot this)
    fm_mean = fm.mean() if mass is None else mass * fm.mean()
    if reference is not None:
        # The reference is frozen: no graph, no saved activations. Its output is a constant target for v.
        with torch.inference_mode():
            v_ref = call_field(reference, t, x_w2, w2_cond)
        w2 = _per_sample_sq(v_w2 - _at_least_fp32(v_ref.clone())).mean()
        loss = fm_mean + alpha * w2
    else:
        w2 = torch.zeros((), dtype=fm.dtype, device=fm.device)
        loss = fm_mean
    return ORWLoss(loss=loss, fm=fm_mean.detach(), w2=w2.detach())
