"""Pretraining: plain conditional flow matching, written out as one loop.

Data flow of a step::

    x1 ~ data          (B, *shape)      a minibatch of the data set
    x0 ~ N(0, I)       (B, *shape)      noise
    pairing            coupling(x0, x1): independent, or minibatch OT (a permutation of x1)
    t ~ p(t)           (B,)             uniform or logit-normal
    x_t, u_t           path(x0, x1, t)  the straight path and its velocity
    loss               mean ||v(t, x_t) - u_t||^2
    step               Adam, linear warm-up (then constant or cosine), gradient clipping, EMA of the weights
    log / checkpoint   at intervals (numbers are pulled off the device only then)

The result is a reference model for fine-tuning: ``RUN/checkpoints/step_N`` (safetensors + sidecar), a sample
grid ``RUN/samples.png``, ``RUN/metrics.jsonl`` and TensorBoard events.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed as dist_util
from . import runtime
from .conditions import Labels, index_cond
from .config import PretrainConfig, to_dict
from .couplings import get_coupling
from .data import DataSource, load_dataset
from .errors import UserError
from .interrupt import StopRequest
from .models import ModelSpec, build_model, default_spec, num_parameters
from .models.base import call_field
from .paths import StraightPath, make_time_sampler
from .plotting import save_samples
from .runlog import RunLogger
from .sampling import sample


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run produced."""

    run_dir: Path
    checkpoint: Path
    samples_path: Path
    steps: int
    final_loss: float
    wall_seconds: float
    num_parameters: int


def resolve_model_spec(config: PretrainConfig, data: DataSource) -> ModelSpec:
    """The architecture for this data: ``auto`` picks MLP for vectors and UNet for images; options override.
    A conditional run gets ``num_classes`` from the data's labels."""
    base = default_spec(config.model.kind, data.shape)
    options = {**base.options, **config.model.options}
    classes = condition_classes(config, data)
    if classes is not None:
        if base.kind != "unet":
            raise UserError(f"config key 'conditional' needs a model that takes class labels (unet), got '{base.kind}'")
        options["num_classes"] = classes
    return ModelSpec(kind=base.kind, event_shape=tuple(data.shape), options=options)


def condition_classes(config: PretrainConfig, data: DataSource) -> int | None:
    """The number of classes a conditional run is built for (None for an unconditional run)."""
    if not config.conditional:
        return None
    classes = getattr(data, "num_classes", None)
    if classes is None:
        raise UserError(f"config key 'conditional' needs a data set with class labels; '{data.name}' has none")
    return classes


def draw_batch(data: DataSource, n: int, generator: torch.Generator, classes: int | None, dropout: float,
               device: torch.device) -> tuple[torch.Tensor, Labels | None]:
    """A training batch: (n, *shape) data and, for a conditional run, its labels with a ``dropout`` share withheld
    (classifier-free guidance's null label). An unconditional run draws exactly what it always drew."""
    if classes is None:
        return data.sample(n, generator).to(device), None
    x1, labels = data.sample_with_labels(n, generator)
    withheld = torch.rand(n, generator=generator) < dropout
    return x1.to(device), Labels(labels, classes).drop(withheld).to(device)


