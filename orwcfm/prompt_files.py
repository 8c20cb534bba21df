"""Prompt files: a ``.txt`` file (one prompt per line), a ``.jsonl`` file (one ``{"prompt": ..., metadata}`` object
per line) or a list, read into a :class:`PromptSet`. Shared by class-conditional and text-to-image runs (no
dependency beyond the standard library)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conditions import check_prompt_texts
from .errors import UserError


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
