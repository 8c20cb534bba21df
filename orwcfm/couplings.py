"""Couplings: how noise samples ``x0`` are paired with data samples ``x1`` in a minibatch.

Every coupling returns the permutation it applied to ``x1``. Per-sample data that belongs to ``x1`` (reward
weights, labels) must be indexed with the same permutation, ``w[pairing.index]``: the published ORW-CFM code
re-pairs samples by minibatch OT but leaves the weights in their old order, which silently scrambles the
reward signal. Returning the index makes the right thing the easy thing.

Minibatch exact OT (Tong et al., 2023; Pooladian et al., 2023) between two equally sized, uniformly weighted
batches is an assignment problem: its optimal plan is a permutation, which
``scipy.optimize.linear_sum_assignment`` finds exactly. (Sampling pairs from the plan with replacement, as
torchcfm does, would duplicate and drop samples together with their weights.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from .errors import unknown_name_error


@dataclass(frozen=True)
class Pairing:
    """Paired batches.

    Attributes:
        x0: (B, *shape) noise, in its original order.
        x1: (B, *shape) data, ``x1_in[index]``: row i is paired with ``x0[i]``.
        index: (B,) int64 permutation applied to the data; apply it to any per-sample data of ``x1``.
    """

    x0: torch.Tensor
    x1: torch.Tensor
    index: torch.Tensor


def _check(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor | None = None) -> None:
    if x0.shape != x1.shape:
        raise ValueError(f"coupling needs x0 and x1 of the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if groups is not None and tuple(groups.shape) != (x1.shape[0],):
        raise ValueError(f"coupling needs one group id per sample, shape ({x1.shape[0]},), got {tuple(groups.shape)}")


def _assignment(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """(B,) int64: the data row paired with each noise row by the exact OT plan (squared Euclidean cost)."""
    with torch.no_grad():
        cost = torch.cdist(x0.reshape(len(x0), -1).double(), x1.reshape(len(x1), -1).double()).pow(2)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    # rows come back sorted 0..B-1, so cols[i] is the data row paired with noise row i.
    return torch.as_tensor(cols, dtype=torch.long, device=x1.device)


def independent_coupling(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor | None = None) -> Pairing:
    """Pair ``x0[i]`` with ``x1[i]`` (both are already independent draws); the identity permutation.

    ``groups`` is accepted for a uniform signature: the identity never pairs across groups."""
    _check(x0, x1, groups)
    return Pairing(x0=x0, x1=x1, index=torch.arange(x1.shape[0], device=x1.device))


def ot_coupling(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor | None = None) -> Pairing:
    """Pair by the exact minibatch OT plan for squared Euclidean cost (a permutation of ``x1``).

    With ``groups`` ((B,) int64, e.g. the conditions' ``group_ids()``), data row j is only paired with a noise row
    whose own sample had the same group: the plan is the exact OT plan within each group. (Noise carries no
    condition of its own; row i's condition is that of the sample it was drawn beside, ``groups[i]``.)

    >>> x0 = torch.tensor([[0.0], [10.0]]); x1 = torch.tensor([[9.0], [1.0]])
    >>> ot_coupling(x0, x1).index.tolist()
    [1, 0]
    >>> ot_coupling(x0, x1, groups=torch.tensor([0, 1])).index.tolist()  # each group of one: nothing to re-pair
    [0, 1]
    """
    _check(x0, x1, groups)
    if groups is None:
        index = _assignment(x0, x1)
    else:
        index = torch.empty(len(x1), dtype=torch.long, device=x1.device)
        for g in torch.unique(groups):
            members = torch.nonzero(groups == g).flatten().to(x1.device)
            index[members] = members[_assignment(x0[members], x1[members])]
    return Pairing(x0=x0, x1=x1[index], index=index)


COUPLINGS = {"independent": independent_coupling, "ot": ot_coupling}


def get_coupling(name: str):
    """Look a coupling up by name (``independent`` or ``ot``)."""
    if name not in COUPLINGS:
        raise unknown_name_error("coupling", name, COUPLINGS)
    return COUPLINGS[name]
