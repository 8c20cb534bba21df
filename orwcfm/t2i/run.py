"""One text-to-image fine-tuning run from a resolved config: what ``orwcfm finetune --set model=PATH`` does.

    check     the pipeline folder (transformer class, components, resolution), the prompt files and the reward,
              before any weight of the pipeline is read
    load      the pipeline, its base weights in ``t2i.base_precision``, on the run's device
    encode    every prompt (training, then held-out) once with the pipeline's text encoders; the encoders freed
    roles     LoRA adapters on the transformer: trained, policy, reference = adapters off (one copy of the base)
    reward    the VAE decodes the policy's latents; the reward sees the images and their prompts
    train     the one fine-tuning loop (ORWCFMTrainer) on latents, with the pipeline's shifted schedule
    save      OUT/lora/pytorch_lora_weights.safetensors, diffusers' LoRA format (``pipe.load_lora_weights(OUT/lora)``)
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist_util
from ..config import FinetuneConfig
from ..errors import UserError
from ..prompt_files import PromptSet, read_prompts

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def require_extra() -> None:
    """One line unless diffusers and peft are installed."""
    try:
        import diffusers  # noqa: F401
        import peft  # noqa: F401
    except ImportError as err:
        raise UserError(f"fine-tuning a diffusers pipeline needs the t2i extra ({err.name} is missing): "
                        "pip install -c constraints.txt 'orwcfm[t2i]'") from None


@dataclass(frozen=True)
class Geometry:
    """The image size of a run and the latent shape the policy samples: (C, h, w) at ``height`` x ``width`` px."""

    height: int
    width: int
    latent_shape: tuple[int, int, int]
    image_seq_len: int


def geometry(folder: Path, family: Any, resolution: int | None) -> Geometry:
    """The run's image and latent sizes from the pipeline folder's component configs (no weights read); one line
    unless the VAE factor and the transformer's patch divide the resolution."""
    from .sd3 import LatentSpace

    vae = json.loads((folder / "vae" / "config.json").read_text())
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    space = LatentSpace(float(vae.get("scaling_factor") or 1.0), float(vae.get("shift_factor") or 0.0), factor,
                        int(vae["latent_channels"]))
    # SD3's transformer gives its latent sample size; Flux's config has none, its VAE's gives the image size
    native = int(transformer["sample_size"]) * factor if "sample_size" in transformer else int(vae["sample_size"])
    size = resolution or native
    shape = family.latent_shape(space, transformer, size, size)
    return Geometry(size, size, shape, family.image_seq_len(transformer, shape[1], shape[2]))


def prompt_sets(config: FinetuneConfig) -> tuple[PromptSet, PromptSet | None]:
    """The training prompts and the held-out ones (None: evaluate on the training prompts)."""
    train = read_prompts(config.prompts)
    held_out = read_prompts(config.eval_prompts) if config.eval_prompts is not None else None
    return train, held_out


def free_text_encoders(pipe: Any) -> None:
    """Drop the pipeline's text encoders (every prompt is encoded already) and give their memory back."""
    for name in TEXT_ENCODERS:
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class T2IRun:
    """The pieces of a text-to-image run, built and connected (``trainer.train(...)`` runs it)."""

    pipe: Any
    family: Any
    geometry: Geometry
    prompts: Any  # TextPrompts
    roles: Any  # LoraRoles, or CopyRoles for full fine-tuning
    reward: Any  # DecodedReward
    trainer: Any  # ORWCFMTrainer

    def save_lora(self) -> Path:
        """The trained adapter in diffusers' format at ``run_dir/lora/pytorch_lora_weights.safetensors``; for full
        fine-tuning the run's transformer at ``run_dir/transformer`` (``save_pretrained``, what
        ``from_pretrained(..., subfolder=...)`` or a pipeline's ``transformer=`` takes)."""
        import diffusers

        if hasattr(self.roles, "save_lora"):
            return self.roles.save_lora(self.trainer.run_dir / "lora", getattr(diffusers, self.family.pipeline_class))
        folder = self.trainer.run_dir / "transformer"
        self.trainer.current_model().transformer.save_pretrained(folder)
        return folder


