"""Assets that the built-in tasks build once and cache: the digits classifier and the digits reference flow.

Nothing can be downloaded on our machines, so both are trained here on scikit-learn's bundled digits the first
time they are needed, and cached under ``$ORWCFM_CACHE`` (default ``~/.cache/orwcfm``). A cache entry is keyed
by the settings that made it, so changing a setting trains a new one instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import list_checkpoints, resolve_checkpoint
from .config import PretrainConfig, pretrain_config, to_dict
from .data import load_dataset
from .errors import UserError
from .models import DigitsClassifier, accuracy, train_classifier

CLASSIFIER_VERSION = 1


def cache_dir(cache: str | Path | None = None) -> Path:
    """The cache folder: ``cache`` if given, else ``$ORWCFM_CACHE``, else ``~/.cache/orwcfm``."""
    path = Path(cache or os.environ.get("ORWCFM_CACHE") or Path.home() / ".cache" / "orwcfm")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create cache folder {path}: {err.strerror}") from None
    return path


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ClassifierInfo:
    """The cached classifier and how good it is on digits it never saw."""

    model: DigitsClassifier
    heldout_accuracy: float
    path: Path


def digits_classifier(cache: str | Path | None = None, *, seed: int = 0, holdout: float = 0.2,
                      epochs: int = 40, width: int = 32, progress: bool = False) -> ClassifierInfo:
    """The digits classifier used as reward and judge: trained on a seeded (1 - holdout) split, cached.

    Returns it in eval mode, with its accuracy on the held-out split.
    """
    settings = {"version": CLASSIFIER_VERSION, "seed": seed, "holdout": holdout, "epochs": epochs}
    if width != 32:  # only then, so that the default classifier keeps its cache key
        settings["width"] = width
    folder = cache_dir(cache) / f"digits-classifier-{_digest(settings)}"
    if (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
        model = DigitsClassifier(**meta["architecture"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return ClassifierInfo(model.eval(), meta["heldout_accuracy"], folder)

    data = load_dataset("digits")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(holdout * len(data)))
    test, train = order[:n_test], order[n_test:]
    architecture = {"num_classes": 10, "in_channels": 1, "image_size": 8, "width": width}
    model = DigitsClassifier(**architecture)
    train_classifier(model, data.x[train], data.labels[train], epochs=epochs, seed=seed, progress=progress)
    acc = accuracy(model, data.x[test], data.labels[test])

    tmp = Path(tempfile.mkdtemp(prefix=".classifier-", dir=folder.parent))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({**settings, "architecture": architecture, "heldout_accuracy": acc}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    return ClassifierInfo(model.eval(), acc, folder)


def gold_classifier(cache: str | Path | None = None, progress: bool = False) -> ClassifierInfo:
    """The held-out "gold" judge of digit samples: another split (seed 1) and a narrower network (width 16).

    A reward optimised against the main classifier can exploit its blind spots; the gold classifier never
    took part in training, so a gap between the two (optimised reward up, gold reward flat) shows
    over-optimisation.
    """
    return digits_classifier(cache, seed=1, width=16, progress=progress)


def reference_config(name: str = "digits", **overrides) -> PretrainConfig:
    """The settings of a cached built-in reference: the data set's preset plus ``overrides``."""
    return pretrain_config(name, **overrides)


def builtin_reference(name: str = "digits", cache: str | Path | None = None, *,
                      config: PretrainConfig | None = None, progress: bool = True) -> Path:
    """The checkpoint folder of a built-in reference flow (``builtin:NAME``), pretrained on first use and cached.

    ``name`` is a data set with a pretraining preset (digits, moons, 8gaussians, gaussian-1d, patches, ...).
    An interrupted pretraining resumes from its last checkpoint the next time.
    """
    from .config import PRETRAIN_PRESETS
    from .errors import unknown_name_error
    from .train import pretrain

    if name not in PRETRAIN_PRESETS or name in ("mnist", "cifar10"):
        raise unknown_name_error("built-in reference", name, [n for n in PRETRAIN_PRESETS if n not in ("mnist", "cifar10")])
    config = config or reference_config(name)
    run_dir = cache_dir(cache) / f"{name}-reference-{_digest(to_dict(config))}"
    existing = list_checkpoints(run_dir)
    if existing and int(existing[-1].name.split("_")[1]) == config.steps:
        return resolve_checkpoint(run_dir)
    return pretrain(config, run_dir, resume=bool(existing), progress=progress).checkpoint
