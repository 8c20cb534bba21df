"""Adjoint Matching (Domingo-Enrich et al., 2024) as an :class:`~orwcfm.algorithms.base.Algorithm`.

Reward fine-tuning as memoryless stochastic optimal control: the fine-tuned model should sample
p*(x) ∝ p_base(x) exp(lambda r(x)). The equations implemented, in orwcfm's convention (t = 0 noise, t = 1 data,
x_t = (1 - t) x0 + t x1, v regresses u = x1 - x0, fields called v(t, x)); the paper's flow-matching case
(alpha_t = t, beta_t = 1 - t, X_0 noise) runs in the same direction of time::

    score       s(x, t) = -(x - t v(t, x)) / (1 - t)       (x_t | x1 ~ N(t x1, (1-t)^2 I) and E[x0 | x_t] = x_t - t v)
    SDE         dX = b(X, t) dt + sigma(t) dB,  b = v + sigma(t)^2 / 2 * s     (any sigma keeps p_t; X_0 ~ N(0, I))
    memoryless  sigma(t)^2 = 2 (1 - t) / t   (the paper's 2 eta_t, eta_t = beta_t (alpha'_t beta_t / alpha_t - beta'_t))
    control     b_theta = b_base + sigma u:  u = kappa(t) (v_theta - v_base) / sigma(t),
                kappa = 1 + t sigma^2 / (2 (1 - t))
    lean adjoint  d a / dt = -[grad_x b_base(X_t, t)]^T a,  a(1) = -lambda grad r(X_1), along the fine-tuned SDE
    loss        mean over trajectories and loss times of || u_theta(X_t, t) + sigma(t) a(t) ||^2

Why this sigma is memoryless: the noising process Y_tau = X_{1 - tau} (tau = 1 - t, data to noise) with
Y_tau | Y_0 ~ N((1 - tau) Y_0, tau^2 I) is the linear SDE dY = -Y / (1 - tau) d tau + g dW with g^2 = 2 tau / (1 - tau),
and g^2 is sigma(t)^2 = 2 (1 - t) / t; its time reversal is the SDE above (drift X / t + sigma^2 s = 2 v - X / t = b),
and Y_1 | Y_0 ~ N(0, I) does not depend on the data: X_0 is independent of X_1. With this sigma, b = 2 v - x / t and
kappa = 2: the paper's u = 2 (v_theta - v_base) / sigma.

Discretisation (uniform grid t_k = k h, h = 1 / steps, k = 0 .. steps)::

    sigma_k   = sqrt(2 (1 - t_k + h) / (t_k + h))          (the paper's shift by h, which keeps sigma finite at t = 0)
    X_{k+1}   = X_k + h b_theta(X_k, t_k) + sqrt(h) sigma_k eps_k                  (Euler-Maruyama, no graph)
    a_N       = -lambda grad r(X_N)
    a_k       = a_{k+1} + h [grad_x b_base(X_k, t_k)]^T a_{k+1}     (a vector-Jacobian product of the reference's drift)
    loss      = mean_{b, k in K_b} mean_dims || kappa_k (v_theta(t_k, X_k) - v_base(t_k, X_k)) / sigma_k
                                                + sigma_k a_{k+1} ||^2

Along a trajectory of the base itself, a_k is exactly -lambda d r(X_N) / d X_k through its Euler-Maruyama steps with
the same increments (the discrete adjoint). The reference's velocities at every X_k come out of the adjoint's pass and
are reused in the loss.

Where this module differs from the paper and from public implementations of it:
    - The drift is b = v + sigma^2 / 2 * s with the exact score for every sigma, so with the h-shifted sigma it is not
      the 2 v - x / (t + h) of public implementations, and the control's factor is kappa_k (-> 2 as h -> 0), not 2.
      With the exact velocity of N(1.5, 0.5^2) and 10 steps, this base SDE ends at mean 1.5 and std 0.504, where
      2 v - x / (t + h) ends at mean 1.58.
    - The control of step k (which moves X_{k+1}) is regressed on sigma_k a_{k+1}, the discrete-time optimum
      u_k = -sigma_k E[a_{k+1} | X_k]; the continuous-time a(t_k) differs from it by O(h), except at t = 0, where the
      first step nearly forgets X_0 (I + h grad b_0 = h (grad v_0 - I)) and a_0 is O(h) a_1.
    - The loss is a mean over the loss times and the event dimensions (the paper sums them: a constant factor
      |K| D, which the learning rate absorbs); every step of the SDE carries noise, and the reward is read at the
      SDE's own endpoint X_N (some implementations end with one noiseless step).

Choices:
    - ``loss_times`` (default: all ``steps``) grid times per trajectory enter the loss, drawn without replacement
      per trajectory from t_0 .. t_{N-1} with the run's CPU generator (which draws the Brownian increments first).
    - The base is the frozen reference; the trained model is sampled without classifier-free guidance, on the
      uniform grid (the loss is not given the run's time grid).
    - ``path_kl`` logs the Girsanov estimate of KL(fine-tuned path || base path) = E sum_k h / 2 ||u_k||^2 (summed
      over dimensions, from the loss times scaled by steps / loss_times): what the tilt costs. It bounds
      KL(p_theta || p_base) of the samples from above, with equality at the optimum (memoryless: given X_1, the
      optimal path is the base's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed as dist_util
from ..conditions import Cond, index_cond
from ..errors import UserError
from ..models.base import call_field
from ..paths import StraightPath
from .base import Algorithm, LossContext, LossOutput, NetworkRows, settings_from_options
from .draft import (as_state, check_int, check_number, differentiable_reward, fresh_conditions, option,
                    per_sample_sq)


def _help(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class AdjointMatchingConfig:
    """The settings of Adjoint Matching (``algorithm_options`` of a fine-tuning config)."""

    reward_multiplier: float = _help(
        "lambda (> 0): the fine-tuned model targets p_base(x) exp(lambda r(x)), the KL-regularised optimum; the "
        "terminal adjoint is -lambda grad r. Larger tilts harder (1 / lambda plays the role of a KL coefficient).", 1.0)
    steps: int = _help(
        "Euler-Maruyama steps of the memoryless SDE on the uniform grid from noise (t = 0) to data (t = 1), for the "
        "trajectories and the adjoint (an integer >= 1; not the policy sampler's sampling.steps).", 20)
    loss_times: int | None = _help(
        "How many grid times of each trajectory enter the regression, drawn without replacement from t_0 .. "
        "t_{steps-1} (an integer in [1, steps]); null = all of them.", None)

    def __post_init__(self) -> None:
        name = AdjointMatching.name
        check_number(option("reward_multiplier", name), self.reward_multiplier, positive=True)
        check_int(option("steps", name), self.steps, 1)
        if self.loss_times is not None:
            check_int(option("loss_times", name), self.loss_times, 1, self.steps)

    @property
    def times_per_trajectory(self) -> int:
        return self.steps if self.loss_times is None else self.loss_times

    @classmethod
    def from_config(cls, config: Any) -> AdjointMatchingConfig:
        """The settings from ``config.algorithm_options``; also reads the top-level ``sigma_min`` (must be 0)."""
        check_straight_path(getattr(config, "sigma_min", 0.0))
        return settings_from_options(cls, config, AdjointMatching.name)


def check_straight_path(sigma_min: float) -> None:
    """One line unless the path is x_t = (1 - t) x0 + t x1 (the score and the memoryless schedule assume it)."""
    if sigma_min != 0:
        raise UserError(f"adjoint-matching needs the straight path with sigma_min 0 (its score and memoryless noise "
                        f"schedule assume x_t = (1 - t) x0 + t x1), got sigma_min {sigma_min}")


# ---------------------------------------------------------------------------------------------------------------
# The memoryless SDE


@dataclass(frozen=True)
class MemorylessSchedule:
    """The grid and the noise of the discretised memoryless SDE.

    Attributes:
        times: (N + 1,) t_k = k / N.
        sigma: (N,) sigma_k = sqrt(2 (1 - t_k + h) / (t_k + h)), the noise of step k.
        kappa: (N,) 1 + t_k sigma_k^2 / (2 (1 - t_k)): b_theta - b_base = kappa (v_theta - v_base) at t_k.
        h: the step 1 / N.
    """

    times: torch.Tensor
    sigma: torch.Tensor
    kappa: torch.Tensor
    h: float


def memoryless_sigma(t: torch.Tensor, h: float = 0.0) -> torch.Tensor:
    """sigma(t) = sqrt(2 (1 - t + h) / (t + h)); h = 0 is the exact memoryless schedule sqrt(2 (1 - t) / t)."""
    return torch.sqrt(2.0 * (1.0 - t + h) / (t + h))


def memoryless_schedule(steps: int, like: torch.Tensor) -> MemorylessSchedule:
    """The schedule of ``steps`` uniform steps in ``like``'s dtype and device."""
    h = 1.0 / steps
    times = torch.linspace(0.0, 1.0, steps + 1, dtype=like.dtype, device=like.device)
    tk = times[:-1]
    sigma = memoryless_sigma(tk, h)
    return MemorylessSchedule(times=times, sigma=sigma, kappa=1.0 + tk * sigma**2 / (2.0 * (1.0 - tk)), h=h)


