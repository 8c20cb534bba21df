"""Evaluation of a velocity field on fixed noise: reward statistics, diversity and the reward's task metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..metrics import mean_pairwise_distance
from ..rewards import call_reward
from ..sampling import integrate


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one set of samples.

    Attributes:
        samples: (N, *shape) the samples, on the CPU.
        reward_mean, reward_std: over the finite rewards.
        diversity: mean pairwise Euclidean distance between samples.
        task: the reward's own metrics (e.g. ``target_fraction``, ``class_histogram``), when it has any.
    """

    samples: torch.Tensor
    reward_mean: float
    reward_std: float
    diversity: float
    task: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """The numbers worth logging (lists such as histograms are left out)."""
        out = {"reward_mean": self.reward_mean, "reward_std": self.reward_std, "diversity": self.diversity}
        out.update({k: float(v) for k, v in self.task.items() if isinstance(v, (int, float))})
        return out


@torch.no_grad()
def evaluate(model: nn.Module, reward_fn, noise: torch.Tensor, *, solver: str, steps: int,
             name: str = "reward", step: int = 0, batch_size: int = 1000) -> Evaluation:
    """Integrate ``model`` from the fixed ``noise`` (N, *shape) and measure the samples.

    The same noise before and after training makes the comparison paired: differences come from the model,
    not from the draw.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.cat([integrate(model, noise[i : i + batch_size], solver=solver, steps=steps).samples
                       for i in range(0, len(noise), batch_size)])
    finally:
        model.train(was_training)
    scored = call_reward(reward_fn, x, name=name, step=step, on_bad="drop")  # NaNs are left out of the statistics
    finite = scored.values[scored.valid].cpu()
    task = reward_fn.metrics(x) if hasattr(reward_fn, "metrics") else {}
    return Evaluation(
        samples=x.cpu(),
        reward_mean=finite.mean().item() if len(finite) else float("nan"),
        reward_std=finite.std().item() if len(finite) > 1 else float("nan"),
        diversity=mean_pairwise_distance(x),
        task=dict(task),
    )
