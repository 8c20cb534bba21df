"""What a run's evaluations cost next to its training, predicted from the config before the run starts.

Counted in network rows (one sample through one forward pass of the velocity field); a backward pass counts as two
forwards, so a row of the trained model with a graph costs 3. The step-anatomy benchmarks measure a fine-tuning
step at 1.00-1.08x its network passes, so this count predicts the split of the wall time well wherever the
network dominates (the reward and the metrics are left out: small next to the passes on every task measured,
docs/performance.md). ``train()`` records the prediction in ``summary.json`` and says one line when evaluations
would take more than :data:`LARGE_SHARE` of the run.

It also resolves ``eval_every: auto`` and ``eval_samples: auto`` (the defaults) into an :class:`EvalPlan`: every
epoch and :data:`AUTO_EVAL_SAMPLES` samples while that stays within :data:`AUTO_SHARE` of the run's predicted network
work; else the evaluations are spaced out first (a long run keeps its per-sample quality), then, where even the two
evaluations every run makes (before and after) are too many, made smaller, down to :data:`MIN_AUTO_EVAL_SAMPLES`.
A value the user sets is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..sampling import FIXED_STEP_STAGES

LARGE_SHARE = 0.25  # above it, train() tells the user how to shrink the evaluations
ADAPTIVE_NFE_PER_STEP = 6  # dopri5: stages per accepted step, a lower bound (rejected steps cost more)
# eval_every / eval_samples: auto. 10 %: a small share of the run, for a 36M UNet as for the digits UNet.
AUTO_SHARE = 0.10
AUTO_EVAL_SAMPLES = 500  # the size of an evaluation when it fits (and of evaluate() outside a run)
# the smallest automatic evaluation: the quick comparisons' size, at which every metric (FD, Vendi, W2) still works
MIN_AUTO_EVAL_SAMPLES = 64


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


@dataclass(frozen=True)
class EvalPlan:
    """How a run evaluates: ``samples`` per evaluation, one evaluation every ``every`` epochs (plus the ones before
    training and after the last epoch); ``auto``: the keys the plan resolved (a subset of eval_samples, eval_every)."""

    samples: int
    every: int
    auto: tuple[str, ...] = ()

    @classmethod
    def outside_a_run(cls, config: Any) -> "EvalPlan":
        """The plan of an evaluation made before ``train()`` knows the run's length (``evaluate()``, the command
        line's ``evaluate``): auto means AUTO_EVAL_SAMPLES samples, every epoch."""
        return cls(samples=AUTO_EVAL_SAMPLES if config.eval_samples == "auto" else config.eval_samples,
                   every=1 if config.eval_every == "auto" else config.eval_every)

    def due(self, epoch: int, num_epochs: int) -> bool:
        """Whether the evaluation after ``epoch`` (1-based) is made."""
        return epoch % self.every == 0 or epoch == num_epochs

    def evaluations(self, num_epochs: int) -> int:
        """Evaluations a run of ``num_epochs`` makes: before training, then each due epoch (every ``every``-th, and
        the last when it is not one of them)."""
        return 1 + num_epochs // self.every + (1 if num_epochs % self.every else 0)


def training_rows(config: Any, algorithm: Any, num_epochs: int, steps_per_epoch: int) -> float:
    """The network rows of the gradient steps of a run of ``num_epochs`` x ``steps_per_epoch`` steps of ``config``
    (a FinetuneConfig) under ``algorithm`` (its ``network_rows`` and whether it collects samples from the policy)."""
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
    return per_step * num_epochs * steps_per_epoch


def evaluation_rows(config: Any, plan: EvalPlan, num_epochs: int) -> float:
    """The network rows of every evaluation of the run under ``plan``, and of the reference's own samples, drawn
    once per run (the W2 and FD baselines of every evaluation)."""
    return plan.samples * sampler_nfe(config.eval_sampling) * (plan.evaluations(num_epochs) + 1)


