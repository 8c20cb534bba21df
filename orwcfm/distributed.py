"""Several processes, one run: plain ``torch.distributed`` (DDP underneath), started by ``torchrun`` or
``accelerate launch`` (both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``).
Without a launcher everything here is a no-op and the same code runs in one process.

What is synchronised, and when (see docs/distributed.md)::

    every step      DDP all-reduces (averages) the gradients; with ``weighting: batch-normalized`` also an all_gather of
                    the minibatch's rewards (B floats): B * softmax(tau * r) over the *global* batch, each rank keeps
                    its own slice (finetune/weights.py)
    every refresh   one all_reduce of an error flag after the reward ran: a rank whose reward raised stops all ranks;
                    an all_gather of the buffer's rewards for the refresh's weight scale (log Z, the float-range shift)
    every log       all_reduce of the running means (4 floats)
    every epoch     rank 0 evaluates, writes grids and checkpoints; the others wait at a barrier

Rank ``r`` of ``N`` draws its noise, times and minibatch order from its own generator (seed + r * SEED_STRIDE),
so the ranks sample different data; with N = 1 the stream is exactly the single-process one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import RankFailed, UserError

__all__ = ["DistContext", "RankFailed", "setup", "teardown", "current", "gather_cat", "gather_with_sizes"]

# rank r's generator seed is seed + r * SEED_STRIDE (rank 0: the single-process seed). Not 1_000_003: that is the
# evaluation noise's offset, and rank 1 would have drawn its training noise from the evaluation noise's stream.
SEED_STRIDE = 2_000_029


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | torch.device = "cpu", timeout_s: float = 600.0) -> tuple[DistContext, torch.device]:
    """Join the process group the launcher prepared (once) and return the context and this rank's device.

    The backend is NCCL for CUDA and gloo otherwise; each rank of a CUDA run takes ``cuda:LOCAL_RANK``. Collective
    operations give up after ``timeout_s`` seconds, so a rank that dies can never hang the others for ever.
    """
    device = torch.device(device)
    if not dist.is_initialized() and not launched():
        return DistContext(), device
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start several "
                            "processes with torchrun --nproc_per_node N or accelerate launch")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    ctx = current()
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return ctx, device


def teardown(ctx: DistContext, wait: bool = True) -> None:
    """Leave the process group (after an error too, so that the launcher sees this rank exit).

    ``wait``: meet the other ranks first, so that no rank destroys its side of the group while another is still
    in a collective (gloo can abort the process at exit otherwise). Pass ``False`` on an error path, where a
    failed rank may never arrive.
    """
    if ctx.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def current() -> DistContext:
    """The context of an already initialised process group (one process when there is none)."""
    if not dist.is_available() or not dist.is_initialized():
        return DistContext()
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def split(total: int, ctx: DistContext, name: str) -> int:
    """This rank's share of a global count (``batch_size``, ``buffer_size``); it must divide evenly."""
    if total % ctx.world_size:
        raise UserError(f"config key '{name}' ({total}) must be divisible by the number of processes ({ctx.world_size})")
    return total // ctx.world_size


def gather_with_sizes(x: torch.Tensor, ctx: DistContext) -> tuple[torch.Tensor, list[int]]:
    """Every rank's (n_r, ...) tensor concatenated in rank order, and the sizes n_r (two all_gathers)."""
    if not ctx.enabled:
        return x, [x.shape[0]]
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    sizes_int = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes_int), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes_int)]), sizes_int


def gather_cat(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's (n_r, ...) tensor in rank order (sizes may differ, e.g. after dropped rewards)."""
    return gather_with_sizes(x, ctx)[0]


def any_rank(flag: bool, ctx: DistContext, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one (one all_reduce of a single number)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """The mean of each scalar over ranks, in one all_reduce."""
    if not ctx.enabled:
        return values
    stacked = torch.stack([v.float() for v in values.values()])
    dist.all_reduce(stacked)
    stacked /= ctx.world_size
    return dict(zip(values, stacked))


def gather_objects(obj: object, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
