"""DiffusionNFT (Zheng et al. 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward Process").

Flow matching on the policy's clean samples, through two implicit policies built from the trained velocity v and
the old one a (the frozen sampling policy that drew the buffer, ``LossContext.policy``)::

    v+ = (1 - beta) a + beta v          (the implicit positive policy)
    v- = (1 + beta) a - beta v          (the implicit negative policy, the reflection of v+ through a)
    loss = mean_i [ r_i ||v+ - u||^2 + (1 - r_i) ||v- - u||^2 ]  +  ref_coefficient * mean_i ||v - v_ref||^2

with x_t = (1 - t) x0 + t x1 (fresh noise x0 and times t from the loop), u = x1 - x0, every velocity at the same
x_t, and r_i in [0, 1] the sample's optimality probability::

    A_i = r_i - mean of r over its group (divided by a standard deviation, ``advantage_scale``)
    r_i = 0.5 + 0.5 * clip(A_i / advantage_clip, -1, 1)

For one x_t the minimiser over v of the policy term is ``v* = a + (2r - 1)(u - a) / beta``: a sample with r > 1/2
pulls the model from the old policy toward its own velocity, one with r < 1/2 pushes it away, and r = 1/2 leaves
it at a. With the regulariser (coefficient lam) it is ``[beta^2 a + beta (2r - 1)(u - a) + lam v_ref] /
(beta^2 + lam)``. The old velocity is a constant of the loss: no gradient flows into it (even when the old policy
shares weights with the trained model, as adapters of one network do).

Choices:
    - The old policy is the loop's sampling policy, refreshed from the run's model at every refresh (the public
      code keeps an EMA of the trained weights instead; ``ema_decay`` with the top-level key gives the policy the
      EMA's weights at each refresh).
    - Velocity-space loss, as written above: the public code compares x0-predictions (x_t - t v in its time
      convention, i.e. t times our velocity error) divided by a detached per-sample mean absolute error, and scales
      the policy term by advantage_clip / beta. Those weightings change the balance with the regulariser and the
      effective learning rate, not the minimiser of a sample's policy term; we keep the plain form.
    - Advantages as in the public code: centred within each condition group (else over the refresh), divided by
      the standard deviation of every reward of the refresh (``global-std``, its ``global_std: True``), clipped at
      advantage_clip = 5; statistics over the refresh's buffer (all ranks), computed once per refresh and kept in
      ``buffer.extras["optimality"]`` (see ``adrpo.py`` for why the buffer and not the minibatch).
    - Only the independent coupling (the loss coefficients are per sample; an OT pairing would tilt the noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .. import distributed as dist_util
from ..conditions import Cond
from ..couplings import Pairing
from ..finetune.orw import _at_least_fp32, _per_sample_sq
from ..models.base import call_field
from ..paths import StraightPath
from .adrpo import (ADVANTAGE_SCALES, buffer_groups, check_choice, check_independent_coupling, check_number,
                    group_advantages)
from .base import Algorithm, LossContext, LossOutput, NetworkRows, settings_from_options


def _help(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class DiffusionNFTConfig:
    """The settings of DiffusionNFT (``algorithm_options`` of a fine-tuning config)."""

    beta: float = _help(
        "beta (> 0), how far the implicit policies sit from the old one: v+ = (1 - beta) v_old + beta v and "
        "v- = (1 + beta) v_old - beta v; a sample's policy term is least at v_old + (2r - 1)(u - v_old) / beta, "
        "so larger beta moves the model less from the old policy per refresh (the public code uses 1 and 0.1).", 1.0)
    ref_coefficient: float = _help(
        "Coefficient (>= 0) of the regulariser mean ||v - v_ref||^2 that holds the model near the frozen reference "
        "(the public code's KL term, 1e-4 there); 0 = none (no reference pass).", 1e-4)
    advantage_scale: Literal["none", "group-std", "global-std"] = _help(
        "What the group-centred reward A = r - mean_group(r) is divided by: global-std (the standard deviation of "
        "every reward of the refresh + 1e-4, the public code's), group-std (its group's) or none. Groups are the "
        "samples of one condition (the top-level samples_per_prompt says how many per prompt) or, unconditionally, "
        "the whole refresh.", "global-std")
    advantage_clip: float = _help(
        "A_max (> 0): the optimality probability is r = 0.5 + 0.5 clip(A / A_max, -1, 1), so a sample with "
        "A >= A_max is all positive (r = 1) and one with A <= -A_max all negative (r = 0); the public code uses 5.",
        5.0)

    def __post_init__(self) -> None:
        check_number("beta", self.beta, positive=True)
        check_number("ref_coefficient", self.ref_coefficient, positive=False)
        check_choice("advantage_scale", self.advantage_scale, ADVANTAGE_SCALES)
        check_number("advantage_clip", self.advantage_clip, positive=True)

    @classmethod
    def from_config(cls, config: Any) -> DiffusionNFTConfig:
        """The settings read off ``config.algorithm_options`` (missing ones: defaults)."""
        check_independent_coupling(config, DiffusionNFT.name)
        return settings_from_options(cls, config, DiffusionNFT.name)


def optimality(advantages: torch.Tensor, advantage_clip: float) -> torch.Tensor:
    """r = 0.5 + 0.5 clip(A / A_max, -1, 1): (N,) advantages -> (N,) probabilities in [0, 1]."""
    return 0.5 + 0.5 * (advantages / advantage_clip).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class NFTLoss:
    """The DiffusionNFT loss of a minibatch and its parts (the parts detached, 0-dim).

    Attributes:
        loss: scalar with the graph to the model: ``policy + ref_coefficient * w2``.
        policy: mean_i [r_i ||v+ - u||^2 + (1 - r_i) ||v- - u||^2].
        w2: mean_i ||v - v_ref||^2 (0 without a reference).
        old_deviation: mean_i ||v - v_old||^2, how far the model has moved since the refresh.
    """

    loss: torch.Tensor
    policy: torch.Tensor
    w2: torch.Tensor
    old_deviation: torch.Tensor


def _frozen_velocity(net: nn.Module, t: torch.Tensor, x_t: torch.Tensor, cond: Cond | None) -> torch.Tensor:
    """A frozen network's velocity at x_t (B, *shape), as a constant: no graph, no saved activations."""
    with torch.inference_mode():
        v = call_field(net, t, x_t, cond)
    return _at_least_fp32(v.clone())  # the clone, outside inference mode, is an ordinary tensor autograd accepts


