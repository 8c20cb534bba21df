"""Tiny random text-to-image pipelines written in diffusers' ``save_pretrained`` layout, for tests, smoke runs and
benchmarks on machines without real weights (nothing is downloaded: the tokenizers' vocabulary is written here).

    write_tiny_sd3(folder)   # StableDiffusion3Pipeline: 1-layer SD3Transformer2DModel, two tiny CLIP text encoders,
                             # a one-block AutoencoderKL, no T5 (SD3 pads its place with zeros)
    write_tiny_flux(folder)  # FluxPipeline: FluxTransformer2DModel (1 double + 1 single block, guidance embeds),
                             # a tiny CLIPTextModel (its pooled output), a tiny T5EncoderModel, a one-block
                             # AutoencoderKL with 4 latent channels, the dynamically shifted Flux schedule

The sizes follow diffusers' own SD3 and Flux tests; such a pipeline makes a 32x32 image in about a second on a CPU.
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


def _clip_config():
    """The tiny CLIP text encoders' config (one layer of width :data:`CLIP_WIDTH` over :func:`_vocabulary`)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=len(_vocabulary()) - 2, eos_token_id=len(_vocabulary()) - 1,
                          pad_token_id=len(_vocabulary()) - 1, hidden_size=CLIP_WIDTH,
                          intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=1,
                          vocab_size=len(_vocabulary()), hidden_act="gelu", projection_dim=CLIP_WIDTH)


def _clip_text_encoder(seed: int):
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(_clip_config()).eval()


# diffusers' own SD3 test sizes; ``transformer=`` overrides any of them (e.g. a mid-size model for benchmarks)
SD3_TEST_TRANSFORMER = dict(patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
                            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=2 * CLIP_WIDTH,
                            out_channels=4)


def tiny_sd3_components(tokenizer_dir: str | Path, seed: int = 0, sample_size: int = 32,
                        transformer: dict | None = None) -> dict:
    """The components of a tiny random ``StableDiffusion3Pipeline`` (``text_encoder_3`` / ``tokenizer_3`` None);
    ``transformer``: sizes of the ``SD3Transformer2DModel`` that replace :data:`SD3_TEST_TRANSFORMER`'s."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=sample_size, **{**SD3_TEST_TRANSFORMER, **(transformer or {})})
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(4,),
                        layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    tokenizer = tiny_clip_tokenizer(Path(tokenizer_dir))
    return {"transformer": transformer, "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0), "vae": vae,
            "text_encoder": _clip_text_encoder(seed + 2), "tokenizer": tokenizer,
            "text_encoder_2": _clip_text_encoder(seed + 3), "tokenizer_2": tokenizer,
            "text_encoder_3": None, "tokenizer_3": None}


def write_tiny_sd3(folder: str | Path, seed: int = 0, sample_size: int = 32, transformer: dict | None = None) -> Path:
    """Build a tiny random SD3 pipeline and save it to ``folder`` (diffusers' ``save_pretrained`` layout)."""
    from diffusers import StableDiffusion3Pipeline

    folder = Path(folder)
    pipe = StableDiffusion3Pipeline(**tiny_sd3_components(folder / "_tokenizer_files", seed, sample_size, transformer))
    pipe.save_pretrained(folder)
    return folder


# -- Flux.1 ---------------------------------------------------------------------------------------------------------

T5_WIDTH = 32  # d_model of the tiny T5 encoder: the transformer's joint_attention_dim
FLUX_LATENT_CHANNELS = 4  # the VAE's; Flux packs 2 x 2 latent pixels into one token of 4 x 4 = 16 channels


def _t5_pieces() -> list[tuple[str, float]]:
    """T5's special tokens at its usual ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2), the word-start mark and every
    ASCII letter, digit and punctuation mark as Unigram pieces: any prompt tokenises one piece per character."""
    chars = string.ascii_letters + string.digits + string.punctuation
    word_start = "\u2581"  # SentencePiece's mark of a word's start, which T5's pre-tokenizer puts before each word
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (word_start, -2.0), *((c, -3.0) for c in chars)]


def tiny_t5_tokenizer(folder: str | Path):
    """A T5 tokenizer (``tokenizers``' Unigram over :func:`_t5_pieces`, no sentencepiece file), saved in ``folder``."""
    from transformers import T5TokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # extra_ids=0: no sentinel tokens (they serve T5's span-corruption training, not an encoder's prompts)
    tokenizer = T5TokenizerFast(vocab=_t5_pieces(), extra_ids=0, model_max_length=512)  # Flux's T5 length
    tokenizer.save_pretrained(str(folder))
    return T5TokenizerFast.from_pretrained(str(folder))


def _t5_text_encoder(seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(_t5_pieces()), d_model=T5_WIDTH, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def _clip_text_encoder_pooled(seed: int):
    """A tiny ``CLIPTextModel``: Flux takes its pooled output (the end token's state), with no projection."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(_clip_config()).eval()


def tiny_flux_components(tokenizer_dir: str | Path, seed: int = 0, sample_size: int = 32) -> dict:
    """The components of a tiny random ``FluxPipeline`` (guidance-distilled like Flux.1-dev: ``guidance_embeds``)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(seed)
    # the rotary axes (ids' 3 coordinates) must add up to the head dimension: 4 + 4 + 8 = 16
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4 * FLUX_LATENT_CHANNELS, num_layers=1,
                                         num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_WIDTH,
                                         guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    torch.manual_seed(seed + 1)
    # Flux.1's VAE shift and scale (its real VAE has 16 channels and 8x downsampling; one block here: 1x)
    vae = AutoencoderKL(sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(4,),
                        layers_per_block=1, latent_channels=FLUX_LATENT_CHANNELS, norm_num_groups=1,
                        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    # Flux.1-dev's schedule: the shift grows with the image's token count (mu from base_shift to max_shift)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    tokenizer_dir = Path(tokenizer_dir)
    return {"transformer": transformer, "scheduler": scheduler, "vae": vae,
            "text_encoder": _clip_text_encoder_pooled(seed + 2),
            "tokenizer": tiny_clip_tokenizer(tokenizer_dir / "clip"),
            "text_encoder_2": _t5_text_encoder(seed + 3), "tokenizer_2": tiny_t5_tokenizer(tokenizer_dir / "t5"),
            "image_encoder": None, "feature_extractor": None}


def write_tiny_flux(folder: str | Path, seed: int = 0, sample_size: int = 32) -> Path:
    """Build a tiny random Flux pipeline and save it to ``folder`` (diffusers' ``save_pretrained`` layout)."""
    from diffusers import FluxPipeline

    folder = Path(folder)
    pipe = FluxPipeline(**tiny_flux_components(folder / "_tokenizer_files", seed, sample_size))
    pipe.save_pretrained(folder)
    return folder
