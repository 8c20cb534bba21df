"""``orwcfm demo``: the built-in main job, the paper's MNIST experiment at 8x8 on a laptop CPU.

From nothing, it trains the digits classifier (the reward) and pretrains the digits reference flow (both cached
after the first run, in ``$ORWCFM_CACHE`` or ``~/.cache/orwcfm``), then fine-tunes the reference toward even
digits with ORW-CFM-W2 (the ``digits-even`` task of ``configs/finetune/``) and leaves a run folder with
metrics, TensorBoard events, sample grids per epoch, curves, checkpoints and ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .config import finetune_config
from .finetune.run import run_finetune


def run_demo(out: Path, *, cache: str | Path | None = None, progress: bool = True,
             overrides: Sequence[str] = ()) -> dict:
    """Fine-tune the digits reference toward even digits into the run folder ``out``; return the summary."""
    out = Path(out)
    config = finetune_config(config_file="digits-even", overrides=overrides, savedir=str(out.parent), run_name=out.name)
    return run_finetune(config, cache=cache, progress=progress).to_dict()
