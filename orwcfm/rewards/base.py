"""The reward protocol and the one place where a reward's output is checked.

A reward is a black box: any callable mapping a batch of samples ``x`` of shape (B, *event_shape) (images in
[-1, 1], channels first) to a float tensor of shape (B,). No gradient is ever taken through it. On a conditional
task a reward may take the conditions too, ``reward(x, cond)`` (e.g. the classifier's log-probability of the
prompted digit); a one-argument reward is called with ``x`` alone there, so the old rewards keep working. A reward object
may also have ``metrics(x) -> dict[str, float | list[float]]`` with task metrics; the trainer logs them.

Rewards come from user code, so :func:`call_reward` checks what they return instead of trusting it: a wrong
shape or a NaN would otherwise silently corrupt the weights ``B * softmax(tau * r)`` of every sample in the batch.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from orwcfm.errors import UserError

ON_BAD_CHOICES = ("stop", "drop")
_INT_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64} | {
    getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)
}


@runtime_checkable
class Reward(Protocol):
    """``reward(x)``: samples (B, *event_shape) -> rewards (B,), higher is better."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def takes_condition(fn: Any) -> bool:
    """Whether ``fn`` accepts a second positional argument (the conditions): ``fn(x, cond)``.

    >>> takes_condition(lambda x: x), takes_condition(lambda x, cond: x), takes_condition(lambda x, cond=None: x)
    (False, True, True)
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: call it the old way
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class RewardError(UserError):
    """A reward raised, or returned something other than B finite floats; one line naming reward and step."""


@dataclass(frozen=True)
class RewardBatch:
    """The checked output of a reward on one batch.

    values: (B,) float32 on x's device; non-finite entries are kept as they are (mask them with ``valid``).
    valid: (B,) bool, True where the value is finite.
    num_bad: number of non-finite values.
    """

    values: torch.Tensor
    valid: torch.Tensor
    num_bad: int


def reward_name(fn: Any) -> str:
    """A readable name for a reward: its ``name`` attribute, else its qualified name, else its class name.

    >>> reward_name(lambda x: x.sum(1))
    '<lambda>'
    >>> class Brightness:
    ...     def __call__(self, x): return x.flatten(1).mean(1)
    >>> reward_name(Brightness())
    'Brightness'
    """
    name = getattr(fn, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(fn, functools.partial):
        return reward_name(fn.func)
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str) and qualname:
        return qualname.rsplit("<locals>.", 1)[-1]
    return type(fn).__name__


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _as_tensor(out: Any, *, where: str, batch: int) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, np.ndarray | list | tuple | np.generic):
        try:
            return torch.as_tensor(np.asarray(out))
        except (TypeError, ValueError, RuntimeError) as err:
            raise RewardError(f"{where} returned a {type(out).__name__} that is not numeric ({_one_line(err)}); "
                              f"expected a float tensor of shape ({batch},)") from err
    raise RewardError(f"{where} returned a {type(out).__name__}; expected a float tensor of shape ({batch},)")


def call_reward(fn: Reward, x: torch.Tensor, *, name: str, step: int, on_bad: str = "stop",
                cond: Any = None) -> RewardBatch:
    """Evaluate ``fn(x)`` (``fn(x, cond)`` when conditions are given and ``fn`` takes them) under
    ``torch.no_grad()`` and check the result.

    Accepted: a tensor, numpy array or list of shape (B,) with B = ``x.shape[0]``; floating values are cast
    to float32, integer and bool values (a 0/1 indicator is a fine reward) are converted to float32, and the
    result is moved to ``x``'s device. Anything else raises :class:`RewardError` with one line naming the
    reward, the step and what was wrong. Non-finite values stop the run (``on_bad="stop"``), or are marked
    invalid in the result (``on_bad="drop"``; if every value is non-finite it stops anyway).

    >>> out = call_reward(lambda x: x.sum(1), torch.ones(3, 2), name="sum", step=0)
    >>> out.values, out.num_bad
    (tensor([2., 2., 2.]), 0)
    >>> nan_at_1 = lambda x: torch.tensor([1.0, float("nan")])
    >>> bad = call_reward(nan_at_1, torch.ones(2, 2), name="r", step=5, on_bad="drop")
    >>> bad.valid.tolist(), bad.num_bad
    ([True, False], 1)
    """
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"on_bad must be one of {', '.join(ON_BAD_CHOICES)}, got {on_bad!r}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"call_reward needs a batch tensor x of shape (B, ...), got {type(x).__name__} "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}".rstrip())
    batch = x.shape[0]
    where = f"reward '{name}' at step {step}"
    if cond is not None and len(cond) != batch:
        raise ValueError(f"call_reward got {len(cond)} conditions for {batch} samples")
    args = (x, cond) if cond is not None and takes_condition(fn) else (x,)
    try:
        with torch.no_grad():
            out = fn(*args)
    except Exception as err:  # noqa: BLE001 - a user reward may raise anything; report it as one line
        raise RewardError(f"reward '{name}' raised {type(err).__name__}: {_one_line(err)} at step {step}") from err

    values = _as_tensor(out, where=where, batch=batch)
    if not (values.dtype.is_floating_point or values.dtype == torch.bool or values.dtype in _INT_DTYPES):
        raise RewardError(f"{where} returned values of dtype {values.dtype}; expected real floats (or ints/bools)")
    if tuple(values.shape) != (batch,):
        raise RewardError(f"{where} returned shape {tuple(values.shape)}; "
                          f"expected shape ({batch},), one value per sample")
    values = values.to(device=x.device, dtype=torch.float32)
    valid = torch.isfinite(values)
    num_bad = int((~valid).sum().item())
    if num_bad and on_bad == "stop":
        raise RewardError(
            f"reward '{name}' returned {num_bad} non-finite values (NaN/inf) out of {batch} at step {step}; "
            "set on_bad_reward: drop to drop such samples instead"
        )
    if num_bad and num_bad == batch:
        raise RewardError(f"reward '{name}' returned only non-finite values (NaN/inf), all {batch}, at step {step}; "
                          "nothing is left to train on")
    return RewardBatch(values=values, valid=valid, num_bad=num_bad)
