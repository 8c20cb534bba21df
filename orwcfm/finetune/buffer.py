"""A buffer of policy samples, their rewards and conditions, drawn from in shuffled minibatches.

The sampling policy is frozen between refreshes, so every sample it produced stays an exact sample of the
current policy until the next refresh: a buffer filled once per refresh can feed several gradient steps
(each sample used ``steps * batch_size / len(buffer)`` times on average) instead of integrating the ODE for
every step. Whatever belongs to a sample (its condition, an algorithm's per-sample extras such as a group's
normaliser) is indexed with the same permutation as the sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..conditions import Cond, check_cond, index_cond


@dataclass(frozen=True)
class Minibatch:
    """Samples, their rewards and conditions.

    Attributes:
        x: (B, *shape) policy samples.
        rewards: (B,) their rewards.
        cond: the conditions they were generated for (one per sample), or None.
        extras: per-sample tensors (B, ...) an algorithm attached to the buffer at its refresh.
    """

    x: torch.Tensor
    rewards: torch.Tensor
    cond: Cond | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class SampleBuffer:
    """Holds (N, *shape) samples with (N,) rewards (and conditions); ``next(B)`` walks a fresh random permutation
    per pass."""

    def __init__(self, x: torch.Tensor, rewards: torch.Tensor, generator: torch.Generator,
                 order: torch.Tensor | None = None, pos: int = 0, cond: Cond | None = None) -> None:
        if x.shape[0] != rewards.shape[0]:
            raise ValueError(f"buffer needs as many rewards as samples, got {rewards.shape[0]} for {x.shape[0]}")
        check_cond(cond, x.shape[0], "buffer samples")
        self.x, self.rewards, self.cond, self.generator = x, rewards, cond, generator
        self.extras: dict[str, torch.Tensor] = {}
        self.order = torch.randperm(len(x), generator=generator) if order is None else order
        self.pos = pos

    def __len__(self) -> int:
        return self.x.shape[0]

    def next(self, batch_size: int) -> Minibatch:
        """The next ``batch_size`` samples of the current pass (a new pass reshuffles; no sample repeats within one)."""
        if batch_size > len(self):
            raise ValueError(f"batch_size {batch_size} is larger than the buffer ({len(self)} samples)")
        if self.pos + batch_size > len(self):
            self.order = torch.randperm(len(self), generator=self.generator)
            self.pos = 0
        idx = self.order[self.pos : self.pos + batch_size].to(self.x.device)
        self.pos += batch_size
        return Minibatch(x=self.x[idx], rewards=self.rewards[idx], cond=index_cond(self.cond, idx),
                         extras={k: v[idx] for k, v in self.extras.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Samples, rewards, order, position and the per-sample extras (conditions are saved by the caller: their
        type is the task's)."""
        state = {"x": self.x.cpu(), "rewards": self.rewards.cpu(), "order": self.order, "pos": torch.tensor(self.pos)}
        if self.extras:
            state["extras"] = {k: v.cpu() for k, v in self.extras.items()}
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device,
                        cond: Cond | None = None) -> SampleBuffer:
        # no random draw here: resuming must leave the generator exactly where it was saved
        buffer = cls(state["x"].to(device), state["rewards"].to(device), generator, state["order"], int(state["pos"]),
                     cond=cond)
        buffer.extras.update({k: v.to(device) for k, v in state.get("extras", {}).items()})
        return buffer
