"""Sample metrics: rewards, diversity (pairwise distance, Vendi, class entropy) and distances between sample sets
(exact empirical W2, the W2 bound along the ODE, Fréchet distance of features)."""

from __future__ import annotations

import math
from typing import Any
from dataclasses import dataclass

import torch
from torch import nn

from .sampling import ODEResult


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
    >>> [round(f, 4) for f in r.class_fractions], round(r.mean_max_prob, 3)
    ([0.6667, 0.3333], 1.0)
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


# -------------------------------------------------------------------------------------------------------------
# Reward statistics.


@dataclass(frozen=True)
class RewardStats:
    """Summary of (N,) reward values (non-finite values are counted and left out).

    Attributes:
        mean, std, min, max: over the finite values (NaN when there are none).
        quantiles: {"q10": ..., "q50": ..., "q90": ...} (keys are the percentages).
        count: number of finite values; non_finite: number left out.
    """

    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[str, float]
    count: int
    non_finite: int

    def scalars(self, prefix: str = "reward_") -> dict[str, float]:
        """Flat numbers for logs and tables: reward_mean, reward_std, reward_min, reward_max, reward_q10, ..."""
        out = {f"{prefix}{k}": getattr(self, k) for k in ("mean", "std", "min", "max")}
        out.update({f"{prefix}{k}": v for k, v in self.quantiles.items()})
        return out


def reward_stats(values: torch.Tensor, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> RewardStats:
    """Mean, spread, extremes and quantiles of rewards (N,).

    >>> s = reward_stats(torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan")]))
    >>> s.mean, s.max, s.quantiles["q50"], s.non_finite
    (2.5, 4.0, 2.5, 1)
    """
    v = values.detach().flatten().double().cpu()
    finite = v[torch.isfinite(v)]
    nan = float("nan")
    if len(finite) == 0:
        return RewardStats(nan, nan, nan, nan, {f"q{round(q * 100)}": nan for q in quantiles}, 0, len(v))
    qs = torch.quantile(finite, torch.tensor(quantiles, dtype=torch.float64)).tolist()
    return RewardStats(
        mean=finite.mean().item(),
        std=finite.std().item() if len(finite) > 1 else nan,
        min=finite.min().item(),
        max=finite.max().item(),
        quantiles={f"q{round(q * 100)}": x for q, x in zip(quantiles, qs)},
        count=len(finite),
        non_finite=len(v) - len(finite),
    )


# -------------------------------------------------------------------------------------------------------------
# Diversity.


def class_entropy(histogram: torch.Tensor | list[float]) -> float:
    """Shannon entropy (nats) of a class histogram (normalised first): log(C) for uniform, 0 for one class.

    >>> round(class_entropy([1, 1, 1, 1]), 6) == round(math.log(4), 6), class_entropy([0, 5, 0])
    (True, 0.0)
    """
    p = torch.as_tensor(histogram, dtype=torch.float64).flatten()
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"a class histogram needs non-negative counts with a positive sum, got {p.tolist()}")
    p = p / p.sum()
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def median_distance(samples: torch.Tensor, max_samples: int = 2000) -> float:
    """Median Euclidean distance between distinct pairs (the usual RBF bandwidth); (N, *shape) -> float."""
    x = samples[:max_samples].flatten(1).double()
    d = torch.cdist(x, x)
    iu = torch.triu_indices(len(x), len(x), offset=1)
    return d[iu[0], iu[1]].median().item()


def vendi_score(samples: torch.Tensor, bandwidth: float | None = None, kernel: str = "rbf",
                max_samples: int = 2000) -> float:
    """The Vendi score (Friedman & Dieng, 2023): exp of the entropy of the eigenvalues of K/N.

    The effective number of distinct samples: 1 when all are equal, N when all are dissimilar. Kernel ``rbf``
    is exp(-||x - y||^2 / (2 h^2)) with bandwidth ``h`` (default: the median pairwise distance of ``samples``;
    pass a fixed ``h`` to compare sets, e.g. the reference's median distance); ``cosine`` is the cosine
    similarity of the flattened samples. ``samples``: (N, *shape), the first ``max_samples`` are used.

    >>> vendi_score(torch.zeros(5, 3), bandwidth=1.0)
    1.0
    >>> round(vendi_score(torch.eye(4), kernel="cosine"), 6)
    4.0
    """
    x = samples[:max_samples].flatten(1).double()
    n = len(x)
    if n < 1:
        raise ValueError("the Vendi score needs at least one sample")
    if kernel == "rbf":
        h = bandwidth if bandwidth is not None else median_distance(x)
        if not h > 0:
            raise ValueError(f"the RBF bandwidth must be positive, got {h}")
        k = torch.exp(-torch.cdist(x, x).pow(2) / (2 * h * h))
    elif kernel == "cosine":
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        k = xn @ xn.T
    else:
        raise ValueError(f"unknown Vendi kernel {kernel!r}; accepted: rbf, cosine")
    lam = torch.linalg.eigvalsh(k / n).clamp_min(0)
    lam = lam[lam > 1e-12]
    lam = lam / lam.sum()
    return float(torch.exp(-(lam * lam.log()).sum()))


