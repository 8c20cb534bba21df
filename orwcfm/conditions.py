"""Conditions: what a sample was generated *for* (a class label, a prompt), carried beside it.

A condition belongs to its sample the way a reward weight does: every reordering of a batch (a buffer shuffle,
weighted resampling, an OT pairing, a distributed slice) must apply the same index to the conditions, or the
model learns to draw a "3" for the prompt "a handwritten 7". So a condition type has one job besides holding
values: ``index(idx)`` returns the conditions of the reordered batch. Unconditional runs pass ``None``
everywhere; the helpers here accept ``None`` so that the loop reads the same with and without conditions.

``group_ids()`` names which samples share a condition (a (B,) int64 tensor): OT pairing pairs only within a
group (pairing a "3" with the noise of a "7" would teach the conditional field the wrong path), and group-relative
weightings normalise within it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .errors import UserError


@runtime_checkable
class Cond(Protocol):
    """The conditions of a batch of B samples."""

    def __len__(self) -> int: ...

    def index(self, idx: torch.Tensor) -> Cond:
        """The conditions of ``batch[idx]`` (idx: (B',) int64; repeats allowed, as resampling makes them)."""
        ...

    def group_ids(self) -> torch.Tensor:
        """(B,) int64: equal ids for equal conditions."""
        ...

    def null(self) -> Cond:
        """The same batch with every condition replaced by the null ("no condition") one: what classifier-free
        guidance's unconditional pass sees, and what condition dropout trains."""
        ...

    def drop(self, mask: torch.Tensor) -> Cond:
        """The same batch with the conditions where ``mask`` ((B,) bool) is True replaced by the null one, the
        others kept (prompt dropout in fine-tuning); the group ids stay the samples' own."""
        ...


@dataclass(frozen=True)
class Labels:
    """Class conditions, e.g. the ten prompts "a handwritten 0" .. "a handwritten 9" as labels 0..9.

    Attributes:
        values: (B,) int64 class indices in [0, num_classes).
        num_classes: the number of classes the model was built for.
        dropped: (B,) bool, True where the condition is withheld (the null label: classifier-free guidance's
            unconditional pass, condition dropout in pretraining); None means none is withheld.
    """

    values: torch.Tensor
    num_classes: int
    dropped: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 1:
            raise UserError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if not isinstance(self.values, torch.Tensor) or self.values.dim() != 1:
            got = tuple(self.values.shape) if isinstance(self.values, torch.Tensor) else type(self.values).__name__
            raise UserError(f"class labels must be a 1-D tensor of shape (B,), got {got}")
        if self.values.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
            raise UserError(f"class labels must be integers, got dtype {self.values.dtype}")
        if len(self.values) and (int(self.values.min()) < 0 or int(self.values.max()) >= self.num_classes):
            bad = self.values[(self.values < 0) | (self.values >= self.num_classes)][0]
            raise UserError(f"class label {int(bad)} is outside [0, {self.num_classes})")
        if self.dropped is not None and (self.dropped.dtype != torch.bool or tuple(self.dropped.shape) != (len(self.values),)):
            raise UserError(f"the dropped mask of class labels must be a bool tensor of shape ({len(self.values)},), "
                            f"got {self.dropped.dtype} {tuple(self.dropped.shape)}")

    def _derive(self, values: torch.Tensor, dropped: torch.Tensor | None) -> Labels:
        """Labels made from this one's already checked values (reindexed, moved, masked). The range check of the
        constructor reads the values back (min and max: two device syncs), so it runs once, where labels enter,
        not again at every reordering inside the training step."""
        out = object.__new__(Labels)
        object.__setattr__(out, "values", values)
        object.__setattr__(out, "num_classes", self.num_classes)
        object.__setattr__(out, "dropped", dropped)
        return out

    def __len__(self) -> int:
        return len(self.values)

    def index(self, idx: torch.Tensor) -> Labels:
        idx = idx.to(self.values.device)
        return self._derive(self.values[idx], None if self.dropped is None else self.dropped[idx])

    def group_ids(self) -> torch.Tensor:
        return self.values.long()

    def null(self) -> Labels:
        return self._derive(self.values, torch.ones(len(self.values), dtype=torch.bool, device=self.values.device))

    def drop(self, mask: torch.Tensor) -> Labels:
        """Withhold the conditions where ``mask`` ((B,) bool) is True, in addition to those already withheld."""
        if mask.dtype != torch.bool or tuple(mask.shape) != (len(self.values),):
            raise UserError(f"the dropped mask of class labels must be a bool tensor of shape ({len(self.values)},), "
                            f"got {mask.dtype} {tuple(mask.shape)}")
        mask = mask.to(self.values.device)
        return self._derive(self.values, mask if self.dropped is None else self.dropped | mask)

    def embedding_index(self) -> torch.Tensor:
        """(B,) int64 rows of a label embedding with ``num_classes + 1`` rows: the label, or ``num_classes`` (the
        null row) where the condition is withheld."""
        if self.dropped is None:
            return self.values.long()
        return torch.where(self.dropped, torch.full_like(self.values, self.num_classes), self.values).long()

    def to(self, device: torch.device | str) -> Labels:
        return self._derive(self.values.to(device), None if self.dropped is None else self.dropped.to(device))

    @staticmethod
    def cat(parts: Sequence[Labels]) -> Labels:
        """Concatenate the labels of several batches (all built for the same number of classes)."""
        sizes = {p.num_classes for p in parts}
        if len(sizes) != 1:
            raise UserError(f"cannot concatenate labels built for different numbers of classes: {sorted(sizes)}")
        dropped = None
        if any(p.dropped is not None for p in parts):
            dropped = torch.cat([p.dropped if p.dropped is not None else torch.zeros(len(p), dtype=torch.bool,
                                                                                       device=p.values.device) for p in parts])
        return Labels(torch.cat([p.values for p in parts]), parts[0].num_classes, dropped)

    @staticmethod
    def repeat_each(num_classes: int, per_class: int, device: torch.device | str = "cpu") -> Labels:
        """``per_class`` samples of every class, grouped: 0, 0, .., 1, 1, .. ((num_classes * per_class,))."""
        if per_class < 1:
            raise UserError(f"samples per class must be at least 1, got {per_class}")
        return Labels(torch.arange(num_classes, device=device).repeat_interleave(per_class), num_classes)


def index_cond(cond: Cond | None, idx: torch.Tensor) -> Cond | None:
    """``cond.index(idx)``, or None for an unconditional batch."""
    return None if cond is None else cond.index(idx)


def chunk_cond(cond: Cond | None, start: int, stop: int) -> Cond | None:
    """The conditions of samples ``start:stop`` (chunked sampling, distributed slices)."""
    return None if cond is None else cond.index(torch.arange(start, min(stop, len(cond))))


def check_cond(cond: Cond | None, batch: int, what: str = "samples") -> None:
    """Raise a one-line error unless ``cond`` is None or a condition of exactly ``batch`` samples."""
    if cond is None:
        return
    if not isinstance(cond, Cond):
        raise UserError(f"conditions must provide __len__, index(idx), group_ids() and null() (e.g. orwcfm.conditions.Labels), "
                        f"got {type(cond).__name__}")
    if len(cond) != batch:
        raise UserError(f"got {len(cond)} conditions for {batch} {what}: one condition per sample expected")


def cond_state(cond: Cond | None) -> dict | None:
    """The conditions as plain tensors and numbers, for a checkpoint (``torch.load(weights_only=True)`` reads it)."""
    if cond is None:
        return None
    if isinstance(cond, Labels):
        return {"kind": "labels", "values": cond.values.cpu(), "num_classes": cond.num_classes,
                "dropped": None if cond.dropped is None else cond.dropped.cpu()}
    if hasattr(cond, "state"):  # e.g. prompt embeddings: their prompt indices (the prompt set re-encodes them)
        return cond.state()
    raise UserError(f"cannot save conditions of type {type(cond).__name__} in a checkpoint (only Labels)")


def cond_from_state(state: dict | None, device: torch.device | str = "cpu", prompts: object = None) -> Cond | None:
    """The conditions :func:`cond_state` saved; conditions saved by index (prompts) are rebuilt by the run's prompt
    set ``prompts`` (its ``restore(state, device)``)."""
    if state is None:
        return None
    if state.get("kind") == "prompts":
        if not hasattr(prompts, "restore"):
            raise UserError("this checkpoint's samples were drawn for text prompts: resume it with its prompt set")
        return prompts.restore(state, device)
    if state.get("kind") != "labels":
        raise UserError(f"unknown kind of saved conditions: {state.get('kind')!r}")
    dropped = None if state["dropped"] is None else state["dropped"].to(device)
    return Labels(state["values"].to(device), int(state["num_classes"]), dropped)


def check_prompt_texts(prompts: Sequence[object]) -> None:
    """One line unless ``prompts`` is a non-empty set of non-empty strings (every prompt set's texts)."""
    if len(prompts) == 0:
        raise UserError("the prompt set is empty: give at least one prompt")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"every prompt must be a non-empty string, got {p!r}")


def check_samples_per_prompt(k: object) -> None:
    """One line unless ``k`` (samples per drawn prompt) is a positive integer."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"samples_per_prompt must be a positive integer, got {k!r}")


@dataclass(frozen=True)
class ClassPrompts:
    """A prompt set for a class-conditional model: prompt k is class k (e.g. "a handwritten 3" is the digit 3).

    Attributes:
        prompts: the prompts, in class order.
        samples_per_prompt: k, the size of a condition group: each drawn prompt gets k consecutive samples (as
            group-relative methods draw them); 1 draws every sample's prompt independently.
    """

    prompts: tuple[str, ...]
    samples_per_prompt: int = 1

    def __post_init__(self) -> None:
        check_prompt_texts(self.prompts)
        check_samples_per_prompt(self.samples_per_prompt)

    def __len__(self) -> int:
        return len(self.prompts)

    def draw(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Labels:
        """The conditions of ``n`` training samples: n / k prompts drawn uniformly (on the CPU ``generator``), each
        repeated k times."""
        k = self.samples_per_prompt
        if n % k:
            raise UserError(f"samples_per_prompt {k} must divide the number of samples drawn per refresh ({n})")
        classes = torch.randint(len(self.prompts), (n // k,), generator=generator).repeat_interleave(k)
        return Labels(classes.to(device), len(self.prompts))

    def spread(self, n: int, device: torch.device | str = "cpu") -> Labels:
        """``n`` conditions spread evenly over the prompts (0, 1, .., P-1, 0, 1, ..): the evaluation's."""
        return Labels(torch.arange(n, device=device) % len(self.prompts), len(self.prompts))
