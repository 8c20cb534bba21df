"""Model families: what differs between SD3 and Flux behind one interface, picked by the transformer's class.

    family = family_of(pipe)                   # by type(pipe.transformer).__name__
    field = family.field(pipe, guidance=3.5)   # the transformer as a velocity field (t, z, cond) -> v
    hidden, pooled = family.encode(pipe, texts)
    family.latent_shape(space, transformer.config, 512, 512)   # (C, h, w) of the library's samples
    family.image_seq_len(transformer.config, h, w)   # its tokens, for a schedule shifted by image size

Everything else (prompts, LoRA roles, latents' scaling, rewards on decoded images) is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import UserError


@dataclass(frozen=True)
class ModelFamily:
    """One transformer class and how the library drives it.

    Attributes:
        name: short name (``sd3``, ``flux``).
        transformer_class, pipeline_class: the diffusers classes.
        needed: the pipeline components it cannot do without (the others may be absent).
        field: ``(pipe, guidance) -> nn.Module`` the velocity field ``(t (B,), z (B, C, h, w), cond) -> (B, C, h, w)``;
            ``guidance`` is the guidance-embedding value of guidance-distilled models (Flux.1-dev), ignored otherwise.
        encode: ``(pipe, texts) -> (hidden (N, L, D), pooled (N, P))`` with the pipeline's own text encoders.
        patch: ``transformer config -> `` latent pixels per transformer token along each side (the resolution must
            be a multiple of VAE factor x patch); the config is the transformer's ``config`` or its saved
            ``config.json``, so that sizes are checked before any weight is read.
        flux_spacing: the pipeline spaces its unshifted sigmas as FluxPipeline does (``linspace(1, 1 / steps)``),
            not as the scheduler would (:func:`orwcfm.t2i.sd3.time_grid`).
    """

    name: str
    transformer_class: str
    pipeline_class: str
    needed: tuple[str, ...]
    field: Callable[[Any, float | None], nn.Module]
    encode: Callable[[Any, list[str]], tuple[Tensor, Tensor]]
    patch: Callable[[Mapping[str, Any]], int]
    flux_spacing: bool = False


    def latent_shape(self, space: Any, transformer_config: Mapping[str, Any], height: int,
                     width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of a ``height`` x ``width`` image (one line unless the resolution divides)."""
        return space.shape(height, width, self.patch(transformer_config))

    def image_seq_len(self, transformer_config: Mapping[str, Any], h: int, w: int) -> int:
        """Image tokens the transformer sees for (h, w) latents (a size-shifted schedule's argument)."""
        p = self.patch(transformer_config)
        return (h // p) * (w // p)


# -- SD3 / SD3.5 --------------------------------------------------------------------------------------------------

def _sd3_field(pipe: Any, guidance: float | None) -> nn.Module:
    from .sd3 import SD3Field

    if guidance is not None:
        raise UserError(f"t2i.guidance_embed {guidance} is for guidance-distilled transformers (Flux.1-dev); SD3 has "
                        "no guidance input: use sampling.guidance (classifier-free guidance) and leave it null")

    return SD3Field(pipe.transformer)


def _sd3_encode(pipe: Any, texts: list[str]) -> tuple[Tensor, Tensor]:
    hidden, _, pooled, _ = pipe.encode_prompt(texts, None, None, do_classifier_free_guidance=False)
    return hidden, pooled


SD3 = ModelFamily("sd3", "SD3Transformer2DModel", "StableDiffusion3Pipeline",
                  ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
                  _sd3_field, _sd3_encode, lambda config: int(config["patch_size"]))


# -- Flux.1 (orwcfm.t2i.flux) ---------------------------------------------------------------------------------------

def _flux_field(pipe: Any, guidance: float | None) -> nn.Module:
    from .flux import FluxField

    return FluxField(pipe.transformer, guidance=guidance)


def _flux_encode(pipe: Any, texts: list[str]) -> tuple[Tensor, Tensor]:
    from .flux import encode_flux

    return encode_flux(pipe, texts)


# Flux packs 2 x 2 latent pixels into one token
FLUX = ModelFamily("flux", "FluxTransformer2DModel", "FluxPipeline",
                   ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
                   _flux_field, _flux_encode, lambda config: 2, flux_spacing=True)

FAMILIES: dict[str, ModelFamily] = {f.transformer_class: f for f in (SD3, FLUX)}


def family_named(transformer_class: str | None, where: str = "") -> ModelFamily:
    """The family of a transformer class name; one line listing the supported ones otherwise."""
    if transformer_class not in FAMILIES:
        raise UserError(f"{where}transformer class {transformer_class or 'none'} is not supported; supported: "
                        f"{', '.join(FAMILIES)}")
    return FAMILIES[transformer_class]


def family_of(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline's transformer."""
    return family_named(type(pipe.transformer).__name__)
