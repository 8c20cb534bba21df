"""ADRPO (Fan et al., NeurIPS 2025, "Adaptive Divergence Regularized Policy Optimization") for flow matching.

The advantage of a policy sample sets both terms of its loss: high-advantage samples are fitted and left free to
move away from the reference, low-advantage ones are pushed away from their own path and held to the reference::

    A_i  = r_i - mean of r over the sample's group             (optionally divided by a standard deviation)
    loss = mean_i [ A_i ||v(t, x_t) - u||^2 + (beta0 - A_i) ||v(t, x_t) - v_ref(t, x_t)||^2 ]

with x_t = (1 - t) x0 + t x1 on the straight path (fresh noise x0 and times t from the loop), u = x1 - x0, v the
trained model and v_ref the frozen reference at the same x_t. The two coefficients of a sample add up to beta0, so
its loss is a quadratic in v of curvature beta0 > 0 whatever the sign of A_i or of beta0 - A_i: its minimiser is
``v* = [A u + (beta0 - A) v_ref] / beta0 = v_ref + (A / beta0) (u - v_ref)``, a step of size A / beta0 from the
reference toward the sample's own velocity (or away from it, for A < 0). beta0 is the regulariser's strength
when A = 0; a sample with A > beta0 gets a negative W2 coefficient (it is pushed away from the reference).

Choices:
    - Groups: the samples of the same condition (``cond.group_ids()``: equal ids for equal prompts or classes) when
      the run is conditional, else every sample of the refresh forms one group.
    - The mean (and the standard deviation) are over the refresh's whole buffer, gathered over every rank, computed
      once in :meth:`ADRPO.refresh` and kept per sample in ``buffer.extras["advantage"]``. A minibatch mean would
      make a sample's advantage depend on which minibatch it landed in (and a group split over minibatches would
      have several baselines); with ``buffer_size: null`` the buffer is the minibatch, so both agree.
    - Standard deviation: the population one (ddof 0, so that a group of one gives A = 0, not NaN), plus 1e-4;
      ``advantage_scale`` picks the group's (as GRPO), the whole refresh's, or none (raw centred rewards).
    - Interpolants: the W2 term shares the flow-matching term's x_t (one forward of the model and one of the
      reference per sample), so the per-sample minimiser above is exact. Only the independent coupling is
      allowed: an OT pairing looks at x1 and would tilt the noise with the (signed) coefficients.
    - Loss units: squared norms averaged over the event dimensions, as in ORW-CFM-W2 (``finetune/orw.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .. import distributed as dist_util
from ..conditions import Cond
from ..couplings import Pairing
from ..errors import UserError
from ..finetune.orw import _at_least_fp32, _per_sample_sq
from ..models.base import call_field
from ..paths import StraightPath
from .base import Algorithm, LossContext, LossOutput, settings_from_options

ADVANTAGE_SCALES: tuple[str, ...] = ("none", "group-std", "global-std")
# added to a standard deviation before dividing by it (as GRPO and DiffusionNFT do): a group whose rewards are all
# equal gets A = 0 / 1e-4 = 0, not 0 / 0
STD_EPS = 1e-4


def _help(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


def check_number(name: str, value: Any, *, positive: bool) -> None:
    """One line unless ``value`` is a real number (not a bool) that is > 0 (``positive``) or >= 0."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value != value  # NaN
    if bad or (value <= 0 if positive else value < 0):
        raise UserError(f"{name} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """One line unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_independent_coupling(config: Any, name: str) -> None:
    """One line unless the run pairs noise and samples independently (what a signed per-sample weight needs)."""
    coupling = getattr(config, "coupling", "independent")
    if coupling != "independent":
        raise UserError(f"algorithm {name} needs coupling: independent, got {coupling!r} (an OT pairing looks at the "
                        "samples, so their signed loss coefficients would tilt the noise too)")


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor | None, scale: str,
                     dist: dist_util.DistContext = dist_util.DistContext()) -> torch.Tensor:
    """Each sample's reward minus the mean reward of its group, over every rank's share of one refresh.

    Args:
        rewards: (N,) this rank's rewards.
        groups: (N,) int64 group ids (equal ids: the same condition), or None (one group: every sample).
        scale: ``none`` (centred rewards), ``group-std`` (divided by the group's population std + 1e-4) or
            ``global-std`` (divided by the population std of every reward of the refresh + 1e-4).
        dist: the processes; the statistics are over all of them.

    Returns:
        (N,) advantages, in at least float32, in the order of ``rewards``.
    """
    check_choice("advantage_scale", scale, ADVANTAGE_SCALES)
    if rewards.ndim != 1 or (groups is not None and groups.shape != rewards.shape):
        raise ValueError(f"rewards (N,) and group ids (N,) expected, got {tuple(rewards.shape)} and "
                         f"{None if groups is None else tuple(groups.shape)}")
    everyone, sizes = dist_util.gather_with_sizes(_at_least_fp32(rewards), dist)
    ids = torch.zeros(everyone.shape[0], dtype=torch.long, device=everyone.device) if groups is None else \
        dist_util.gather_with_sizes(groups.to(rewards.device).long(), dist)[0]
    _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    inverse, counts = inverse.to(everyone.device), counts.to(everyone.device, everyone.dtype)
    mean = torch.zeros_like(counts).scatter_add(0, inverse, everyone) / counts
    centred = everyone - mean[inverse]
    if scale == "group-std":
        std = (torch.zeros_like(counts).scatter_add(0, inverse, centred.square()) / counts).sqrt()
        centred = centred / (std[inverse] + STD_EPS)
    elif scale == "global-std":
        centred = centred / (everyone.std(correction=0) + STD_EPS)
    start = sum(sizes[: dist.rank])
    return centred[start : start + rewards.shape[0]]


