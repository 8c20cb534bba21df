"""The two kinds of data source: a finite tensor in memory and an infinite toy sampler.

Both expose ``name``, ``shape`` (the event shape, without the batch dimension), ``kind`` (``"image"`` or
``"vector"``) and ``sample(n, generator)``, so training code can draw a batch from either without caring which.
Images are float32, channels-first ``(C, H, W)``, scaled to ``[-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from orwcfm.errors import UserError

KINDS = ("image", "vector")

# sampler(n, generator) -> (n, *shape) float32 tensor on the generator's device (CPU without one).
Sampler = Callable[[int, "torch.Generator | None"], torch.Tensor]


def _check_n(n: int) -> None:
    # A bool is an int in Python; sample(True) is certainly a bug.
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of samples must be a non-negative int, got {n!r}")


def generator_device(generator: torch.Generator | None) -> torch.device:
    """The device random numbers must be drawn on to use ``generator`` (CPU when there is none)."""
    return generator.device if generator is not None else torch.device("cpu")


# eq=False: field-wise equality is meaningless for tensors and closures; identity is what callers want.
@dataclass(frozen=True, eq=False)
class TensorData:
    """A finite data set held in memory.

    Attributes:
        name: registry name, e.g. ``"digits"``.
        x: ``(N, *shape)`` float32; images are channels-first ``(C, H, W)`` in ``[-1, 1]``.
        labels: ``(N,)`` int64 class labels, or ``None``.
        kind: ``"image"`` or ``"vector"``.
        params: the options it was built with (for run records).

    >>> d = TensorData("tiny", torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 1]), "image")
    >>> d.shape, len(d), tuple(d.sample(5, torch.Generator().manual_seed(0)).shape)
    ((1, 2, 2), 3, (5, 1, 2, 2))
    """

    name: str
    x: torch.Tensor
    labels: torch.Tensor | None
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.x.dtype != torch.float32 or self.x.dim() < 2:
            raise ValueError(f"x must be a float32 (N, *shape) tensor, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.x.shape[0] == 0:  # e.g. digits=[] or an MNIST file with 0 images: the user's data, not a bug
            raise UserError(f"data set '{self.name}' is empty")
        if self.labels is not None and (
            self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (self.x.shape[0],)
        ):
            raise ValueError(
                f"labels must be an int64 tensor of shape ({self.x.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """The event shape, e.g. ``(1, 8, 8)`` or ``(2,)``."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, *shape)`` rows drawn uniformly at random with replacement, reproducibly given ``generator``."""
        return self.sample_with_labels(n, generator)[0]

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rows of :meth:`sample` ((n, *shape); the same draw for the same generator state) and their labels
        ((n,) int64, or None for a data set without labels)."""
        _check_n(n)
        idx = torch.randint(len(self), (n,), generator=generator, device=generator_device(generator)).to(self.x.device)
        return self.x[idx], None if self.labels is None else self.labels[idx.to(self.labels.device)]

    @property
    def num_classes(self) -> int | None:
        """The number of classes (largest label + 1), or None without labels."""
        return None if self.labels is None else int(self.labels.max()) + 1


@dataclass(frozen=True, eq=False)
class ToyDistribution:
    """An infinite sampler for 1-D / 2-D toy distributions.

    Attributes:
        name: registry name, e.g. ``"8gaussians"``.
        shape: the event shape ``(d,)``.
        sampler: ``sampler(n, generator)`` returns ``(n, d)`` float32 on the generator's device.
        kind: always ``"vector"`` for the built-in ones.
        params: the options it was built with (e.g. ``mean`` and ``std`` of ``gaussian-1d``).

    >>> d = ToyDistribution("zeros", (2,), lambda n, g: torch.zeros(n, 2))
    >>> d.sample(3).shape
    torch.Size([3, 2])
    """

    name: str
    shape: tuple[int, ...]
    sampler: Sampler
    kind: str = "vector"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, *shape)`` float32 samples, deterministic given the state of ``generator``."""
        _check_n(n)
        out = self.sampler(n, generator)
        expected = (n, *self.shape)
        if tuple(out.shape) != expected:  # cheap guard against a sampler returning the wrong layout
            raise RuntimeError(f"sampler of '{self.name}' returned shape {tuple(out.shape)}, expected {expected}")
        return out.float()


DataSource = TensorData | ToyDistribution


def data_dim(data: DataSource) -> int:
    """Number of scalars in one sample (``prod(shape)``), e.g. 64 for ``(1, 8, 8)``."""
    return math.prod(data.shape)


# ---- option checks shared by the factories: one clear sentence naming the option and what is expected ----


def _bad(dataset: str, option: str, expected: str, value: object) -> UserError:
    return UserError(f"option '{option}' of data set '{dataset}' must be {expected}, got {value!r}")


def as_float(dataset: str, option: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite float (``> 0`` when ``positive``), else a :class:`UserError`."""
    expected = "a number > 0" if positive else "a finite number"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(dataset, option, expected, value)
    if positive and value <= 0:
        raise _bad(dataset, option, expected, value)
    return float(value)


def as_int(dataset: str, option: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else a :class:`UserError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(dataset, option, f"an integer >= {minimum}", value)
    return int(value)


def as_choice(dataset: str, option: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a :class:`UserError` listing them."""
    if value not in choices:
        raise _bad(dataset, option, "one of " + ", ".join(repr(c) for c in choices), value)
    return str(value)


def as_classes(dataset: str, option: str, value: object) -> list[int]:
    """The sorted distinct classes in ``value``, a non-empty list of ints 0..9, else a :class:`UserError`.

    >>> as_classes("digits", "digits", [7, 3, 7])
    [3, 7]
    """
    ok = (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and len(value) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 9 for d in value)
    )
    if not ok:
        raise _bad(dataset, option, "a non-empty list of integers 0..9", value)
    return sorted(set(value))
