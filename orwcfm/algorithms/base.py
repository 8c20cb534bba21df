"""What a reward fine-tuning algorithm is, to the loop that runs it (``finetune/loop.py``).

The loop owns everything the families share: when the policy is refreshed, how its samples are scored (the black-box
reward, on every rank, NaNs stopped or dropped), the buffer and its minibatches, the optimizer step, logging,
evaluation and checkpoints. An algorithm owns what differs between them::

    collect(policy, x0, cond)    the policy's samples for one refresh (default: the ODE from noise x0)
    refresh(buffer)              constants of one refresh (e.g. a normaliser over every sample it produced)
    loss(roles, batch, x0, t)    the objective of one minibatch -> LossOutput(loss, stats)
    log_row(row)                 derived numbers for the log (e.g. the regulariser's share of the loss)

The stats are 0-dim tensors left on the device; the loop sums them between logs and reads them back only every
``log_every`` steps, so the algorithm never makes the hot loop wait for the accelerator.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..conditions import Cond
from ..errors import UserError
from ..guidance import guided
from ..sampling import generate

if TYPE_CHECKING:  # the config package imports this one (to check a config's algorithm settings)
    from ..config.sampling import SamplingConfig


@dataclass(frozen=True)
class LossOutput:
    """The loss of one minibatch and the numbers to log about it.

    Attributes:
        loss: scalar with the graph to the trained parameters.
        stats: name -> detached 0-dim tensor (averaged over the steps between two logs, and over ranks).
    """

    loss: torch.Tensor
    stats: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Collected:
    """What an algorithm's :meth:`Algorithm.collect` drew for one refresh.

    Attributes:
        x: (N, *shape) the final samples (what the reward scores).
        extras: name -> (N, ...) per-sample tensors kept beside them in the buffer and handed to :meth:`Algorithm.loss`
            in ``batch.extras`` (e.g. Flow-GRPO's trajectory and its step log-probabilities); saved in checkpoints.
    """

    x: torch.Tensor
    extras: dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossContext:
    """What some algorithms' losses need beyond the trained model and the reference.

    Attributes:
        policy: the frozen sampling policy's forward (the velocity that drew the buffer; DiffusionNFT's old policy),
            given when :attr:`Algorithm.uses_policy` is True.
        reward: the differentiable reward ``x (B, *shape) -> (B,)`` (DRaFT, ReFL, Adjoint Matching), given when
            :attr:`Algorithm.needs_reward_gradient` is True.
        cond_sampler: ``n -> conditions`` of n fresh samples drawn from the prompt set (None: unconditional), for
            losses that sample their own batch.
    """

    policy: nn.Module | None = None
    reward: Any = None
    cond_sampler: Any = None


@dataclass(frozen=True)
class NetworkRows:
    """Rows per training step through the trained model (forward and backward), the reference (forward) and the
    frozen policy (forward, for losses that read the old velocity).

    The methods that sample inside their loss split these further (the step anatomy times each kind of pass):
    ``model_graph`` of the model's rows carry a graph (forward and backward; None: all of them, the rest are
    forwards without one, e.g. DRaFT's first steps - K sampling steps); ``reference_vjp`` of the reference's rows
    also take a vector-Jacobian product in x (the lean adjoint); ``reward_grad`` rows of the reward are
    differentiated (forward and backward) inside the loss."""

    model: int
    reference: int
    policy: int = 0
    model_graph: int | None = None
    reference_vjp: int = 0
    reward_grad: int = 0


class Algorithm(ABC):
    """One reward fine-tuning method. Subclasses set ``name`` and ``stat_keys`` and implement :meth:`loss`."""

    name: ClassVar[str]
    stat_keys: ClassVar[tuple[str, ...]]

    # The loss reads the frozen policy (LossContext.policy); the reward must be differentiable and the loss calls it.
    uses_policy: ClassVar[bool] = False
    needs_reward_gradient: ClassVar[bool] = False
    # False: the loss draws its own samples (DRaFT, ReFL, Adjoint Matching); the loop then neither collects nor
    # scores a buffer, and the minibatch it hands over holds only fresh noise's shape (x zeros, rewards zeros)
    collects: ClassVar[bool] = True

    def reward_evaluations(self, batch_size: int) -> int:
        """Reward evaluations the loss itself makes per step on a minibatch of ``batch_size`` (counted in the run's
        budget beside the buffer's)."""
        return 0

    @property
    def uses_reference(self) -> bool:
        """Whether :meth:`loss` reads the reference (if not, the loop never runs it)."""
        return True

    def collect(self, policy: nn.Module, x0: torch.Tensor, cond: Cond | None, sampler: SamplingConfig,
                times: torch.Tensor | None = None) -> torch.Tensor | Collected:
        """Samples (N, *shape) of the frozen ``policy`` from noise ``x0`` (N, *shape) under conditions ``cond``, with
        the policy's sampler settings (``config.sampling``: solver, steps, chunk size, precision, guidance) on the
        time grid ``times`` (steps + 1,) (default uniform; e.g. a text-to-image pipeline's shifted schedule).
        An algorithm that keeps more per sample (a trajectory) returns a :class:`Collected`."""
        return generate(guided(policy, sampler.guidance, cond), x0, solver=sampler.solver, steps=sampler.steps,
                        batch_size=sampler.batch_size, precision=sampler.precision, cond=cond, times=times)

    def network_rows(self, batch_size: int) -> NetworkRows:
        """How many rows of a minibatch of ``batch_size`` go through each network per step (for the step anatomy
        of ``benchmarks/finetune_speed.py``: the passes a step cannot do without)."""
        return NetworkRows(model=batch_size, reference=batch_size if self.uses_reference else 0)

    def refresh(self, buffer: Any) -> None:
        """Called once per refresh with the new :class:`~orwcfm.finetune.buffer.SampleBuffer` (on every rank)."""

    @abstractmethod
    def loss(self, model: nn.Module, reference: nn.Module | None, batch: Any, x0: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator, context: LossContext = LossContext()) -> LossOutput:
        """The objective of ``batch`` (a :class:`~orwcfm.finetune.buffer.Minibatch`) with fresh noise ``x0`` and
        times ``t`` (B,); ``model`` is the trained network's forward (DDP / compiled), ``reference`` the frozen
        pretrained one (None when :attr:`uses_reference` is False); ``context`` what :attr:`uses_policy` and
        :attr:`needs_reward_gradient` ask for."""

    def log_row(self, row: Mapping[str, float]) -> dict[str, float]:
        """Numbers derived from the averaged stats, added to the log row."""
        return {}

    def note(self, row: Mapping[str, float]) -> str | None:
        """A one-time remark for the log about these numbers (None: nothing to say)."""
        return None

    def describe(self) -> dict[str, Any]:
        """The settings a summary reports (plain values)."""
        return {"algorithm": self.name}


def settings_from_options(cls: type, config: Any, name: str) -> Any:
    """An algorithm's settings dataclass ``cls`` built from ``config.algorithm_options`` (a mapping; missing keys take
    their defaults); one line naming an unknown option and listing the known ones."""
    options = dict(getattr(config, "algorithm_options", None) or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} in algorithm_options of {name}; its options: {', '.join(known)}")
    return cls(**options)


def settings_help(cls: type) -> dict[str, str]:
    """name -> help sentence of every field of an algorithm's settings dataclass (``orwcfm algorithms``)."""
    return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(cls)}
