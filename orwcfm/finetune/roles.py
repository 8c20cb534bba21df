"""The three roles a network plays in reward fine-tuning, behind one small interface.

    trained     the parameters the optimizer updates (``model``), and the forward the loss calls (``train_net``:
                the same module inside DDP and/or torch.compile)
    policy      the frozen network that generates the training samples; refreshed from the run's model
    reference   the frozen pretrained network the regulariser and the evaluation compare with

:class:`CopyRoles` holds three copies of one architecture (plus an optional EMA, which is then the run's model:
what the policy copies and what every evaluation measures). Other implementations (LoRA adapters of one network,
the policy a second adapter and the reference the adapters disabled) fit the same interface; the loop only calls
what is here.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .. import distributed as dist_util
from ..runtime import wrap_ddp
from ..train import make_ema


class ModelRoles(Protocol):
    """What the loop needs of the networks of a run."""

    model: nn.Module  # trained parameters (the optimizer's)
    train_net: nn.Module  # the forward of the loss
    ema: AveragedModel | None

    def policy(self) -> nn.Module: ...

    def policy_net(self) -> nn.Module: ...

    def reference(self) -> nn.Module: ...

    def current(self) -> nn.Module: ...

    def refresh_policy(self) -> None: ...

    def reset_to_model(self) -> None: ...


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode with no gradients."""
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


class CopyRoles:
    """Trained model, policy and reference as three copies of one network (full fine-tuning).

    Args:
        model: the network to train (moved to ``device``); the policy and the reference start as copies of it.
        device: where the networks live.
        ema_decay: keep an EMA of the trained weights (None: no EMA).
        dropout: train with dropout on; off by default, so that model == reference gives a W2 term of exactly 0
            and the regulariser measures weights, not dropout noise (the reference never uses dropout).
        compile: torch.compile the trained forward and the policy (they share the plain modules' parameters, so
            checkpoints and load_state_dict keep working on the plain modules).
        dist: several processes: the trained forward is wrapped in DDP (gradients averaged over ranks).
    """

    def __init__(self, model: nn.Module, device: torch.device, *, ema_decay: float | None = None, dropout: bool = False,
                 compile: bool = False, dist: dist_util.DistContext = dist_util.DistContext()) -> None:
        self.model = model.to(device)
        self.model.train(dropout)
        self._policy = frozen_copy(self.model)
        self._reference = frozen_copy(self.model)
        self.ema = make_ema(self.model, ema_decay)
        net = wrap_ddp(self.model, dist, device)
        self.train_net = torch.compile(net) if compile else net
        self._policy_net = torch.compile(self._policy) if compile else self._policy

    def policy(self) -> nn.Module:
        """The frozen sampling policy (plain module: its weights)."""
        return self._policy

    def policy_net(self) -> nn.Module:
        """The policy's forward as sampling calls it (compiled when asked)."""
        return self._policy_net

    def reference(self) -> nn.Module:
        return self._reference

    def current(self) -> nn.Module:
        """The run's model: the EMA of the trained weights when there is one, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    def refresh_policy(self) -> None:
        """policy <- the run's model."""
        self._policy.load_state_dict(self.current().state_dict())

    def reset_to_model(self) -> None:
        """Every role (and the EMA) to the weights of ``model``: after the pretrained weights were loaded into it."""
        for frozen in (self._policy, self._reference):
            frozen.load_state_dict(self.model.state_dict())
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
            self.ema.n_averaged.zero_()
