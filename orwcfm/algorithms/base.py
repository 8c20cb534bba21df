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

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..conditions import Cond
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
class NetworkRows:
    """Rows per training step through the trained model (forward and backward) and the reference (forward)."""

    model: int
    reference: int


class Algorithm(ABC):
    """One reward fine-tuning method. Subclasses set ``name`` and ``stat_keys`` and implement :meth:`loss`."""

    name: ClassVar[str]
    stat_keys: ClassVar[tuple[str, ...]]

    @property
    def uses_reference(self) -> bool:
        """Whether :meth:`loss` reads the reference (if not, the loop never runs it)."""
        return True

    def collect(self, policy: nn.Module, x0: torch.Tensor, cond: Cond | None, sampler: SamplingConfig,
                times: torch.Tensor | None = None) -> torch.Tensor:
        """Samples (N, *shape) of the frozen ``policy`` from noise ``x0`` (N, *shape) under conditions ``cond``, with
        the policy's sampler settings (``config.sampling``: solver, steps, chunk size, precision, guidance) on the
        time grid ``times`` (steps + 1,) (default uniform; e.g. a text-to-image pipeline's shifted schedule)."""
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
             generator: torch.Generator) -> LossOutput:
        """The objective of ``batch`` (a :class:`~orwcfm.finetune.buffer.Minibatch`) with fresh noise ``x0`` and
        times ``t`` (B,); ``model`` is the trained network's forward (DDP / compiled), ``reference`` the frozen
        pretrained one (None when :attr:`uses_reference` is False)."""

    def log_row(self, row: Mapping[str, float]) -> dict[str, float]:
        """Numbers derived from the averaged stats, added to the log row."""
        return {}

    def note(self, row: Mapping[str, float]) -> str | None:
        """A one-time remark for the log about these numbers (None: nothing to say)."""
        return None

    def describe(self) -> dict[str, Any]:
        """The settings a summary reports (plain values)."""
        return {"algorithm": self.name}
