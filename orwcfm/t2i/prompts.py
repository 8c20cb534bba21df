"""Prompts: read from a file or a list, encoded once by the pipeline's own text encoders, then looked up.

    read_prompts("prompts.txt")      # one prompt per line (blank lines skipped)
    read_prompts("prompts.jsonl")    # one JSON object per line with a "prompt" key (other keys: metadata)
    table = encode_prompts(pipe, prompts)          # (P, L, D) hidden states, (P, Pp) pooled, the empty prompt's
    cond = table.draw(n, samples_per_prompt, gen)  # PromptEmbeds of n samples, k consecutive ones per prompt
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..conditions import check_prompt_texts, check_samples_per_prompt
from ..errors import UserError
from .sd3 import PromptEmbeds


@dataclass(frozen=True)
class PromptSet:
    """Prompts and the metadata of each (empty dicts for a text file or a list)."""

    prompts: tuple[str, ...]
    metadata: tuple[dict[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        check_prompt_texts(self.prompts)


def read_prompts(source: str | Path | Sequence[str]) -> PromptSet:
    """A prompt set from a ``.txt`` file (one per line), a ``.jsonl`` file (objects with a ``prompt``) or a list."""
    if isinstance(source, (list, tuple)):
        return PromptSet(tuple(source), tuple({} for _ in source))
    path = Path(source)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise UserError(f"prompt file {path} holds no prompt (one prompt per line expected)")
    if path.suffix != ".jsonl":
        return PromptSet(tuple(line.strip() for line in lines), tuple({} for _ in lines))
    prompts, metadata = [], []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise UserError(f"{path}:{number}: expected an object with a \"prompt\" string, got {line[:80]!r}")
        prompts.append(row["prompt"])
        metadata.append({k: v for k, v in row.items() if k != "prompt"})
    return PromptSet(tuple(prompts), tuple(metadata))


@dataclass(frozen=True)
class PromptTable:
    """The encoded prompt set: each prompt's embeddings once, looked up by index.

    Attributes:
        prompts: the P prompts.
        hidden: (P, L, D) and pooled: (P, Pp) their embeddings; null_hidden (L, D), null_pooled (Pp,) the empty
            prompt's (classifier-free guidance's unconditional pass).
    """

    prompts: tuple[str, ...]
    hidden: Tensor
    pooled: Tensor
    null_hidden: Tensor
    null_pooled: Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def embeds(self, ids: Tensor) -> PromptEmbeds:
        """The conditions of samples drawn for prompts ``ids`` (B,) int64."""
        if ids.dim() != 1 or (len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self))):
            raise UserError(f"prompt indices must be a 1-D tensor in [0, {len(self)}), got {ids.tolist()[:8]}")
        idx = ids.to(self.hidden.device)
        return PromptEmbeds(self.hidden[idx], self.pooled[idx], ids, self.null_hidden, self.null_pooled)

    def draw(self, n: int, samples_per_prompt: int, generator: torch.Generator) -> PromptEmbeds:
        """n / k prompts drawn uniformly (CPU ``generator``), each for k consecutive samples."""
        if n % samples_per_prompt:
            raise UserError(f"samples_per_prompt {samples_per_prompt} must divide the samples drawn ({n})")
        ids = torch.randint(len(self), (n // samples_per_prompt,), generator=generator)
        return self.embeds(ids.repeat_interleave(samples_per_prompt))

    def spread(self, n: int) -> PromptEmbeds:
        """n samples spread evenly over the prompts (0, 1, .., P-1, 0, ..): an evaluation's."""
        return self.embeds(torch.arange(n) % len(self))

    def to(self, device: torch.device | str) -> PromptTable:
        return PromptTable(self.prompts, *(getattr(self, k).to(device) for k in ("hidden", "pooled", "null_hidden",
                                                                                "null_pooled")))


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: PromptSet | Sequence[str], batch_size: int = 16) -> PromptTable:
    """Encode every prompt and the empty one with the pipeline's own text encoders (its family's ``encode``, in
    chunks of ``batch_size``); the caller may free the encoders afterwards."""
    from .family import family_of

    encode = family_of(pipe).encode
    texts = list(prompts.prompts if isinstance(prompts, PromptSet) else PromptSet(tuple(prompts)).prompts)
    hidden, pooled = [], []
    for i in range(0, len(texts), batch_size):
        h, p = encode(pipe, texts[i:i + batch_size])
        hidden.append(h)
        pooled.append(p)
    null_h, null_p = encode(pipe, [""])
    return PromptTable(tuple(texts), torch.cat(hidden), torch.cat(pooled), null_h[0], null_p[0])


@dataclass(frozen=True)
class TextPrompts:
    """A text prompt set for the fine-tuning loop (the interface of :class:`~orwcfm.conditions.ClassPrompts`).

    Attributes:
        table: the encoded prompts.
        samples_per_prompt: k consecutive samples per drawn prompt (a condition group).
    """

    table: PromptTable
    samples_per_prompt: int = 1

    def __post_init__(self) -> None:
        check_samples_per_prompt(self.samples_per_prompt)

    @property
    def prompts(self) -> tuple[str, ...]:
        return self.table.prompts

    def __len__(self) -> int:
        return len(self.table)

    def draw(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> PromptEmbeds:
        return self.table.draw(n, self.samples_per_prompt, generator).to(device)

    def spread(self, n: int, device: torch.device | str = "cpu") -> PromptEmbeds:
        return self.table.spread(n).to(device)

    def restore(self, state: dict, device: torch.device | str = "cpu") -> PromptEmbeds:
        """The conditions a checkpoint saved (:meth:`PromptEmbeds.state`)."""
        return self.table.embeds(state["ids"]).to(device)

    def texts(self, cond: PromptEmbeds) -> list[str]:
        """The prompt of every sample of ``cond``."""
        return [self.table.prompts[i] for i in cond.ids.tolist()]
