"""Probability paths and time samplers.

The straight (conditional optimal-transport) path between a noise sample ``x0`` and a data sample ``x1``::

    x_t = (1 - (1 - sigma_min) t) x0 + t x1          u_t = d x_t / dt = x1 - (1 - sigma_min) x0

With ``sigma_min = 0`` (the default) this is ``x_t = (1 - t) x0 + t x1`` and ``u_t = x1 - x0``, the path of
rectified flow / torchcfm's ``ConditionalFlowMatcher(sigma=0)``. A positive ``sigma_min`` is Lipman et al.'s
OT path, whose endpoint at t = 1 is ``x1 + sigma_min x0`` (a Gaussian of width sigma_min around x1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError


@dataclass(frozen=True)
class PathSample:
    """A point on the path and the regression target there.

    Attributes:
        t: (B,) times in [0, 1].
        x_t: (B, *shape) the interpolant.
        u_t: (B, *shape) the conditional velocity the model regresses onto.
    """

    t: torch.Tensor
    x_t: torch.Tensor
    u_t: torch.Tensor


def _expand_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape ``t`` of shape (B,) to (B, 1, ..., 1) so it broadcasts against ``x`` of shape (B, *shape)."""
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape ({x.shape[0]},) to match x of shape {tuple(x.shape)}, got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class StraightPath:
    """The conditional-OT path ``x_t = (1 - (1 - sigma_min) t) x0 + t x1``.

    >>> path = StraightPath()
    >>> s = path.sample(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0.25]))
    >>> s.x_t.tolist(), s.u_t.tolist()
    ([[0.25, 0.25]], [[1.0, 1.0]])
    """

    sigma_min: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sigma_min < 1.0:
            raise UserError(f"sigma_min must be in [0, 1), got {self.sigma_min}")

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> PathSample:
        """Interpolate and compute the target.

        Args:
            x0: (B, *shape) noise.
            x1: (B, *shape) data, already paired with ``x0`` by a coupling.
            t: (B,) times.
        """
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        tb = _expand_time(t, x0)
        a = 1.0 - self.sigma_min
        x_t = (1.0 - a * tb) * x0 + tb * x1
        u_t = x1 - a * x0
        return PathSample(t=t, x_t=x_t, u_t=u_t)


# ---------------------------------------------------------------------------------------------------------------
# Time samplers: t ~ p(t) on [0, 1] for the regression. Uniform is the method's default; logit-normal
# (Esser et al., 2024) puts more weight on the middle of the path, where the regression target is hardest.


@dataclass(frozen=True)
class UniformTime:
    """t ~ U[0, 1]."""

    def __call__(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Return (n,) float32 times."""
        return torch.rand(n, generator=generator, device=device)


@dataclass(frozen=True)
class LogitNormalTime:
    """t = sigmoid(z), z ~ N(mean, std^2)."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise UserError(f"logit-normal time sampler needs std > 0, got {self.std}")

    def __call__(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Return (n,) float32 times in (0, 1)."""
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * z)


TIME_SAMPLERS = {"uniform": UniformTime, "logit-normal": LogitNormalTime}


def make_time_sampler(name: str, **options: float) -> UniformTime | LogitNormalTime:
    """Build a time sampler by name (``uniform`` or ``logit-normal``)."""
    from .errors import unknown_name_error

    if name not in TIME_SAMPLERS:
        raise unknown_name_error("time sampler", name, TIME_SAMPLERS)
    return TIME_SAMPLERS[name](**options)
