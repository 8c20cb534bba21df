"""DRaFT-K (Clark et al., 2023) and ReFL (Xu et al., 2023): back-propagate a differentiable reward through sampling.

Both draw their own samples inside the loss (``collects = False``: the loop hands over a minibatch of zeros of the
right shape and fresh noise ``x0``), with the trained model and Euler steps on the uniform grid t_i = i / steps
(t = 0 noise, t = 1 data)::

    DRaFT-K   x_{i+1} = x_i + h v_theta(t_i, x_i)                    no graph for i < steps - K, a graph for the last K
              loss    = -s mean_b r(x_1) + beta mean_{last K steps, b} ||v_theta(t_i, x_i) - v_ref(t_i, x_i)||^2
    ReFL      x_k     = Euler without a graph from 0 to t_k           t_k a random grid time in [stop_min, stop_max)
              x1_hat  = x_k + (1 - t_k) v_theta(t_k, x_k)             (one graph-carrying step: E[x1 | x_k] of the path)
              loss    = -s mean_b r(x1_hat) + beta mean_b ||v_theta(t_k, x_k) - v_ref(t_k, x_k)||^2

``x1_hat`` is the data prediction of the straight path x_t = (1 - t) x0 + t x1 (u = x1 - x0): x1 = x_t + (1 - t) u;
with ``sigma_min`` > 0 (x_t = (1 - a t) x0 + t x1, a = 1 - sigma_min) it is x1 = a x_t + (1 - a t) u.

DRaFT's loss has no regulariser, and ReFL's mixes in the pretraining loss on data, which a reward fine-tuning run
does not have; ``reference_penalty`` (beta, default 0) is an optional ||v - v_ref||^2 term on the differentiated
steps, a knob comparable to ORW-CFM-W2's W2 coefficient.

Choices:
    - The initial noise is the loop's fresh ``x0`` (drawn on the CPU from the run's generator, moved to the device);
      ReFL's stop step is drawn from the same generator, one per minibatch (every sample of a step stops at the same
      t_k, so that the gradient step is one batched forward).
    - The penalty treats the visited states as fixed (they are detached for it): it regularises the field where the
      sampler went, like the W2 term on interpolants, and its gradient is the direct one. So the penalty needs its
      own forward of the model on the K - 1 later differentiated states (the first one's input is already detached
      and its forward is shared), and the reference never carries a graph (no backward through it, which is also
      what a LoRA reference, the base with adapters off, needs).
    - The trained model is sampled without classifier-free guidance (the conditional field itself) and on the
      uniform grid (the loss is not given the run's time grid, e.g. a text-to-image shifted schedule).
    - Squared norms are averaged over the event dimensions, as in every loss of orwcfm.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed as dist_util
from ..conditions import Cond, index_cond
from ..errors import UserError
from ..models.base import call_field
from ..paths import StraightPath
from ..rewards.base import takes_condition
from .base import Algorithm, LossContext, LossOutput, NetworkRows, settings_from_options


# ---------------------------------------------------------------------------------------------------------------
# Shared by the algorithms that call a differentiable reward inside their loss (also adjoint_matching.py).


def fresh_conditions(context: LossContext, n: int, given: Cond | None = None) -> Cond | None:
    """The conditions of ``n`` samples drawn inside a loss: fresh ones from the prompt set (``context.cond_sampler``)
    when the run has one, else ``given`` (None for an unconditional run)."""
    return context.cond_sampler(n) if context.cond_sampler is not None else given


def differentiable_reward(reward: Any, x: torch.Tensor, cond: Cond | None, name: str) -> torch.Tensor:
    """``reward(x)`` (``reward(x, cond)`` when there are conditions and it takes them) as a (B,) tensor with its graph.

    Args:
        reward: ``LossContext.reward``, a callable (B, *shape) -> (B,).
        x: (B, *shape) samples (with a graph to differentiate through, or a leaf that requires grad).
        cond: their conditions, or None.
        name: the algorithm's name, for the error.
    """
    if reward is None:
        raise UserError(f"algorithm {name} needs the differentiable reward in its loss context (LossContext.reward)")
    r = reward(x, cond) if cond is not None and takes_condition(reward) else reward(x)
    if not isinstance(r, torch.Tensor) or tuple(r.shape) != (x.shape[0],):
        got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
        raise UserError(f"algorithm {name} needs a reward tensor of shape ({x.shape[0]},) with a gradient, got {got}")
    if not r.requires_grad:
        raise UserError(f"algorithm {name} back-propagates through the reward, but its output carries no gradient")
    return r


def per_sample_sq(diff: torch.Tensor) -> torch.Tensor:
    """(B, *shape) -> (B,) squared norm averaged over the event dimensions."""
    return diff.pow(2).flatten(1).mean(1)


def as_state(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A network output in the ODE state's dtype (a bf16 autocast output joins a float32 state in float32)."""
    return v.to(torch.promote_types(v.dtype, x.dtype))


