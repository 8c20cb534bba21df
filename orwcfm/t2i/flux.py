"""Flux.1 (``FluxTransformer2DModel``) as a velocity field of this library.

Conventions. diffusers: ``x_sigma = (1 - sigma) x_data + sigma noise``, the transformer predicts ``noise - x_data``
(as SD3's). FluxPipeline's scheduler timesteps are ``1000 sigma`` but it hands the transformer ``timestep / 1000``
= sigma (the transformer multiplies by 1000 again inside, and does the same to the guidance value). This library:
t = 0 at noise, t = 1 at data, so ``t = 1 - sigma`` and ``v = -prediction`` (:mod:`orwcfm.t2i.sd3`).

Latents. The library's samples are the VAE's latents (B, C, h, w), scaled as the pipeline scales them
(``z = (vae_latent - shift_factor) * scaling_factor``). Flux's transformer sees them packed: every 2 x 2 block of
latent pixels is one token of 4C channels, (B, h/2 * w/2, 4C), with position ids ``(0, row, column)`` of the token
grid and all-zero ids for the text tokens. The packing happens inside :class:`FluxField`, so the samplers, the W2
term and :meth:`~orwcfm.t2i.sd3.LatentSpace.decode` work on image-shaped latents unchanged. FluxPipeline's
``output_type="latent"`` returns the packed form: :func:`unpack` turns it into the library's.

Conditions are :class:`~orwcfm.t2i.sd3.PromptEmbeds`: ``hidden`` the T5 token embeddings, ``pooled`` the CLIP text
model's pooled output (:func:`encode_flux`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from .sd3 import PromptEmbeds

DEFAULT_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale, the guidance embedding of Flux.1-dev


def pack(z: Tensor) -> Tensor:
    """(B, C, h, w) latents -> (B, h/2 * w/2, 4C) tokens, each a 2 x 2 block of latent pixels (channel-major:
    token channel ``4c + 2i + j`` is channel c at row offset i, column offset j), rows of blocks in raster order."""
    b, c, h, w = z.shape
    if h % 2 or w % 2:
        raise UserError(f"Flux latents must have an even height and width (2 x 2 pixels per token), got {h}x{w}")
    return z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """(B, h/2 * w/2, 4C) tokens -> (B, C, h, w) latents, the inverse of :func:`pack`."""
    b, n, d = tokens.shape
    if n != (h // 2) * (w // 2) or d % 4:
        raise UserError(f"{n} tokens of {d} channels are not the packed latents of a {h}x{w} latent image")
    return tokens.reshape(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(h/2 * w/2, 3) position ids of the tokens of (h, w) latents: ``(0, row, column)`` on the token grid."""
    rows = torch.arange(h // 2, device=device).repeat_interleave(w // 2)
    cols = torch.arange(w // 2, device=device).repeat(h // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(dtype)


def text_ids(length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(L, 3) position ids of the text tokens: all zero (FluxPipeline's; the text has no rotary position)."""
    return torch.zeros(length, 3, device=device, dtype=dtype)


def check_guidance_value(transformer: nn.Module, guidance: float | None) -> float | None:
    """The guidance-embedding value a Flux transformer is run with: ``guidance`` (default 3.5) for a
    guidance-distilled one (``guidance_embeds``), None for one without (schnell), where a value is one line."""
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or not guidance >= 0):
        raise UserError(f"Flux guidance must be a number >= 0, got {guidance!r}")
    if transformer.config.guidance_embeds:
        return DEFAULT_GUIDANCE if guidance is None else float(guidance)
    if guidance is not None:
        raise UserError(f"guidance {guidance!r} was given, but this Flux transformer has no guidance embedding "
                        "(guidance_embeds false, as Flux.1-schnell): leave guidance unset")
    return None


class FluxField(nn.Module):
    """``FluxField(transformer, guidance)(t, z, cond)``: t (B,) in [0, 1] (0 = noise), z (B, C, h, w) scaled
    latents (h, w even), cond a :class:`PromptEmbeds` (hidden (B, L, D) T5 embeddings, pooled (B, P) CLIP pooled
    output); returns the velocity (B, C, h, w) = -(the transformer's noise - data prediction), unpacked.

    Args:
        transformer: a diffusers ``FluxTransformer2DModel``.
        guidance: the value of the guidance embedding of a guidance-distilled transformer (Flux.1-dev,
            ``config.guidance_embeds``); None there means FluxPipeline's default 3.5. A transformer without guidance
            embeds (Flux.1-schnell) takes none: a value is a :class:`UserError`. This is not classifier-free
            guidance (:mod:`orwcfm.guidance`), which wraps the field as for any other.
    """

    def __init__(self, transformer: nn.Module, guidance: float | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.guidance = check_guidance_value(transformer, guidance)

    def forward(self, t: Tensor, z: Tensor, cond: PromptEmbeds | None = None) -> Tensor:
        if cond is None:
            raise UserError("the Flux transformer needs prompt embeddings (its unconditional pass is the empty prompt)")
        b, _, h, w = z.shape
        # a base in bf16 takes its inputs in bf16; the samples, the ODE state and the loss stay in z's dtype
        dtype = self.transformer.dtype
        sigma = (1.0 - t).to(dtype).expand(b)  # FluxPipeline's timestep / 1000
        # FluxPipeline passes the guidance in float32 whatever the latents' dtype; the transformer casts it
        guidance = None if self.guidance is None else torch.full((b,), self.guidance, device=z.device,
                                                                 dtype=torch.float32)
        prediction = self.transformer(hidden_states=pack(z.to(dtype)), timestep=sigma, guidance=guidance,
                                      pooled_projections=cond.pooled.to(dtype),
                                      encoder_hidden_states=cond.hidden.to(dtype),
                                      txt_ids=text_ids(cond.hidden.shape[1], z.device, dtype),
                                      img_ids=image_ids(h, w, z.device, dtype), return_dict=False)[0]
        return -unpack(prediction, h, w).to(z.dtype)


def encode_flux(pipe: Any, texts: list[str]) -> tuple[Tensor, Tensor]:
    """(hidden (N, L, D), pooled (N, P)) of ``texts`` by the pipeline's own ``encode_prompt``: the T5 token
    embeddings (L = 512, FluxPipeline's default ``max_sequence_length``) and the CLIP text model's pooled output.
    The text ids it also returns are all zero; :class:`FluxField` rebuilds them."""
    hidden, pooled, _ = pipe.encode_prompt(texts, None)
    return hidden, pooled
