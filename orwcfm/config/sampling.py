"""``SamplingConfig``: how samples are drawn, shared by pretraining and fine-tuning (policy and evaluation)."""

from __future__ import annotations

from typing import Literal

from ..errors import UserError
from .fields import _positive, dataclass_frozen, setting


@dataclass_frozen
class SamplingConfig:
    """How samples are drawn: the ODE solver, its number of steps, how many samples are integrated at once and at
    which precision the network runs (``bf16``: bfloat16 autocast; the ODE state stays float32)."""

    solver: Literal["euler", "midpoint", "heun", "rk4", "dopri5"] = setting(
        "euler", help="ODE solver from noise (t = 0) to data (t = 1): fixed-step euler (1 network evaluation per step), "
                      "midpoint or heun (2) or rk4 (4), or torchdiffeq's adaptive dopri5 (it picks its own steps).")
    steps: int = setting(
        100, help="Solver steps over [0, 1] (> 0); a sample costs steps x the solver's evaluations per step, and for "
                  "dopri5 this is only the number of intervals of the returned grid.")
    batch_size: int | None = setting(
        None, help="Samples integrated at once (> 0), which bounds memory; null = all at once.")
    precision: Literal["fp32", "bf16"] = setting(
        "fp32", help="Precision of the network passes while sampling: fp32, or bf16 (bfloat16 autocast, for GPUs; "
                     "the ODE state and the samples stay float32).")
    # Added after the first releases: a config saved without it reads as 1 (orwcfm.config.saved).
    guidance: float = setting(
        1.0, help="Classifier-free guidance scale for conditional models (>= 0): 1 is the conditional field itself "
                  "(one pass), 0 the unconditional one, > 1 extrapolates away from it (two passes); unconditional "
                  "models ignore it.")

    def __post_init__(self) -> None:
        _positive("sampling.steps", self.steps)
        if isinstance(self.guidance, bool) or not self.guidance >= 0:
            raise UserError(f"config key 'sampling.guidance' must be a number >= 0 (1 = no guidance), got {self.guidance!r}")
        if self.batch_size is not None:
            _positive("sampling.batch_size", self.batch_size)
