"""Rewards of text-to-image samples: the loop holds latents, a prompt reward sees decoded images and their prompts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .prompts import TextPrompts
from .sd3 import LatentSpace, PromptEmbeds

ImageReward = Callable[[Tensor, list[str]], Tensor]  # (B, 3, H, W) in [0, 1], B prompts -> (B,)


class DecodedReward:
    """``DecodedReward(fn, vae, prompts)(z, cond)``: decode the latents z (B, C, h, w) with the VAE (``chunk`` at a
    time), then ``fn(images, prompts)`` -> (B,). The loop's reward on latent samples."""

    def __init__(self, fn: ImageReward, vae: nn.Module, prompts: TextPrompts, chunk: int = 8,
                 name: str | None = None) -> None:
        self.fn, self.vae, self.prompts, self.chunk = fn, vae, prompts, chunk
        self.space = LatentSpace.of(vae)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    @torch.no_grad()
    def __call__(self, z: Tensor, cond: PromptEmbeds) -> Tensor:
        images = self.space.decode(self.vae, z, self.chunk)
        return self.fn(images, self.prompts.texts(cond))
