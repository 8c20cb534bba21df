"""Evaluation of a velocity field on fixed noise: reward statistics, diversity, distance to the reference and,
for digits, what independent classifiers see.

Data flow of one evaluation::

    noise --ODE(model)--> samples --reward--> RewardStats, the reward's task metrics (target fraction, ...)
                                  --------> diversity: mean pairwise distance, Vendi score
    noise --ODE(reference)--> reference samples --> empirical W2 between the two N-sample sets, W2 bound along the
                                                    model's ODE
    floor noise --ODE(reference)--> a second, independent reference set --> the W2 floor (once per run)
    samples --judge (digits)--> class entropy, digits-FD to the data, to the target classes' data and to the
                                reference, gold reward

``w2_to_reference`` is the exact optimal-assignment W2 between two *N-point* sets (the model's and the
reference's samples from the same noise); it is not the population W2(p_theta, p_ref). In 64 dimensions N = 1000
points are far from their distribution: two independent sets of the reference itself are about 2.7 apart. So
every evaluation that measures it also reports ``w2_to_reference_floor``, the same statistic between the
reference's set and a second reference set of the same size from independent noise. Because the model's
samples share the reference's noise, ``w2_to_reference`` can lie below the floor (it is 0 when the model is the
reference); a value near or above the floor says the model's samples have moved as far from the reference's as
an independent redraw of the reference would, not that W2(p_theta, p_ref) is that large.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..metrics import (RewardStats, empirical_w2, mean_pairwise_distance, median_distance, reward_stats, vendi_score,
                       w2_bound)
from ..conditions import ClassPrompts, Cond, Labels, chunk_cond
from ..errors import UserError
from ..guidance import check_guidance, guided
from ..prompt_files import read_prompts
from ..rewards import call_reward
from ..rewards.base import takes_condition
from .. import sampling
from ..sampling import integrate
from .judges import JUDGE_SETTINGS, DigitsJudge, judge_dataset, make_judge, pretrained_on  # noqa: F401 (re-exported)

Judge = Callable[[torch.Tensor, "torch.Tensor | None"], dict[str, Any]]

# A run's floor noise is drawn with seed (run seed + this): never a rank's seed (seed + r * 2_000_029), nor the
# evaluation noise's (seed + 1_000_003), nor sample()'s (seed + 2), so the second reference set is independent.
FLOOR_SEED_OFFSET = 500_009


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one set of samples.

    Attributes:
        samples: (N, *shape) the samples, on the CPU.
        reward: statistics of the finite rewards (mean, std, min, max, quantiles).
        diversity: mean pairwise Euclidean distance between samples.
        vendi: Vendi score (effective number of distinct samples, RBF kernel).
        task: the reward's own metrics (e.g. ``target_fraction``, ``class_histogram``) and the judge's
            (``class_entropy``, ``digits_fd_data``, ``gold_target_fraction``, ...), when there are any.
        reference: distances to the reference model's samples from the same noise: ``w2_to_reference``
            (exact W2 between the two N-sample sets, not the population W2), ``w2_to_reference_floor`` (the
            same statistic between two independent N-sample sets of the reference: what finite N alone gives),
            ``w2_bound`` (∫ E||v - v_ref||^2 dt along the model's ODE) and ``coupled_sq`` (E||X_1 - Y_1||^2);
            empty when no reference was given.
    """

    samples: torch.Tensor
    reward: RewardStats
    diversity: float
    vendi: float
    task: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)

    @property
    def reward_mean(self) -> float:
        return self.reward.mean

    @property
    def reward_std(self) -> float:
        return self.reward.std

    def scalars(self) -> dict[str, float]:
        """The numbers worth logging (lists such as histograms are left out)."""
        out = {**self.reward.scalars(), "diversity": self.diversity, "vendi": self.vendi}
        out.update({k: float(v) for k, v in self.task.items() if isinstance(v, (int, float))})
        out.update(self.reference)
        return out


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode (no dropout) for the block, and restore each one's mode after it."""
    was = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(models, was):
            m.train(training)