def buffer_groups(buffer: Any) -> torch.Tensor | None:
    """(N,) group ids of a buffer's samples: their conditions' (None when the run is unconditional)."""
    return None if buffer.cond is None else buffer.cond.group_ids()


def minibatch_advantages(batch: Any, name: str) -> torch.Tensor:
    """(B,) the advantages the refresh attached to a minibatch's samples."""
    if "advantage" not in batch.extras:
        raise RuntimeError(f"{name}.loss before refresh(): the loop refreshes before the first minibatch")
    return batch.extras["advantage"]


@dataclass(frozen=True)
class ADRPOConfig:
    """The settings of ADRPO (``algorithm_options`` of a fine-tuning config)."""

    beta0: float = _help(
        "beta0 (> 0), the sum of a sample's two loss coefficients: A for the flow-matching term and beta0 - A for "
        "the W2 term ||v - v_ref||^2; a sample of advantage A is moved from the reference by A / beta0 of the way "
        "toward its own velocity, so larger stays closer to the reference (and samples with A > beta0 are pushed "
        "away from it).", 1.0)
    advantage_scale: Literal["none", "group-std", "global-std"] = _help(
        "What the group-centred reward A = r - mean_group(r) is divided by: group-std (the standard deviation of "
        "its group + 1e-4, as GRPO; A is then unitless and beta0 means the same for any reward), global-std (that "
        "of every reward of the refresh) or none (A in the reward's units). Groups are the samples of one "
        "condition (the top-level samples_per_prompt says how many per prompt) or, unconditionally, the whole "
        "refresh; the statistics are over the refresh's buffer.", "group-std")

    def __post_init__(self) -> None:
        check_number("beta0", self.beta0, positive=True)
        check_choice("advantage_scale", self.advantage_scale, ADVANTAGE_SCALES)

    @classmethod
    def from_config(cls, config: Any) -> ADRPOConfig:
        """The settings read off ``config.algorithm_options`` (missing ones: defaults)."""
        check_independent_coupling(config, ADRPO.name)
        return settings_from_options(cls, config, ADRPO.name)


@dataclass(frozen=True)
class ADRPOLoss:
    """The ADRPO loss of a minibatch and its parts (the parts detached, 0-dim).

    Attributes:
        loss: scalar with the graph to the model: ``fm + w2_term``.
        fm: mean_i A_i ||v - u||^2 (may be negative).
        w2: mean_i ||v - v_ref||^2 (exactly 0 when the model equals the reference).
        w2_term: mean_i (beta0 - A_i) ||v - v_ref||^2.
        negative_w2_share: the fraction of samples whose W2 coefficient beta0 - A_i is negative.
    """

    loss: torch.Tensor
    fm: torch.Tensor
    w2: torch.Tensor
    w2_term: torch.Tensor
    negative_w2_share: torch.Tensor


