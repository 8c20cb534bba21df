"""Classifier-free guidance as a wrapper of the velocity field.

``v_s(t, x, c) = v(t, x, null) + s (v(t, x, c) - v(t, x, null))`` (Ho & Salimans, 2022, in velocity form). The
scale follows diffusers' convention: ``s = 1`` is the conditional field itself (no guidance, one network pass),
``s = 0`` the unconditional one, ``s > 1`` extrapolates away from the unconditional velocity. The wrapper is a
field like any other, so every sampler (and the policy's sampling in fine-tuning) uses it unchanged; the null
condition is the conditions' own ``null()`` (the null label; for prompts, the empty prompt's embedding).
"""

from __future__ import annotations

from torch import Tensor, nn

from .conditions import Cond
from .errors import UserError
from .models.base import call_field


def check_guidance(scale: float) -> None:
    """One line unless ``scale`` is a number >= 0."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
        raise UserError(f"guidance scale must be a number >= 0 (1 = no guidance), got {scale!r}")


class ClassifierFreeGuidance(nn.Module):
    """Wrap a conditional field: ``ClassifierFreeGuidance(field, scale)(t, x, cond)``; t (B,), x and v (B, *shape).

    Called without conditions it returns the field's unconditional velocity.
    """

    def __init__(self, field: nn.Module, scale: float) -> None:
        super().__init__()
        check_guidance(scale)
        self.field = field
        self.scale = float(scale)

    def forward(self, t: Tensor, x: Tensor, cond: Cond | None = None) -> Tensor:
        if cond is None:
            return call_field(self.field, t, x, None)
        if self.scale == 1.0:  # the conditional field itself: skip the unconditional pass
            return call_field(self.field, t, x, cond)
        v_null = call_field(self.field, t, x, cond.null())
        if self.scale == 0.0:
            return v_null
        return v_null + self.scale * (call_field(self.field, t, x, cond) - v_null)


def guided(field: nn.Module, scale: float, cond: Cond | None) -> nn.Module:
    """``field`` with classifier-free guidance at ``scale`` for conditional sampling; the field itself when there
    are no conditions or ``scale`` is 1 (the conditional field: no extra pass, nothing wrapped)."""
    check_guidance(scale)
    if cond is None or scale == 1.0:
        return field
    return ClassifierFreeGuidance(field, scale)