def generate(model: nn.Module, noise: torch.Tensor, *, solver: str, steps: int, batch_size: int = 1000,
             cond: Cond | None = None, times: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate ``model`` (in eval mode) from ``noise`` (N, *shape) in chunks (under conditions ``cond``, one per
    sample; on the time grid ``times``, default uniform); returns (N, *shape)."""
    with eval_mode(model):
        return sampling.generate(model, noise, solver=solver, steps=steps, batch_size=batch_size, cond=cond,
                                 times=times)


def per_condition_diversity(x: torch.Tensor, cond: Cond) -> list[float]:
    """Mean pairwise distance within each condition group of ``x`` (N, *shape), in the order of the groups' ids
    (groups of one sample are left out: they have no pairs)."""
    groups = cond.group_ids().cpu()
    out = []
    for g in torch.unique(groups):
        members = torch.nonzero(groups == g).flatten()
        if len(members) > 1:
            out.append(mean_pairwise_distance(x[members.to(x.device)]))
    return out


@dataclass(frozen=True)
class ReferenceSet:
    """What a run measures of its reference once, and compares every evaluation with.

    Attributes:
        samples: (N, *shape) the reference's samples on the evaluation noise.
        bandwidth: their median pairwise distance (the Vendi kernel's fixed scale).
        w2_floor: ``empirical_w2(samples, second)``, ``second`` N reference samples from independent noise: the
            exact W2 between two N-point sets of one distribution, i.e. the finite-sample floor of
            ``w2_to_reference`` (not a lower bound on it: the model's samples share the reference's noise).
    """

    samples: torch.Tensor
    bandwidth: float
    w2_floor: float


@torch.no_grad()
def reference_w2_floor(reference: nn.Module, reference_samples: torch.Tensor, floor_noise: torch.Tensor, *, solver: str,
                    steps: int, batch_size: int = 1000, cond: Cond | None = None,
                    times: torch.Tensor | None = None) -> float:
    """Empirical W2 between ``reference_samples`` (N, *shape) and the reference integrated from ``floor_noise``
    (N, *shape, drawn independently of the noise that made ``reference_samples``)."""
    if floor_noise.shape != reference_samples.shape:
        raise ValueError(f"the floor needs a second set of the same size: noise {tuple(floor_noise.shape)} "
                         f"vs samples {tuple(reference_samples.shape)}")
    second = generate(reference, floor_noise, solver=solver, steps=steps, batch_size=batch_size, cond=cond, times=times)
    return empirical_w2(reference_samples, second)


@torch.no_grad()
def reference_set(reference: nn.Module, noise: torch.Tensor, floor_noise: torch.Tensor, *, solver: str, steps: int,
                  batch_size: int = 1000, cond: Cond | None = None, times: torch.Tensor | None = None) -> ReferenceSet:
    """Integrate ``reference`` from the evaluation ``noise`` (N, *shape) and from independent ``floor_noise``
    (same shape), both under the evaluation's conditions ``cond``; see :class:`ReferenceSet`."""
    if torch.equal(noise.cpu(), floor_noise.cpu()):
        raise ValueError("the floor noise must be independent of the evaluation noise, got the same tensor")
    samples = generate(reference, noise, solver=solver, steps=steps, batch_size=batch_size, cond=cond, times=times)
    floor = reference_w2_floor(reference, samples, floor_noise, solver=solver, steps=steps, batch_size=batch_size,
                               cond=cond, times=times)
    return ReferenceSet(samples, median_distance(samples), floor)


@torch.no_grad()
def evaluate(model: nn.Module, reward_fn, noise: torch.Tensor, *, solver: str, steps: int,
             name: str = "reward", step: int = 0, batch_size: int = 1000, reference: nn.Module | None = None,
             reference_samples: torch.Tensor | None = None, vendi_bandwidth: float | None = None,
             judge: Judge | None = None, bound_samples: int = 256, reference_floor: float | None = None,
             cond: Cond | None = None, times: torch.Tensor | None = None) -> Evaluation:
    """Integrate ``model`` from the fixed ``noise`` (N, *shape) (on the time grid ``times``, default uniform) and
    measure the samples.

    The same noise before and after training makes the comparison paired: differences come from the model,
    not from the draw. With ``reference`` (and optionally its ``reference_samples`` from the same noise, to
    avoid integrating it again) the distances to the reference are measured too; the W2 bound on the first
    ``bound_samples`` only (an expectation: a few hundred samples estimate it well, at a quarter of the cost). ``vendi_bandwidth`` fixes
    the Vendi kernel's scale (pass the reference's median distance so that scores compare across epochs).
    ``reference_floor`` is the reference's W2 floor for this N (:class:`ReferenceSet`); when a reference is given
    without it, it is computed here from noise drawn with seed ``FLOOR_SEED_OFFSET`` (a caller that evaluates
    repeatedly computes it once with :func:`reference_set` instead). With conditions ``cond`` (one per noise row)
    every sample, the reference's included, is drawn under its condition, the reward and the judge see them, and
    ``diversity_per_condition`` (mean over conditions of the within-condition mean pairwise distance) is measured.
    """
    nets = (model,) if reference is None else (model, reference)
    with eval_mode(*nets):
        # The first `bound_samples` are integrated with their trajectory kept: the W2 bound reuses it.
        n_bound = min(len(noise), bound_samples) if reference is not None else 0
        head = integrate(model, noise[:n_bound], solver=solver, steps=steps, return_trajectory=True,
                         cond=chunk_cond(cond, 0, n_bound), times=times) if n_bound else None
        rest = generate(model, noise[n_bound:], solver=solver, steps=steps, batch_size=batch_size,
                        cond=chunk_cond(cond, n_bound, len(noise)), times=times) if n_bound < len(noise) else None
        x = torch.cat([p for p in (head.samples if head else None, rest) if p is not None])
        distances: dict[str, float] = {}
        if reference is not None:
            if reference_samples is None:
                reference_samples = generate(reference, noise, solver=solver, steps=steps, batch_size=batch_size,
                                             cond=cond, times=times)
            distances["w2_to_reference"] = empirical_w2(x, reference_samples)
            if reference_floor is None:
                gen = torch.Generator().manual_seed(FLOOR_SEED_OFFSET)
                floor_noise = torch.randn(noise.shape, generator=gen)
                if torch.equal(floor_noise, noise.cpu()):  # the caller drew its noise with this very seed
                    floor_noise = torch.randn(noise.shape, generator=gen)
                reference_floor = reference_w2_floor(reference, reference_samples, floor_noise.to(noise.device),
                                                     solver=solver, steps=steps, batch_size=batch_size, cond=cond,
                                                     times=times)
            distances["w2_to_reference_floor"] = reference_floor
            bound = w2_bound(model, reference, noise[:n_bound], solver=solver, steps=steps,
                             reference_samples=reference_samples[:n_bound], trajectory=head,
                             cond=chunk_cond(cond, 0, n_bound))
            distances["w2_bound"] = bound.integral
            distances["coupled_sq"] = bound.coupled_sq
    # NaNs are left out of the statistics
    scored = call_reward(reward_fn, x, name=name, step=step, on_bad="drop", cond=cond)
    task: dict[str, Any] = {}
    if hasattr(reward_fn, "metrics"):
        with_cond = cond is not None and takes_condition(reward_fn.metrics)
        task.update(reward_fn.metrics(x, cond) if with_cond else reward_fn.metrics(x))
    if cond is not None:
        per = per_condition_diversity(x, cond)
        if per:
            task["diversity_per_condition"] = sum(per) / len(per)
    if judge is not None:
        task.update(judge(x, reference_samples) if cond is None else judge(x, reference_samples, cond))
    return Evaluation(
        samples=x.cpu(),
        reward=reward_stats(scored.values[scored.valid]),
        diversity=mean_pairwise_distance(x),
        vendi=vendi_score(x, bandwidth=vendi_bandwidth),
        task=task,
        reference=distances,
    )


@dataclass(frozen=True)
class CheckpointEvaluation:
    """``orwcfm evaluate``'s result: what was evaluated, how, and the metrics (also written as JSON)."""

    checkpoint: str
    kind: str
    step: int | None
    weights: str
    reward: str
    num_samples: int
    seed: int
    solver: str
    steps: int
    reference: str | None
    metrics: dict[str, float]
    class_histogram: list[float] | None
    evaluation: Evaluation = field(repr=False)
    prompts: list[str] | None = None  # a conditional model's prompts (class k is prompt k), spread evenly over the samples
    guidance: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("checkpoint", "kind", "step", "weights", "reward", "num_samples", "seed",
                                              "solver", "steps", "reference", "metrics")}
        if self.prompts is not None:
            out |= {"prompts": self.prompts, "guidance": self.guidance}
        if self.class_histogram is not None:
            out["class_histogram"] = self.class_histogram
        return out

    def table(self) -> str:
        """Markdown table of every metric."""
        lines = [f"checkpoint {self.checkpoint} ({self.kind}, step {self.step}, {self.weights} weights), reward {self.reward}, "
                 f"{self.num_samples} samples (seed {self.seed}, {self.solver} x {self.steps})"
                 + (f", spread over {len(self.prompts)} prompts at guidance {self.guidance:g}" if self.prompts else ""),
                 "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in self.metrics.items()]
        if self.class_histogram is not None:
            lines.append("| class histogram | " + " ".join(f"{i}:{f:.0%}" for i, f in enumerate(self.class_histogram)) + " |")
        return "\n".join(lines)


def evaluate_checkpoint(path: str | Path, *, reward: str | None = None, num_samples: int = 1000, seed: int = 0,
                        weights: str | None = None, solver: str | None = None, steps: int | None = None,
                        cache: str | Path | None = None, device: str = "cpu", judge: str | None = None,
                        guidance: float | None = None) -> CheckpointEvaluation:
    """Sample ``num_samples`` from a checkpoint (fixed ``seed``) and measure everything :func:`evaluate` can.

    The reward is ``reward`` (a name) or the one the run was fine-tuned with; for a fine-tuning checkpoint the
    reference it recorded is loaded too, and the distances to it are measured from the same noise; the W2 floor
    uses the next ``num_samples`` draws of the same seeded stream as its independent noise. ``judge``: see
    :func:`judge_dataset` (default: the run's own setting, else ``auto``).

    A class-conditional model is evaluated as its run evaluated it: the samples spread evenly over its prompts (the
    run's ``prompts``; for a pretraining checkpoint, its classes), model and reference both under them, with
    classifier-free guidance ``guidance`` (default: the run's ``eval_sampling.guidance``, else 1 = none).
    """
    from ..checkpoint import load_checkpoint
    from ..rewards import load_reward
    from ..sampling import check_solver

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise UserError(f"-n must be at least 2 samples (diversity needs pairs), got {num_samples}")
    loaded = load_checkpoint(path)
    config = loaded.meta.get("config", {})
    kind = loaded.meta.get("kind", "?")
    if kind == "finetune" and isinstance(config.get("model"), str):  # (a pretraining config's model is its network)
        raise UserError(f"{loaded.path} is a LoRA checkpoint of the text-to-image pipeline {config['model']}: "
                        "orwcfm evaluate does not read those yet; its run's summary.json holds the held-out "
                        "evaluation, and run_dir/lora loads into the pipeline (pipe.load_lora_weights)")
    # A fine-tuning run records which weights it measured and sampled with (its one choice); else EMA when present.
    which = weights or loaded.meta.get("evaluated_weights") or ("ema" if loaded.ema_weights is not None else "raw")
    model = loaded.build_model(which, device=device)
    reward_name = reward or config.get("reward")
    if reward_name is None:
        raise UserError(f"{loaded.path} records no reward (a {kind} checkpoint): pass --reward NAME, e.g. digits-even")
    options = config.get("reward_options", {}) if reward is None or reward == config.get("reward") else {}
    reward_fn = load_reward(reward_name, cache=cache, **options)
    sampler = config.get("eval_sampling") or config.get("sampling", {})  # the run's own evaluation sampler
    solver, steps = solver or sampler.get("solver", "midpoint"), steps or sampler.get("steps", 10)
    check_solver(solver, steps)
    prompts, cond, scale = _conditions(model, config, num_samples, guidance, sampler, device)
    shape = tuple(loaded.spec.event_shape)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_samples, *shape), generator=gen).to(device)

    reference = ref = ref_ckpt = None
    ref_info = loaded.meta.get("reference") if kind == "finetune" else None
    if ref_info and ref_info.get("path"):
        ref_ckpt = load_checkpoint(ref_info["path"])
        reference = ref_ckpt.build_model(ref_info.get("weights") or "ema", device=device)
        floor_noise = torch.randn(noise.shape, generator=gen).to(device)  # the stream after the noise: independent
        reference = guided(reference, scale, cond)
        ref = reference_set(reference, noise, floor_noise, solver=solver, steps=steps, cond=cond)
    ev = evaluate(guided(model, scale, cond), reward_fn, noise, solver=solver, steps=steps, name=reward_name,
                  reference=reference, reference_samples=ref.samples if ref else None,
                  vendi_bandwidth=ref.bandwidth if ref else None, reference_floor=ref.w2_floor if ref else None,
                  judge=make_judge(judge_dataset(judge or config.get("judge", "auto"), reward_fn,
                                                 pretrained_on(ref_ckpt or loaded)), reward_fn, cache), cond=cond)
    return CheckpointEvaluation(
        checkpoint=str(loaded.path), kind=kind, step=loaded.meta.get("step"), weights=which, reward=reward_name,
        num_samples=num_samples, seed=seed, solver=solver, steps=steps,
        reference=ref_info.get("path") if ref_info else None, metrics=ev.scalars(),
        class_histogram=ev.task.get("class_histogram"), evaluation=ev, prompts=prompts, guidance=scale,
    )


def _conditions(model: nn.Module, config: dict[str, Any], n: int, guidance: float | None, sampler: dict[str, Any],
                device: str) -> tuple[list[str] | None, Labels | None, float]:
    """The prompts, the ``n`` evaluation conditions (spread evenly over them) and the guidance scale of a checkpoint's
    evaluation; (None, None, 1.0) for an unconditional model (where a guidance scale other than 1 is refused)."""
    classes = getattr(model, "num_classes", None)
    scale = guidance if guidance is not None else sampler.get("guidance", 1.0)
    check_guidance(scale)
    if classes is None:
        if scale != 1.0:
            raise UserError(f"guidance {scale:g} needs a conditional model; this checkpoint's model is unconditional "
                            "(guidance 1 = none)")
        return None, None, 1.0
    saved = config.get("prompts")
    prompts = list(read_prompts(saved).prompts if saved else [f"class {k}" for k in range(classes)])
    if len(prompts) != classes:
        raise UserError(f"the checkpoint's config has {len(prompts)} prompts for a model of {classes} classes")
    return prompts, ClassPrompts(tuple(prompts)).spread(n, device), float(scale)
