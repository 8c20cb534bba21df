"""Judges: independent eyes on a run's samples (the digits classifiers), and which one a run uses.

A judge is called as ``judge(samples, reference_samples[, cond])`` and returns named metrics. Which judge a run gets
is chosen by its configuration (``judge``: the reward's data set, the reference's pretraining data, or named),
never by the samples' shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..conditions import Cond
from ..errors import UserError
from ..metrics import class_entropy, frechet_distance


class DigitsJudge:
    """Independent eyes on 8x8 digit samples (B, 1, 8, 8).

    ``judge(samples, reference_samples)`` returns:
        class_entropy: entropy (nats) of the classifier's class histogram (log 10 = 2.303 when uniform);
        digits_fd_data: Fréchet distance, in the classifier's 128-d feature space, to all the real digits (so
            fine-tuning toward some classes raises it by design);
        digits_fd_target: the same to the real digits of the target classes only (when the reward has digit
            targets and ``labels`` are given): low when the samples look like real target digits;
        digits_fd_ref: the same to the reference's samples (when given);
        gold_target_fraction, gold_reward_mean: the reward recomputed with the held-out gold classifier
            (when the reward has digit targets); gold_class_entropy.

    ``data`` (M, 1, 8, 8) are the real digits and ``labels`` (M,) their classes.
    """

    def __init__(self, classifier: nn.Module, gold: nn.Module, data: torch.Tensor,
                 targets: tuple[int, ...] | None = None, log_prob: bool = False,
                 labels: torch.Tensor | None = None) -> None:
        from ..rewards.digits import DigitsTargetReward

        self.classifier = classifier.eval()
        self.targets = targets
        # The gold reward is the task's own reward code with the held-out classifier swapped in.
        self.gold = DigitsTargetReward(gold, targets or "even", log_prob=log_prob)
        self.data_features = self._features(data)
        self.target_features: torch.Tensor | None = None
        if targets is not None and labels is not None:
            if labels.shape != (len(data),):
                raise ValueError(f"labels must be ({len(data)},) like data, got {tuple(labels.shape)}")
            in_target = torch.isin(labels.cpu(), torch.tensor(list(targets)))
            if not in_target.any():
                raise ValueError(f"no real digit of the target classes {list(targets)} among the data")
            self.target_features = self.data_features[in_target]

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float().cpu())

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor, reference_samples: torch.Tensor | None = None,
                 cond: Cond | None = None) -> dict[str, Any]:
        x = samples.float().cpu()
        feats = self._features(x)
        predicted = self.classifier.out(feats).argmax(-1)  # the features are computed once, for FD and classes
        gold = self.gold.metrics(x)
        out: dict[str, Any] = {
            "class_entropy": class_entropy(torch.bincount(predicted, minlength=self.classifier.num_classes)),
            "digits_fd_data": frechet_distance(feats, self.data_features),
            "gold_class_entropy": class_entropy(gold["class_histogram"]),
        }
        if self.target_features is not None:
            out["digits_fd_target"] = frechet_distance(feats, self.target_features)
        if reference_samples is not None:
            out["digits_fd_ref"] = frechet_distance(feats, self._features(reference_samples))
        prompted = getattr(cond, "values", None)
        if isinstance(prompted, torch.Tensor):  # prompted digits: does the held-out classifier agree?
            gold_pred = self.gold.log_probs(x).argmax(-1)
            out["gold_alignment"] = float((gold_pred == prompted.cpu()).float().mean())
        if self.targets is not None:
            out["gold_target_fraction"] = gold["target_fraction"]
            out["gold_reward_mean"] = self.gold(x).mean().item()
        return out


JUDGE_SETTINGS = ("auto", "none", "digits", "mnist5k")


def pretrained_on(loaded: Any) -> str | None:
    """The data set a pretraining checkpoint (:class:`~orwcfm.checkpoint.Checkpoint`) was trained on, if recorded."""
    data = loaded.meta.get("data") if loaded is not None else None
    return data.get("name") if isinstance(data, dict) else None


def judge_dataset(setting: str, reward_fn: Any = None, reference_data: str | None = None) -> str | None:
    """The labelled digit set whose classifiers judge a run's samples, from the task's configuration.

    ``setting`` (config ``judge``): ``auto`` takes the reward's data set (the digits rewards carry one, e.g.
    ``digits-even`` with ``dataset: mnist5k``), else the data set the reference was pretrained on when that is a
    labelled digit set (``reference_data``, from its checkpoint), else no judge; ``none`` is no judge; ``digits``
    or ``mnist5k`` names the set. The samples' shape never decides.
    """
    from ..assets import DIGIT_DATASETS

    if setting not in JUDGE_SETTINGS:
        raise UserError(f"judge must be one of {', '.join(JUDGE_SETTINGS)}, got {setting!r}")
    if setting == "none":
        return None
    if setting != "auto":
        return setting
    for candidate in (getattr(reward_fn, "dataset", None), reference_data):
        if candidate in DIGIT_DATASETS:
            return candidate
    return None


def make_judge(dataset: str | None, reward_fn: Any = None, cache: str | Path | None = None) -> DigitsJudge | None:
    """A :class:`DigitsJudge` for samples of the digit set ``dataset`` (``digits`` 8x8 or ``mnist5k`` 28x28,
    see :func:`judge_dataset`), with that data set's reward and gold classifiers and real digits; None for None."""
    if dataset is None:
        return None
    from ..assets import DIGIT_DATASETS, gold_classifier, split_classifier
    from ..data import load_dataset

    if dataset not in DIGIT_DATASETS:
        raise UserError(f"no judge for data set {dataset!r}: judges exist for {', '.join(DIGIT_DATASETS)}")
    data = load_dataset(dataset)
    return DigitsJudge(split_classifier(dataset, "reward", cache).model, gold_classifier(cache, dataset=dataset).model,
                       data.x, targets=getattr(reward_fn, "targets", None),
                       log_prob=bool(getattr(reward_fn, "log_prob", False)), labels=data.labels)
