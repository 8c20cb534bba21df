"""Tiny random text-to-image pipelines written in diffusers' ``save_pretrained`` layout, for tests, smoke runs and
benchmarks on machines without real weights (nothing is downloaded: the tokenizers' vocabulary is written here).

    write_tiny_sd3(folder)   # StableDiffusion3Pipeline: 1-layer SD3Transformer2DModel, two tiny CLIP text encoders,
                             # a one-block AutoencoderKL, no T5 (SD3 pads its place with zeros)

The sizes follow diffusers' own SD3 tests; such a pipeline makes a 32x32 image in about a second on a CPU.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CLIP_WIDTH = 32  # hidden size of each tiny CLIP text encoder; two of them give pooled projections of 2 x 32 = 64


def _vocabulary() -> dict[str, int]:
    """Every lower-case letter, digit and punctuation mark, alone and word-final (``</w>``), then CLIP's start and
    end tokens: any prompt tokenises without merges (one token per character; other characters become the unknown
    token, CLIP's ``<|endoftext|>``)."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def tiny_clip_tokenizer(folder: str | Path):
    """A :class:`transformers.CLIPTokenizer` over :func:`_vocabulary`, saved in ``folder``."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_vocabulary()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)  # CLIP's context length
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _clip_text_encoder(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(bos_token_id=len(_vocabulary()) - 2, eos_token_id=len(_vocabulary()) - 1,
                            pad_token_id=len(_vocabulary()) - 1, hidden_size=CLIP_WIDTH,
                            intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=1,
                            vocab_size=len(_vocabulary()), hidden_act="gelu", projection_dim=CLIP_WIDTH)
    return CLIPTextModelWithProjection(config).eval()


def tiny_sd3_components(tokenizer_dir: str | Path, seed: int = 0, sample_size: int = 32) -> dict:
    """The components of a tiny random ``StableDiffusion3Pipeline`` (``text_encoder_3`` / ``tokenizer_3`` None)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=sample_size, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=2 * CLIP_WIDTH, out_channels=4)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(4,),
                        layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    tokenizer = tiny_clip_tokenizer(Path(tokenizer_dir))
    return {"transformer": transformer, "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0), "vae": vae,
            "text_encoder": _clip_text_encoder(seed + 2), "tokenizer": tokenizer,
            "text_encoder_2": _clip_text_encoder(seed + 3), "tokenizer_2": tokenizer,
            "text_encoder_3": None, "tokenizer_3": None}


def write_tiny_sd3(folder: str | Path, seed: int = 0, sample_size: int = 32) -> Path:
    """Build a tiny random SD3 pipeline and save it to ``folder`` (diffusers' ``save_pretrained`` layout)."""
    from diffusers import StableDiffusion3Pipeline

    folder = Path(folder)
    pipe = StableDiffusion3Pipeline(**tiny_sd3_components(folder / "_tokenizer_files", seed, sample_size))
    pipe.save_pretrained(folder)
    return folder
