"""Metrics against answers known in closed form or computed independently (brute force, numpy, scipy)."""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from orwcfm.metrics import (class_entropy, empirical_w2, frechet_distance, mean_pairwise_distance, median_distance,
                            reward_stats, vendi_score, w2_bound)


def test_reward_stats_match_numpy_and_count_non_finite():
    values = torch.tensor([3.0, -1.0, float("nan"), 7.0, 2.0, float("inf"), 0.5])
    s = reward_stats(values, quantiles=(0.1, 0.5, 0.9))
    finite = np.array([3.0, -1.0, 7.0, 2.0, 0.5])
    assert s.count == 5 and s.non_finite == 2
    assert s.mean == pytest.approx(finite.mean()) and s.std == pytest.approx(finite.std(ddof=1))
    assert (s.min, s.max) == (-1.0, 7.0)
    for q in (0.1, 0.5, 0.9):
        assert s.quantiles[f"q{round(q * 100)}"] == pytest.approx(np.quantile(finite, q))
    assert set(s.scalars()) == {"reward_mean", "reward_std", "reward_min", "reward_max", "reward_q10", "reward_q50", "reward_q90"}


def test_reward_stats_of_nothing_finite_are_nan():
    s = reward_stats(torch.tensor([float("nan")]))
    assert s.count == 0 and math.isnan(s.mean) and math.isnan(s.quantiles["q50"])


def test_class_entropy():
    assert class_entropy([5, 5, 5, 5]) == pytest.approx(math.log(4))
    assert class_entropy(torch.tensor([0.0, 3.0, 0.0])) == 0.0
    assert class_entropy([1, 3]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    with pytest.raises(ValueError, match="non-negative"):
        class_entropy([1, -1])


def test_vendi_known_answers():
    # all equal: one distinct sample
    assert vendi_score(torch.ones(10, 3), bandwidth=1.0) == pytest.approx(1.0)
    # k far-apart clusters of identical points: k effective samples (eigenvalues 1/k each)
    centres = torch.eye(4) * 100.0
    x = centres.repeat_interleave(5, dim=0)
    assert vendi_score(x, bandwidth=1.0) == pytest.approx(4.0, abs=1e-6)
    # cosine kernel of orthonormal vectors: identity kernel, score n; duplicates do not add diversity
    assert vendi_score(torch.eye(6), kernel="cosine") == pytest.approx(6.0)
    assert vendi_score(torch.cat([torch.eye(3)] * 4), kernel="cosine") == pytest.approx(3.0)


def test_vendi_matches_independent_formula():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0)).double()
    h = 1.7
    k = np.exp(-scipy.spatial.distance.cdist(x.numpy(), x.numpy(), "sqeuclidean") / (2 * h * h))
    lam = np.linalg.eigvalsh(k / len(x))
    lam = lam[lam > 1e-12]
    assert vendi_score(x, bandwidth=h) == pytest.approx(math.exp(-(lam * np.log(lam)).sum()), rel=1e-9)
    with pytest.raises(ValueError, match="unknown Vendi kernel 'poly'"):
        vendi_score(x, kernel="poly")


def test_median_and_mean_pairwise_distance():
    x = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 3, 2
    assert median_distance(x) == pytest.approx(2.0)
    assert mean_pairwise_distance(x) == pytest.approx(2.0)


def test_empirical_w2_translation_and_1d_sorting():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g).double()
    c = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)
    assert empirical_w2(x, x + c) == pytest.approx(3.0, abs=1e-9)  # |c| = 3
    assert empirical_w2(x, x[torch.randperm(50, generator=g)]) == pytest.approx(0.0, abs=1e-12)
    a, b = torch.randn(40, 1, generator=g).double(), torch.randn(40, 1, generator=g).double() * 2 + 1
    sorted_w2 = ((a.sort(0).values - b.sort(0).values) ** 2).mean().sqrt().item()  # 1-D: monotone matching is optimal
    assert empirical_w2(a, b) == pytest.approx(sorted_w2, rel=1e-9)


def test_empirical_w2_equals_brute_force_over_permutations():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 2, generator=g).double(), torch.randn(6, 2, generator=g).double()
    best = min(((a - b[list(p)]) ** 2).sum(1).mean().item() for p in itertools.permutations(range(6)))
    assert empirical_w2(a, b) == pytest.approx(math.sqrt(best), rel=1e-9)
    with pytest.raises(ValueError, match=r"same shape, got \(6, 2\) and \(5, 2\)"):
        empirical_w2(a, b[:5])


def test_frechet_distance_known_answers():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(500, 3, generator=g).double()
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    c = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    assert frechet_distance(a, a + c) == pytest.approx(9.0, rel=1e-9)  # covariances equal: |mu_a - mu_b|^2
    # b = k a (same mean 0 after centring): trace term is (1 - k)^2 tr(S_a)
    a0 = a - a.mean(0)
    cov = torch.cov(a0.T)
    assert frechet_distance(a0, 3 * a0) == pytest.approx(4 * cov.trace().item(), rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(200, 5, generator=g).double()
    b = (torch.randn(300, 5, generator=g) @ torch.randn(5, 5, generator=g) + 0.5).double()
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    s_a, s_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


class Field(nn.Module):
    """v(t, x) = -x + shift: the reference (shift 0) contracts; a shifted copy differs by a constant."""

    def __init__(self, shift):
        super().__init__()
        self.shift = torch.as_tensor(shift, dtype=torch.float64)

    def forward(self, t, x):
        return -x + self.shift


def test_w2_bound_of_a_constant_velocity_shift():
    c = torch.tensor([0.6, -0.8], dtype=torch.float64)  # |c|^2 = 1
    noise = torch.randn(400, 2, generator=torch.Generator().manual_seed(5)).double()
    bound = w2_bound(Field(c), Field(0.0), noise, solver="rk4", steps=50)
    # the integrand is |c|^2 at every t, whatever the trajectory
    assert bound.integral == pytest.approx(1.0, rel=1e-9)
    assert all(p == pytest.approx(1.0) for p in bound.per_time)
    # same noise through both flows: d' = -d + c, d(0) = 0 -> d(1) = c (1 - 1/e)
    assert bound.coupled_sq == pytest.approx((1 - math.exp(-1)) ** 2, rel=1e-6)
    # the chain W2^2 <= E|X1 - Y1|^2 <= e^{2L} * integral holds (here L = 1)
    model_x = noise * math.exp(-1) + c * (1 - math.exp(-1))
    ref_x = noise * math.exp(-1)
    assert empirical_w2(model_x, ref_x) ** 2 <= bound.coupled_sq + 1e-6 <= math.exp(2) * bound.integral
    same = w2_bound(Field(0.0), Field(0.0), noise, solver="euler", steps=4)
    assert same.integral == 0.0 and same.coupled_sq == 0.0