def adrpo_loss(model: nn.Module, reference: nn.Module, x1: torch.Tensor, advantages: torch.Tensor, x0: torch.Tensor,
               t: torch.Tensor, *, beta0: float, path: StraightPath = StraightPath(),
               cond: Cond | None = None) -> ADRPOLoss:
    """``mean_i [A_i ||v - u||^2 + (beta0 - A_i) ||v - v_ref||^2]`` on the interpolants of ``x0`` and ``x1``.

    Args:
        model: the trained velocity field, ``model(t, x)`` or ``model(t, x, cond)``.
        reference: the frozen pretrained field (evaluated without a graph).
        x1: (B, *shape) policy samples.
        advantages: (B,) their advantages A_i.
        x0: (B, *shape) fresh noise, paired with ``x1`` row by row.
        t: (B,) times.
        beta0: > 0.
        path: the probability path.
        cond: the samples' conditions, or None.
    """
    if advantages.shape != (x1.shape[0],):
        raise ValueError(f"advantages must have shape ({x1.shape[0]},), got {tuple(advantages.shape)}")
    target = path.sample(x0, x1, t)
    v = _at_least_fp32(call_field(model, t, target.x_t, cond))
    # The reference is frozen: no graph, no saved activations; its output is a constant target for v.
    with torch.inference_mode():
        v_ref = call_field(reference, t, target.x_t, cond)
    fm = _per_sample_sq(v - target.u_t)
    w2 = _per_sample_sq(v - _at_least_fp32(v_ref.clone()))
    a = advantages.to(fm.dtype)
    coefficient = beta0 - a
    fm_mean, w2_term = (a * fm).mean(), (coefficient * w2).mean()
    return ADRPOLoss(loss=fm_mean + w2_term, fm=fm_mean.detach(), w2=w2.mean().detach(), w2_term=w2_term.detach(),
                     negative_w2_share=(coefficient < 0).to(fm.dtype).mean())


class ADRPO(Algorithm):
    """ADRPO: the advantage sets both coefficients, A ||v - u||^2 + (beta0 - A) ||v - v_ref||^2 (Fan et al. 2025)."""

    name = "adrpo"
    stat_keys = ("loss", "fm", "w2", "w2_term", "advantage_abs", "negative_w2_share")

    def __init__(self, config: ADRPOConfig, *, path: StraightPath, coupling: Callable[..., Pairing],
                 dist: dist_util.DistContext = dist_util.DistContext()) -> None:
        self.config, self.path, self.coupling, self.dist = config, path, coupling, dist

    def refresh(self, buffer: Any) -> None:
        buffer.extras["advantage"] = group_advantages(buffer.rewards, buffer_groups(buffer),
                                                      self.config.advantage_scale, self.dist)

    def loss(self, model: nn.Module, reference: nn.Module | None, batch: Any, x0: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator, context: LossContext = LossContext()) -> LossOutput:
        if reference is None:
            raise RuntimeError("ADRPO.loss needs the reference (uses_reference is True)")
        a = minibatch_advantages(batch, "ADRPO")
        out = adrpo_loss(model, reference, batch.x, a, x0, t, beta0=self.config.beta0, path=self.path,
                         cond=batch.cond)
        stats = {"loss": out.loss.detach(), "fm": out.fm, "w2": out.w2, "w2_term": out.w2_term,
                 "advantage_abs": a.abs().mean().to(out.fm.dtype), "negative_w2_share": out.negative_w2_share}
        return LossOutput(loss=out.loss, stats=stats)

    def note(self, row: Mapping[str, float]) -> str | None:
        if row["advantage_abs"] != 0:
            return None
        return ("every advantage is 0 (each condition group's rewards are all equal, or each group holds one "
                "sample): the loss is beta0 ||v - v_ref||^2 alone and the model only stays at the reference; a "
                "conditional run needs samples_per_prompt > 1")

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, **dataclasses.asdict(self.config)}


ALGORITHMS = {ADRPO.name: (ADRPO, ADRPOConfig)}
