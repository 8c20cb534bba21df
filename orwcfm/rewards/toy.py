"""Rewards for 1-D and 2-D toy samples x of shape (B, d); their optima are known, so tests can check them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from orwcfm.errors import UserError

Vector = float | Sequence[float]


def _vector(value: Vector, *, reward: str, option: str) -> tuple[float, ...]:
    """A number or a non-empty list of finite numbers, as a tuple (a number stands for every coordinate)."""
    items = [value] if isinstance(value, int | float) and not isinstance(value, bool) else value
    ok = (
        isinstance(items, Sequence)
        and not isinstance(items, str)
        and len(items) > 0
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in items)
    )
    if not ok:
        raise UserError(f"option '{option}' of reward '{reward}' must be a number or a non-empty list "
                        f"of finite numbers, got {value!r}")
    return tuple(float(v) for v in items)


def _check(x: torch.Tensor, reward: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"reward '{reward}' takes vectors of shape (B, d), got {tuple(x.shape)}")


def _as_tensor(values: tuple[float, ...], x: torch.Tensor, *, reward: str, option: str) -> torch.Tensor:
    """``values`` as a (d,) tensor for x (B, d): a single value is repeated, a list must have d entries."""
    d = x.shape[1]
    if len(values) not in (1, d):
        raise ValueError(f"option '{option}' of reward '{reward}' has {len(values)} entries but the samples have "
                         f"dimension {d}; give {d} values (or one for all coordinates)")
    return torch.tensor(values, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device).expand(d)


class LinearReward:
    """r(x) = x @ weights + bias for x (B, d); ``weights=None`` means all ones (the sum of the coordinates).

    The exponential tilt of a Gaussian N(mu, s^2) by exp(tau * r) with r(x) = x is N(mu + tau s^2, s^2).

    >>> LinearReward([1.0, -2.0], bias=0.5)(torch.tensor([[1.0, 1.0], [0.0, -1.0]]))
    tensor([-0.5000,  2.5000])
    """

    name = "linear"

    def __init__(self, weights: Vector | None = None, bias: float = 0.0) -> None:
        self.weights = None if weights is None else _vector(weights, reward="linear", option="weights")
        if not (isinstance(bias, int | float) and not isinstance(bias, bool) and math.isfinite(bias)):
            raise UserError(f"option 'bias' of reward 'linear' must be a finite number, got {bias!r}")
        self.bias = float(bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.name)
        w = torch.ones(x.shape[1], dtype=x.dtype, device=x.device) if self.weights is None else \
            _as_tensor(self.weights, x, reward=self.name, option="weights")
        return x @ w + self.bias


class DistanceReward:
    """r(x) = -||x - point||_2 for x (B, d): highest (0) at ``point``.

    >>> DistanceReward([0.0, 0.0])(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    tensor([-5., -0.])
    """

    name = "distance"

    def __init__(self, point: Vector) -> None:
        self.point = _vector(point, reward="distance", option="point")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.name)
        return -(x - _as_tensor(self.point, x, reward=self.name, option="point")).norm(dim=1)


class RegionReward:
    """r(x) = 1.0 if low <= x <= high in every coordinate (the box is closed), else 0.0; x (B, d).

    >>> RegionReward([0.0, 0.0], [1.0, 1.0])(torch.tensor([[0.5, 1.0], [0.5, 1.5]]))
    tensor([1., 0.])
    """

    name = "region"

    def __init__(self, low: Vector, high: Vector) -> None:
        self.low = _vector(low, reward="region", option="low")
        self.high = _vector(high, reward="region", option="high")
        if len(self.low) != len(self.high) and 1 not in (len(self.low), len(self.high)):
            raise UserError(f"options 'low' and 'high' of reward 'region' must have the same length, "
                            f"got {len(self.low)} and {len(self.high)}")
        n = max(len(self.low), len(self.high))
        lows, highs = self.low * (n // len(self.low)), self.high * (n // len(self.high))
        if any(lo > hi for lo, hi in zip(lows, highs, strict=True)):
            raise UserError(f"reward 'region' needs low <= high in every coordinate, "
                            f"got low={list(self.low)}, high={list(self.high)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.name)
        low = _as_tensor(self.low, x, reward=self.name, option="low")
        high = _as_tensor(self.high, x, reward=self.name, option="high")
        return ((x >= low) & (x <= high)).all(dim=1).float()
