"""Flow-GRPO (Liu et al., 2025, "Flow-GRPO: Training Flow Matching Models via Online RL") as an
:class:`~orwcfm.algorithms.base.Algorithm`.

The ODE dx = v dt is replaced by an SDE with the same marginals, so that every sampling step is a Gaussian with
a log-probability, and GRPO (PPO-clipped policy gradient with group-normalised advantages) runs on those steps.

**The SDE, in this library's time** (t = 0 noise, t = 1 data, x_t = (1 - t) x0 + t x1, v regresses x1 - x0). The
score of the straight path's marginal is s(x, t) = -(x - t v(x, t)) / (1 - t): x_t given x1 is N(t x1, (1 - t)^2 I),
so s = -E[x0 | x_t] / (1 - t), and x - t v = E[(1 - t) x0 + t x1 - t (x1 - x0) | x_t] = E[x0 | x_t]. For any g,
dx = [v + g^2 / 2 s] dt + g dW has the ODE's marginals (Fokker-Planck: the added drift g^2/2 grad log p cancels the
added diffusion g^2/2 Laplacian p). Flow-GRPO's noise level is g(t) = a sqrt((1 - t) / t) (their sigma = 1 - t;
``noise_level`` a, their eta), so that::

    g^2 / 2 * s = -a^2 / (2 t) * (x - t v)          (the (1 - t) of g^2 cancels the score's: finite at t = 1)

Euler-Maruyama on the run's time grid t_0 = 0 < .. < t_K = 1 (``times``, else uniform ``sampling.steps``)::

    mean_k = x_k + h_k [v - a^2 / (2 t~_k) (x_k - t_k v)],    std_k = a sqrt((1 - t_k) / t~_k) sqrt(h_k)
    x_{k+1} = mean_k + std_k eps,   log p_k = log N(x_{k+1}; mean_k, std_k^2 I)  (summed over the dimensions)

**Choices** (where the public description leaves them open):

- t~_k = t_k, except at t_0 = 0 where g diverges: there t~_0 = t_1 (the first step's next time), as Flow-GRPO's code
  does (it evaluates sigma / (1 - sigma) with the denominator at the first step's next sigma when sigma = 1), in the
  drift as in the noise, so that the first step is one finite Gaussian. The last step (from t_{K-1} < 1 to 1) is
  stochastic like the others, as in their code: g is evaluated at the step's start, where it is finite and > 0,
  so every log-probability is finite; the samples keep an Euler-Maruyama noise of std a sqrt(h / (1 - h)) * sqrt(h).
- The policy's samples always come from this Euler-Maruyama SDE (``sampling.solver`` is not used for them; the
  evaluations keep their ODE sampler, ``eval_sampling``). Classifier-free guidance (``sampling.guidance``) is part
  of the policy: the same guided field gives the stored and the trained log-probabilities, and the reference's.
- The stored ``logp`` is the exact log-density of the transition (summed over dimensions). The PPO ratio and the
  KL use ``log_prob_reduction``: ``mean`` (default, Flow-GRPO's: the log-ratio averaged over the event dimensions,
  so that ``clip_range`` means the same at any sample size) or ``sum`` (the exact ratio of transition densities).
- The KL to the reference is the exact KL of the two step Gaussians, ||mean_theta - mean_ref||^2 / (2 std_k^2)
  with std_k = g sqrt(h_k) (Flow-GRPO's code divides by 2 g^2, without h_k: a step-size-dependent rescaling of
  their beta), averaged over the trained steps.
- Advantages: A = (r - mean_group) / (std_group + 1e-4), population std as their ``np.std``, eps 1e-4 as theirs;
  groups are the condition groups (``cond.group_ids()``: every sample of the same prompt or class of the refresh,
  as their per-prompt stat tracker merges a prompt's samples), the whole refresh when unconditional. Statistics are
  over every rank's buffer (one all_gather of the rewards and group ids), as Flow-GRPO gathers before normalising.
  ``advantage_std: global`` divides by the std of all rewards instead (their ``global_std``). Clipped to
  +-``advantage_clip`` (their ``adv_clip_max`` 5) at the refresh.
- Defaults as Flow-GRPO's code: noise_level 0.7, clip_range 1e-4, no KL (beta 0), every step trained.
  ``train_steps`` trains a random subset of each sample's steps per minibatch (their ``timestep_fraction``), drawn
  from the loop's generator. ``sde_window`` is Flow-GRPO-Fast: only a window of that many consecutive steps per
  sample is stochastic (the others are ODE Euler steps, no log-probability), placed uniformly at random inside
  ``sde_window_range`` (default the first half of the grid, as theirs), one window per sample; only the window's
  steps are trained.
- The SDE noise of a refresh is drawn on the CPU from a generator seeded by a hash of the refresh's noise x0 (which
  the loop draws from the run's generator): ``collect`` has no generator of its own, and this keeps the samples a
  function of the run's random stream (a resumed run continues exactly, on any device) at the cost of one small
  read of x0 per refresh.
- All trained steps of a minibatch go through the network at once (B x train_steps rows, one backward), where
  Flow-GRPO's code accumulates one step at a time: lower ``train_steps`` when memory is short. The buffer (and so
  every checkpoint) keeps each sample's whole trajectory, N (K + 1) states.
- ``prompt_dropout`` is refused (it would score the stored transition under another condition than the one it was
  sampled under, and the ratio would no longer be 1 on-policy), and so is ``sigma_min`` > 0 (the score above is
  that of the path with sigma_min 0). ``finetune_dropout: true`` on a network with dropout makes the on-policy
  ratio differ from 1 by the dropout noise (not refused: the default keeps dropout off). Other loss settings of
  ORW-CFM-W2 (temperature, weighting, coupling, time_sampler) are not used; nor are the fresh noise x0 and times t
  the loop hands to :meth:`FlowGRPO.loss`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .. import distributed as dist_util
from .. import longwork
from ..conditions import Cond, chunk_cond, index_cond
from ..errors import UserError
from ..guidance import guided
from ..models.base import call_field
from ..paths import StraightPath
from ..sampling import autocast, check_time_grid
from .base import Algorithm, Collected, LossContext, LossOutput, NetworkRows, settings_from_options

if TYPE_CHECKING:  # the config package imports the algorithms (to check a config's algorithm settings)
    from ..config.sampling import SamplingConfig

NAME = "flow-grpo"
ADVANTAGE_EPS = 1e-4  # Flow-GRPO's (stat_tracking.py): std + 1e-4
REDUCTIONS = ("mean", "sum")
ADVANTAGE_STDS = ("group", "global")


def _help(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


def _bad(name: str, expected: str, value: Any) -> UserError:
    return UserError(f"{NAME} option {name} must be {expected}, got {value!r}")


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _count(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


@dataclass(frozen=True)
class FlowGRPOConfig:
    """The settings of Flow-GRPO: its ``algorithm_options``. :meth:`from_config` returns them with what the run's
    sampler fixes (:class:`FlowGRPORunConfig`)."""

    noise_level: float = _help(
        "a, the SDE's noise level g(t) = a sqrt((1 - t) / t) (Flow-GRPO's eta / noise_level; > 0): larger explores "
        "more around the ODE's path (the marginals stay the ODE's either way).", 0.7)
    clip_range: float = _help(
        "epsilon of the PPO clip: the ratio of the trained to the sampling policy's step probability is clipped to "
        "[1 - epsilon, 1 + epsilon] (> 0; Flow-GRPO's 1e-4, with log_prob_reduction mean).", 1e-4)
    kl_coefficient: float = _help(
        "beta, strength of the KL to the frozen reference on each trained step, ||mean - mean_ref||^2 / (2 std^2) "
        "(>= 0): 0 = no KL and no reference pass (Flow-GRPO's default).", 0.0)
    train_steps: int | None = _help(
        "How many of each sample's sampling steps are trained per minibatch, drawn at random (>= 1, at most the "
        "stochastic steps: sampling.steps, or sde_window); null = every stochastic step.", None)
    sde_window: int | None = _help(
        "Flow-GRPO-Fast: only a window of this many consecutive steps per sample is stochastic and trained, the "
        "others are ODE steps (>= 1, at most sampling.steps); null = every step is stochastic (Flow-GRPO).", None)
    sde_window_range: tuple[int, int] | None = _help(
        "[first, stop]: the steps a window must lie within, 0 <= first, first + sde_window <= stop <= "
        "sampling.steps (only with sde_window); null = the first half of the steps, [0, max(steps // 2, "
        "sde_window)], as Flow-GRPO-Fast.", None)
    advantage_clip: float = _help(
        "Advantages are clipped to [-c, c] (> 0; Flow-GRPO's adv_clip_max 5).", 5.0)
    advantage_std: Literal["group", "global"] = _help(
        "What an advantage is divided by: the std of its group's rewards (group: the samples of its prompt, every "
        "sample when unconditional) or of every reward of the refresh (global, Flow-GRPO's global_std); the mean "
        "subtracted is always the group's.", "group")
    log_prob_reduction: Literal["mean", "sum"] = _help(
        "How the PPO log-ratio and the KL reduce over a sample's dimensions: mean (Flow-GRPO's: clip_range and "
        "kl_coefficient mean the same at any sample size) or sum (the exact log-ratio of the step densities).",
        "mean")

    def __post_init__(self) -> None:
        for name, lower in (("noise_level", "> 0"), ("clip_range", "> 0"), ("advantage_clip", "> 0"),
                            ("kl_coefficient", ">= 0")):
            value = getattr(self, name)
            if not _number(value) or not (value > 0 if lower == "> 0" else value >= 0):
                raise _bad(name, f"a number {lower}", value)
        if self.advantage_std not in ADVANTAGE_STDS:
            raise _bad("advantage_std", f"one of {', '.join(ADVANTAGE_STDS)}", self.advantage_std)
        if self.log_prob_reduction not in REDUCTIONS:
            raise _bad("log_prob_reduction", f"one of {', '.join(REDUCTIONS)}", self.log_prob_reduction)
        for name in ("sde_window", "train_steps"):
            if getattr(self, name) is not None and not _count(getattr(self, name)):
                raise _bad(name, "a positive integer or null", getattr(self, name))
        w, span = self.sde_window, self.sde_window_range
        if span is not None:
            if w is None:
                shown = list(span) if isinstance(span, (list, tuple)) else span
                raise UserError(f"{NAME} option sde_window_range {shown} needs sde_window (the window's size)")
            if not (isinstance(span, (list, tuple)) and len(span) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
                raise _bad("sde_window_range", "a list [first, stop] of two integers or null", span)
            object.__setattr__(self, "sde_window_range", (span[0], span[1]))  # YAML gives a list
        if w is not None and self.train_steps is not None and self.train_steps > w:
            raise _bad("train_steps", f"an integer in [1, {w}] (sde_window = {w}) or null", self.train_steps)

    @classmethod
    def from_config(cls, config: Any) -> FlowGRPORunConfig:
        """``config.algorithm_options`` (missing keys: defaults), with the sampler's steps and guidance."""
        given = getattr(config, "algorithm_options", None) or {}
        for key, source in (("sampling_steps", "steps"), ("guidance", "guidance")):
            if key in given:
                raise UserError(f"{NAME} takes {key} from the top-level sampling.{source}, not from algorithm_options")
        options = settings_from_options(cls, config, NAME)
        dropout, sigma_min = getattr(config, "prompt_dropout", 0), getattr(config, "sigma_min", 0)
        if _number(dropout) and dropout > 0:
            raise UserError(f"{NAME} scores each stored step under the condition it was sampled under, but "
                            f"prompt_dropout is {config.prompt_dropout}: set prompt_dropout 0")
        if _number(sigma_min) and sigma_min != 0:
            raise UserError(f"{NAME}'s SDE uses the score of the straight path with sigma_min 0, got sigma_min "
                            f"{config.sigma_min}: set sigma_min 0")
        sampler = getattr(config, "sampling", None)
        fixed = {} if sampler is None else {"sampling_steps": sampler.steps, "guidance": sampler.guidance}
        return FlowGRPORunConfig(**dataclasses.asdict(options), **fixed)


