"""Offline reward-weighted regression (RWR) for flow matching: the offline baseline of ORW-CFM-W2's paper.

One fixed set of reference samples, drawn and scored once at step 0 (``refresh: offline``: the loop draws one buffer
from the policy before any refresh, i.e. the reference, and never refreshes), regressed with the paper's weights::

    loss = mean_i exp(tau r_i) ||v(t, x_t) - u||^2          x1 from the reference's buffer, never redrawn

It is ORW-CFM-W2 with alpha = 0 on a buffer that is never refreshed, so it is that class with its W2 term fixed
off: the weightings, their float-range rescaling and the coupling handling are the same code. For one x_t the
minimiser is the weighted mean of the samples' velocities, sum_i w_i u_i / sum_i w_i: the model moves toward the
reference's own high-reward samples and no further (it never sees samples of its own).

Choices:
    - Settings: ``temperature`` and ``weighting`` from the top-level keys (same meaning as in ORW-CFM-W2).
    - A non-zero ``w2_coefficient`` is refused with one line (not ignored): the method has no W2 term, and the
      config's default alpha is 1, so a silent zero would hide that a run asked for a regulariser it does not get.
      ``weight_groups`` other than ``batch`` is refused for the same reason (one weighting over the whole buffer).
    - ``refresh: offline`` is required rather than implied, so that the config says what the run does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .. import distributed as dist_util
from ..couplings import Pairing
from ..errors import UserError
from ..paths import StraightPath
from .orw_cfm_w2 import ORWCFMW2, ORWConfig

NAME = "offline-rwr"


def _help(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class OfflineRWRConfig:
    """The settings of offline RWR (top-level keys of a fine-tuning config, as for ORW-CFM-W2)."""

    temperature: float = _help(
        "tau of the weights exp(tau * r) of the reference's samples (>= 0; top-level key, as in orw-cfm-w2): 0 is "
        "plain flow matching on the reference's own samples, larger tilts the model harder toward the buffer's "
        "high-reward samples (it can never go beyond them: the buffer is not redrawn).", 0.5)
    weighting: Literal["paper", "buffer-normalized", "batch-normalized"] = _help(
        "Reward weights (top-level key, as in orw-cfm-w2): paper (exp(tau r)), buffer-normalized (exp(tau r) over "
        "its mean on the one buffer: the same objective divided by a constant) or batch-normalized (B softmax(tau r) "
        "per minibatch).", "paper")

    def __post_init__(self) -> None:
        # the same checks, and one-line messages, as ORW-CFM-W2's settings of the same names
        ORWConfig(w2_coefficient=0.0, temperature=self.temperature, weighting=self.weighting)

    @classmethod
    def from_config(cls, config: Any) -> OfflineRWRConfig:
        """The settings read off a :class:`~orwcfm.config.FinetuneConfig`'s top-level keys; one line unless the
        config asks for the offline schedule and no W2 term."""
        if getattr(config, "algorithm_options", None):
            raise UserError(f"algorithm_options {dict(config.algorithm_options)} given, but {NAME} takes its settings "
                            "as top-level keys (temperature, weighting)")
        refresh = getattr(config, "refresh", "online")
        if refresh != "offline":
            raise UserError(f"algorithm {NAME} regresses one fixed buffer of reference samples: it needs refresh: "
                            f"offline (and buffer_size), got refresh: {refresh!r}")
        alpha = getattr(config, "w2_coefficient", 0.0)
        if alpha != 0:
            raise UserError(f"algorithm {NAME} has no W2 term: set w2_coefficient: 0, got {alpha!r} (for a "
                            "regularised run use orw-cfm-w2)")
        groups = getattr(config, "weight_groups", "batch")
        if groups != "batch":
            raise UserError(f"algorithm {NAME} weights over the whole buffer: weight_groups must be batch, "
                            f"got {groups!r}")
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)})


class OfflineRWR(ORWCFMW2):
    """Offline RWR: exp(tau r)-weighted flow matching on one fixed buffer of reference samples, no W2 term."""

    name = NAME

    def __init__(self, config: OfflineRWRConfig, *, path: StraightPath, coupling: Callable[..., Pairing],
                 dist: dist_util.DistContext = dist_util.DistContext()) -> None:
        super().__init__(ORWConfig(w2_coefficient=0.0, temperature=config.temperature, weighting=config.weighting),
                         path=path, coupling=coupling, dist=dist)
        self.settings = config

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, "refresh": "offline", **dataclasses.asdict(self.settings)}


ALGORITHMS = {OfflineRWR.name: (OfflineRWR, OfflineRWRConfig)}
