"""``TextToImageConfig``: how a diffusers text-to-image pipeline is fine-tuned (LoRA, resolution, memory)."""

from __future__ import annotations

from typing import Literal

from ..errors import UserError
from .fields import _positive, dataclass_frozen, setting


@dataclass_frozen
class LoraSettings:
    """The LoRA adapters (peft) on the transformer."""

    rank: int = setting(16, help="r, the rank of each adapter (> 0; its A is r x in, its B out x r, B starts at 0).")
    alpha: float = setting(16.0, help="lora_alpha (> 0): the adapter's output is scaled by alpha / rank.")
    target_modules: tuple[str, ...] = setting(
        ("to_k", "to_q", "to_v", "to_out.0"),
        help="Names (suffixes) of the transformer's linear layers that get adapters; SD3 and Flux: the attention "
             "projections.")
    dropout: float = setting(0.0, help="Dropout on the adapters' input during training, in [0, 1) (0: none, so that "
                                       "the W2 term is exactly 0 while the adapter is 0).")

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"lora rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise UserError(f"lora alpha must be a number > 0, got {self.alpha!r}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise UserError(f"lora target_modules must be a non-empty list of module names, got {self.target_modules!r}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora dropout must be in [0, 1), got {self.dropout!r}")

    def peft_config(self):
        """The peft ``LoraConfig`` of these settings (A drawn Gaussian from torch's global RNG, B zero)."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.target_modules),
                          lora_dropout=self.dropout, init_lora_weights="gaussian")


@dataclass_frozen
class TextToImageConfig:
    """Settings of a run on a diffusers pipeline (``model``); ignored by runs on orwcfm references."""

    resolution: int | None = setting(
        None, help="Image height and width in pixels (a multiple of the VAE factor x the transformer's patch); "
                   "null = the model's own (SD3: the transformer's sample_size x the VAE factor; Flux: the VAE's "
                   "sample_size; SD3.5 medium and Flux.1: 1024, the tiny test models: 32).")
    lora: LoraSettings = setting(factory=LoraSettings, help="The LoRA adapters: rank, alpha, target_modules, dropout.")
    base_precision: Literal["fp32", "bf16"] = setting(
        "fp32", help="dtype of the frozen base weights (transformer, VAE, text encoders): bf16 halves their memory "
                     "(meant for GPUs); the adapters and Adam's state stay fp32.")
    gradient_checkpointing: bool = setting(
        False, help="Recompute the transformer's activations in the backward pass: less memory, about a third more "
                    "time per step.")
    decode_chunk: int = setting(8, help="Latents decoded by the VAE at a time (> 0), which bounds the decoder's memory.")
    guidance_embed: float | None = setting(
        None, help="Guidance-embedding value of guidance-distilled transformers (Flux.1-dev; null = 3.5, the "
                   "pipeline's default); must be null for transformers without one (SD3, Flux.1-schnell).")
    adapter: Literal["lora", "full"] = setting(
        "lora", help="What is trained: lora (peft adapters, one copy of the base; the run writes OUT/lora) or full "
                     "(every weight of the transformer, as three copies: trained, policy, reference; for small "
                     "transformers; the run writes OUT/transformer with save_pretrained).")
    text_encoders: Literal["free", "keep"] = setting(
        "free", help="After every prompt is encoded once: free the text encoders (their memory comes back) or keep "
                     "them loaded.")

    def __post_init__(self) -> None:
        if self.resolution is not None:
            _positive("t2i.resolution", self.resolution)
        _positive("t2i.decode_chunk", self.decode_chunk)
        if self.adapter == "full" and self.base_precision != "fp32":
            raise UserError("config key 't2i.adapter': full fine-tuning trains the base weights themselves, which "
                            f"need t2i.base_precision fp32 (got {self.base_precision}); bf16 is for a frozen base")
        if self.guidance_embed is not None and not self.guidance_embed >= 0:
            raise UserError(f"config key 't2i.guidance_embed' must be >= 0 or null, got {self.guidance_embed}")