@dataclass(frozen=True)
class FlowGRPORunConfig(FlowGRPOConfig):
    """The options, with what the run's sampler fixes (top-level keys, not options): what the algorithm runs with."""

    sampling_steps: int = _help("K, the SDE's steps per sample: the top-level sampling.steps.", 10)
    guidance: float = _help(
        "Classifier-free guidance of the policy, in sampling and in the loss (and the reference's): the top-level "
        "sampling.guidance.", 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        k, w = self.sampling_steps, self.sde_window
        if not _count(k):
            raise UserError(f"{NAME} needs sampling.steps to be a positive integer, got {k!r}")
        if w is not None and w > k:
            raise _bad("sde_window", f"an integer in [1, sampling.steps = {k}] or null", w)
        if w is not None and self.sde_window_range is None:
            object.__setattr__(self, "sde_window_range", (0, max(k // 2, w)))  # the first half, as Flow-GRPO-Fast
        if w is not None:
            first, stop = self.sde_window_range
            if not 0 <= first <= first + w <= stop <= k:
                raise _bad("sde_window_range", f"[first, stop] with 0 <= first, first + sde_window ({w}) <= stop <= "
                                               f"sampling.steps ({k})", [first, stop])
        if w is None and self.train_steps is not None and self.train_steps > k:
            raise _bad("train_steps", f"an integer in [1, {k}] (sampling.steps = {k}) or null", self.train_steps)

    @property
    def stochastic_steps(self) -> int:
        """How many steps of each sample are stochastic (and can be trained)."""
        return self.sde_window if self.sde_window is not None else self.sampling_steps

    @property
    def trained_steps(self) -> int:
        """J, the steps of each sample a minibatch trains."""
        return self.train_steps if self.train_steps is not None else self.stochastic_steps


# ---------------------------------------------------------------------------------------------------------------
# The SDE step: one function for sampling and for the loss, so that on-policy the two log-probabilities agree.


@dataclass(frozen=True)
class StepGaussian:
    """The Gaussian of one Euler-Maruyama step of a batch of R rows.

    Attributes:
        mean: (R, *shape) the step's mean.
        std: (R,) its standard deviation (the same in every dimension).
    """

    mean: torch.Tensor
    std: torch.Tensor


def _rows(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(R,) -> (R, 1, ..., 1), to broadcast against ``x`` (R, *shape)."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def sde_step(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, t_first: torch.Tensor,
             noise_level: float) -> StepGaussian:
    """Euler-Maruyama step of dx = [v + g^2/2 s] dt + g dW from (t, x) to t_next, with g = a sqrt((1 - t) / t~)
    and s = -(x - t v) / (1 - t), so g^2/2 s = -a^2 / (2 t~) (x - t v); t~ = t, or ``t_first`` where t = 0.

    Args:
        v: (R, *shape) the velocity at (t, x) (at least float32).
        x: (R, *shape) the states.
        t, t_next: (R,) the step's start and end times (0 <= t < t_next <= 1).
        t_first: (R,) the grid's first positive time t_1 (stands in for t = 0, where g diverges).
        noise_level: a.
    """
    h = t_next - t
    t_safe = torch.where(t > 0, t, t_first)
    a2 = noise_level**2
    drift = v - _rows(a2 / (2 * t_safe), x) * (x - _rows(t, x) * v)
    std = noise_level * torch.sqrt((1 - t) / t_safe * h)
    return StepGaussian(mean=x + _rows(h, x) * drift, std=std)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) summed over the event dimensions: (R, *shape), (R, *shape), (R,) -> (R,)."""
    z = (x - mean) / _rows(std, x)
    d = x[0].numel()
    return -0.5 * z.pow(2).flatten(1).sum(1) - d * (torch.log(std) + 0.5 * math.log(2 * math.pi))


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Network outputs under bf16 autocast come back in bfloat16: the step is formed in (at least) float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _noise_generator(x0: torch.Tensor) -> torch.Generator:
    """A CPU generator for the SDE noise of one refresh, seeded by a hash of its noise x0 (module docstring)."""
    head = x0.detach().flatten()[:4096].to("cpu", torch.float64).numpy().tobytes()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(head).digest()[:8], "little") >> 1)


# ---------------------------------------------------------------------------------------------------------------
# Advantages


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, *, global_std: bool = False,
                     eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """(r - mean of its group) / (population std of its group, or of all rewards, + eps): (N,), (N,) int64 -> (N,).

    >>> [round(a, 4) for a in group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), torch.tensor([0, 0, 1, 1])).tolist()]
    [-0.9999, 0.9999, 0.0, 0.0]
    """
    r = _at_least_fp32(rewards)
    _, inverse, counts = torch.unique(groups.to(r.device), return_inverse=True, return_counts=True)
    counts = counts.to(r.dtype)
    mean = torch.zeros(len(counts), dtype=r.dtype, device=r.device).scatter_add(0, inverse, r) / counts
    dev = r - mean[inverse]
    if global_std:
        std = r.std(correction=0).expand_as(r)
    else:
        var = torch.zeros(len(counts), dtype=r.dtype, device=r.device).scatter_add(0, inverse, dev.pow(2)) / counts
        std = var.sqrt()[inverse]
    return dev / (std + eps)


# ---------------------------------------------------------------------------------------------------------------
# The algorithm


@dataclass(frozen=True)
class TrainedSteps:
    """The R = B * J transitions of one minibatch the loss trains (J steps of each of B samples).

    Attributes:
        x, x_next: (R, *shape) the stored states before and after the step.
        t, t_next, t_first: (R,) the step's times and the grid's first positive time.
        old_log_prob: (R,) the sampling policy's log-probability of the step (summed over dimensions).
        advantages: (R,) each row's sample's advantage.
        cond: the conditions of the rows (each sample's, repeated J times), or None.
    """

    x: torch.Tensor
    x_next: torch.Tensor
    t: torch.Tensor
    t_next: torch.Tensor
    t_first: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    cond: Cond | None


EXTRAS = ("traj", "logp", "times", "sde")


class FlowGRPO(Algorithm):
    """GRPO on the Gaussian steps of a marginal-preserving SDE of the flow (Flow-GRPO; -Fast with ``sde_window``).

    The buffer's extras: ``traj`` (N, K+1, *shape) the states x_0 .. x_K, ``logp`` (N, K) each step's log-probability
    under the sampling policy (0 on ODE steps), ``times`` (N, K+1) the grid, ``sde`` (N, K) bool which steps are
    stochastic, and after the refresh ``advantages`` (N,).
    """

    name = NAME
    stat_keys = ("loss", "policy", "kl", "kl_term", "clip_fraction", "ratio_mean", "approx_kl", "advantage_std")

    def __init__(self, config: FlowGRPORunConfig, *, path: StraightPath | None = None,
                 coupling: Callable[..., Any] | None = None,
                 dist: dist_util.DistContext = dist_util.DistContext()) -> None:
        self.config, self.path, self.coupling, self.dist = config, path, coupling, dist
        # learned at the refresh (network_rows before any: a guidance scale other than 0 and 1 means conditional)
        self._conditional: bool | None = None

    @property
    def uses_reference(self) -> bool:
        return self.config.kl_coefficient > 0  # beta = 0: no reference pass at all

    def _passes(self) -> int:
        """Network passes per row: classifier-free guidance (scale not 0 or 1) on a conditional run takes two."""
        guided_run = self.config.guidance not in (0.0, 1.0)
        return 2 if guided_run and self._conditional is not False else 1

    def network_rows(self, batch_size: int) -> NetworkRows:
        rows = batch_size * self.config.trained_steps * self._passes()
        return NetworkRows(model=rows, reference=rows if self.uses_reference else 0)

    # -- collect ------------------------------------------------------------------------------------------------

    def _grid(self, steps: int, times: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if times is None:
            return torch.linspace(0.0, 1.0, steps + 1, device=like.device, dtype=like.dtype)
        return check_time_grid(times, steps, "euler").to(device=like.device, dtype=like.dtype)

    def _sde_mask(self, n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
        """(n, K) bool: which steps of each sample are stochastic (all, or one window per sample)."""
        cfg = self.config
        if cfg.sde_window is None:
            return torch.ones((n, steps), dtype=torch.bool)
        first, stop = cfg.sde_window_range
        start = torch.randint(first, stop - cfg.sde_window + 1, (n, 1), generator=generator)
        k = torch.arange(steps)
        return (k >= start) & (k < start + cfg.sde_window)

    @torch.no_grad()
    def _simulate(self, field: nn.Module, x0: torch.Tensor, cond: Cond | None, grid: torch.Tensor,
                  sde: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The SDE from noise x0 (n, *shape) on ``grid`` (K+1,): states (n, K+1, *shape) and step log-probabilities
        (n, K) (0 on the ODE steps, where ``sde`` (n, K) is False)."""
        n, steps = x0.shape[0], grid.shape[0] - 1
        x, states, log_probs = x0, [x0], []
        t_first = grid[1].expand(n)
        for k in range(steps):
            t, t_next = grid[k].expand(n), grid[k + 1].expand(n)
            v = _at_least_fp32(call_field(field, t, x, cond))
            step = sde_step(v, _at_least_fp32(x), t, t_next, t_first, self.config.noise_level)
            stochastic = sde[:, k]
            mean = torch.where(_rows(stochastic, x), step.mean, x + _rows(t_next - t, x) * v)
            std = torch.where(stochastic, step.std, torch.zeros_like(step.std))
            eps = torch.randn(x.shape, generator=generator, dtype=mean.dtype).to(mean.device)
            x_next = mean + _rows(std, mean) * eps
            safe = torch.where(stochastic, std, torch.ones_like(std))  # no 0/0 on the ODE steps
            log_probs.append(torch.where(stochastic, gaussian_log_prob(x_next, mean, safe), torch.zeros_like(std)))
            x = x_next.to(x0.dtype)
            states.append(x)
            longwork.tick(n / steps)  # the run's sampling progress bar; a requested stop honoured here
        return torch.stack(states, 1), torch.stack(log_probs, 1)

    def collect(self, policy: nn.Module, x0: torch.Tensor, cond: Cond | None, sampler: SamplingConfig,
                times: torch.Tensor | None = None) -> Collected:
        """The policy's SDE samples from noise ``x0`` (N, *shape) under ``cond`` (guided by ``sampler.guidance``)
        on the grid ``times`` (K+1,) (default uniform, K = ``sampler.steps``), ``sampler.batch_size`` at a time,
        the network at ``sampler.precision``; the extras of the class docstring."""
        n, steps = x0.shape[0], sampler.steps
        grid = self._grid(steps, times, x0)
        generator = _noise_generator(x0)
        sde = self._sde_mask(n, steps, generator).to(x0.device)
        chunk = sampler.batch_size or n
        trajs, log_probs = [], []
        with autocast(x0.device, sampler.precision):
            for i in range(0, n, chunk):
                part = chunk_cond(cond, i, i + chunk)
                traj, logp = self._simulate(guided(policy, sampler.guidance, part), x0[i : i + chunk], part, grid,
                                            sde[i : i + chunk], generator)
                trajs.append(traj)
                log_probs.append(logp)
        traj = torch.cat(trajs)
        extras = {"traj": traj, "logp": torch.cat(log_probs), "times": grid.expand(n, -1).clone(), "sde": sde}
        return Collected(x=traj[:, -1].clone(), extras=extras)  # not a view: the buffer saves x on its own

    # -- refresh ------------------------------------------------------------------------------------------------

    def refresh(self, buffer: Any) -> None:
        """The buffer's advantages (over every rank's samples), clipped to +-``advantage_clip``."""
        missing = [k for k in EXTRAS if k not in buffer.extras]
        if missing:
            raise RuntimeError(f"{NAME}: the buffer lacks {', '.join(missing)} (its samples were not drawn by "
                               f"{NAME}'s collect)")
        self._conditional = buffer.cond is not None
        rewards = buffer.rewards
        groups = buffer.cond.group_ids() if buffer.cond is not None else torch.zeros(len(rewards), dtype=torch.long)
        everyone, sizes = dist_util.gather_with_sizes(rewards, self.dist)
        all_groups, _ = dist_util.gather_with_sizes(groups.to(rewards.device), self.dist)
        start = sum(sizes[: self.dist.rank])
        adv = group_advantages(everyone, all_groups, global_std=self.config.advantage_std == "global")
        clip = self.config.advantage_clip
        buffer.extras["advantages"] = adv[start : start + len(rewards)].clamp(-clip, clip)

    # -- loss ---------------------------------------------------------------------------------------------------

    def _draw_steps(self, sde: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, J) indices of the steps each sample trains: J of its stochastic steps, uniformly at random."""
        keys = torch.rand(sde.shape, generator=generator).to(sde.device)
        keys = torch.where(sde, keys, torch.full_like(keys, -1.0))  # ODE steps are never drawn
        return keys.topk(self.config.trained_steps, dim=1).indices

    def _trained_steps(self, batch: Any, generator: torch.Generator) -> TrainedSteps:
        ex = batch.extras
        missing = [k for k in (*EXTRAS, "advantages") if k not in ex]
        if missing:
            raise RuntimeError(f"{NAME}.loss needs the buffer's {', '.join(missing)} (collect() and refresh() "
                               "store them)")
        traj, sde = ex["traj"], ex["sde"]
        b, k = sde.shape
        # the settings bound J by the stochastic steps of the samples they draw; only the shape is checked here
        # (counting each sample's stochastic steps would read the device back at every step)
        if self.config.trained_steps > k:
            raise UserError(f"{NAME} trains {self.config.trained_steps} steps per sample, but these samples have "
                            f"{k} steps (sampling.steps changed since they were drawn?)")
        idx = self._draw_steps(sde, generator)
        j = idx.shape[1]
        rows = torch.arange(b, device=idx.device).repeat_interleave(j)
        flat = idx.reshape(-1)
        times = ex["times"]
        return TrainedSteps(
            x=traj[rows, flat], x_next=traj[rows, flat + 1], t=times[rows, flat], t_next=times[rows, flat + 1],
            t_first=times[rows, 1], old_log_prob=ex["logp"][rows, flat], advantages=ex["advantages"][rows],
            cond=index_cond(batch.cond, rows))

    def _step(self, net: nn.Module, steps: TrainedSteps) -> StepGaussian:
        field = guided(net, self.config.guidance, steps.cond)
        v = _at_least_fp32(call_field(field, steps.t, steps.x, steps.cond))
        return sde_step(v, _at_least_fp32(steps.x), steps.t, steps.t_next, steps.t_first, self.config.noise_level)

    def loss(self, model: nn.Module, reference: nn.Module | None, batch: Any, x0: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator, context: LossContext = LossContext()) -> LossOutput:
        """-mean(min(ratio A, clip(ratio) A)) + beta KL over J random stochastic steps of each of the B samples
        (``x0`` and ``t`` are not used: the steps are the stored ones)."""
        cfg = self.config
        steps = self._trained_steps(batch, generator)
        new = self._step(model, steps)
        log_prob = gaussian_log_prob(_at_least_fp32(steps.x_next), new.mean, new.std)
        scale = steps.x[0].numel() if cfg.log_prob_reduction == "mean" else 1
        log_ratio = (log_prob - steps.old_log_prob) / scale
        ratio = torch.exp(log_ratio)
        a = steps.advantages
        clipped = ratio.clamp(1.0 - cfg.clip_range, 1.0 + cfg.clip_range)
        policy = -torch.minimum(ratio * a, clipped * a).mean()
        loss, kl = policy, torch.zeros((), device=policy.device, dtype=policy.dtype)
        if self.uses_reference:
            if reference is None:
                raise ValueError(f"{NAME} with kl_coefficient > 0 needs the reference")
            with torch.no_grad():
                ref = self._step(reference, steps)
            sq = (new.mean - ref.mean).pow(2).flatten(1).sum(1)
            kl = (sq / (2 * new.std.detach().pow(2)) / scale).mean()
            loss = policy + cfg.kl_coefficient * kl
        stats = {"loss": loss.detach(), "policy": policy.detach(), "kl": kl.detach(),
                 "kl_term": cfg.kl_coefficient * kl.detach(),
                 "clip_fraction": ((ratio.detach() - 1).abs() > cfg.clip_range).float().mean(),
                 "ratio_mean": ratio.detach().mean(), "approx_kl": 0.5 * log_ratio.detach().pow(2).mean(),
                 "advantage_std": batch.extras["advantages"].std(correction=0)}
        return LossOutput(loss=loss, stats=stats)

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, **dataclasses.asdict(self.config)}


ALGORITHMS = {NAME: (FlowGRPO, FlowGRPOConfig)}
