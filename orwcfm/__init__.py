"""orwcfm: reward fine-tuning of flow-matching models (ORW-CFM-W2, Fan et al., ICLR 2025).

The public names below are imported on first use, so ``import orwcfm.data`` (or the command line's ``--help``)
does not pay for the whole library.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ORWCFMTrainer": "orwcfm.finetune.trainer",
    "FinetuneSummary": "orwcfm.finetune.trainer",
    "orw_cfm_w2_loss": "orwcfm.finetune.orw",
    "paper_weights": "orwcfm.finetune.weights",
    "normalized_weights": "orwcfm.finetune.weights",
    "FinetuneConfig": "orwcfm.config",
    "PretrainConfig": "orwcfm.config",
    "integrate": "orwcfm.sampling",
    "sample": "orwcfm.sampling",
    "load_reward": "orwcfm.rewards",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'orwcfm' has no attribute '{name}'")
