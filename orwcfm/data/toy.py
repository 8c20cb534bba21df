"""1-D and 2-D toy distributions, sampled with torch so that a seeded ``torch.Generator`` controls everything.

Each factory returns a :class:`ToyDistribution` whose ``sample(n, generator)`` gives ``(n, d)`` float32 on the
generator's device. Samples are i.i.d. (e.g. each moons point picks its moon at random), as a sampler of an
infinite distribution should be.

>>> g = torch.Generator().manual_seed(0)
>>> eight_gaussians().sample(4, g).shape
torch.Size([4, 2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from orwcfm.data.base import ToyDistribution, as_float, generator_device
from orwcfm.errors import UserError

# ---- Gaussian mixtures: the shared sampler and the checks of their options ----


def _mixture(name: str, means: list[list[float]], stds: list[float], weights: list[float], params: dict):
    """A :class:`ToyDistribution` for ``sum_k w_k N(means[k], stds[k]^2 I)``; means is ``K`` lists of ``d``."""
    dim = len(means[0])

    def sampler(n: int, generator: torch.Generator | None) -> torch.Tensor:
        device = generator_device(generator)
        mu = torch.tensor(means, dtype=torch.float32, device=device)  # (K, d)
        sd = torch.tensor(stds, dtype=torch.float32, device=device)  # (K,)
        w = torch.tensor(weights, dtype=torch.float32, device=device)  # (K,)
        if n == 0:  # torch.multinomial refuses to draw zero samples
            return torch.empty(0, dim, device=device)
        k = torch.multinomial(w, n, replacement=True, generator=generator)  # (n,) component of each sample
        eps = torch.randn(n, dim, generator=generator, device=device)
        return mu[k] + sd[k, None] * eps

    return ToyDistribution(name, (dim,), sampler, params=params)


def _means(name: str, value: object, dim: int) -> list[list[float]]:
    """``means`` as ``K`` points of dimension ``dim`` (1-D means may be plain numbers)."""
    what = "a non-empty list of numbers" if dim == 1 else f"a non-empty list of {dim}-number points"
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) == 0:
        raise UserError(f"option 'means' of data set '{name}' must be {what}, got {value!r}")
    points = []
    for m in value:
        point = [m] if dim == 1 and not isinstance(m, Sequence) else m
        if isinstance(point, str | bytes) or not isinstance(point, Sequence) or len(point) != dim:
            raise UserError(f"option 'means' of data set '{name}' must be {what}, got {value!r}")
        points.append([as_float(name, "means", c) for c in point])
    return points


def _per_component(name: str, option: str, value: object, k: int, *, positive: bool) -> list[float]:
    """A number or ``k`` numbers, one per mixture component."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != k:
            raise UserError(
                f"option '{option}' of data set '{name}' must have one entry per component ({k}), got {value!r}"
            )
        return [as_float(name, option, v, positive=positive) for v in value]
    return [as_float(name, option, value, positive=positive)] * k


def _weights(name: str, value: object, k: int) -> list[float]:
    if value is None:
        return [1.0 / k] * k
    w = _per_component(name, "weights", value, k, positive=False)
    if any(v < 0 for v in w) or sum(w) <= 0:
        raise UserError(
            f"option 'weights' of data set '{name}' must be non-negative with a positive sum, got {value!r}"
        )
    return [v / sum(w) for v in w]


# ---- the registered factories ----


def gaussian_1d(mean: float = 0.0, std: float = 1.0) -> ToyDistribution:
    """``N(mean, std^2)`` in one dimension; samples ``(n, 1)``.

    The closed form makes it the test bed of the tilt law: ``q_0 * exp(N tau x)`` is ``N(mean + N tau std^2, std^2)``.
    """
    mean = as_float("gaussian-1d", "mean", mean)
    std = as_float("gaussian-1d", "std", std, positive=True)
    return _mixture("gaussian-1d", [[mean]], [std], [1.0], {"mean": mean, "std": std})


def gmm_1d(
    means: Sequence[float] = (-2.0, 2.0), std: float | Sequence[float] = 0.5, weights: Sequence[float] | None = None
) -> ToyDistribution:
    """A 1-D Gaussian mixture; samples ``(n, 1)``. ``std`` and ``weights`` are one number or one per component;
    weights are normalised (default: equal)."""
    mu = _means("gmm-1d", means, 1)
    sd = _per_component("gmm-1d", "std", std, len(mu), positive=True)
    w = _weights("gmm-1d", weights, len(mu))
    return _mixture("gmm-1d", mu, sd, w, {"means": [m[0] for m in mu], "std": sd, "weights": w})


