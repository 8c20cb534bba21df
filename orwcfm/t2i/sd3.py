"""Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``) as a velocity field of this library.

Conventions. diffusers: ``x_sigma = (1 - sigma) x_data + sigma noise`` with sigma = 1 at noise, the transformer
predicts ``noise - x_data`` and takes ``timestep = 1000 sigma``. This library: t = 0 at noise and t = 1 at data,
``dx/dt = v``. So ``t = 1 - sigma`` and ``v = -prediction``; an Euler step on the grid ``t_k = 1 - sigma_k`` is
exactly diffusers' ``FlowMatchEulerDiscreteScheduler.step`` (``x + (sigma_{k+1} - sigma_k) prediction``). The
shifted schedule is the pipeline's scheduler's own (:func:`time_grid`). Latents are the VAE's, scaled as the
pipeline scales them: ``z = (vae_latent - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UserError


@dataclass(frozen=True)
class PromptEmbeds:
    """The text conditions of a batch of B samples (implements :class:`~orwcfm.conditions.Cond`).

    Attributes:
        hidden: (B, L, D) ``encoder_hidden_states`` (SD3: the CLIP and T5 token embeddings joined).
        pooled: (B, P) ``pooled_projections`` (SD3: the two CLIP encoders' pooled outputs joined).
        ids: (B,) int64 which prompt of the prompt set each sample was drawn for (its group).
        null_hidden: (L, D) and null_pooled: (P,) the empty prompt's embeddings: classifier-free guidance's
            unconditional pass (as diffusers' pipelines encode the negative prompt "").
    """

    hidden: Tensor
    pooled: Tensor
    ids: Tensor
    null_hidden: Tensor
    null_pooled: Tensor

    def __post_init__(self) -> None:
        b = len(self.ids)
        if self.hidden.dim() != 3 or self.hidden.shape[0] != b or self.pooled.shape != (b, self.null_pooled.shape[-1]):
            raise UserError(f"prompt embeddings of {b} samples must be hidden (B, L, D) and pooled (B, P), got "
                            f"{tuple(self.hidden.shape)} and {tuple(self.pooled.shape)}")
        if self.null_hidden.shape != self.hidden.shape[1:]:
            raise UserError(f"the empty prompt's hidden states must be {tuple(self.hidden.shape[1:])}, got "
                            f"{tuple(self.null_hidden.shape)}")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, idx: Tensor) -> PromptEmbeds:
        return PromptEmbeds(self.hidden[idx], self.pooled[idx], self.ids[idx.to(self.ids.device)], self.null_hidden,
                            self.null_pooled)

    def group_ids(self) -> Tensor:
        return self.ids

    def null(self) -> PromptEmbeds:
        b = len(self)
        return PromptEmbeds(self.null_hidden.expand(b, *self.null_hidden.shape).contiguous(),
                            self.null_pooled.expand(b, -1).contiguous(), self.ids, self.null_hidden, self.null_pooled)

    def drop(self, mask: Tensor) -> PromptEmbeds:
        """The empty prompt's embeddings where ``mask`` ((B,) bool) is True (prompt dropout); the ids stay, so
        the samples keep their groups."""
        if mask.dtype != torch.bool or tuple(mask.shape) != (len(self),):
            raise UserError(f"a prompt-dropout mask must be a bool tensor of shape ({len(self)},), got {mask.dtype} "
                            f"{tuple(mask.shape)}")
        m = mask.to(self.hidden.device)
        return PromptEmbeds(torch.where(m[:, None, None], self.null_hidden, self.hidden),
                            torch.where(m[:, None], self.null_pooled, self.pooled), self.ids, self.null_hidden,
                            self.null_pooled)

    def state(self) -> dict:
        """What a checkpoint keeps of these conditions: the prompt indices (the prompt set re-encodes them)."""
        return {"kind": "prompts", "ids": self.ids.cpu()}

    def to(self, device: torch.device | str) -> PromptEmbeds:
        return PromptEmbeds(*(getattr(self, k).to(device) for k in ("hidden", "pooled", "ids", "null_hidden",
                                                                   "null_pooled")))


class SD3Field(nn.Module):
    """``SD3Field(transformer)(t, z, cond)``: t (B,) in [0, 1] (0 = noise), z (B, C, h, w) scaled latents, cond a
    :class:`PromptEmbeds`; returns the velocity (B, C, h, w) = -(the transformer's noise - data prediction)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, t: Tensor, z: Tensor, cond: PromptEmbeds | None = None) -> Tensor:
        if cond is None:
            raise UserError("the SD3 transformer needs prompt embeddings (its unconditional pass is the empty prompt)")
        # a base in bf16 takes its inputs in bf16; the samples, the ODE state and the loss stay in z's dtype
        dtype = self.transformer.dtype
        sigma = (1.0 - t).to(dtype)
        prediction = self.transformer(hidden_states=z.to(dtype), timestep=1000.0 * sigma,
                                      encoder_hidden_states=cond.hidden.to(dtype),
                                      pooled_projections=cond.pooled.to(dtype), return_dict=False)[0]
        return -prediction.to(z.dtype)


def time_grid(scheduler, steps: int, image_seq_len: int | None = None, *, flux_spacing: bool | None = None) -> Tensor:
    """(steps + 1,) the library's time grid ``t = 1 - sigma`` of the pipeline's own scheduler for ``steps``
    inference steps: its shift (SD3: 3), or for a scheduler with dynamic shifting (Flux) the shift of
    ``image_seq_len`` latent tokens, as the pipelines compute it.

    ``flux_spacing``: space the unshifted sigmas as FluxPipeline does, ``np.linspace(1, 1 / steps, steps)``, instead
    of the scheduler's own spacing from sigma_max to sigma_min (StableDiffusion3Pipeline's). Default: FluxPipeline's
    for a dynamically shifted scheduler (Flux.1-dev), the scheduler's otherwise (SD3); pass True for a Flux pipeline
    with a fixed shift (Flux.1-schnell)."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    dynamic = bool(cfg.get("use_dynamic_shifting"))
    kwargs = {}
    if dynamic:
        if image_seq_len is None:
            raise UserError("this scheduler shifts its schedule by the image size: pass image_seq_len")
        kwargs["mu"] = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256),
                                       cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                       cfg.get("max_shift", 1.15))
    if flux_spacing if flux_spacing is not None else dynamic:  # FluxPipeline's custom sigmas
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), **kwargs)
    else:
        scheduler.set_timesteps(steps, **kwargs)
    sigmas = scheduler.sigmas.to(torch.float64)
    if abs(float(sigmas[0]) - 1.0) > 1e-6 or float(sigmas[-1]) != 0.0:
        raise UserError(f"expected a schedule from sigma 1 to 0, got {float(sigmas[0])} .. {float(sigmas[-1])}")
    times = 1.0 - sigmas
    times[0] = 0.0  # sigma_max is 1 up to float rounding
    return times.to(torch.float32)


@dataclass(frozen=True)
class LatentSpace:
    """The VAE's latent space as the pipeline uses it: ``z = (vae_latent - shift) * scale``.

    Attributes:
        scale, shift: the VAE config's ``scaling_factor`` and ``shift_factor``.
        factor: image pixels per latent pixel (2 ** (number of VAE blocks - 1)).
        channels: latent channels.
    """

    scale: float
    shift: float
    factor: int
    channels: int

    @classmethod
    def of(cls, vae: nn.Module) -> LatentSpace:
        cfg = vae.config
        return cls(float(cfg.scaling_factor), float(cfg.get("shift_factor") or 0.0),
                   2 ** (len(cfg.block_out_channels) - 1), int(cfg.latent_channels))

    def shape(self, height: int, width: int, patch_size: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of a ``height`` x ``width`` image; one line unless the VAE factor and the
        transformer's patch size divide the resolution."""
        step = self.factor * patch_size
        if height % step or width % step or height <= 0 or width <= 0:
            raise UserError(f"resolution {height}x{width} must be a positive multiple of {step} (VAE factor "
                            f"{self.factor} x patch size {patch_size})")
        return self.channels, height // self.factor, width // self.factor

    @torch.no_grad()
    def decode(self, vae: nn.Module, z: Tensor, chunk: int = 8) -> Tensor:
        """(B, 3, H, W) images in [0, 1] from scaled latents (B, C, h, w), ``chunk`` at a time (memory)."""
        dtype = next(vae.parameters()).dtype
        parts = [vae.decode((z[i:i + chunk] / self.scale + self.shift).to(dtype), return_dict=False)[0]
                 for i in range(0, len(z), chunk)]
        return (torch.cat(parts).float() / 2 + 0.5).clamp(0, 1)
