"""How a setting is declared (a frozen dataclass field with its help sentence) and the range checks they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import UserError

# Every config class is frozen: a resolved config is a record of how a run was made, never edited in place.
dataclass_frozen = dataclasses.dataclass(frozen=True)


# Help of the keys that mean the same in pretraining and fine-tuning, written once.
SHARED_HELP = {
    "grad_clip": "Largest gradient norm (> 0): a larger gradient is scaled down to it before the step; null disables "
                 "clipping.",
    "sigma_min": "End-point width of the straight path, in [0, 1): 0 is rectified flow (x_t = (1 - t) x0 + t x1), "
                 "> 0 Lipman et al.'s OT path (a Gaussian of that width around each sample at t = 1).",
    "time_sampler": "Distribution of the regression times t: uniform on [0, 1], or logit-normal (more weight in the "
                    "middle of the path, where the target is hardest).",
    "log_every": "Steps between logged training metrics (> 0); numbers are read off the device only then.",
    "keep_checkpoints": "How many of the newest checkpoints are kept (> 0); older ones are deleted.",
    "device": "Torch device, e.g. cpu or cuda (under torchrun each process takes cuda:LOCAL_RANK).",
    "num_threads": "Torch CPU threads (> 0); null keeps torch's default.",
}


def setting(default: Any = dataclasses.MISSING, *, help: str, factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its one-sentence ``help`` (shown by ``orwcfm pretrain|finetune --help``).

    ``factory`` builds mutable or nested defaults (a fresh dict / dataclass per instance) instead of ``default``.
    """
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def help_of(field: dataclasses.Field) -> str:
    """The help sentence of a config field ('' when it has none: the tests require every field to have one)."""
    return str(field.metadata.get("help", ""))


def _positive(name: str, value: float | int) -> None:
    if not value > 0:
        raise UserError(f"config key '{name}' must be > 0, got {value}")


def _non_negative(name: str, value: float | int) -> None:
    if not value >= 0:
        raise UserError(f"config key '{name}' must be >= 0, got {value}")


def _in_unit_interval(name: str, value: float) -> None:
    """[0, 1): the shared range of sigma_min and condition_dropout."""
    if not 0.0 <= value < 1.0:
        raise UserError(f"config key '{name}' must be in [0, 1), got {value}")