def predict_cost(config: Any, algorithm: Any, num_epochs: int, steps_per_epoch: int,
                 plan: EvalPlan | None = None) -> RunCost:
    """The network rows of a run of ``num_epochs`` x ``steps_per_epoch`` steps of ``config`` under ``algorithm``,
    evaluated as ``plan`` says (default: as :func:`plan_evaluations` resolves the config)."""
    if plan is None:
        plan = plan_evaluations(config, algorithm, num_epochs, steps_per_epoch)
    return RunCost(training=training_rows(config, algorithm, num_epochs, steps_per_epoch),
                   evaluations=evaluation_rows(config, plan, num_epochs), evaluations_made=plan.evaluations(num_epochs))


def plan_evaluations(config: Any, algorithm: Any, num_epochs: int, steps_per_epoch: int) -> EvalPlan:
    """Resolve ``eval_every`` / ``eval_samples`` (``auto`` or a number) for a run of ``num_epochs`` x
    ``steps_per_epoch`` steps: the set values as they are; ``auto`` as the module docstring says, so that the
    predicted evaluation share stays at most AUTO_SHARE where the floor of MIN_AUTO_EVAL_SAMPLES allows."""
    auto = tuple(k for k in ("eval_samples", "eval_every") if getattr(config, k) == "auto")
    plan = EvalPlan.outside_a_run(config)
    if not auto:
        return plan
    budget = AUTO_SHARE / (1 - AUTO_SHARE) * training_rows(config, algorithm, num_epochs, steps_per_epoch)
    if "eval_every" in auto:  # the smallest interval that fits (the run's length: before and after only)
        every = next((k for k in range(1, num_epochs + 1)
                      if evaluation_rows(config, EvalPlan(plan.samples, k), num_epochs) <= budget), num_epochs)
        plan = EvalPlan(plan.samples, every)
    if "eval_samples" in auto and evaluation_rows(config, plan, num_epochs) > budget:
        per_sample = evaluation_rows(config, EvalPlan(1, plan.every), num_epochs)
        plan = EvalPlan(max(MIN_AUTO_EVAL_SAMPLES, int(budget // per_sample)), plan.every)
    return EvalPlan(plan.samples, plan.every, auto)


def large_share_hint(cost: RunCost, config: Any, num_epochs: int, plan: EvalPlan | None = None) -> str | None:
    """One line when the evaluations would take more than LARGE_SHARE of the run, saying what to change."""
    plan = plan or EvalPlan.outside_a_run(config)
    share = cost.evaluation_share
    if share <= LARGE_SHARE:
        return None
    return (f"note: the {cost.evaluations_made} evaluations ({plan.samples} samples x "
            f"{sampler_nfe(config.eval_sampling)} network passes each) are about {100 * share:.0f} % of this run's "
            f"network work; raise eval_every (now {plan.every}, at most {num_epochs}) or lower eval_samples "
            f"to train more of the time")


def auto_plan_line(plan: EvalPlan, cost: RunCost) -> str | None:
    """One line saying what ``auto`` chose, when it evaluates less than every epoch on AUTO_EVAL_SAMPLES samples."""
    if not plan.auto or (plan.samples, plan.every) == (AUTO_EVAL_SAMPLES, 1):
        return None
    return (f"evaluations: {plan.samples} samples every {plan.every} epoch(s) and after the last, about "
            f"{100 * cost.evaluation_share:.0f} % of this run's network work (auto keeps them near "
            f"{100 * AUTO_SHARE:.0f} %, at least {MIN_AUTO_EVAL_SAMPLES} samples; set eval_every / eval_samples to choose)")


__all__ = ["AUTO_EVAL_SAMPLES", "AUTO_SHARE", "EvalPlan", "LARGE_SHARE", "MIN_AUTO_EVAL_SAMPLES", "RunCost",
           "auto_plan_line", "evaluation_rows", "large_share_hint", "plan_evaluations", "predict_cost", "sampler_nfe",
           "training_rows"]