def warmup_schedule(warmup_steps: int, total_steps: int, kind: str):
    """Learning-rate multiplier per step: linear warm-up from 0, then constant or cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def make_adam(model: nn.Module, lr: float, device: torch.device | str, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam over ``model``'s parameters, with the fused kernel where torch has one (CPU, CUDA, float weights).

    Fused Adam updates every tensor in one kernel: on the 88 tensors of the digits UNet it takes about 0.5 ms a
    step against 1.3 ms for the default multi-tensor loop (benchmarks/finetune_speed.py, options table); the demo's
    results are the same to every printed digit.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.device(device).type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def make_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights (and buffers), or None when disabled."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def pretrain(config: PretrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> PretrainResult:
    """Train a velocity field on ``config.data`` by conditional flow matching and save it under ``run_dir``.

    With ``resume=True`` the run continues from the newest intact checkpoint in ``run_dir`` (weights, EMA,
    optimizer, scheduler and random-number state).
    """
    start_time = time.perf_counter()
    data = load_dataset(config.data.name, config.data.root, **config.data.options)  # bad names fail before any output
    run_dir = Path(run_dir)
    # Several processes (torchrun / accelerate launch): each rank trains on its share of the batch with its own
    # random stream, DDP averages the gradients, rank 0 writes everything. One process: exactly as before.
    ctx, device = dist_util.setup(config.device)
    main = ctx.is_main
    batch_size = dist_util.split(config.batch_size, ctx, "batch_size")
    if main:
        runtime.make_run_dir(run_dir)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    generator = runtime.seed_rank(config.seed, ctx)  # data, noise and times: CPU, device independent

    classes = condition_classes(config, data)
    spec = resolve_model_spec(config, data)
    model = build_model(spec).to(device)
    net = runtime.wrap_ddp(model, ctx, device)
    ema = make_ema(model, config.ema_decay)
    # plain (multi-tensor) Adam: the built-in references' cached weights were trained with it
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_schedule(config.warmup_steps, config.steps, config.lr_schedule))
    optim = runtime.Optimization(model, optimizer, scheduler, config.grad_clip, ema)
    path = StraightPath(config.sigma_min)
    time_sampler = make_time_sampler(config.time_sampler)
    coupling = get_coupling(config.coupling)
    resolved = to_dict(config)

    start_step = 0
    if resume:
        start_step = _restore(run_dir, model, optim, generator, ctx)
    if main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    def save(step: int) -> Path:
        ranks = dist_util.gather_objects(generator.get_state(), ctx)  # collective: every rank
        if not main:
            return ckpt.step_dir(run_dir, step)
        state = {**optim.state_dict(), **runtime.rng_state(generator)}
        if ctx.enabled:
            state["rank_generators"] = ranks
        where = ckpt.step_dir(run_dir, step)
        return runtime.save_and_prune(lambda: ckpt.save_checkpoint(
            where, model=model, ema_model=ema.module if ema is not None else None,
            spec=spec, kind="pretrain", step=step, config=resolved, train_state=state,
            extra={"data": {"name": data.name, "kind": data.kind, "shape": list(data.shape)}, "world_size": ctx.world_size}),
            where, run_dir, config.keep_checkpoints, ctx)

    model.train()
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    last_loss = float("nan")
    checkpoint_path = None
    with (RunLogger(run_dir) if main else nullcontext(None)) as logger, StopRequest() as stop, \
            tqdm(total=config.steps, initial=start_step, disable=not (progress and main),
                 desc=f"pretrain {data.name}", unit="step") as bar:
        for step in range(start_step, config.steps):
            if runtime.stop_requested(stop, ctx, device):  # SIGINT / SIGTERM: save the exact state, then out
                runtime.interrupt(stop, step, lambda: save(step), ctx)
            x1, cond = draw_batch(data, batch_size, generator, classes, config.condition_dropout, device)
            x0 = torch.randn(x1.shape, generator=generator).to(device)
            pair = coupling(x0, x1, groups=None if cond is None else cond.group_ids())  # OT within each class
            cond = index_cond(cond, pair.index)
            t = time_sampler(batch_size, generator).to(device)
            target = path.sample(pair.x0, pair.x1, t)

            loss = (call_field(net, t, target.x_t, cond) - target.u_t).pow(2).mean()
            grad_norm = optim.step(loss)

            loss_sum += loss.detach()
            loss_count += 1
            bar.update(1)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                last_loss = dist_util.mean_over_ranks({"loss": loss_sum / loss_count}, ctx)["loss"].item()
                runtime.check_finite(last_loss, done, "pretraining", config.learning_rate)
                if logger is not None:
                    logger.log(done, {"loss": last_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm})
                bar.set_postfix(loss=f"{last_loss:.4f}")
                loss_sum.zero_()
                loss_count = 0
            if done % config.checkpoint_every == 0 or done == config.steps:
                checkpoint_path = save(done)

    dist_util.barrier(ctx)
    final_model = (ema.module if ema is not None else model).eval()
    samples_path = run_dir / "samples.png"
    if main:
        grid_cond = None if classes is None else Labels(torch.arange(config.num_samples) % classes, classes).to(device)
        samples = sample(final_model, config.num_samples, data.shape, generator=torch.Generator().manual_seed(config.seed + 1),
                         device=device, solver=config.sampling.solver, steps=config.sampling.steps, cond=grid_cond)
        save_samples(samples.cpu(), samples_path, title=f"{data.name}: {config.num_samples} samples")
    dist_util.barrier(ctx)
    return PretrainResult(
        run_dir=run_dir,
        checkpoint=checkpoint_path or ckpt.resolve_checkpoint(run_dir),
        samples_path=samples_path,
        steps=config.steps,
        final_loss=last_loss,
        wall_seconds=time.perf_counter() - start_time,
        num_parameters=num_parameters(model),
    )


def _restore(run_dir: Path, model: nn.Module, optim: runtime.Optimization, generator: torch.Generator,
             ctx: dist_util.DistContext = dist_util.DistContext()) -> int:
    """Load the newest intact checkpoint of ``run_dir`` into the live objects; return its step.

    A checkpoint of N processes resumes with any number: rank r takes saved rank r's random stream when there was
    one (the same number of processes continues exactly), else keeps its own fresh stream.
    """
    loaded = ckpt.load_checkpoint(run_dir)
    state = loaded.train_state()
    if state is None:
        raise UserError(f"checkpoint {loaded.path} has no training state to resume from")
    ckpt.load_weights(model, loaded.weights, source=str(loaded.path))
    optim.load_state_dict(state, loaded.ema_weights, str(loaded.path))
    streams = state.get("rank_generators") or [state["generator"]]
    if ctx.rank < len(streams):
        generator.set_state(streams[ctx.rank])
    runtime.restore_global_rng(state)
    return loaded.step