def uniform_grid(steps: int, like: torch.Tensor) -> torch.Tensor:
    """(steps + 1,) the times 0, 1/steps, .., 1 in ``like``'s dtype and device."""
    return torch.linspace(0.0, 1.0, steps + 1, dtype=like.dtype, device=like.device)


def option(name: str, algorithm: str) -> str:
    """How an error names a setting: ``option 'k' of draft``."""
    return f"option {name!r} of {algorithm}"


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """One line unless ``value`` is an integer in [low, high] (high None: no upper bound); ``name`` as errors say it."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise UserError(f"{name} must be {expected}, got {value!r}")


def check_number(name: str, value: Any, *, positive: bool) -> None:
    """One line unless ``value`` is a finite number > 0 (``positive``) or >= 0; ``name`` as errors say it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value > 0 if positive else value >= 0)
    if not ok:
        raise UserError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def _help(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class _Penalty:
    """The optional ||v - v_ref||^2 term of one minibatch: its value (detached) and its contribution to the loss."""

    value: torch.Tensor
    term: torch.Tensor


def _reference_penalty(model: nn.Module, reference: nn.Module | None, beta: float, times: list[torch.Tensor],
                       states: list[torch.Tensor], first_velocity: torch.Tensor, cond: Cond | None) -> _Penalty:
    """beta * mean over the steps and samples of ||v_theta(t_i, x_i) - v_ref(t_i, x_i)||^2 at the detached states.

    Args:
        times: per differentiated step, (B,) its time.
        states: per differentiated step, (B, *shape) its state (the first one has no graph).
        first_velocity: (B, *shape) the model's velocity at the first state (its forward is shared with the sampler).
    """
    if beta == 0:
        zero = first_velocity.new_zeros(())
        return _Penalty(value=zero.detach(), term=zero)
    if reference is None:
        raise ValueError("a reference_penalty > 0 needs the reference model (uses_reference is True)")
    b, steps = states[0].shape[0], len(states)
    xs = torch.cat([s.detach() for s in states])
    ts = torch.cat(times)
    rows = torch.arange(b, device=xs.device).repeat(steps)  # row j * B + i: sample i at differentiated step j
    v = first_velocity
    if steps > 1:  # the later states carry the sampler's graph: the penalty's forward of the model sees them detached
        later = as_state(call_field(model, ts[b:], xs[b:], index_cond(cond, rows[b:])), xs)
        v = torch.cat([first_velocity, later])
    with torch.inference_mode():  # the reference is a constant target: no graph, no saved activations
        v_ref = call_field(reference, ts, xs, index_cond(cond, rows))
    value = per_sample_sq(v - as_state(v_ref.clone(), xs)).mean()
    return _Penalty(value=value.detach(), term=beta * value)


# ---------------------------------------------------------------------------------------------------------------
# DRaFT-K


@dataclass(frozen=True)
class DRaFTConfig:
    """The settings of DRaFT-K (``algorithm_options`` of a fine-tuning config)."""

    steps: int = _help(
        "Euler steps of the sampler the loss differentiates through, on the uniform grid from noise (t = 0) to data "
        "(t = 1) (an integer >= 1; not the policy sampler's sampling.steps).", 20)
    k: int = _help(
        "K, how many of the last sampling steps carry the gradient (an integer in [1, steps]): 1 is DRaFT-1, steps is "
        "full back-propagation through sampling (memory grows with K).", 1)
    reward_scale: float = _help(
        "s, the loss is -s * mean reward (> 0): how hard the reward pulls, against the learning rate and "
        "reference_penalty.", 1.0)
    reference_penalty: float = _help(
        "beta of the optional penalty beta * mean ||v - v_ref||^2 on the K differentiated steps (>= 0): 0 is DRaFT as "
        "published (no regulariser, no reference pass); larger holds the model near the frozen reference.", 0.0)

    def __post_init__(self) -> None:
        check_int(option("steps", DRaFT.name), self.steps, 1)
        check_int(option("k", DRaFT.name), self.k, 1, self.steps)
        check_number(option("reward_scale", DRaFT.name), self.reward_scale, positive=True)
        check_number(option("reference_penalty", DRaFT.name), self.reference_penalty, positive=False)

    @classmethod
    def from_config(cls, config: Any) -> DRaFTConfig:
        """The settings from ``config.algorithm_options`` (missing ones: defaults)."""
        return settings_from_options(cls, config, DRaFT.name)


@dataclass(frozen=True)
class DraftSample:
    """Samples of the trained model with the graph of their last K steps.

    Attributes:
        x1: (B, *shape) the samples at t = 1 (a graph to the weights through the last K steps).
        times: per differentiated step, (B,) its time t_i.
        states: per differentiated step, (B, *shape) the state x_i it started from (the first one has no graph).
        first_velocity: (B, *shape) v_theta(t_i, x_i) of the first differentiated step (with its graph).
    """

    x1: torch.Tensor
    times: list[torch.Tensor]
    states: list[torch.Tensor]
    first_velocity: torch.Tensor


def draft_sample(model: nn.Module, x0: torch.Tensor, steps: int, k: int, cond: Cond | None = None) -> DraftSample:
    """Euler from noise ``x0`` (B, *shape) over ``steps`` uniform steps, a graph only through the last ``k``."""
    grid, b = uniform_grid(steps, x0), x0.shape[0]
    x = x0
    with torch.no_grad():  # the first steps - k steps: no graph, no saved activations
        for i in range(steps - k):
            x = x + (grid[i + 1] - grid[i]) * as_state(call_field(model, grid[i].expand(b), x, cond), x)
    times, states, velocities = [], [], []
    for i in range(steps - k, steps):
        t = grid[i].expand(b)
        v = as_state(call_field(model, t, x, cond), x)
        times.append(t)
        states.append(x)
        velocities.append(v)
        x = x + (grid[i + 1] - grid[i]) * v
    return DraftSample(x1=x, times=times, states=states, first_velocity=velocities[0])


class _DifferentiatedSampling(Algorithm):
    """What DRaFT and ReFL share: the loss samples its own batch (no buffer), back-propagates through the
    differentiable reward of it (one call on the B samples of a step), and reads the reference only for the
    optional ``reference_penalty``."""

    needs_reward_gradient = True
    collects = False

    def __init__(self, config: Any, *, path: StraightPath = StraightPath(), coupling: Any = None,
                 dist: dist_util.DistContext = dist_util.DistContext()) -> None:
        self.config, self.path, self.dist = config, path, dist

    @property
    def uses_reference(self) -> bool:
        return self.config.reference_penalty > 0

    def reward_evaluations(self, batch_size: int) -> int:
        return batch_size  # one reward call on the B samples of the step


class DRaFT(_DifferentiatedSampling):
    """DRaFT-K: the reward of the model's own samples, differentiated through the last K sampling steps."""

    name = "draft"
    stat_keys = ("loss", "reward", "penalty", "penalty_term")

    def network_rows(self, batch_size: int) -> NetworkRows:
        cfg = self.config
        # every sampling step goes through the model (the first steps - K without a graph); the penalty re-runs the
        # later K - 1 differentiated states detached
        extra = (cfg.k - 1) * batch_size if self.uses_reference else 0
        return NetworkRows(model=cfg.steps * batch_size + extra,
                           reference=cfg.k * batch_size if self.uses_reference else 0,
                           model_graph=cfg.k * batch_size + extra, reward_grad=batch_size)

    def loss(self, model: nn.Module, reference: nn.Module | None, batch: Any, x0: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator, context: LossContext = LossContext()) -> LossOutput:
        cfg = self.config
        cond = fresh_conditions(context, x0.shape[0], batch.cond)
        drawn = draft_sample(model, x0, cfg.steps, cfg.k, cond)
        r = differentiable_reward(context.reward, drawn.x1, cond, self.name)
        penalty = _reference_penalty(model, reference, cfg.reference_penalty, drawn.times, drawn.states,
                                     drawn.first_velocity, cond)
        loss = -cfg.reward_scale * r.mean() + penalty.term
        stats = {"loss": loss.detach(), "reward": r.detach().mean(), "penalty": penalty.value,
                 "penalty_term": penalty.term.detach()}
        return LossOutput(loss=loss, stats=stats)

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, **dataclasses.asdict(self.config)}


