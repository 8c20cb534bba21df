"""The built-in settings: YAML presets shipped inside the package, and the built-in references made from them.

They live once, as YAML files in ``orwcfm/presets`` (the repository's ``configs/`` folder is a link to it):
``pretrain/NAME.yaml`` is what ``orwcfm pretrain --data NAME`` uses, ``finetune/NAME.yaml`` is the task
``orwcfm finetune --config NAME``. Each file's comments say why its values are what they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .parse import load_yaml

# orwcfm/config/presets.py -> orwcfm/presets: one level above this package.
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def _load_presets(kind: str) -> dict[str, dict[str, Any]]:
    """Every preset of ``kind`` (``pretrain`` or ``finetune``) by name, as the raw mappings of its YAML files."""
    return {path.stem: load_yaml(path) for path in sorted((PRESETS_DIR / kind).glob("*.yaml"))}


PRETRAIN_PRESETS: dict[str, dict[str, Any]] = _load_presets("pretrain")
FINETUNE_PRESETS: dict[str, dict[str, Any]] = _load_presets("finetune")

# Built-in references that are more than a data set's plain preset: ``builtin:NAME`` -> its data set and settings.
BUILTIN_REFERENCES: dict[str, dict[str, Any]] = {
    # The class-conditional digits reference of the prompted-digits task: the digits preset, with the labels as
    # conditions and 10 % of them withheld (the null label that classifier-free guidance needs).
    "digits-cond": {"data": "digits", "conditional": True, "condition_dropout": 0.1},
    # The same for the 28x28 digits of mnist5k (needs the 'mnist5k' extra): the mnist5k preset's UNet and schedule.
    "mnist5k-cond": {"data": "mnist5k", "conditional": True, "condition_dropout": 0.1},
}
