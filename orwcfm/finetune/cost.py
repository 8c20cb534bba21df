"""What a run's evaluations cost next to its training, predicted from the config before the run starts.

Counted in network rows (one sample through one forward pass of the velocity field); a backward pass counts as two
forwards, so a row of the trained model with a graph costs 3. The step-anatomy benchmarks measure a fine-tuning
step at 1.00-1.08x its network passes, so this count predicts the split of the wall time well wherever the
network dominates (the reward and the metrics are left out: small next to the passes on every task measured,
docs/performance.md). ``train()`` records the prediction in ``summary.json`` and says one line when evaluations
would take more than :data:`LARGE_SHARE` of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..sampling import FIXED_STEP_STAGES

LARGE_SHARE = 0.25  # above it, train() tells the user how to shrink the evaluations
ADAPTIVE_NFE_PER_STEP = 6  # dopri5: stages per accepted step, a lower bound (rejected steps cost more)


def sampler_nfe(sampling: Any) -> int:
    """Network evaluations per sample of a sampler section (solver, steps)."""
    return sampling.steps * FIXED_STEP_STAGES.get(sampling.solver, ADAPTIVE_NFE_PER_STEP)


@dataclass(frozen=True)
class RunCost:
    """Predicted network rows of a run's parts.

    ``training``: the gradient steps (policy sampling, model forward + backward, reference and policy forwards);
    ``evaluations``: every evaluation of the run (before training, every ``eval_every`` epochs, after the last) and
    the reference's own samples, drawn once per run; ``evaluations_made``: how many evaluations that is."""

    training: float
    evaluations: float
    evaluations_made: int

    @property
    def evaluation_share(self) -> float:
        """The evaluations' share of the run's network rows, in [0, 1]."""
        return self.evaluations / (self.training + self.evaluations)


def predict_cost(config: Any, algorithm: Any, num_epochs: int, steps_per_epoch: int) -> RunCost:
    """The network rows of a run of ``num_epochs`` x ``steps_per_epoch`` steps of ``config`` (a FinetuneConfig)
    under ``algorithm`` (its ``network_rows`` and whether it collects samples from the policy)."""
    rows = algorithm.network_rows(config.batch_size)
    graph = rows.model if rows.model_graph is None else rows.model_graph
    per_step = 3 * graph + (rows.model - graph) + rows.reference + 2 * rows.reference_vjp + rows.policy
    if algorithm.collects:
        period = config.refresh_every or steps_per_epoch
        per_refresh = config.samples_per_refresh(period)
        samples_per_step = config.batch_size if per_refresh is None else per_refresh / period
        if config.refresh == "offline":  # one buffer for the whole run
            samples_per_step = per_refresh / (num_epochs * steps_per_epoch)
        per_step += samples_per_step * sampler_nfe(config.sampling)
    made = 1 + sum(1 for e in range(1, num_epochs + 1) if e % config.eval_every == 0 or e == num_epochs)
    per_evaluation = config.eval_samples * sampler_nfe(config.eval_sampling)
    # + the reference's samples, once per run (the W2 and FD baselines of every evaluation)
    return RunCost(training=per_step * num_epochs * steps_per_epoch, evaluations=per_evaluation * (made + 1),
                   evaluations_made=made)


def large_share_hint(cost: RunCost, config: Any, num_epochs: int) -> str | None:
    """One line when the evaluations would take more than LARGE_SHARE of the run, saying what to change."""
    share = cost.evaluation_share
    if share <= LARGE_SHARE:
        return None
    return (f"note: the {cost.evaluations_made} evaluations ({config.eval_samples} samples x "
            f"{sampler_nfe(config.eval_sampling)} network passes each) are about {100 * share:.0f} % of this run's "
            f"network work; raise eval_every (now {config.eval_every}, at most {num_epochs}) or lower eval_samples "
            f"to train more of the time")


__all__ = ["LARGE_SHARE", "RunCost", "large_share_hint", "predict_cost", "sampler_nfe"]
