"""One fine-tuning run from a resolved config: what ``orwcfm finetune`` and ``orwcfm demo`` do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import distributed as dist_util
from ..checkpoint import load_checkpoint
from ..config import FinetuneConfig
from ..errors import UserError
from .trainer import FinetuneSummary, ORWCFMTrainer, resolve_reward


def resolve_reference(ref_path: str | None, cache: str | Path | None = None, progress: bool = True,
                      ref_model: dict | None = None) -> Path:
    """The reference checkpoint folder of ``ref_path`` (``builtin:NAME`` is pretrained and cached on first use), or
    a torchcfm ``.pt`` file when ``ref_model`` says which network to load it into."""
    if ref_path is None:
        raise UserError("fine-tuning needs a reference: --ref DIR (a checkpoint or run folder, or builtin:digits) or "
                        "ref_path in the config; or, for a text-to-image config (sd3-clip, flux-clip), a pipeline: "
                        "--set model=FOLDER --set prompts=FILE")
    if ref_path.startswith("builtin:"):
        from ..assets import builtin_reference

        return builtin_reference(ref_path[len("builtin:"):], cache, progress=progress)
    path = Path(ref_path)
    if path.is_file():
        if ref_model is None:
            raise UserError(f"{path} is a single file (weights only, e.g. torchcfm's net_model / ema_model): say which "
                            "network to load it into with ref_model {kind, event_shape, options} (the cifar10-clip "
                            "preset has torchcfm's CIFAR-10 UNet), or use an orwcfm checkpoint folder")
        return path
    return load_checkpoint(path).path


def reference_model(reference: Path, config: FinetuneConfig, device) -> Any:
    """The network the reference's weights go into: rebuilt from an orwcfm checkpoint's sidecar, or, for a
    weights-only ``.pt`` file, built from ``config.ref_model``."""
    if reference.is_file():
        from ..models import ModelSpec, build_model

        if not isinstance(config.ref_model, dict):
            raise UserError(f"config key 'ref_model' must be a mapping {{kind, event_shape, options}}, got "
                            f"{config.ref_model!r}")
        return build_model(ModelSpec.from_dict(dict(config.ref_model))).to(device)
    if config.ref_model is not None:
        raise UserError(f"config key 'ref_model' is for weights-only .pt references; {reference} is an orwcfm "
                        "checkpoint, which carries its own architecture: remove ref_model")
    return load_checkpoint(reference).build_model(config.ref_weights, device=device)


def run_finetune(config: FinetuneConfig, *, resume: bool = False, cache: str | Path | None = None,
                 progress: bool = True) -> FinetuneSummary:
    """Build the model from the reference's sidecar (or, with ``config.model``, load a diffusers pipeline and give
    its transformer LoRA adapters: :mod:`orwcfm.t2i.run`), fine-tune it and return the summary.

    Under ``torchrun`` / ``accelerate launch`` every process runs this; they join one process group first
    (``distributed.setup``), and rank 0 builds any cached asset (classifier, built-in reference) before the others
    read it.
    """
    if config.model is not None:  # a diffusers text-to-image pipeline, fine-tuned with LoRA
        from ..t2i.run import run_t2i

        return run_t2i(config, resume=resume, cache=cache, progress=progress)
    ctx, device = dist_util.setup(config.device)
    finished = False
    try:
        for turn in ("main", "others"):  # rank 0 alone first: cached assets are built once, then read by all
            if (turn == "main") == ctx.is_main:
                # The reward first: a misspelt reward must fail in a second, not after pretraining a reference.
                reward_fn, _ = resolve_reward(config, cache=cache)
                reference = resolve_reference(config.ref_path, cache, progress and ctx.is_main, config.ref_model)
            dist_util.barrier(ctx)
        model = reference_model(reference, config, device)
        trainer = ORWCFMTrainer(model, config, device, reward_fn=reward_fn, cache=cache, progress=progress)
        trainer.load_pretrained(reference)
        if resume:
            trainer.resume(trainer.run_dir)
        summary = trainer.train(config.epochs, config.steps_per_epoch)
        if ctx.is_main:
            if not progress:  # with progress on, train() has printed the table already
                print(summary.table())
            print(f"run folder: {trainer.run_dir}")
        finished = True
        return summary
    finally:
        dist_util.teardown(ctx, wait=finished)
