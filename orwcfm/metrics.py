"""Sample metrics: what a classifier sees in the samples, and how diverse they are."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ClassifierReport:
    """How a classifier reads a set of samples.

    Attributes:
        mean_max_prob: mean over samples of the classifier's top probability (confidence that it is *some* class).
        class_fractions: (C,) fraction of samples assigned to each class (argmax).
        predictions: (N,) argmax classes.
    """

    mean_max_prob: float
    class_fractions: list[float]
    predictions: torch.Tensor


@torch.no_grad()
def classify(classifier: nn.Module, samples: torch.Tensor, batch_size: int = 1000) -> ClassifierReport:
    """Run ``classifier`` (logits out) over (N, *shape) samples in eval mode.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2)); _ = net[1].weight.data.copy_(torch.eye(2) * 50)
    >>> _ = net[1].bias.data.zero_()
    >>> r = classify(net, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    >>> r.class_fractions, round(r.mean_max_prob, 3)
    ([0.6666666865348206, 0.3333333432674652], 1.0)
    """
    was_training = classifier.training
    classifier.eval()
    try:
        probs = torch.cat([classifier(samples[i : i + batch_size]).softmax(-1) for i in range(0, len(samples), batch_size)])
    finally:
        classifier.train(was_training)
    top, pred = probs.max(-1)
    counts = torch.bincount(pred, minlength=probs.shape[1]).float()
    return ClassifierReport(
        mean_max_prob=top.mean().item(),
        class_fractions=(counts / counts.sum()).tolist(),
        predictions=pred,
    )


def mean_pairwise_distance(samples: torch.Tensor, max_samples: int = 2000) -> float:
    """Mean Euclidean distance between distinct pairs of (N, *shape) samples (the first ``max_samples``).

    >>> mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    5.0
    """
    x = samples[:max_samples].flatten(1).double()
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"mean pairwise distance needs at least 2 samples, got {n}")
    d = torch.cdist(x, x)
    return (d.sum() / (n * (n - 1))).item()
