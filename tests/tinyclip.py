"""A tiny randomly initialised CLIP written in the real Hugging Face format (nothing is downloaded)."""

from __future__ import annotations

import json
import string

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer


def _write_tokenizer(folder) -> dict[str, int]:
    """A minimal byte-level BPE vocabulary: every letter (inside and at the end of a word), a few merges, and
    CLIP's start/end tokens as the highest ids."""
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    merges = [("d", "o"), ("do", "g</w>"), ("i", "m"), ("im", "a"), ("o", "f</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return vocab


def tiny_clip(folder, seed: int = 0, size: int = 16) -> None:
    """Save a tiny randomly initialised CLIP (model + tokenizer) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _write_tokenizer(folder)
    CLIPTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=size, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(str(folder))
