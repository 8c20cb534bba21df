"""The scaffolding every training run shares: pretraining (``train.py``) and fine-tuning (``finetune/loop.py``).

One implementation each of what a run does around its loss::

    seed        each rank its own random stream; rank 0 of N draws exactly what one process draws
    wrap        DDP over the trained module when several processes run (torchrun, accelerate launch)
    step        zero_grad, backward, gradient clipping, optimizer and scheduler step, EMA update
    state       optimizer, scheduler, EMA counter and every random state, for a checkpoint; and back
    save        a checkpoint write that fails with one line naming what is kept; old ones pruned
    stop        SIGINT / SIGTERM seen on any rank: save the exact state, then raise ``Interrupted``
    diverged    a non-finite logged loss stops the run with one line
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from . import checkpoint as ckpt
from . import distributed as dist_util
from .errors import UserError
from .interrupt import Interrupted, StopRequest


def seed_rank(seed: int, ctx: dist_util.DistContext) -> torch.Generator:
    """Seed the global RNG (dropout and other global use) and return this rank's CPU generator (noise, times,
    minibatch order: drawn on the CPU so that results do not depend on the device)."""
    rank_seed = seed + ctx.rank * dist_util.SEED_STRIDE
    torch.manual_seed(rank_seed)
    return torch.Generator().manual_seed(rank_seed)


def wrap_ddp(model: nn.Module, ctx: dist_util.DistContext, device: torch.device) -> nn.Module:
    """``model`` inside DistributedDataParallel when several processes run (gradients averaged over ranks during
    backward; the forward is the model's), else ``model`` itself."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def make_run_dir(path: Path) -> None:
    """Create a run folder, or fail with one line saying why."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {path}: {err.strerror}") from None


@dataclass
class Optimization:
    """The trained parameters' update rule: optimizer, learning-rate schedule, gradient clipping and an optional EMA.

    ``model`` is the plain module whose parameters the optimizer holds (not its DDP or compiled wrapper).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_clip: float | None
    ema: AveragedModel | None = None

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """One update from ``loss`` (a scalar with a graph); returns the gradient norm before clipping (0-dim,
        on the device: reading it is the caller's choice, so the hot loop never waits)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return grad_norm

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler and EMA counter (the EMA's weights are saved as a model file of their own)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema_n_averaged": self.ema.n_averaged.cpu() if self.ema is not None else torch.tensor(0)}

    def load_state_dict(self, state: dict[str, Any], ema_weights: dict[str, torch.Tensor] | None, source: str) -> None:
        """Restore what :meth:`state_dict` saved, and the EMA's weights when both sides keep an EMA."""
        if self.ema is not None and ema_weights is not None:
            ckpt.load_weights(self.ema.module, ema_weights, source=source)
            self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """This process's random states: its generator, torch's global RNG, and Python's and NumPy's (for rewards
    that use them)."""
    return {"generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "host_rng": ckpt.host_rng_state()}


def restore_global_rng(state: dict[str, Any]) -> None:
    """Restore the global random states of :func:`rng_state` (the generator is restored per rank by the caller)."""
    torch.set_rng_state(state["torch_rng"])
    if "host_rng" in state:
        ckpt.set_host_rng_state(state["host_rng"])


def save_and_prune(write: Callable[[], Path], path: Path, run_dir: Path, keep: int, ctx: dist_util.DistContext) -> Path:
    """A checkpoint write (a collective: every rank calls it); rank 0 then prunes all but the newest ``keep``.
    A failed write stops the run with one line naming the newest intact checkpoint."""
    out = ckpt.save_or_explain(write, path, run_dir)
    if ctx.is_main:
        ckpt.prune_checkpoints(run_dir, keep)
    return out


def stop_requested(stop: StopRequest | None, ctx: dist_util.DistContext, device: torch.device | str) -> bool:
    """Whether SIGINT / SIGTERM was received on any rank (every rank must stop at the same step)."""
    return stop is not None and dist_util.any_rank(stop.signum is not None, ctx, device)


def interrupt(stop: StopRequest, step: int, save: Callable[[], Path], ctx: dist_util.DistContext) -> None:
    """Write the exact state with ``save`` (every rank), then raise :class:`Interrupted` naming the checkpoint."""
    where = save()
    dist_util.barrier(ctx)
    signum = stop.signum or signal.SIGTERM
    raise Interrupted(f"{signal.Signals(signum).name} at step {step}: checkpoint written to {where}; "
                      "continue with --resume", signum)


def check_finite(loss: float, step: int, what: str, learning_rate: float) -> None:
    """Stop a run whose logged loss is NaN or infinite, with the step and the usual cure."""
    if not math.isfinite(loss):
        raise RuntimeError(f"{what} diverged at step {step}: loss is {loss}; "
                           f"try a smaller learning_rate (now {learning_rate})")