def gmm_2d(
    means: Sequence[Sequence[float]] = ((-2.0, -2.0), (-2.0, 2.0), (2.0, -2.0), (2.0, 2.0)),
    std: float | Sequence[float] = 0.5,
    weights: Sequence[float] | None = None,
) -> ToyDistribution:
    """A 2-D Gaussian mixture with isotropic components (default: 4 on the corners of a square); ``(n, 2)``."""
    mu = _means("gmm-2d", means, 2)
    sd = _per_component("gmm-2d", "std", std, len(mu), positive=True)
    w = _weights("gmm-2d", weights, len(mu))
    return _mixture("gmm-2d", mu, sd, w, {"means": mu, "std": sd, "weights": w})


def eight_gaussians(scale: float = 5.0, std: float = 0.1**0.25) -> ToyDistribution:
    """Eight equally weighted Gaussians centred at ``scale * (cos(k pi/4), sin(k pi/4))``, ``k = 0..7``; ``(n, 2)``.

    Defaults follow torchcfm's ``sample_8gaussians`` (``scale=5, var=0.1``): torchcfm passes ``sqrt(var) * I``
    as the *covariance*, so each coordinate has variance ``sqrt(0.1)``, i.e. ``std = 0.1 ** 0.25 ~ 0.562``.
    """
    scale = as_float("8gaussians", "scale", scale, positive=True)
    std = as_float("8gaussians", "std", std, positive=True)
    centers = [[scale * math.cos(k * math.pi / 4), scale * math.sin(k * math.pi / 4)] for k in range(8)]
    return _mixture("8gaussians", centers, [std] * 8, [1 / 8] * 8, {"scale": scale, "std": std})


def moons(noise: float = 0.1) -> ToyDistribution:
    """Two interleaving half circles (scikit-learn's ``make_moons`` shape), drawn with torch; ``(n, 2)``.

    Each point picks a moon with probability 1/2 and an angle uniform in ``[0, pi]``; Gaussian noise of std
    ``noise`` is added in make_moons' coordinates (so ``noise`` means what it means there). The result is
    centred and scaled by 4/3, so the noiseless moons span ``x in [-2, 2]``, ``y in [-1, 1]``.
    """
    noise = as_float("moons", "noise", noise)
    if noise < 0:
        raise UserError(f"option 'noise' of data set 'moons' must be a number >= 0, got {noise!r}")

    def sampler(n: int, generator: torch.Generator | None) -> torch.Tensor:
        device = generator_device(generator)
        inner = torch.randint(2, (n,), generator=generator, device=device).bool()
        angle = math.pi * torch.rand(n, generator=generator, device=device)
        x = torch.where(inner, 1 - angle.cos(), angle.cos())
        y = torch.where(inner, 0.5 - angle.sin(), angle.sin())
        points = torch.stack([x, y], dim=1) + noise * torch.randn(n, 2, generator=generator, device=device)
        return (points - torch.tensor([0.5, 0.25], device=device)) * (4 / 3)

    return ToyDistribution("moons", (2,), sampler, params={"noise": noise})


def checkerboard() -> ToyDistribution:
    """Uniform on the 8 "black" squares of side 2 of a 4x4 checkerboard on ``[-4, 4]^2`` (FFJORD / torchcfm).

    A point ``(x, y)`` is in the support iff ``floor(x / 2) + floor(y / 2)`` is even.
    """

    def sampler(n: int, generator: torch.Generator | None) -> torch.Tensor:
        device = generator_device(generator)
        x1 = 4 * torch.rand(n, generator=generator, device=device) - 2  # column, [-2, 2)
        # a row in [0, 1) or [-2, -1), then shifted by the column's parity so the colours alternate
        x2 = torch.rand(n, generator=generator, device=device)
        x2 = x2 - 2 * torch.randint(2, (n,), generator=generator, device=device) + torch.remainder(x1.floor(), 2)
        return 2 * torch.stack([x1, x2], dim=1)

    return ToyDistribution("checkerboard", (2,), sampler)
