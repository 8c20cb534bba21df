"""The text-prompt reward of the public ORW-CFM README, from a CLIP model that is already on this machine.

reward(x) = p(prompt 0 | x) - p(prompt 1 | x), where p is CLIP's softmax over the prompts of
logit_scale * cos(image features, text features). With the README's prompts ``["An image of dog",
"Not an image of dog"]`` it lies in [-1, 1] and is high for images CLIP reads as dogs.

Nothing is downloaded at run time: the model is read with ``local_files_only=True`` from a folder written by
``CLIPModel.save_pretrained`` (plus the tokenizer files) or from the local Hugging Face cache.
Needs the optional extra ``pip install 'orwcfm[clip]'`` (transformers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from orwcfm.errors import UserError

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise UserError("the clip reward needs the optional extra: pip install 'orwcfm[clip]'") from err
    return transformers


def _mean_std(model_path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """CLIP's normalisation, read from a saved ``preprocessor_config.json`` when there is one."""
    config_file: Path | None = None
    if Path(model_path).expanduser().is_dir():
        config_file = Path(model_path).expanduser() / "preprocessor_config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_path, "preprocessor_config.json")
            config_file = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - an odd repo id or hub version: the standard constants are right anyway
            config_file = None
    if config_file is not None and config_file.is_file():
        config = json.loads(config_file.read_text())
        mean, std = config.get("image_mean"), config.get("image_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
            return tuple(map(float, mean)), tuple(map(float, std))
    return CLIP_MEAN, CLIP_STD


def clip_preprocess(x: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """CLIP's image preprocessing in torch: images (B, C, H, W) in [-1, 1], C = 1 or 3 -> (B, 3, size, size).

    Maps to [0, 1] (clamped), repeats a grey channel three times, resizes the shorter side to ``size``
    (bicubic, antialiased, clamped to [0, 1] like an 8-bit image), crops the centre square, normalises.

    >>> clip_preprocess(torch.zeros(2, 1, 8, 12), 16).shape
    torch.Size([2, 3, 16, 16])
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"the clip reward takes images of shape (B, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    x = ((x.float() + 1) / 2).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def load_clip(model_path: str):
    """A CLIP model (float32, eval, frozen) and its tokenizer from a local folder or the local cache; never
    downloaded. One line naming the path when there is none."""
    transformers = _transformers()
    try:
        model = transformers.CLIPModel.from_pretrained(model_path, local_files_only=True)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(model_path, local_files_only=True)
    except (OSError, ValueError) as err:
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise UserError(
            f"no CLIP model found at '{model_path}' (a local folder or the local Hugging Face cache): "
            f"nothing is downloaded at run time, so save one there first with CLIPModel.save_pretrained and "
            f"CLIPTokenizer.save_pretrained ({type(err).__name__}: {detail})"
        ) from err
    return model.float().eval().requires_grad_(False), tokenizer


class ClipReward:
    """p(prompts[0] | x) - p(prompts[1] | x) under CLIP's softmax over ``prompts``: (B, C, H, W) in [-1, 1] -> (B,).

    ``prompts``: two or more texts; the softmax runs over all of them and the reward uses the first two.
    ``model_path``: a local folder written by ``save_pretrained`` or a model id already in the local
    Hugging Face cache (default ``openai/clip-vit-base-patch32``); never downloaded.
    ``device``: where CLIP runs; default: on each batch's device (the model follows it).
    Text features are computed once, here.
    """

    name = "clip"

    def __init__(self, prompts: Sequence[str], model_path: str | None = None,
                 device: str | torch.device | None = None) -> None:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
            raise UserError(f"the clip reward's prompts must be a list of strings, got {prompts!r}")
        if len(prompts) < 2:
            raise UserError(
                f"the clip reward needs at least two prompts (the target, then its contrast), got {list(prompts)}"
            )
        self.prompts = tuple(prompts)
        self.model_path = str(model_path or DEFAULT_MODEL)
        model, tokenizer = load_clip(self.model_path)
        self.device = None if device is None else torch.device(device)
        self.model = model
        if self.device is not None:
            self.model.to(self.device)
        self.image_size = int(model.config.vision_config.image_size)
        self.mean, self.std = _mean_std(self.model_path)
        max_len = int(model.config.text_config.max_position_embeddings)
        tokens = tokenizer(list(self.prompts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        model_device = next(self.model.parameters()).device
        with torch.no_grad():
            text = self.model.text_model(input_ids=tokens["input_ids"].to(model_device),
                                         attention_mask=tokens["attention_mask"].to(model_device))
            features = self.model.text_projection(text.pooler_output)
        self.text_features = F.normalize(features, dim=-1)  # (P, D)

    def _model_on(self, device: torch.device) -> torch.device:
        target = self.device or device
        if next(self.model.parameters()).device != target:
            self.model.to(target)
            self.text_features = self.text_features.to(target)
        return target

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's probabilities of the prompts for images x (B, C, H, W) in [-1, 1]: (B, P), rows sum to 1."""
        device = self._model_on(x.device)
        pixels = clip_preprocess(x.to(device), self.image_size, self.mean, self.std)
        vision = self.model.vision_model(pixel_values=pixels)
        image = F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)  # (B, D)
        logits = self.model.logit_scale.exp() * image @ self.text_features.T  # (B, P)
        return logits.softmax(dim=-1)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities(x)
        return (probs[:, 0] - probs[:, 1]).to(x.device)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor) -> dict[str, float | list[float]]:
        """``prompt_probabilities``: CLIP's mean probability of each prompt over the batch."""
        return {"prompt_probabilities": self.probabilities(x).mean(dim=0).tolist()}


def clip(prompts: Sequence[str], model_path: str | None = None, device: str | None = None) -> ClipReward:
    """Registry factory ``clip``: see :class:`ClipReward`."""
    return ClipReward(prompts, model_path=model_path, device=device)
