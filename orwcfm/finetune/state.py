"""Checkpoints of a fine-tuning run: everything needed to continue exactly, and continuing from it.

A checkpoint holds the trained weights, the policy's and the EMA's, the optimizer, scheduler and EMA counter
(``runtime.Optimization``), the step and counters, every random state and each rank's sample buffer (with its
conditions), plus in ``meta.json`` the reference's identity (path and SHA-256), the reward's name and the
evaluation history. It resumes with any number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from .. import distributed as dist_util
from .. import runtime
from ..conditions import cond_from_state, cond_state
from ..config import to_dict
from ..errors import UserError
from .buffer import SampleBuffer


def _buffer_state(buffer: SampleBuffer | None) -> dict[str, Any] | None:
    if buffer is None:
        return None
    state = buffer.state_dict()
    if buffer.cond is not None:
        state["cond"] = cond_state(buffer.cond)
    return state


def _buffer_from_state(state: dict[str, Any] | None, run: Any) -> SampleBuffer | None:
    if state is None:
        return None
    cond = cond_from_state(state.get("cond"), run.device, run.prompts)  # prompt conditions: rebuilt by the prompt set
    return SampleBuffer.from_state_dict(state, run.generator, run.device, cond=cond)


def save(run: Any, path: str | Path) -> Path:
    """Write ``run``'s state (a :class:`~orwcfm.finetune.trainer.ORWCFMTrainer`) into the folder ``path``, atomically.

    With several processes every rank must call this (it gathers each rank's random state and sample buffer);
    rank 0 writes.
    """
    ranks = dist_util.gather_objects({"generator": run.generator.get_state(), "buffer": _buffer_state(run.buffer)},
                                     run.dist)
    if not run.dist.is_main:
        return Path(path)
    state = {
        **run.optim.state_dict(),
        **runtime.rng_state(run.generator),
        "step": torch.tensor(run.step),
        "reward_evaluations": torch.tensor(run.reward_evaluations),
        "dropped_samples": torch.tensor(run.dropped_samples),
    }
    if run.buffer is not None:
        state["buffer"] = _buffer_state(run.buffer)
    if run.dist.enabled:  # rank r's stream and buffer, to continue exactly with the same number of processes
        state["ranks"] = ranks
    extra = {"reference": run.reference_identity, "reward": run.reward_name, "history": run.history,
             "event_shape": list(run._shape()), "steps_per_epoch": run.steps_per_epoch,
             "world_size": run.dist.world_size, "evaluated_weights": run.evaluated_weights}
    ema = run.roles.ema
    return ckpt.save_checkpoint(path, model=run.model, spec=run.spec, kind="finetune", step=run.step,
                                config=to_dict(run.config), ema_model=ema.module if ema is not None else None,
                                policy_model=run.roles.policy(), train_state=state, extra=extra)


def _restore_rank_state(run: Any, state: dict[str, Any]) -> None:
    """This rank's random stream and sample buffer from a checkpoint written by any number of processes.

    Same number of processes: each rank continues exactly where it stopped. Another number: rank r keeps
    the stream of saved rank r if there was one (else its own fresh stream), and the saved buffers are pooled
    and dealt out again in equal shares, so the run continues from the same policy samples.
    """
    saved = state.get("ranks") or [{"generator": state["generator"], "buffer": state.get("buffer")}]
    ctx = run.dist
    if ctx.rank < len(saved):
        run.generator.set_state(saved[ctx.rank]["generator"])
    buffers = [r["buffer"] for r in saved if r["buffer"] is not None]
    if len(saved) == ctx.world_size:
        run.buffer = _buffer_from_state(saved[ctx.rank]["buffer"], run)
    elif len(buffers) == len(saved):
        x = torch.cat([b["x"] for b in buffers])
        rewards = torch.cat([b["rewards"] for b in buffers])
        conds = [cond_from_state(b.get("cond")) for b in buffers]
        share = len(x) // ctx.world_size
        rows = torch.arange(ctx.rank * share, (ctx.rank + 1) * share)
        cond = None
        if conds[0] is not None:
            cond = type(conds[0]).cat(conds).index(rows).to(run.device)
        run.buffer = SampleBuffer(x[rows].to(run.device), rewards[rows].to(run.device), run.generator, cond=cond)
        for key in buffers[0].get("extras", {}):  # an algorithm's per-sample extras, pooled and dealt out alike
            run.buffer.extras[key] = torch.cat([b["extras"][key] for b in buffers])[rows].to(run.device)
    else:
        run.buffer = None  # re-sampled from the restored policy at the next step
    if run.buffer is not None:
        run.algorithm.refresh(run.buffer)  # the refresh's constants (deterministic in the buffer)


def resume(run: Any, path: str | Path) -> None:
    """Continue ``run`` from a fine-tuning checkpoint (or a run folder's newest intact one).

    Restores model, policy, EMA, optimizer, scheduler, step, random state, the sample buffer and the metric
    history. The reference is re-loaded from the path recorded in the checkpoint (unless already loaded) and
    must have the same weights (SHA-256) as when the run started.
    """
    loaded = ckpt.load_checkpoint(path)
    if loaded.meta.get("kind") != "finetune":
        raise UserError(f"{loaded.path} is a {loaded.meta.get('kind')} checkpoint, not a fine-tuning one: use load_pretrained")
    recorded = loaded.meta["reference"]
    if run.reference_identity["path"] is None and recorded.get("path"):
        run.load_pretrained(recorded["path"], recorded.get("weights"))
    if run.reference_identity["sha256"] != recorded["sha256"]:
        raise UserError(f"{loaded.path} was fine-tuned from another reference (weights differ from "
                        f"{run.reference_identity['path'] or 'the model given'}); load the reference it recorded: {recorded.get('path')}")
    state = loaded.train_state()
    if state is None:
        raise UserError(f"checkpoint {loaded.path} has no training state to resume from")
    source = str(loaded.path)
    ckpt.load_weights(run.model, loaded.weights, source=source)
    if loaded.policy_weights is not None:
        ckpt.load_weights(run.roles.policy(), loaded.policy_weights, source=source)
    run.optim.load_state_dict(state, loaded.ema_weights, source)
    runtime.restore_global_rng(state)
    run.step = int(state["step"])
    run.reward_evaluations = int(state["reward_evaluations"])
    run.dropped_samples = int(state["dropped_samples"])
    _restore_rank_state(run, state)
    run.history = list(loaded.meta.get("history", []))
    if loaded.spec is not None:
        run.spec = loaded.spec
