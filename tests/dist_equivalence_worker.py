"""Run under torchrun (2 processes): one ORW-CFM-W2 step on this rank's half of a fixed global batch, with the
global weights and DDP; rank 0 saves the mean loss and the averaged gradients for tests/test_distributed.py."""

import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from orwcfm import distributed as dist_util
from orwcfm.finetune.orw import orw_cfm_w2_loss
from orwcfm.finetune.weights import loss_weights, refresh_scale
from orwcfm.models import MLP


def batch(n: int = 64):
    """The global batch (the same on every rank and in the one-process test): samples, rewards, noise, times."""
    g = torch.Generator().manual_seed(7)
    x1 = torch.randn(n, 2, generator=g) * 2
    rewards = -(x1 - torch.tensor([2.0, 0.0])).norm(dim=1)
    return x1, rewards, torch.randn(n, 2, generator=g), torch.rand(n, generator=g)


def nets():
    torch.manual_seed(0)
    model, reference = MLP(2, hidden=32, depth=2), MLP(2, hidden=32, depth=2)
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters()):
            q.copy_(p + 0.1 * torch.randn_like(p))  # a reference that differs: the W2 term is not 0
    return model, reference


def main(out: str) -> None:
    ctx, _ = dist_util.setup("cpu", timeout_s=60)
    x1, rewards, x0, t = batch()
    n = len(x1) // ctx.world_size
    mine = slice(ctx.rank * n, (ctx.rank + 1) * n)
    model, reference = nets()
    ddp = DistributedDataParallel(model)
    scale = refresh_scale(rewards[mine], 3.0, 0.5, ctx)  # over the gathered buffer: the same on every rank
    lw = loss_weights(rewards[mine], 3.0, 0.5, "batch-normalized", scale, ctx)  # the global softmax, this rank's slice
    weights = lw.weights
    out_ = orw_cfm_w2_loss(ddp, reference, x1[mine], weights, x0[mine], t[mine], alpha=lw.w2_coefficient)
    out_.loss.backward()  # DDP averages the gradients over the ranks
    loss = dist_util.mean_over_ranks({"loss": out_.loss.detach()}, ctx)["loss"]
    all_weights = dist_util.gather_cat(weights, ctx)  # collectives: every rank calls them
    if ctx.is_main:
        torch.save({"loss": loss, "weights": all_weights, "log_z": scale.log_z, "grads": [p.grad.clone() for p in model.parameters()]}, out)
    dist_util.teardown(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
    # Leave without running C++ static destructors: with torch 2.13's gloo, about 1 exit in 15 under pytest aborted
    # ("terminate called without an active exception", SIGABRT) *after* the group was destroyed and the result
    # written. The result is what this test checks; the abort at exit is noted as an open issue.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