# -------------------------------------------------------------------------------------------------------------
# Distances between sample sets.


def empirical_w2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between two equal-sized empirical distributions (N, *shape).

    The optimal plan between two uniform sets of N points is a permutation (Birkhoff), found exactly by
    the Hungarian algorithm (scipy's ``linear_sum_assignment``) on squared Euclidean costs.

    >>> empirical_w2(torch.tensor([[0.0], [1.0]]), torch.tensor([[4.0], [3.0]]))
    3.0
    """
    from scipy.optimize import linear_sum_assignment

    if x.shape != y.shape:
        raise ValueError(f"empirical_w2 needs two sample sets of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    a, b = x.flatten(1).double().cpu(), y.flatten(1).double().cpu()
    cost = torch.cdist(a, b).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(max(cost[rows, cols].mean(), 0.0))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D), as in FID:
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).

    The matrix square root goes through symmetric eigendecompositions (stable, no complex parts).

    >>> a = torch.tensor([[0.0, 0.0], [2.0, 0.0]]); round(frechet_distance(a, a + 3.0), 6)
    18.0
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"frechet_distance needs (N, D) and (M, D) features, got {tuple(features_a.shape)} and {tuple(features_b.shape)}")
    a, b = features_a.double().cpu(), features_b.double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = torch.cov(a.T, correction=1).reshape(a.shape[1], a.shape[1]) if len(a) > 1 else torch.zeros(a.shape[1], a.shape[1], dtype=a.dtype)
    cov_b = torch.cov(b.T, correction=1).reshape(b.shape[1], b.shape[1]) if len(b) > 1 else torch.zeros(b.shape[1], b.shape[1], dtype=b.dtype)
    root_a = _psd_sqrt(cov_a)
    cross = _psd_sqrt(root_a @ cov_b @ root_a)
    fd = float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace())
    return max(fd, 0.0)  # round-off can leave -1e-6 for identical sets


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues clipped)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


@dataclass(frozen=True)
class W2Bound:
    """The W2 regulariser's quantities measured along the fine-tuned model's own ODE paths.

    Attributes:
        integral: ∫_0^1 E||v_theta(t, X_t) - v_ref(t, X_t)||^2 dt, X_t the model's trajectory from noise
            (squared Euclidean norm, summed over dimensions). W2^2(p_theta, p_ref) <= e^{2L} * integral, L the
            reference field's Lipschitz constant in x (Grönwall).
        coupled_sq: E||X_1 - Y_1||^2 with X, Y the model's and the reference's samples from the same noise; an
            upper bound on W2^2 (a coupling), so coupled_sq >= empirical W2^2 up to sampling error.
        per_time: (steps + 1,) E||v_theta - v_ref||^2 at each grid time; times: (steps + 1,).
    """

    integral: float
    coupled_sq: float
    per_time: list[float]
    times: list[float]


@torch.no_grad()
def w2_bound(model: nn.Module, reference: nn.Module, noise: torch.Tensor, *, solver: str = "midpoint",
             steps: int = 10, reference_samples: torch.Tensor | None = None, trajectory: ODEResult | None = None,
             cond: Any = None) -> W2Bound:
    """Integrate ``model`` from ``noise`` (N, *shape), evaluate both fields on its trajectory, and integrate
    the squared difference over t with the trapezoid rule on the solver's grid (under conditions ``cond``, one per
    sample, for conditional fields).

    ``reference_samples`` (the reference integrated from the same noise) is computed when not given;
    ``trajectory`` (``integrate(model, noise, ..., return_trajectory=True)``) is reused when given.
    """
    from .models.base import call_field
    from .sampling import integrate

    ode = trajectory if trajectory is not None else integrate(model, noise, solver=solver, steps=steps,
                                                              return_trajectory=True, cond=cond)
    if ode.trajectory is None or len(ode.samples) != len(noise):
        raise ValueError("w2_bound needs the trajectory of the model from the same noise (return_trajectory=True)")
    per_time = []
    for t, x in zip(ode.times.tolist(), ode.trajectory):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        per_time.append((call_field(model, tt, x, cond) - call_field(reference, tt, x, cond)).double().pow(2).flatten(1).sum(1).mean().item())
    times = ode.times.double().cpu()
    integral = float(torch.trapezoid(torch.tensor(per_time, dtype=torch.float64), times))
    if reference_samples is None:
        reference_samples = integrate(reference, noise, solver=solver, steps=steps, cond=cond).samples
    coupled = (ode.samples - reference_samples).double().pow(2).flatten(1).sum(1).mean().item()
    return W2Bound(integral=integral, coupled_sq=coupled, per_time=per_time, times=times.tolist())
