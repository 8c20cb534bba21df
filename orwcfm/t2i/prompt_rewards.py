"""Rewards of images and their prompts, ``fn(images, prompts) -> (B,)``, from models already on this machine.

    ClipScore(path)                   cos(CLIP image features, CLIP text features of each sample's own prompt)
    ClipScore(path, scale="logit")    the same times CLIP's logit scale: PickScore's reward (PickScore is a CLIP
                                      model fine-tuned on human preferences; load its folder the same way)

Images are (B, 3, H, W) in [0, 1] (decoded samples); the prompts' text features are computed once per distinct
prompt and cached. Nothing is downloaded (``local_files_only``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

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
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"a prompt reward takes images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        if len(prompts) != len(images):
            raise UserError(f"{len(prompts)} prompts for {len(images)} images: one prompt per image expected")
        device = self._device(images)
        pixels = clip_preprocess(images.to(device) * 2 - 1, self.image_size, self.mean, self.std)
        image = F.normalize(self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output),
                            dim=-1)
        score = (image * self._text_features(list(prompts), device)).sum(-1)
        if self.scale == "logit":
            score = self.model.logit_scale.exp() * score
        return score.to(images.device)