def _col(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-dim or (B,) ``s`` shaped to broadcast against x (B, *shape)."""
    return s if s.dim() == 0 else s.reshape(-1, *([1] * (x.dim() - 1)))


def score(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """s(x, t) = -(x - t v) / (1 - t) (B, *shape), the straight path's score from its velocity; t 0-dim or (B,), < 1."""
    tb = _col(t, x)
    return -(x - tb * v) / (1.0 - tb)


def sde_drift(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """b = v + sigma^2 / 2 * s(x, t) (B, *shape): the drift whose SDE with noise sigma keeps the field's marginals."""
    return v + _col(sigma, x) ** 2 / 2.0 * score(v, x, t)


def sde_trajectory(field: nn.Module, x0: torch.Tensor, noise: torch.Tensor, schedule: MemorylessSchedule,
                   cond: Cond | None = None) -> torch.Tensor:
    """(N + 1, B, *shape) the Euler-Maruyama states of dX = b dt + sigma dB from ``x0`` (B, *shape), without a graph.

    Args:
        field: the velocity field whose SDE is run (the fine-tuned model).
        noise: (N, B, *shape) the standard normal increments eps_k (the step adds sqrt(h) sigma_k eps_k).
    """
    b, h = x0.shape[0], schedule.h
    states = [x0]
    x = x0
    with torch.no_grad():
        for k in range(len(schedule.sigma)):
            t = schedule.times[k]
            v = as_state(call_field(field, t.expand(b), x, cond), x)
            x = x + h * sde_drift(v, x, t, schedule.sigma[k]) + h**0.5 * schedule.sigma[k] * noise[k]
            states.append(x)
    return torch.stack(states)


@dataclass(frozen=True)
class LeanAdjoint:
    """The lean adjoint along a trajectory, and the base's velocities its pass computed.

    Attributes:
        states: (N + 1, B, *shape) a_k, a_N the terminal condition.
        base_velocity: (N, B, *shape) v_base(t_k, X_k) (no graph).
    """

    states: torch.Tensor
    base_velocity: torch.Tensor


def lean_adjoint(base: nn.Module, trajectory: torch.Tensor, schedule: MemorylessSchedule, terminal: torch.Tensor,
                 cond: Cond | None = None) -> LeanAdjoint:
    """a_k = a_{k+1} + h [grad_x b_base(X_k, t_k)]^T a_{k+1} backwards from a_N = ``terminal`` (B, *shape).

    ``trajectory`` (N + 1, B, *shape) holds the states X_k (any sampler's; no graph needed). Each step is one
    forward of ``base`` with a graph to its input only and one vector-Jacobian product.
    """
    b, h = trajectory.shape[1], schedule.h
    a = terminal.detach()
    states, velocities = [a], []
    for k in reversed(range(len(schedule.sigma))):
        t = schedule.times[k]
        with torch.enable_grad():
            x = trajectory[k].detach().requires_grad_(True)
            v = as_state(call_field(base, t.expand(b), x, cond), x)
            (vjp,) = torch.autograd.grad(sde_drift(v, x, t, schedule.sigma[k]), x, grad_outputs=a)
        a = a + h * vjp
        states.append(a)
        velocities.append(v.detach())
    return LeanAdjoint(states=torch.stack(states[::-1]), base_velocity=torch.stack(velocities[::-1]))


@dataclass(frozen=True)
class TerminalAdjoint:
    """a_N = -lambda grad r(X_N) (B, *shape), and the rewards r(X_N) (B,) it came from (detached)."""

    adjoint: torch.Tensor
    reward: torch.Tensor


def terminal_adjoint(reward: Any, x1: torch.Tensor, cond: Cond | None, reward_multiplier: float) -> TerminalAdjoint:
    """The terminal condition of the lean adjoint at the samples ``x1`` (B, *shape)."""
    with torch.enable_grad():
        x = x1.detach().requires_grad_(True)
        r = differentiable_reward(reward, x, cond, AdjointMatching.name)
        (grad,) = torch.autograd.grad(r.sum(), x)
    return TerminalAdjoint(adjoint=-reward_multiplier * as_state(grad, x1), reward=r.detach())


def loss_time_indices(batch: int, steps: int, per_trajectory: int, generator: torch.Generator) -> torch.Tensor:
    """(B, m) grid indices k in [0, steps) of the loss times: all of them in order when m = steps (no draw), else m
    distinct ones per trajectory, uniform (CPU ``generator``)."""
    if per_trajectory == steps:
        return torch.arange(steps).expand(batch, steps)
    return torch.rand((batch, steps), generator=generator).argsort(dim=1)[:, :per_trajectory]


@dataclass(frozen=True)
class MatchingRows:
    """The regression rows of one minibatch: sample b at loss time j is row b * m + j.

    Attributes:
        x: (B m, *shape) X_k.   t, sigma, kappa: (B m,).   adjoint: (B m, *shape) a_{k+1}.
        base_velocity: (B m, *shape) v_base(t_k, X_k).   cond: the rows' conditions (or None).
    """

    x: torch.Tensor
    t: torch.Tensor
    sigma: torch.Tensor
    kappa: torch.Tensor
    adjoint: torch.Tensor
    base_velocity: torch.Tensor
    cond: Cond | None


def matching_rows(trajectory: torch.Tensor, adjoint: LeanAdjoint, schedule: MemorylessSchedule, idx: torch.Tensor,
                  cond: Cond | None) -> MatchingRows:
    """Gather the rows of the loss at the indices ``idx`` (B, m) of each trajectory (N + 1, B, *shape)."""
    idx = idx.to(trajectory.device)
    b, m = idx.shape
    col = torch.arange(b, device=trajectory.device)[:, None].expand(b, m)
    shape = trajectory.shape[2:]
    return MatchingRows(
        x=trajectory[idx, col].reshape(b * m, *shape), t=schedule.times[idx].reshape(-1),
        sigma=schedule.sigma[idx].reshape(-1), kappa=schedule.kappa[idx].reshape(-1),
        adjoint=adjoint.states[idx + 1, col].reshape(b * m, *shape),
        base_velocity=adjoint.base_velocity[idx, col].reshape(b * m, *shape),
        cond=index_cond(cond, torch.arange(b, device=trajectory.device).repeat_interleave(m)))


@dataclass(frozen=True)
class MatchingLoss:
    """The regression and what is logged about it.

    Attributes:
        loss: scalar with the graph to the model: mean over rows of mean_dims ||u_theta + sigma a||^2.
        control: (B m, *shape) u_theta = kappa (v_theta - v_base) / sigma (detached).
    """

    loss: torch.Tensor
    control: torch.Tensor


def matching_loss(model: nn.Module, rows: MatchingRows) -> MatchingLoss:
    """The Adjoint Matching regression of ``rows``: one forward of the trained model (B m rows)."""
    v = as_state(call_field(model, rows.t, rows.x, rows.cond), rows.x)
    u = _col(rows.kappa, v) * (v - rows.base_velocity) / _col(rows.sigma, v)
    residual = u + _col(rows.sigma, v) * rows.adjoint
    return MatchingLoss(loss=per_sample_sq(residual).mean(), control=u.detach())


class AdjointMatching(Algorithm):
    """Adjoint Matching: regress the control of the fine-tuned memoryless SDE on -sigma times the lean adjoint."""

    name = "adjoint-matching"
    stat_keys = ("loss", "reward", "path_kl", "adjoint_norm")
    needs_reward_gradient = True
    collects = False

    def __init__(self, config: AdjointMatchingConfig, *, path: StraightPath = StraightPath(), coupling: Any = None,
                 dist: dist_util.DistContext = dist_util.DistContext()) -> None:
        check_straight_path(path.sigma_min)
        self.config, self.path, self.dist = config, path, dist

    def reward_evaluations(self, batch_size: int) -> int:
        return batch_size  # one reward (and its gradient) at the endpoints of the B trajectories

    def network_rows(self, batch_size: int) -> NetworkRows:
        cfg = self.config
        # the trajectory (no graph) and the regression; the reference: one forward + VJP per step (reused in the loss)
        return NetworkRows(model=(cfg.steps + cfg.times_per_trajectory) * batch_size, reference=cfg.steps * batch_size,
                           model_graph=cfg.times_per_trajectory * batch_size, reference_vjp=cfg.steps * batch_size,
                           reward_grad=batch_size)

    def loss(self, model: nn.Module, reference: nn.Module | None, batch: Any, x0: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator, context: LossContext = LossContext()) -> LossOutput:
        cfg = self.config
        if reference is None:
            raise ValueError("adjoint-matching needs the reference (the base drift of the lean adjoint)")
        b = x0.shape[0]
        cond = fresh_conditions(context, b, batch.cond)
        schedule = memoryless_schedule(cfg.steps, x0)
        noise = torch.randn((cfg.steps, *x0.shape), generator=generator, dtype=x0.dtype).to(x0.device)
        trajectory = sde_trajectory(model, x0, noise, schedule, cond)
        terminal = terminal_adjoint(context.reward, trajectory[-1], cond, cfg.reward_multiplier)
        adjoint = lean_adjoint(reference, trajectory, schedule, terminal.adjoint, cond)
        idx = loss_time_indices(b, cfg.steps, cfg.times_per_trajectory, generator)
        rows = matching_rows(trajectory, adjoint, schedule, idx, cond)
        out = matching_loss(model, rows)
        m = cfg.times_per_trajectory
        # Girsanov: KL = E sum_k h/2 ||u_k||^2, estimated from the m loss times of each trajectory
        kl = out.control.pow(2).flatten(1).sum(1).reshape(b, m).sum(1) * (cfg.steps / m) * schedule.h / 2.0
        stats = {"loss": out.loss.detach(), "reward": terminal.reward.mean(), "path_kl": kl.mean(),
                 "adjoint_norm": rows.adjoint.flatten(1).norm(dim=1).mean()}
        return LossOutput(loss=out.loss, stats=stats)

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, **dataclasses.asdict(self.config)}


ALGORITHMS = {AdjointMatching.name: (AdjointMatching, AdjointMatchingConfig)}
