"""Digits rewards: how sure a classifier is that an 8x8 sample shows a digit of a target set (e.g. even digits)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import torch
from torch import nn

from orwcfm.errors import UserError

NAMED_TARGETS = {"even": (0, 2, 4, 6, 8), "odd": (1, 3, 5, 7, 9)}
PROB_FLOOR = 1e-6  # log_prob rewards are clamped at log(1e-6) ~ -13.8, so one hopeless sample cannot dominate


def parse_targets(targets: Sequence[int] | str) -> tuple[int, ...]:
    """The target digits: ``"even"``, ``"odd"`` or a non-empty list of distinct integers 0..9, sorted.

    >>> parse_targets("odd"), parse_targets([7, 1])
    ((1, 3, 5, 7, 9), (1, 7))
    """
    if isinstance(targets, str):
        if targets not in NAMED_TARGETS:
            raise UserError(f"digits reward targets must be 'even', 'odd' or a list of digits 0..9, got {targets!r}")
        return NAMED_TARGETS[targets]
    ok = (
        isinstance(targets, Sequence)
        and len(targets) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 9 for d in targets)
    )
    if not ok:
        raise UserError(
            f"digits reward targets must be 'even', 'odd' or a non-empty list of digits 0..9, got {targets!r}"
        )
    if len(set(targets)) != len(targets):
        raise UserError(f"digits reward targets must not repeat a digit, got {list(targets)}")
    return tuple(sorted(targets))


class DigitsTargetReward:
    """Probability (or log-probability) that ``classifier`` puts an 8x8 digit sample in the target set.

    ``reward(x)``: x (B, 1, 8, 8) in [-1, 1] -> (B,) = sum over target classes of softmax(classifier(x));
    with ``log_prob=True`` the log of that sum, clamped below at ``log(PROB_FLOOR)`` = log(1e-6).
    The classifier is copied, frozen and put in eval mode (no dropout) on x's device (one copy per device, made on
    first use); the caller's classifier is left untouched. The reward is differentiable in x (the classifier's
    weights carry no gradient, and without an x that requires grad no graph is built), so the methods that
    back-propagate through the reward (DRaFT, ReFL, Adjoint Matching) run on the digits tasks; below the clamp
    (p < 1e-6, log_prob) its gradient is zero.

    >>> from orwcfm.models import DigitsClassifier
    >>> reward = DigitsTargetReward(DigitsClassifier(), "even")
    >>> r = reward(torch.zeros(4, 1, 8, 8))
    >>> r.shape, bool(((r >= 0) & (r <= 1)).all())
    (torch.Size([4]), True)
    >>> sorted(reward.metrics(torch.zeros(4, 1, 8, 8)))
    ['class_histogram', 'target_fraction']
    """

    def __init__(self, classifier: nn.Module, targets: Sequence[int] | str = "even", log_prob: bool = False) -> None:
        if not isinstance(log_prob, bool):
            raise UserError(f"digits reward option 'log_prob' must be true or false, got {log_prob!r}")
        self.targets = parse_targets(targets)
        self.log_prob = log_prob
        label = targets if isinstance(targets, str) else "".join(map(str, self.targets))
        self.name = f"digits-{label}" + ("-logprob" if log_prob else "")
        self._classifier = copy.deepcopy(classifier).eval().requires_grad_(False)
        self._by_device: dict[torch.device, nn.Module] = {}
        self._mask: dict[torch.device, torch.Tensor] = {}
        self.dataset = "digits"  # whose classifier this is (set by the registry factories)

    def _on(self, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
        if device not in self._by_device:
            net = self._classifier
            if next(net.parameters()).device != device:
                net = copy.deepcopy(net).to(device)
            self._by_device[device] = net
            mask = torch.zeros(getattr(net, "num_classes", 10), dtype=torch.bool, device=device)
            mask[list(self.targets)] = True
            self._mask[device] = mask
        return self._by_device[device], self._mask[device]

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities (B, 10) of samples x (B, 1, 8, 8)."""
        net, _ = self._on(x.device)
        dtype = next(net.parameters()).dtype
        return net(x.to(dtype)).float().log_softmax(dim=-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _, mask = self._on(x.device)
        target_log_prob = self.log_probs(x)[:, mask].logsumexp(dim=-1)  # log sum_{c in targets} p_c, stable
        if self.log_prob:
            return target_log_prob.clamp_min(math.log(PROB_FLOOR))
        return target_log_prob.exp()

    @torch.no_grad()
    def metrics(self, x: torch.Tensor) -> dict[str, float | list[float]]:
        """``target_fraction``: share of samples whose arg-max class is a target;
        ``class_histogram``: share of samples per arg-max class (10 values summing to 1)."""
        _, mask = self._on(x.device)
        pred = self.log_probs(x).argmax(dim=-1)
        counts = torch.bincount(pred, minlength=mask.numel()).float()
        histogram = counts / max(len(pred), 1)
        return {"target_fraction": float(mask[pred].float().mean().item()) if len(pred) else 0.0,
                "class_histogram": histogram.tolist()}


def _classifier(cache: str | Path | None, dataset: str = "digits") -> nn.Module:
    from orwcfm.assets import DIGIT_DATASETS, split_classifier  # imported here: assets pulls in training code

    if dataset not in DIGIT_DATASETS:
        raise UserError(f"digits reward option 'dataset' must be one of {', '.join(DIGIT_DATASETS)}, got {dataset!r}")
    return split_classifier(dataset, "reward", cache).model


def _reward(targets: Sequence[int] | str, log_prob: bool, dataset: str, cache: str | Path | None) -> DigitsTargetReward:
    reward = DigitsTargetReward(_classifier(cache, dataset), targets, log_prob=log_prob)
    reward.dataset = dataset
    if dataset != "digits":
        reward.name = f"{dataset}-{reward.name.removeprefix('digits-')}"
    return reward


def digits_target(targets: Sequence[int] | str = "even", log_prob: bool = False, dataset: str = "digits",
                  cache: str | Path | None = None) -> DigitsTargetReward:
    """Registry factory ``digits-target``: the cached reward classifier of ``dataset`` (``digits`` 8x8 or
    ``mnist5k`` 28x28) with the given ``targets``."""
    parse_targets(targets)  # fail on bad targets before training a classifier
    return _reward(targets, log_prob, dataset, cache)


def digits_even(log_prob: bool = False, dataset: str = "digits", cache: str | Path | None = None) -> DigitsTargetReward:
    """Registry factory ``digits-even``: reward for drawing 0, 2, 4, 6 or 8 (``dataset``: digits or mnist5k)."""
    return _reward("even", log_prob, dataset, cache)


def digits_odd(log_prob: bool = False, dataset: str = "digits", cache: str | Path | None = None) -> DigitsTargetReward:
    """Registry factory ``digits-odd``: reward for drawing 1, 3, 5, 7 or 9 (``dataset``: digits or mnist5k)."""
    return _reward("odd", log_prob, dataset, cache)


class DigitsAlignReward:
    """Prompt alignment of digit samples: the classifier's log-probability of the *prompted* digit.

    The CPU-sized analogue of text-image alignment: the conditions are the prompts "a handwritten 0" .. "a
    handwritten 9" as class labels (:class:`~orwcfm.conditions.Labels`, prompt k = digit k), and
    ``reward(x, cond)``: x (B, 1, H, W), cond (B,) labels -> (B,) ``log p(cond_i | x_i)`` clamped below at
    ``log(PROB_FLOOR)`` (``log_prob=False``: the probability itself). Differentiable in x, as
    :class:`DigitsTargetReward`.

    >>> from orwcfm.conditions import Labels
    >>> from orwcfm.models import DigitsClassifier
    >>> reward = DigitsAlignReward(DigitsClassifier())
    >>> reward(torch.zeros(4, 1, 8, 8), Labels(torch.tensor([0, 1, 2, 3]), 10)).shape
    torch.Size([4])
    """

    def __init__(self, classifier: nn.Module, log_prob: bool = True, dataset: str = "digits") -> None:
        if not isinstance(log_prob, bool):
            raise UserError(f"digits-align option 'log_prob' must be true or false, got {log_prob!r}")
        # the target set is unused: only its per-device classifier copies and log_probs are
        self._scorer = DigitsTargetReward(classifier, "even")
        self.log_prob, self.dataset = log_prob, dataset
        self.name = "digits-align" if dataset == "digits" else f"{dataset}-align"

    def _prompted(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        values = getattr(cond, "values", None)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (x.shape[0],):
            raise UserError(f"{self.name} needs the prompted digit of every sample (class labels of shape "
                            f"({x.shape[0]},)): fine-tune with prompts, got conditions {type(cond).__name__}")
        return values.to(x.device).long()

    def __call__(self, x: torch.Tensor, cond: Any = None) -> torch.Tensor:
        prompted = self._prompted(x, cond)
        chosen = self._scorer.log_probs(x).gather(1, prompted[:, None]).squeeze(1)
        return chosen.clamp_min(math.log(PROB_FLOOR)) if self.log_prob else chosen.exp()

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, cond: Any = None) -> dict[str, float | list[float]]:
        """``alignment``: share of samples whose arg-max class is the prompted digit; ``alignment_per_prompt``:
        the same per prompted digit (10 values; NaN where no sample had that prompt); ``class_histogram``."""
        prompted = self._prompted(x, cond)
        log_probs = self._scorer.log_probs(x)
        pred, classes = log_probs.argmax(dim=-1), log_probs.shape[1]
        hit = (pred == prompted).float()
        counts = torch.bincount(prompted, minlength=classes).float()
        per = torch.bincount(prompted, weights=hit, minlength=classes) / counts
        return {"alignment": float(hit.mean().item()) if len(hit) else 0.0, "alignment_per_prompt": per.tolist(),
                "class_histogram": (torch.bincount(pred, minlength=classes).float() / max(len(pred), 1)).tolist()}


def digits_align(log_prob: bool = True, dataset: str = "digits", cache: str | Path | None = None) -> DigitsAlignReward:
    """Registry factory ``digits-align``: log-probability of the prompted digit under the cached reward classifier
    of ``dataset`` (``digits`` or ``mnist5k``); a conditional reward ``reward(x, cond)``."""
    return DigitsAlignReward(_classifier(cache, dataset), log_prob=log_prob, dataset=dataset)


DIGIT_PROMPTS = tuple(f"a handwritten {d}" for d in range(10))  # prompt k is the digit k
