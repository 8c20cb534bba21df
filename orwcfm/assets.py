"""Assets that the built-in tasks build once and cache: the two classifiers of a digit data set (the reward's
and the held-out gold judge's) and the built-in reference flows.

Nothing can be downloaded on our machines, so all are trained here on bundled data the first time they are
needed, and cached under ``$ORWCFM_CACHE`` (default ``~/.cache/orwcfm``). A cache entry is keyed by the
settings that made it, so changing a setting trains a new one instead of reusing a stale one.

The two classifiers of a data set split it once (one seeded permutation) into two disjoint halves::

    permutation(seed) --first ceil(N/2)--> half A: the reward classifier (CNN) trains here, the gold one is tested here
                      --last floor(N/2)--> half B: the gold classifier (MLP) trains here, the reward one is tested here

so the gold judge has seen none of the reward classifier's training images, and is of another family (an MLP
on pixels, not a CNN): what the fine-tuned model learns to exploit in the reward classifier is unlikely to fool
it in the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import list_checkpoints, resolve_checkpoint
from .config import PretrainConfig, pretrain_config, to_dict
from .data import load_dataset
from .errors import UserError
from .models import CLASSIFIER_KINDS, accuracy, train_classifier

# 2: the reward and gold classifiers train on disjoint halves, and the gold one is an MLP (1: overlapping splits).
CLASSIFIER_VERSION = 2
NUM_CLASSES = 10  # digit data sets


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
class ClassifierRecipe:
    """How one role's classifier is built and trained: the family (a key of ``CLASSIFIER_KINDS``), its options
    (image shape and classes are added from the data), the epochs and the learning rate."""

    kind: str
    options: dict
    epochs: int
    lr: float = 1e-3


# Held-out accuracy on digits (seed 0, one thread): reward CNN 0.970 on half B, gold MLP 0.959 on half A. The CNN's
# 60 epochs of half the digits are as many steps as its former 40 epochs of 80 % of them.
RECIPES: dict[str, ClassifierRecipe] = {
    "reward": ClassifierRecipe("cnn", {"width": 32}, epochs=60),
    "gold": ClassifierRecipe("mlp", {"hidden": 256, "depth": 2, "dropout": 0.2}, epochs=150),
}
# 28x28 MNIST digits cost ~12x the 8x8 ones per image: fewer epochs over the 2500 of each half still converge.
DATASET_EPOCHS: dict[str, dict[str, int]] = {"mnist5k": {"reward": 20, "gold": 60}}
DIGIT_DATASETS = ("digits", "mnist5k")  # labelled digit sets the two-classifier construction is used on
HALVES = {"reward": 0, "gold": 1}  # which half each role trains on; it is tested on the other


def classifier_halves(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two disjoint halves of ``range(n)`` from one seeded permutation: (A with ceil(n/2), B with floor(n/2)).

    The reward classifier trains on A, the gold classifier on B; each is tested on the other half.

    >>> a, b = classifier_halves(5)
    >>> len(a), len(b), sorted(torch.cat([a, b]).tolist())
    (3, 2, [0, 1, 2, 3, 4])
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = n - n // 2
    return order[:cut], order[cut:]


@dataclass(frozen=True)
class ClassifierInfo:
    """A cached classifier and how good it is on images it never saw.

    Attributes:
        model: the classifier in eval mode (``forward(x) -> logits``, ``features(x)``, ``num_classes``).
        heldout_accuracy: its accuracy on the other half of the data set (the one it did not train on).
        path: its cache folder.
        dataset, role: e.g. ``"digits"``, ``"reward"`` or ``"gold"``.
        train_indices, heldout_indices: the rows of ``load_dataset(dataset)`` it trained / was tested on.
    """

    model: nn.Module
    heldout_accuracy: float
    path: Path
    dataset: str = "digits"
    role: str = "reward"
    train_indices: torch.Tensor | None = None
    heldout_indices: torch.Tensor | None = None


def split_classifier(dataset: str = "digits", role: str = "reward", cache: str | Path | None = None, *,
                     seed: int = 0, recipe: ClassifierRecipe | None = None, progress: bool = False) -> ClassifierInfo:
    """The ``role`` classifier (``reward`` or ``gold``) of a digit data set, trained on its half, cached.

    ``dataset`` is a name for :func:`orwcfm.data.load_dataset` whose ``x`` is (N, 1, H, W) (square images) and
    whose ``labels`` are digits 0..9 (``digits``; ``mnist5k`` uses the same construction). ``seed`` fixes the
    one permutation that both roles split (:func:`classifier_halves`) and the training's randomness;
    ``recipe`` overrides the role's :data:`RECIPES` entry. Returns the model in eval mode with its accuracy
    on the other half.
    """
    if role not in RECIPES:
        raise ValueError(f"classifier role must be one of {sorted(RECIPES)}, got {role!r}")
    if recipe is None:
        recipe = RECIPES[role]
        if role in DATASET_EPOCHS.get(dataset, {}):
            recipe = dataclasses.replace(recipe, epochs=DATASET_EPOCHS[dataset][role])
    if recipe.kind not in CLASSIFIER_KINDS:
        raise ValueError(f"classifier kind must be one of {sorted(CLASSIFIER_KINDS)}, got {recipe.kind!r}")
    settings = {"version": CLASSIFIER_VERSION, "dataset": dataset, "role": role, "seed": seed,
                "kind": recipe.kind, "options": recipe.options, "epochs": recipe.epochs, "lr": recipe.lr}
    folder = cache_dir(cache) / f"{dataset}-{role}-classifier-{_digest(settings)}"
    if (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
        model = CLASSIFIER_KINDS[meta["kind"]](**meta["architecture"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        halves = classifier_halves(meta["num_rows"], seed)
        return ClassifierInfo(model.eval(), meta["heldout_accuracy"], folder, dataset, role,
                              halves[HALVES[role]], halves[1 - HALVES[role]])

    data = load_dataset(dataset)
    x, labels = data.x, data.labels
    if x.dim() != 4 or x.shape[2] != x.shape[3] or labels is None:
        raise UserError(f"the {role} classifier needs a labelled data set of square images (N, C, S, S); "
                        f"'{dataset}' has x of shape {tuple(x.shape)}" + (" and no labels" if labels is None else ""))
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise UserError(f"the {role} classifier needs digit labels 0..9; '{dataset}' has labels "
                        f"{int(labels.min())}..{int(labels.max())}")
    halves = classifier_halves(len(x), seed)
    train, test = halves[HALVES[role]], halves[1 - HALVES[role]]
    architecture = {"num_classes": NUM_CLASSES, "in_channels": x.shape[1], "image_size": x.shape[2], **recipe.options}
    with torch.random.fork_rng(devices=[]):  # the initial weights too follow `seed`, not the caller's RNG state
        torch.manual_seed(seed)
        model = CLASSIFIER_KINDS[recipe.kind](**architecture)
    train_classifier(model, x[train], labels[train], epochs=recipe.epochs, lr=recipe.lr, seed=seed, progress=progress)
    acc = accuracy(model, x[test], labels[test])

    tmp = Path(tempfile.mkdtemp(prefix=".classifier-", dir=folder.parent))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    meta = {**settings, "architecture": architecture, "num_rows": len(x), "train_rows": len(train),
            "heldout_rows": len(test), "heldout_accuracy": acc}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    return ClassifierInfo(model.eval(), acc, folder, dataset, role, train, test)


def digits_classifier(cache: str | Path | None = None, *, seed: int = 0, epochs: int | None = None,
                      width: int | None = None, progress: bool = False) -> ClassifierInfo:
    """The digits reward classifier (a CNN; also the feature extractor of the digits-FD): trained on half A
    of the 1797 digits, cached, with its accuracy on half B (the gold classifier's training half).

    ``epochs`` and ``width`` override :data:`RECIPES` ``["reward"]``.
    """
    base = RECIPES["reward"]
    recipe = ClassifierRecipe(base.kind, {**base.options, **({"width": width} if width is not None else {})},
                              epochs if epochs is not None else base.epochs, base.lr)
    return split_classifier("digits", "reward", cache, seed=seed, recipe=recipe, progress=progress)


def gold_classifier(cache: str | Path | None = None, progress: bool = False, *, dataset: str = "digits",
                    seed: int = 0) -> ClassifierInfo:
    """The held-out "gold" judge of digit samples: an MLP trained on the half the reward classifier never saw.

    A reward optimised against the reward classifier can exploit its blind spots; the gold classifier never
    took part in training, saw none of the reward classifier's images and is of another family, so a gap
    between the two (optimised reward up, gold reward flat) shows over-optimisation. Its held-out accuracy is
    measured on the reward classifier's half.
    """
    return split_classifier(dataset, "gold", cache, seed=seed, progress=progress)


def reference_key(config: PretrainConfig) -> dict:
    """The settings that name a cached reference: the resolved config, less keys added after references were first
    cached while they hold their defaults (so an unconditional reference keeps its folder and is not retrained)."""
    settings = to_dict(config)
    if not settings["conditional"]:
        settings.pop("conditional")
        settings.pop("condition_dropout")
    if settings["sampling"].get("guidance") == 1.0:
        settings["sampling"] = {k: v for k, v in settings["sampling"].items() if k != "guidance"}
    return settings


def reference_config(name: str = "digits", **overrides) -> PretrainConfig:
    """The settings of a cached built-in reference: the data set's preset (with a built-in reference's own settings,
    e.g. ``digits-cond``) plus ``overrides``."""
    from .config import BUILTIN_REFERENCES

    if name in BUILTIN_REFERENCES:
        settings = dict(BUILTIN_REFERENCES[name])
        return pretrain_config(settings.pop("data"), **{**settings, **overrides})
    return pretrain_config(name, **overrides)


def builtin_reference(name: str = "digits", cache: str | Path | None = None, *,
                      config: PretrainConfig | None = None, progress: bool = True) -> Path:
    """The checkpoint folder of a built-in reference flow (``builtin:NAME``), pretrained on first use and cached.

    ``name`` is a data set with a pretraining preset (digits, moons, 8gaussians, gaussian-1d, patches, ...).
    An interrupted pretraining resumes from its last checkpoint the next time.
    """
    from .config import BUILTIN_REFERENCES, PRETRAIN_PRESETS
    from .errors import unknown_name_error
    from .train import pretrain

    names = [*(n for n in PRETRAIN_PRESETS if n not in ("mnist", "cifar10")), *BUILTIN_REFERENCES]
    if name not in names:
        raise unknown_name_error("built-in reference", name, names)
    config = config or reference_config(name)
    run_dir = cache_dir(cache) / f"{name}-reference-{_digest(reference_key(config))}"
    existing = list_checkpoints(run_dir)
    if existing and int(existing[-1].name.split("_")[1]) == config.steps:
        return resolve_checkpoint(run_dir)
    return pretrain(config, run_dir, resume=bool(existing), progress=progress).checkpoint
