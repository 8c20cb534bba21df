"""Rewards of images and their prompts, ``fn(images, prompts) -> (B,)``, from models already on this machine.

    ClipScore(path)                   cos(CLIP image features, CLIP text features of each sample's own prompt)
    ClipScore(path, scale="logit")    the same times CLIP's logit scale: PickScore's reward (PickScore is a CLIP
                                      model fine-tuned on human preferences; load its folder the same way)
    AestheticScore(path, head)        a LAION-style linear / MLP aesthetic head on normalised CLIP image features
    ImageOnly(jpeg_compressibility)   an image reward of this library (x in [-1, 1]) as a prompt reward

Images are (B, 3, H, W) in [0, 1] (decoded samples); the prompts' text features are computed once per distinct
prompt and cached. Nothing is downloaded (``local_files_only``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..rewards.clip import _mean_std, clip_preprocess, load_clip

SCALES = ("cosine", "logit")


class ClipScore:
    """Image-prompt alignment under a CLIP model: ``fn(images (B, 3, H, W) in [0, 1], prompts (B,)) -> (B,)``.

    ``scale``: ``cosine`` (in [-1, 1]) or ``logit`` (times ``logit_scale.exp()``, as PickScore scores).
    """

    def __init__(self, model_path: str, scale: str = "cosine", device: str | torch.device | None = None) -> None:
        if scale not in SCALES:
            raise UserError(f"clip score scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.model, self.tokenizer = load_clip(str(model_path))
        self.scale, self.device = scale, None if device is None else torch.device(device)
        if self.device is not None:
            self.model.to(self.device)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = _mean_std(str(model_path))
        self._text: dict[str, Tensor] = {}
        self.name = "pickscore" if scale == "logit" else "clip-score"

    def _device(self, images: Tensor) -> torch.device:
        target = self.device or images.device
        if next(self.model.parameters()).device != target:
            self.model.to(target)
            self._text = {k: v.to(target) for k, v in self._text.items()}
        return target

    def _text_features(self, prompts: Sequence[str], device: torch.device) -> Tensor:
        """(B, D) normalised text features of each prompt (each distinct prompt encoded once)."""
        new = sorted(set(prompts) - set(self._text))
        if new:
            max_len = int(self.model.config.text_config.max_position_embeddings)
            tokens = self.tokenizer(new, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            out = self.model.text_model(input_ids=tokens["input_ids"].to(device),
                                        attention_mask=tokens["attention_mask"].to(device))
            features = F.normalize(self.model.text_projection(out.pooler_output), dim=-1)
            self._text.update(zip(new, features))
        return torch.stack([self._text[p] for p in prompts])

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """(B, D) normalised CLIP image features of images (B, 3, H, W) in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"a prompt reward takes images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        device = self._device(images)
        pixels = clip_preprocess(images.to(device) * 2 - 1, self.image_size, self.mean, self.std)
        return F.normalize(self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output),
                           dim=-1)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if len(prompts) != len(images):
            raise UserError(f"{len(prompts)} prompts for {len(images)} images: one prompt per image expected")
        image = self.image_features(images)
        score = (image * self._text_features(list(prompts), image.device)).sum(-1)
        if self.scale == "logit":
            score = self.model.logit_scale.exp() * score
        return score.to(images.device)


def load_linear_head(path: str | Path) -> nn.Sequential:
    """A LAION-style aesthetic head from a local file (``torch.save`` state dict, or ``.safetensors``): the Linear
    layers named ``<prefix><index>.weight`` / ``.bias``, applied in index order with nothing in between (the
    improved aesthetic predictor's MLP has only dropout between its linears, which is off at inference; a single
    ``weight`` / ``bias`` pair is the original linear head). One line when the file or its layers do not fit."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"aesthetic head {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"aesthetic head {path} is not a state dict of tensors")

    def order(key: str) -> int:
        prefix = key.rsplit(".", 1)[0]
        digits = prefix.rsplit(".", 1)[-1]
        return int(digits) if digits.isdigit() else -1

    weights = sorted((k for k, v in state.items() if k.endswith("weight") and v.dim() == 2), key=order)
    if not weights:
        raise UserError(f"aesthetic head {path} holds no linear layer (2-D '...weight' tensors)")
    layers = []
    for key in weights:
        w = state[key]
        bias = state.get(key[: -len("weight")] + "bias")
        layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        if layers and layers[-1].out_features != w.shape[1]:
            raise UserError(f"aesthetic head {path}: layer {key} takes {w.shape[1]} inputs after "
                            f"{layers[-1].out_features} outputs")
        with torch.no_grad():
            layer.weight.copy_(w)
            if bias is not None:
                layer.bias.copy_(bias)
        layers.append(layer)
    if layers[-1].out_features != 1:
        raise UserError(f"aesthetic head {path} ends in {layers[-1].out_features} outputs; one score expected")
    return nn.Sequential(*layers).eval().requires_grad_(False)


class AestheticScore:
    """A linear / MLP head on normalised CLIP image features: ``fn(images (B, 3, H, W) in [0, 1], prompts) -> (B,)``
    (prompts are ignored: an aesthetic score judges the image alone)."""

    name = "aesthetic"

    def __init__(self, clip_path: str, head_path: str | Path) -> None:
        self.clip = ClipScore(clip_path)
        self.head = load_linear_head(head_path)
        width = int(self.clip.model.config.projection_dim)
        if self.head[0].in_features != width:
            raise UserError(f"aesthetic head {head_path} takes {self.head[0].in_features} features; this CLIP gives "
                            f"{width}")

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        features = self.clip.image_features(images)
        head = self.head.to(features.device)
        return head(features).squeeze(-1).to(images.device)


class ImageOnly:
    """An image reward of this library's convention, ``fn(x in [-1, 1]) -> (B,)`` (e.g. ``jpeg-compressibility``),
    as a prompt reward ``fn(images in [0, 1], prompts)``."""

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str | None = None) -> None:
        self.fn, self.name = fn, name or getattr(fn, "name", getattr(fn, "__name__", "image-reward"))

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.fn(images * 2 - 1)
