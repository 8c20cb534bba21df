"""Rewards of text-to-image samples: the loop holds latents, a prompt reward sees decoded images and their prompts.

    fn, name = load_prompt_reward(config)        # by name: clip-score, pickscore, aesthetic, clip (the README's
                                                 # prompt pair), any image reward of this library, or file.py:fn
    reward = DecodedReward(fn, pipe.vae, prompts)   # reward(z, cond): decode, then fn(images, prompts)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from .prompts import TextPrompts
from .sd3 import LatentSpace, PromptEmbeds

ImageReward = Callable[[Tensor, list[str]], Tensor]  # (B, 3, H, W) in [0, 1], B prompts -> (B,)

# The prompt rewards by name, with the options each takes ("model": a CLIP folder or cached hub id).
PROMPT_REWARDS = {
    "clip-score": "cos(CLIP image features, CLIP text features of the sample's prompt); options: model",
    "pickscore": "PickScore: a preference-tuned CLIP's logit-scaled cosine; options: model (its folder, required)",
    "aesthetic": "a LAION-style linear/MLP head on CLIP image features; options: head (required), model",
    "clip": "the public README's prompt-pair margin p(text_prompts[0]) - p(text_prompts[1]) (prompt-blind)",
}


def _options(name: str, options: dict[str, Any], accepted: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for reward '{name}'; accepted options: {', '.join(accepted)}")
    missing = [k for k in required if k not in options]
    if missing:
        raise UserError(f"reward '{name}' needs reward_options.{missing[0]} ({PROMPT_REWARDS[name]})")


def _user_reward(spec: str, options: dict[str, Any]) -> ImageReward:
    """A user's ``fn(images, prompts)``; one line if it cannot be called with a batch's images and prompts."""
    from ..rewards import load_reward

    fn = load_reward(spec, **options)
    try:
        inspect.signature(fn).bind(torch.zeros(0), [])
    except TypeError:
        raise UserError(f"reward {spec} cannot be called as fn(images, prompts): a text-to-image run passes decoded "
                        "images (B, 3, H, W) in [0, 1] and the B prompts; an image-only reward must take the prompts "
                        "argument and ignore it") from None
    except ValueError:  # no signature to check (a builtin): it is called as it is
        pass
    return fn


def load_prompt_reward(reward: str | None, options: dict[str, Any], text_prompts: tuple[str, ...] | None = None,
                       cache: str | Path | None = None) -> tuple[ImageReward, str]:
    """The reward ``fn(images (B, 3, H, W) in [0, 1], prompts) -> (B,)`` of a text-to-image run, and its name.

    ``reward`` is a name of :data:`PROMPT_REWARDS`, any image reward of this library by name (e.g.
    ``jpeg-compressibility``, prompt-blind), or ``package.module:fn`` / ``file.py:fn`` taking (images, prompts);
    None with ``text_prompts`` is the public README's CLIP prompt-pair margin.
    """
    from .prompt_rewards import AestheticScore, ClipScore, ImageOnly

    options = dict(options)
    if reward is None and text_prompts is None:
        raise UserError("no reward given: set 'reward' (clip-score, pickscore, aesthetic, an image reward such as "
                        "jpeg-compressibility, or file.py:function taking (images, prompts)), or 'text_prompts'")
    name = reward or "clip"
    if name == "clip-score":
        _options(name, options, ("model",))
        from ..rewards.clip import DEFAULT_MODEL

        return ClipScore(options.get("model", DEFAULT_MODEL)), name
    if name == "pickscore":
        _options(name, options, ("model",), ("model",))
        return ClipScore(options["model"], scale="logit"), name
    if name == "aesthetic":
        _options(name, options, ("model", "head"), ("head",))
        return AestheticScore(options.get("model", "openai/clip-vit-large-patch14"), options["head"]), name
    if ":" in name:
        return _user_reward(name, options), name
    from ..rewards import available_rewards, load_reward

    if name not in available_rewards():
        raise UserError(f"unknown reward '{name}' for a text-to-image run; prompt rewards: {', '.join(PROMPT_REWARDS)}; "
                        f"image rewards: {', '.join(r for r in available_rewards() if r != 'clip')}; or "
                        "file.py:function taking (images, prompts)")
    if name == "clip" and text_prompts is not None:
        options.setdefault("prompts", list(text_prompts))
    return ImageOnly(load_reward(name, cache=cache, **options), name=name), name


class DecodedReward:
    """``DecodedReward(fn, vae, prompts)(z, cond)``: decode the latents z (B, C, h, w) with the VAE (``chunk`` at a
    time), then ``fn(images, prompts)`` -> (B,). The loop's reward on latent samples.

    ``metrics(z, cond)`` (called by every evaluation) adds the diversity within a prompt in CLIP's image feature
    space when ``fn`` has a CLIP (``image_features``): the mean over prompts of the mean pairwise cosine distance
    ``1 - cos`` between the images drawn for that prompt.
    """

    def __init__(self, fn: ImageReward, vae: nn.Module, prompts: TextPrompts, chunk: int = 8,
                 name: str | None = None) -> None:
        self.fn, self.vae, self.prompts, self.chunk = fn, vae, prompts, chunk
        self.space = LatentSpace.of(vae)
        self.name = name or getattr(fn, "name", getattr(fn, "__name__", type(fn).__name__))

    def images(self, z: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1]: the decoded latents."""
        return self.space.decode(self.vae, z, self.chunk)

    @torch.no_grad()
    def __call__(self, z: Tensor, cond: PromptEmbeds) -> Tensor:
        return self.fn(self.images(z), self.prompts.texts(cond))

    def _features(self) -> Callable[[Tensor], Tensor] | None:
        clip = getattr(self.fn, "clip", self.fn)  # AestheticScore holds a ClipScore
        return getattr(clip, "image_features", None)

    @torch.no_grad()
    def metrics(self, z: Tensor, cond: PromptEmbeds) -> dict[str, float]:
        features = self._features()
        if features is None:
            return {}
        f = torch.nn.functional.normalize(features(self.images(z)).float(), dim=-1)
        per_prompt = []
        for pid in cond.ids.unique().tolist():
            g = f[(cond.ids == pid).to(f.device)]
            if len(g) >= 2:
                sim = g @ g.T
                n = len(g)
                per_prompt.append(float((1 - sim).sum() / (n * (n - 1))))  # the diagonal adds 0
        return {"clip_diversity_per_prompt": sum(per_prompt) / len(per_prompt)} if per_prompt else {}
