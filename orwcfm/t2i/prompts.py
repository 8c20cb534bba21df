"""Prompts: read from a file or a list, encoded once by the pipeline's own text encoders, then looked up.

    read_prompts("prompts.txt")      # one prompt per line (blank lines skipped)
    read_prompts("prompts.jsonl")    # one JSON object per line with a "prompt" key (other keys: metadata)
    table = encode_prompts(pipe, prompts)          # (P, L, D) hidden states, (P, Pp) pooled, the empty prompt's
    cond = table.draw(n, samples_per_prompt, gen)  # PromptEmbeds of n samples, k consecutive ones per prompt
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..conditions import check_samples_per_prompt
from ..errors import UserError
from ..prompt_files import PromptSet, read_prompts
from .sd3 import PromptEmbeds


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
        table: the encoded prompts: the training prompts first, then any held-out ones.
        samples_per_prompt: k consecutive samples per drawn prompt (a condition group).
        num_train: how many of the table's prompts are trained on (the first ones); the others are held out and
            are what every evaluation is spread over. None: all are trained on and evaluated.
    """

    table: PromptTable
    samples_per_prompt: int = 1
    num_train: int | None = None

    def __post_init__(self) -> None:
        check_samples_per_prompt(self.samples_per_prompt)
        if self.num_train is not None and not 0 < self.num_train <= len(self.table):
            raise UserError(f"num_train must be in [1, {len(self.table)}], got {self.num_train}")

    @classmethod
    def encode(cls, pipe: Any, train: PromptSet, held_out: PromptSet | None = None,
               samples_per_prompt: int = 1) -> TextPrompts:
        """Encode the training prompts and the held-out ones (if any) once, into one table."""
        texts = train.prompts + (held_out.prompts if held_out is not None else ())
        return cls(encode_prompts(pipe, texts), samples_per_prompt,
                   len(train.prompts) if held_out is not None else None)

    @property
    def prompts(self) -> tuple[str, ...]:
        """Every prompt of the table (training, then held-out): what a sample's prompt index refers to."""
        return self.table.prompts

    @property
    def train_prompts(self) -> tuple[str, ...]:
        return self.table.prompts[:self._train]

    @property
    def eval_prompts(self) -> tuple[str, ...]:
        """The prompts evaluations are spread over: the held-out ones, else the training ones."""
        return self.table.prompts[self._train:] if self._train < len(self.table) else self.table.prompts

    @property
    def _train(self) -> int:
        return len(self.table) if self.num_train is None else self.num_train

    def __len__(self) -> int:
        return len(self.table)

    def draw(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> PromptEmbeds:
        """n / k training prompts drawn uniformly (CPU ``generator``), each for k consecutive samples."""
        k = self.samples_per_prompt
        if n % k:
            raise UserError(f"samples_per_prompt {k} must divide the samples drawn ({n})")
        ids = torch.randint(self._train, (n // k,), generator=generator)
        return self.table.embeds(ids.repeat_interleave(k)).to(device)

    def spread(self, n: int, device: torch.device | str = "cpu") -> PromptEmbeds:
        """n samples spread evenly over the evaluation prompts (held-out if any): an evaluation's conditions."""
        first = self._train if self._train < len(self.table) else 0
        count = len(self.table) - first
        return self.table.embeds(first + torch.arange(n) % count).to(device)

    def restore(self, state: dict, device: torch.device | str = "cpu") -> PromptEmbeds:
        """The conditions a checkpoint saved (:meth:`PromptEmbeds.state`)."""
        return self.table.embeds(state["ids"]).to(device)

    def texts(self, cond: PromptEmbeds) -> list[str]:
        """The prompt of every sample of ``cond``."""
        return [self.table.prompts[i] for i in cond.ids.tolist()]