def nft_loss(model: nn.Module, old: nn.Module, reference: nn.Module | None, x1: torch.Tensor, r: torch.Tensor,
             x0: torch.Tensor, t: torch.Tensor, *, beta: float, ref_coefficient: float,
             path: StraightPath = StraightPath(), cond: Cond | None = None) -> NFTLoss:
    """The DiffusionNFT objective of one minibatch (module docstring).

    Args:
        model: the trained velocity field, ``model(t, x)`` or ``model(t, x, cond)``.
        old: the old (sampling) policy's field; its output is a constant.
        reference: the frozen pretrained field, or None (then ``ref_coefficient`` must be 0).
        x1: (B, *shape) the policy's clean samples.
        r: (B,) their optimality probabilities in [0, 1].
        x0: (B, *shape) fresh noise, paired with ``x1`` row by row.
        t: (B,) times.
        beta: > 0.
        ref_coefficient: >= 0.
        path: the probability path.
        cond: the samples' conditions, or None.
    """
    if r.shape != (x1.shape[0],):
        raise ValueError(f"optimality probabilities must have shape ({x1.shape[0]},), got {tuple(r.shape)}")
    if reference is None and ref_coefficient > 0:
        raise ValueError("ref_coefficient > 0 needs a reference model")
    target = path.sample(x0, x1, t)
    v = _at_least_fp32(call_field(model, t, target.x_t, cond))
    a = _frozen_velocity(old, t, target.x_t, cond)
    positive = (1.0 - beta) * a + beta * v
    negative = (1.0 + beta) * a - beta * v
    r = r.to(v.dtype)
    policy = (r * _per_sample_sq(positive - target.u_t) + (1.0 - r) * _per_sample_sq(negative - target.u_t)).mean()
    if reference is not None:
        w2 = _per_sample_sq(v - _frozen_velocity(reference, t, target.x_t, cond)).mean()
        loss = policy + ref_coefficient * w2
    else:
        w2 = torch.zeros((), dtype=v.dtype, device=v.device)
        loss = policy
    return NFTLoss(loss=loss, policy=policy.detach(), w2=w2.detach(),
                   old_deviation=_per_sample_sq(v.detach() - a).mean())


class DiffusionNFT(Algorithm):
    """DiffusionNFT: flow matching through implicit positive and negative policies around the old one (Zheng et al.)."""

    name = "diffusion-nft"
    stat_keys = ("loss", "policy", "w2", "w2_term", "old_deviation", "optimality_mean", "advantage_abs")
    uses_policy = True

    def __init__(self, config: DiffusionNFTConfig, *, path: StraightPath, coupling: Callable[..., Pairing],
                 dist: dist_util.DistContext = dist_util.DistContext()) -> None:
        self.config, self.path, self.coupling, self.dist = config, path, coupling, dist

    @property
    def uses_reference(self) -> bool:
        return self.config.ref_coefficient > 0

    def network_rows(self, batch_size: int) -> NetworkRows:
        # one forward of the old policy per row, without a graph, beside the trained model's and the reference's
        return NetworkRows(model=batch_size, reference=batch_size if self.uses_reference else 0, policy=batch_size)

    def refresh(self, buffer: Any) -> None:
        a = group_advantages(buffer.rewards, buffer_groups(buffer), self.config.advantage_scale, self.dist)
        buffer.extras["advantage"] = a
        buffer.extras["optimality"] = optimality(a, self.config.advantage_clip)

    def loss(self, model: nn.Module, reference: nn.Module | None, batch: Any, x0: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator, context: LossContext = LossContext()) -> LossOutput:
        cfg = self.config
        if context.policy is None:
            raise RuntimeError("DiffusionNFT.loss needs the old policy in context.policy (uses_policy is True)")
        if "optimality" not in batch.extras:
            raise RuntimeError("DiffusionNFT.loss before refresh(): the loop refreshes before the first minibatch")
        r = batch.extras["optimality"]
        out = nft_loss(model, context.policy, reference, batch.x, r, x0, t, beta=cfg.beta,
                       ref_coefficient=cfg.ref_coefficient, path=self.path, cond=batch.cond)
        dtype = out.policy.dtype
        stats = {"loss": out.loss.detach(), "policy": out.policy, "w2": out.w2, "w2_term": cfg.ref_coefficient * out.w2,
                 "old_deviation": out.old_deviation, "optimality_mean": r.mean().to(dtype),
                 "advantage_abs": batch.extras["advantage"].abs().mean().to(dtype)}
        return LossOutput(loss=out.loss, stats=stats)

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, **dataclasses.asdict(self.config)}


ALGORITHMS = {DiffusionNFT.name: (DiffusionNFT, DiffusionNFTConfig)}