def build(config: FinetuneConfig, device: torch.device | str | None = None, *, cache: str | Path | None = None,
          progress: bool = True, reward_fn: Any = None) -> T2IRun:
    """Check, load, encode and connect a text-to-image run of ``config`` (``config.model`` a pipeline).

    ``reward_fn``: a prompt reward ``fn(images (B, 3, H, W) in [0, 1], prompts) -> (B,)`` instead of
    ``config.reward``.
    """
    from ..finetune.trainer import ORWCFMTrainer
    from .family import family_named
    from .load import inspect_folder, load_pipeline
    from .lora import LoraRoles
    from .prompts import TextPrompts
    from .rewards import DecodedReward, load_prompt_reward
    from .sd3 import time_grid

    require_extra()
    if config.model is None:
        raise UserError("a text-to-image run needs 'model': a diffusers pipeline folder or a cached hub id")
    device = torch.device(device if device is not None else config.device)
    t2i = config.t2i
    # -- check: everything that can be refused without reading the pipeline's weights
    folder = inspect_folder(config.model, cache)
    family = family_named(folder.transformer_class)
    geo = geometry(folder.path, family, t2i.resolution)
    train_prompts, held_out = prompt_sets(config)
    if reward_fn is None:
        reward_fn, reward_name = load_prompt_reward(config.reward, config.reward_options, config.text_prompts, cache)
    else:
        reward_name = getattr(reward_fn, "name", getattr(reward_fn, "__name__", type(reward_fn).__name__))
    # -- load, encode, free
    dtype = torch.bfloat16 if t2i.base_precision == "bf16" else torch.float32
    pipe = load_pipeline(folder.path, dtype=dtype, device=device, progress=progress)
    pipe.set_progress_bar_config(disable=True)
    prompts = TextPrompts.encode(pipe, train_prompts, held_out, config.samples_per_prompt)
    if t2i.text_encoders == "free":
        free_text_encoders(pipe)
    # -- roles, reward, the loop
    field = family.field(pipe, t2i.guidance_embed)
    if t2i.adapter == "lora":
        # peft draws the adapters' A from torch's global generator: seeded by the run, without touching the caller's
        # stream, so that a run (and every rank of it) starts from the same adapters whatever ran before
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            roles = LoraRoles(field, pipe.transformer, t2i.lora, gradient_checkpointing=t2i.gradient_checkpointing,
                              dist=dist_util.current())
        model = roles.model
    else:  # full fine-tuning: the trainer's copy roles (trained, policy and reference copies of the field)
        if t2i.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        roles, model = None, field
    reward = DecodedReward(reward_fn, pipe.vae, prompts, chunk=t2i.decode_chunk, name=reward_name)
    grids: dict[int, torch.Tensor] = {}

    def times(steps: int) -> torch.Tensor:
        # the pipeline's own (shifted) schedule; computed once per number of steps (it resets the scheduler)
        if steps not in grids:
            grids[steps] = time_grid(pipe.scheduler, steps, geo.image_seq_len, flux_spacing=family.flux_spacing)
        return grids[steps]

    trainer = ORWCFMTrainer(model, config, device, reward_fn=reward, event_shape=geo.latent_shape, cache=cache,
                            progress=progress, prompts=prompts, roles=roles, time_grid=times, decode=reward.images)
    trainer.reference_identity = {**trainer.reference_identity, "path": str(folder.path), "weights": "base"}
    return T2IRun(pipe, family, geo, prompts, trainer.roles, reward, trainer)


def run_t2i(config: FinetuneConfig, *, resume: bool = False, cache: str | Path | None = None,
            progress: bool = True) -> Any:
    """Fine-tune ``config.model`` with LoRA and write ``run_dir/lora``; returns the run's summary.

    Under ``torchrun`` / ``accelerate launch`` every process runs this (one process group; DDP on the adapter).
    """
    ctx, device = dist_util.setup(config.device)
    finished = False
    try:
        run = build(config, device, cache=cache, progress=progress)
        trainer = run.trainer
        if resume:
            trainer.resume(trainer.run_dir)
        summary = trainer.train(config.epochs, config.steps_per_epoch)
        if ctx.is_main:
            lora = run.save_lora()
            if not progress:
                print(summary.table())
            what = "LoRA (diffusers format)" if config.t2i.adapter == "lora" else "transformer (save_pretrained)"
            print(f"run folder: {trainer.run_dir}\n{what}: {lora}")
        finished = True
        return summary
    finally:
        dist_util.teardown(ctx, wait=finished)