# ---------------------------------------------------------------------------------------------------------------
# ReFL


@dataclass(frozen=True)
class ReFLConfig:
    """The settings of ReFL (``algorithm_options`` of a fine-tuning config)."""

    steps: int = _help(
        "Euler steps of the uniform grid the loss samples on (an integer >= 1); the stop step is one of its times.", 20)
    stop_min: float = _help(
        "Earliest time t_k at which sampling stops for the one gradient step (in [0, 1), below stop_max; t = 1 is "
        "data): ImageReward stops in the last quarter of its 40 steps (0.75).", 0.75)
    stop_max: float = _help(
        "The stop time t_k is drawn uniformly, once per minibatch, among the grid times i / steps in "
        "[stop_min, stop_max) (in (0, 1]; the range must hold at least one grid time).", 1.0)
    reward_scale: float = _help(
        "s, the loss is -s * mean reward of the one-step predictions x1_hat (> 0).", 1.0)
    reference_penalty: float = _help(
        "beta of the optional penalty beta * mean ||v - v_ref||^2 at the gradient step (>= 0): 0 is ReFL without its "
        "pretraining-loss mix (no reference pass); larger holds the model near the frozen reference.", 0.0)

    def __post_init__(self) -> None:
        check_int(option("steps", ReFL.name), self.steps, 1)
        for name in ("stop_min", "stop_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserError(f"{option(name, ReFL.name)} must be a number in [0, 1], got {value!r}")
        if not self.stop_min < self.stop_max:
            raise UserError(f"options stop_min and stop_max of refl must satisfy stop_min < stop_max, got "
                            f"{self.stop_min} and {self.stop_max}")
        if not self.stop_steps():
            raise UserError(f"no grid time i / {self.steps} of refl lies in [stop_min, stop_max) = [{self.stop_min}, "
                            f"{self.stop_max}): widen the range or change steps")
        check_number(option("reward_scale", ReFL.name), self.reward_scale, positive=True)
        check_number(option("reference_penalty", ReFL.name), self.reference_penalty, positive=False)

    def stop_steps(self) -> list[int]:
        """The grid indices k (t_k = k / steps, k < steps) the stop step is drawn from."""
        eps = 1e-9  # 30 / 40 must count as 0.75
        return [k for k in range(self.steps) if self.stop_min - eps <= k / self.steps < self.stop_max - eps]

    @classmethod
    def from_config(cls, config: Any) -> ReFLConfig:
        """The settings from ``config.algorithm_options`` (missing ones: defaults)."""
        return settings_from_options(cls, config, ReFL.name)


def one_step_prediction(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, sigma_min: float = 0.0) -> torch.Tensor:
    """x1_hat (B, *shape) = a x_t + (1 - a t) v (a = 1 - sigma_min): the data the straight path's velocity ``v`` at
    (t (B,), x (B, *shape)) points to; ``x + (1 - t) v`` for sigma_min 0."""
    a = 1.0 - sigma_min
    tb = t.reshape(-1, *([1] * (x.dim() - 1)))
    return a * x + (1.0 - a * tb) * v


class ReFL(_DifferentiatedSampling):
    """ReFL: sample without a graph to a late time t_k, predict x1 in one graph-carrying step, maximise its reward."""

    name = "refl"
    stat_keys = ("loss", "reward", "stop_time", "penalty", "penalty_term")

    def network_rows(self, batch_size: int) -> NetworkRows:
        # k no-graph steps and the gradient step; k is random: the mean over the stop steps (rounded)
        ks = self.config.stop_steps()
        return NetworkRows(model=round((sum(ks) / len(ks) + 1) * batch_size),
                           reference=batch_size if self.uses_reference else 0, model_graph=batch_size,
                           reward_grad=batch_size)

    def draw_stop_step(self, generator: torch.Generator) -> int:
        """The grid index k where sampling stops, uniform over :meth:`ReFLConfig.stop_steps` (CPU ``generator``)."""
        ks = self.config.stop_steps()
        return ks[int(torch.randint(len(ks), (), generator=generator))]

    def loss(self, model: nn.Module, reference: nn.Module | None, batch: Any, x0: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator, context: LossContext = LossContext()) -> LossOutput:
        cfg = self.config
        b = x0.shape[0]
        cond = fresh_conditions(context, b, batch.cond)
        k = self.draw_stop_step(generator)
        grid = uniform_grid(cfg.steps, x0)
        x = x0
        with torch.no_grad():
            for i in range(k):
                x = x + (grid[i + 1] - grid[i]) * as_state(call_field(model, grid[i].expand(b), x, cond), x)
        tk = grid[k].expand(b)
        v = as_state(call_field(model, tk, x, cond), x)
        x1_hat = one_step_prediction(x, v, tk, self.path.sigma_min)
        r = differentiable_reward(context.reward, x1_hat, cond, self.name)
        penalty = _reference_penalty(model, reference, cfg.reference_penalty, [tk], [x], v, cond)
        loss = -cfg.reward_scale * r.mean() + penalty.term
        stats = {"loss": loss.detach(), "reward": r.detach().mean(), "stop_time": grid[k].detach().clone(),
                 "penalty": penalty.value, "penalty_term": penalty.term.detach()}
        return LossOutput(loss=loss, stats=stats)

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, **dataclasses.asdict(self.config)}


ALGORITHMS = {DRaFT.name: (DRaFT, DRaFTConfig), ReFL.name: (ReFL, ReFLConfig)}
