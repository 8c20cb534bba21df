"""ORW-CFM-W2 (Fan et al., ICLR 2025) as an :class:`~orwcfm.algorithms.base.Algorithm`.

Per refresh: the buffer's weight scale (``finetune/weights.py``: log Z, the float-range shift, and under
``weight_groups: condition`` each sample's group normaliser). Per minibatch: the loss coefficients, then
``mean_i [w_i ||v - u||^2 + alpha ||v - v_ref||^2]`` (``finetune/orw.py``). ``w2_coefficient: 0`` is ORW-CFM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .. import distributed as dist_util
from ..couplings import Pairing
from ..errors import UserError
from ..finetune.orw import orw_cfm_w2_loss, separate_w2_pass
from ..finetune.weights import WEIGHTINGS, RefreshScale, grouped_log_z, loss_weights, refresh_scale
from ..paths import StraightPath
from .base import Algorithm, LossContext, LossOutput, NetworkRows

WEIGHT_GROUPS = ("batch", "condition")


def _help(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class ORWConfig:
    """The settings of ORW-CFM-W2 (top-level keys of a fine-tuning config, as in the public README)."""

    w2_coefficient: float = _help(
        "alpha, strength of the W2 regulariser alpha ||v - v_ref||^2 that holds the model near the frozen reference "
        "(>= 0): 0 is plain ORW-CFM (no reference pass), larger stays closer; under weighting paper what matters is "
        "alpha / Z with Z = mean exp(tau r) (logged as train/alpha_relative).", 1.0)
    temperature: float = _help(
        "tau of the reward weights exp(tau * r) (>= 0): 0 weights every policy sample alike, larger tilts the model "
        "harder toward high reward (and changes Z, see w2_coefficient).", 0.5)
    weighting: Literal["paper", "buffer-normalized", "batch-normalized"] = _help(
        "Reward weights: paper (exp(tau r), the paper's loss), buffer-normalized (exp(tau r) over its mean on the "
        "refresh's samples, so alpha is relative; needs buffer_size) or batch-normalized (B softmax(tau r) per "
        "minibatch, as earlier orwcfm releases).", "paper")
    weight_groups: Literal["batch", "condition"] = _help(
        "What a normalised weighting normalises over: every sample (batch), or the samples of the same prompt "
        "(condition: each prompt gets the same total weight, as group-relative methods do); the paper's weights are "
        "never normalised.", "batch")

    def __post_init__(self) -> None:
        for name in ("w2_coefficient", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"{name} must be a number >= 0, got {value!r}")
        if self.weighting not in WEIGHTINGS:
            raise UserError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.weight_groups not in WEIGHT_GROUPS:
            raise UserError(f"weight_groups must be one of {', '.join(WEIGHT_GROUPS)}, got {self.weight_groups!r}")
        if self.weight_groups == "condition" and self.weighting == "paper":
            raise UserError("weight_groups: condition normalises the weights within each condition, but weighting "
                            "'paper' is unnormalised exp(tau r): use buffer-normalized or batch-normalized")

    @classmethod
    def from_config(cls, config: Any) -> ORWConfig:
        """The fields of this dataclass read off a :class:`~orwcfm.config.FinetuneConfig` (missing ones: defaults)."""
        if getattr(config, "algorithm_options", None):
            raise UserError(f"algorithm_options {dict(config.algorithm_options)} given, but orw-cfm-w2 takes its "
                            "settings as top-level keys (w2_coefficient, temperature, weighting, weight_groups)")
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)})


# The help sentences of the settings, for the fine-tuning config's top-level keys of the same names.
ORW_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(ORWConfig)}


class ORWCFMW2(Algorithm):
    """Online reward-weighted conditional flow matching with the W2 regulariser."""

    name = "orw-cfm-w2"
    # summed on the device between logs (train/ in metrics.jsonl; w2_share is derived from them)
    stat_keys = ("loss", "fm", "w2", "w2_term", "max_weight", "log_z", "alpha_relative", "loss_log_scale")

    def __init__(self, config: ORWConfig, *, path: StraightPath, coupling: Callable[..., Pairing],
                 dist: dist_util.DistContext = dist_util.DistContext()) -> None:
        self.config, self.path, self.coupling, self.dist = config, path, coupling, dist
        self._scale: RefreshScale | None = None

    @property
    def uses_reference(self) -> bool:
        return self.config.w2_coefficient > 0  # alpha = 0: no reference pass at all

    def network_rows(self, batch_size: int) -> NetworkRows:
        # under OT (or resampling) the W2 term has interpolants of its own, batched with the FM term's
        separate = separate_w2_pass(self.uses_reference, self.coupling)
        return NetworkRows(model=2 * batch_size if separate else batch_size,
                           reference=batch_size if self.uses_reference else 0)

    def _grouped(self, batch: Any) -> bool:
        if self.config.weight_groups != "condition":
            return False
        if batch.cond is None:
            raise UserError("weight_groups: condition needs conditional samples (prompts); this run has none")
        return True

    def refresh(self, buffer: Any) -> None:
        cfg = self.config
        self._scale = refresh_scale(buffer.rewards, cfg.temperature, cfg.w2_coefficient, self.dist)
        if cfg.weighting == "buffer-normalized" and self._grouped(buffer):
            buffer.extras["log_z"] = grouped_log_z(buffer.rewards, buffer.cond.group_ids(), cfg.temperature, self.dist)

    def loss(self, model: nn.Module, reference: nn.Module | None, batch: Any, x0: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator, context: LossContext = LossContext()) -> LossOutput:
        cfg = self.config
        if self._scale is None:
            raise RuntimeError("ORWCFMW2.loss before refresh(): the loop refreshes before the first minibatch")
        grouped = self._grouped(batch)
        lw = loss_weights(batch.rewards, cfg.temperature, cfg.w2_coefficient, cfg.weighting, self._scale, self.dist,
                          groups=batch.cond.group_ids() if grouped and cfg.weighting == "batch-normalized" else None,
                          sample_log_z=batch.extras.get("log_z"))
        out = orw_cfm_w2_loss(model, reference, batch.x, lw.weights, x0, t, alpha=lw.w2_coefficient, path=self.path,
                              coupling=self.coupling, generator=generator, cond=batch.cond)
        stats = {"loss": out.loss.detach(), "fm": out.fm, "w2": out.w2, "w2_term": lw.w2_coefficient * out.w2,
                 "max_weight": lw.weights.max(), "log_z": lw.log_z, "alpha_relative": lw.alpha_relative,
                 "loss_log_scale": -lw.shift}
        return LossOutput(loss=out.loss, stats=stats)

    def log_row(self, row: Mapping[str, float]) -> dict[str, float]:
        # the share of the loss that is the regulariser: how strong alpha is in practice
        total = row["fm"] + row["w2_term"]
        return {"w2_share": row["w2_term"] / total if total > 0 else 0.0}

    def note(self, row: Mapping[str, float]) -> str | None:
        if row["loss_log_scale"] == 0:
            return None
        c = -row["loss_log_scale"]
        return (f"exp(tau * r) or alpha is outside float range here (largest log-coefficient {c:.1f}): the paper's "
                f"loss is divided by exp({c:.1f}), which keeps its minimiser; train/loss is the rescaled loss "
                f"(train/loss_log_scale says by how much)")

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, **dataclasses.asdict(self.config)}
