"""Benchmark: where the time of ORW-CFM-W2 fine-tuning goes, and how fast it reaches the target (digits -> even).

    .venv/bin/python benchmarks/finetune_speed.py                 # everything, ~25 min on 2 CPU cores
    .venv/bin/python benchmarks/finetune_speed.py --quick         # smaller and shorter, ~5 min
    .venv/bin/python benchmarks/finetune_speed.py --only anatomy,solvers --json out.json

Sections (each prints a Markdown table; every ratio is measured side by side in this one process, with the
compared variants interleaved round by round, so that a noisy machine slows all of them alike):

1. ``anatomy``: one fine-tuning step (``trainer.run_steps``, refresh amortised) against the sum of the network
   passes it needs (policy sampling per step, reference forward, model forward + backward, each on the rows the
   algorithm says it sends through them: ``Algorithm.network_rows``, 2B through the model when the W2 term has
   interpolants of its own), for our default and for a configuration that mirrors the published code.
   Bar: overhead ratio <= 1.10.
2. ``target``: training wall time (evaluations excluded) until the target fraction on a fixed evaluation set
   first reaches 95 %, with the diversity at that point >= 70 % of the reference's; the published-style
   configuration (fresh batch every step, Euler x 100, refresh every epoch) against our default and against
   other reuse ratios of the sample buffer. Bar: default >= 3x faster, diversity as good or better.
3. ``solvers``: digits-FD (Fréchet distance in the digits classifier's feature space) of 2000 samples of the
   reference flow, per solver and step count, against 2000 Euler x 100 samples from other noise, with the
   network evaluations (NFE) each took.
4. ``options``: CPU settings and the optimisations the issue asked for, each against its baseline: threads,
   chunked sampling, inference mode, bfloat16, channels-last, torch.compile, a fused reference forward.
5. ``memory``: peak resident set of ``orwcfm demo`` (a subprocess, cached assets).

Built-in assets (digits classifier, digits reference) come from ``--cache`` (default ``$ORWCFM_CACHE`` or
``~/.cache/orwcfm``) and are built there on first use.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from orwcfm.assets import digits_classifier
from orwcfm.checkpoint import load_checkpoint
from orwcfm.config import FinetuneConfig, finetune_config
from orwcfm.finetune.run import resolve_reference
from orwcfm.finetune.trainer import ORWCFMTrainer
from orwcfm.metrics import frechet_distance, mean_pairwise_distance
from orwcfm.sampling import FIXED_STEP_STAGES, generate, integrate
from orwcfm.train import make_adam

SECTIONS = ("anatomy", "target", "solvers", "options", "memory")
TARGET_FRACTION = 0.95
DIVERSITY_BAR = 0.70
OVERHEAD_BAR = 1.10

# The configuration of the published code, in our terms: a fresh batch from the policy for every gradient step,
# 100 Euler steps, the policy refreshed once per epoch. Everything else (loss, alpha, tau, lr, OT) is the preset's,
# so that the comparison isolates how samples are produced.
PUBLISHED = {"buffer_size": None, "sampling": {"solver": "euler", "steps": 100, "batch_size": None}}


# ----------------------------------------------------------------------------------------------------------------
# Helpers.


def median_times(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each function, the functions interleaved round by round (fair under drifting load)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def make_trainer(cache: str | None, savedir: str, **overrides: Any) -> ORWCFMTrainer:
    """A digits-even trainer (the demo's preset) with ``overrides``, reference loaded, no progress bars."""
    config = finetune_config(config_file="digits-even", savedir=savedir, run_name=None, **overrides)
    reference = resolve_reference(config.ref_path, cache, progress=False)
    model = load_checkpoint(reference).build_model(config.ref_weights)
    trainer = ORWCFMTrainer(model, config, "cpu", cache=cache, progress=False)
    trainer.load_pretrained(reference)
    trainer.steps_per_epoch = config.steps_per_epoch
    return trainer


def nfe_per_sample(config: FinetuneConfig) -> int:
    return config.sampling.steps * FIXED_STEP_STAGES[config.sampling.solver]


def samples_per_step(config: FinetuneConfig) -> float:
    """Policy samples drawn per gradient step: the buffer once per refresh, or a fresh batch every step."""
    period = config.refresh_every or config.steps_per_epoch
    buffer = config.samples_per_refresh(period)
    if buffer is None:
        return float(config.batch_size)
    return buffer / period


# ----------------------------------------------------------------------------------------------------------------
# 1. Step anatomy.


@dataclass
class Anatomy:
    name: str
    step_ms: float
    sampling_ms: float
    reference_ms: float
    model_ms: float
    model_rows: int
    reward_ms: float
    coupling_ms: float
    optimizer_ms: float

    @property
    def passes_ms(self) -> float:
        return self.sampling_ms + self.reference_ms + self.model_ms

    @property
    def overhead(self) -> float:
        return self.step_ms / self.passes_ms


def step_anatomy(name: str, trainer: ORWCFMTrainer, rounds: int, steps: int) -> Anatomy:
    """Time ``steps`` real steps of ``trainer`` and, in the same rounds, each network pass they consist of."""
    cfg = trainer.config
    b, shape = cfg.batch_size, trainer._shape()
    gen = torch.Generator().manual_seed(0)
    rows = trainer.algorithm.network_rows(b)  # e.g. 2B through the model when the W2 term has its own interpolants
    x1 = trainer.sample(rows.model, seed=1)
    xt, t = torch.randn((rows.model, *shape), generator=gen), torch.rand(rows.model, generator=gen)
    period = cfg.refresh_every or cfg.steps_per_epoch
    buffer = cfg.samples_per_refresh(period)
    n_sample = buffer or cfg.batch_size
    noise = torch.randn((n_sample, *shape), generator=gen)
    per_step = samples_per_step(cfg) / n_sample  # refreshes of this size per gradient step
    s = cfg.sampling
    # A copy of the model with an optimiser of its own, so that timing the parts never touches the run's state.
    probe = copy.deepcopy(trainer.model)
    probe_opt = make_adam(probe, 1e-6, "cpu")  # the trainer's optimiser (fused Adam)

    def sampling() -> None:
        generate(trainer._policy_net, noise, solver=s.solver, steps=s.steps, batch_size=s.batch_size, precision=s.precision)

    def reference() -> None:
        with torch.inference_mode():
            trainer.reference(t[: rows.reference], xt[: rows.reference])

    def model() -> None:
        probe.zero_grad(set_to_none=True)
        probe(t, xt).sub(x1).pow(2).mean().backward()

    def reward() -> None:
        trainer.reward_fn(noise)

    def coupling() -> None:
        trainer.algorithm.coupling(xt[:b], x1[:b])  # the pairing the algorithm uses

    def optimizer() -> None:
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        probe_opt.step()

    # Warm up; with a buffer, align to a refresh so that each timed block of `steps` (a multiple of the refresh
    # period) holds exactly steps / period refreshes. A fresh batch every step needs no alignment.
    trainer.run_steps(period if buffer is not None else 2)
    times = median_times({"step": lambda: trainer.run_steps(steps), "sampling": sampling, "reference": reference,
                          "model": model, "reward": reward, "coupling": coupling, "optimizer": optimizer},
                         rounds=rounds, warmup=0)
    refresh_share = 1.0 / period if buffer is not None else 1.0  # reward calls per step
    return Anatomy(name=name, step_ms=1e3 * times["step"] / steps, sampling_ms=1e3 * times["sampling"] * per_step,
                   reference_ms=1e3 * times["reference"] if rows.reference > 0 else 0.0,
                   model_ms=1e3 * times["model"], model_rows=rows.model, reward_ms=1e3 * times["reward"] * refresh_share,
                   coupling_ms=1e3 * times["coupling"], optimizer_ms=1e3 * times["optimizer"])


def section_anatomy(args: argparse.Namespace, savedir: str) -> tuple[str, list[dict]]:
    results = []
    for name, overrides, steps in (("ours (default)", {}, 50), ("published-style", PUBLISHED, 5 if args.quick else 10)):
        trainer = make_trainer(args.cache, savedir, **overrides)
        results.append(step_anatomy(name, trainer, rounds=2 if args.quick else 4, steps=steps))
        if not overrides:
            ours = trainer
    # What an epoch's evaluation costs next to the epoch's 50 steps (the reference's samples are cached after the
    # first evaluation, as in a run; the judge and the gold classifier are built by the first call, not timed).
    ours.evaluate()
    eval_s = median_times({"evaluate": ours.evaluate}, rounds=1 if args.quick else 3, warmup=0)["evaluate"]
    epoch_s = results[0].step_ms * ours.config.steps_per_epoch / 1e3
    rows = [[a.name, a.sampling_ms, a.reference_ms, a.model_ms, a.passes_ms, a.step_ms,
             f"{a.overhead:.3f} ({'PASS' if a.overhead <= OVERHEAD_BAR else 'FAIL'})",
             f"{a.reward_ms:.2f} / {a.coupling_ms:.2f} / {a.optimizer_ms:.2f}", a.model_rows] for a in results]
    table = markdown(["config", "sampling / step (ms)", "reference fwd (ms)", "model fwd+bwd (ms)", "sum of passes (ms)",
                      "measured step (ms)", f"overhead ratio (bar {OVERHEAD_BAR})", "of the rest: reward / OT / clip+Adam (ms)", "model rows"], rows)
    table += (f"\n\nOne evaluation of the default run ({ours.config.eval_samples} samples, "
              f"{ours.config.eval_sampling.solver} x {ours.config.eval_sampling.steps}, every metric incl. Vendi, exact W2, "
              f"W2 bound, digits judge): {eval_s:.1f} s, against {epoch_s:.1f} s for the epoch's "
              f"{ours.config.steps_per_epoch} steps.")
    return table, [asdict(a) | {"overhead": a.overhead} for a in results] + [{"evaluate_seconds": eval_s, "epoch_seconds": epoch_s}]


# ----------------------------------------------------------------------------------------------------------------
# 2. Time to target.


@dataclass
class TargetRun:
    name: str
    overrides: dict
    trainer: ORWCFMTrainer
    train_seconds: float = 0.0
    epochs: list[dict] = field(default_factory=list)
    hit: dict | None = None  # the first epoch that met the target fraction

    @property
    def done(self) -> bool:
        return self.hit is not None


def section_target(args: argparse.Namespace, savedir: str) -> tuple[str, list[dict]]:
    max_epochs = 6 if args.quick else 12
    variants: list[tuple[str, dict]] = [("published-style: fresh batch, euler x 100", PUBLISHED),
                                        ("ours (default): buffer 1024 (reuse 6.25x), midpoint x 10", {})]
    if not args.quick:
        variants += [(f"ours, buffer {n} (reuse {50 * 128 / n:.3g}x)", {"buffer_size": n}) for n in (6400, 2048, 512, 256)]
        variants += [("ours, fresh batch every step (reuse 1x)", {"buffer_size": None}),
                     ("ours, rk4 x 3 (12 NFE, the cheapest sampler by digits-FD)", {"sampling": {"solver": "rk4", "steps": 3}}),
                     ("ours + bf16 policy sampling", {"sampling": {"precision": "bf16"}})]
    runs = [TargetRun(name, o, make_trainer(args.cache, savedir, **o)) for name, o in variants]

    # One instrument for every run: the evaluation sampler (float32) on the same fixed noise.
    judge_cfg = runs[1].trainer.config.eval_sampling
    noise = runs[1].trainer._eval_noise()
    reward = runs[1].trainer.reward_fn

    def measure(net: torch.nn.Module) -> tuple[float, float]:
        x = generate(net, noise, solver=judge_cfg.solver, steps=judge_cfg.steps, batch_size=judge_cfg.batch_size)
        return float(reward.metrics(x)["target_fraction"]), mean_pairwise_distance(x)

    ref_fraction, ref_diversity = measure(runs[0].trainer.reference)
    # Round robin: epoch e of every unfinished run, then epoch e + 1, so that load drift hits all runs alike.
    for epoch in range(1, max_epochs + 1):
        for run in runs:
            if run.done:
                continue
            spe = run.trainer.config.steps_per_epoch
            start = time.perf_counter()
            run.trainer.run_steps(spe)
            run.train_seconds += time.perf_counter() - start
            fraction, diversity = measure(run.trainer.model)
            row = {"epoch": epoch, "target_fraction": fraction, "diversity": diversity, "train_seconds": run.train_seconds,
                   "reward_evaluations": run.trainer.reward_evaluations}
            run.epochs.append(row)
            if fraction >= TARGET_FRACTION:
                run.hit = row
            print(f"  [target] {run.name}: epoch {epoch}, target fraction {fraction:.3f}, diversity {diversity:.3f}, "
                  f"train {run.train_seconds:.1f} s", file=sys.stderr, flush=True)

    base = runs[0].hit["train_seconds"] if runs[0].hit else None
    rows, out = [], []
    for run in runs:
        cfg = run.trainer.config
        hit = run.hit
        nfe = run.trainer.reward_evaluations * nfe_per_sample(cfg)
        if hit is None:
            best = max(run.epochs, key=lambda r: r["target_fraction"])
            rows.append([run.name, f"not in {max_epochs} epochs (best {best['target_fraction']:.3f})", "", "", "", "", ""])
        else:
            div_ratio = hit["diversity"] / ref_diversity
            speedup = f"{base / hit['train_seconds']:.2f}x" if base else ""
            rows.append([run.name, hit["epoch"], f"{hit['train_seconds']:.1f}", speedup, f"{hit['target_fraction']:.3f}",
                         f"{hit['diversity']:.3f} ({div_ratio:.0%} {'PASS' if div_ratio >= DIVERSITY_BAR else 'FAIL'})",
                         f"{hit['reward_evaluations']} / {hit['reward_evaluations'] * nfe_per_sample(cfg) / 1e6:.2f}M"])
        out.append({"name": run.name, "overrides": run.overrides, "epochs": run.epochs, "hit": hit, "nfe_total": nfe})
    table = markdown(["config", "epoch reached", "train time (s)", "speed-up vs published", "target fraction",
                      "diversity (vs reference)", "reward evals / sample NFE"], rows)
    table += (f"\n\nReference: target fraction {ref_fraction:.3f}, diversity {ref_diversity:.3f}. Target: fraction >= "
              f"{TARGET_FRACTION}, checked after every epoch (50 steps) on the same {len(noise)} noise vectors "
              f"({judge_cfg.solver} x {judge_cfg.steps}, float32); train time excludes these checks.")
    return table, out


# ----------------------------------------------------------------------------------------------------------------
# 3. Sampler quality per cost.


def section_solvers(args: argparse.Namespace, savedir: str) -> tuple[str, list[dict]]:
    n = 1000 if args.quick else 2000
    trainer = make_trainer(args.cache, savedir)
    net = trainer.reference
    features = digits_classifier(args.cache).model.eval().features
    shape = trainer._shape()
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(11))
    others = [torch.randn((n, *shape), generator=torch.Generator().manual_seed(100 + k)) for k in range(3)]

    def draw(solver: str, steps: int, noise_: torch.Tensor, precision: str = "fp32") -> tuple[torch.Tensor, int, float]:
        start = time.perf_counter()
        nfe = 0
        with torch.no_grad():
            parts = []
            from orwcfm.sampling import autocast

            with autocast("cpu", precision):
                for i in range(0, n, 500):
                    res = integrate(net, noise_[i : i + 500], solver=solver, steps=steps)
                    parts.append(res.samples.float())
                    nfe = res.nfe  # per sample: one chunk's count
        return torch.cat(parts), nfe, time.perf_counter() - start

    with torch.no_grad():
        targets = [features(draw("euler", 100, o)[0]) for o in others]
    grid = [("euler", 10), ("euler", 20), ("euler", 50), ("euler", 100), ("midpoint", 3), ("midpoint", 4), ("midpoint", 5),
            ("midpoint", 10), ("midpoint", 20), ("heun", 5), ("heun", 10), ("rk4", 2), ("rk4", 3), ("rk4", 5), ("rk4", 10),
            ("dopri5", 1)]
    if args.quick:
        grid = [("euler", 10), ("euler", 100), ("midpoint", 5), ("midpoint", 10), ("rk4", 3)]
    variants = [(s, k, "fp32") for s, k in grid] + [("midpoint", 10, "bf16"), ("rk4", 3, "bf16")]
    e100 = draw("euler", 100, noise)[0]
    # The resolution of the measurement: Euler x 100 itself from other noise draws, scored against the same targets.
    fd_second = []
    for seed in range(12, 14 if args.quick else 15):
        with torch.no_grad():
            other = features(draw("euler", 100, torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed)))[0])
            fd_second.append(statistics.mean(frechet_distance(other, tgt) for tgt in targets))
    rows, out = [], []
    for solver, steps, precision in variants:
        x, nfe, seconds = draw(solver, steps, noise, precision)
        with torch.no_grad():
            fds = [frechet_distance(features(x), tgt) for tgt in targets]
        rms = (x - e100).flatten(1).pow(2).mean(1).sqrt().mean().item()  # same noise: pure solver difference
        name = f"{solver} x {steps}" if solver != "dopri5" else "dopri5 (tol 1e-5)"
        out.append({"solver": solver, "steps": steps, "precision": precision, "nfe": nfe, "seconds": seconds,
                    "fd": fds, "fd_mean": statistics.mean(fds), "rms_to_euler100_same_noise": rms})
        rows.append([name + (" bf16" if precision == "bf16" else ""), nfe, f"{seconds:.1f}",
                     f"{statistics.mean(fds):.2f} ({min(fds):.2f}-{max(fds):.2f})", f"{rms:.4f}"])
    floor = next(r for r in out if r["solver"] == "euler" and r["steps"] == 100 and r["precision"] == "fp32")
    # Every row integrates the same noise and is scored against the same targets, so rows compare paired: the
    # draw-to-draw spread of FD (Euler x 100 itself from other noise) is far larger than the differences between
    # solvers and would call almost anything "not worse". The bar is a margin of 5 % over Euler x 100, paired.
    bar = 1.05 * floor["fd_mean"]
    for row, r in zip(rows, out):
        r["not_worse"] = r["fd_mean"] <= bar
        row.append("yes" if r["not_worse"] else "no")
    cheapest = min((r for r in out if r["not_worse"] and r["precision"] == "fp32"), key=lambda r: (r["nfe"], r["fd_mean"]))
    table = markdown(["solver", "NFE / sample", f"seconds / {n}", "digits-FD to Euler x 100 (3 draws: mean, range)",
                      "RMS to Euler x 100, same noise", "not worse than Euler x 100"], rows)
    table += (f"\n\nAll rows integrate the same {n} noise vectors and are scored against the same three Euler x 100 "
              f"sets from other noise (paired). 'Not worse': mean FD <= {bar:.2f} (Euler x 100's {floor['fd_mean']:.2f} + 5 %). "
              f"For scale, Euler x 100 from other noise scores {', '.join(f'{fd:.2f}' for fd in fd_second)}: FD at {n} "
              f"samples cannot rank two samplers unpaired. Cheapest not worse: {cheapest['solver']} x {cheapest['steps']} "
              f"({cheapest['nfe']} NFE).")
    return table, out + [{"euler100_other_noise_fd": fd_second, "bar": bar}]


# ----------------------------------------------------------------------------------------------------------------
# 4. Options: each optimisation against its baseline, interleaved.


def section_options(args: argparse.Namespace, savedir: str) -> tuple[str, list[dict]]:
    rounds = 3 if args.quick else 5
    rows, out = [], []

    def record(what: str, baseline: str, variant: str, times: dict[str, float], scale: float = 1e3, unit: str = "ms") -> None:
        ratio = times[baseline] / times[variant]
        rows.append([what, f"{times[baseline] * scale:.1f} {unit}", f"{times[variant] * scale:.1f} {unit}", f"{ratio:.2f}x"])
        out.append({"what": what, "baseline": times[baseline], "variant": times[variant], "speedup": ratio})

    trainer = make_trainer(args.cache, savedir)
    cfg = trainer.config
    s = cfg.sampling
    shape = trainer._shape()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((cfg.buffer_size, *shape), generator=gen)
    policy = trainer.policy

    def sampler(batch_size: int | None, precision: str = "fp32", mode: str = "no_grad", net: Any = policy) -> Callable[[], Any]:
        def fn() -> None:
            ctx = torch.inference_mode() if mode == "inference" else torch.no_grad()
            with ctx:
                generate(net, noise, solver=s.solver, steps=s.steps, batch_size=batch_size, precision=precision)
        return fn

    # Sampling the buffer (1024 samples, midpoint x 10): chunk sizes, inference mode, bf16.
    t = median_times({"all": sampler(None), "128": sampler(128), "256": sampler(256), "512": sampler(512),
                      "inference": sampler(512, mode="inference"), "bf16": sampler(512, "bf16")}, rounds)
    for chunk in ("128", "256", "512"):
        record(f"buffer sampling: chunks of {chunk} vs one batch of 1024", "all", chunk, t)
    record("buffer sampling: inference_mode vs no_grad (chunks of 512)", "512", "inference", t)
    record("buffer sampling: bf16 autocast vs fp32 (chunks of 512)", "512", "bf16", t)

    # Threads: 1 vs 2 on sampling and on a training step.
    b = cfg.batch_size
    xt, tt = torch.randn((b, *shape), generator=gen), torch.rand(b, generator=gen)
    model = trainer.model

    def fwd_bwd(net: Any = model, precision: str = "fp32", x: torch.Tensor = xt) -> Callable[[], Any]:
        from orwcfm.sampling import autocast

        def fn() -> None:
            net.zero_grad(set_to_none=True)
            with autocast("cpu", precision):
                out_ = net(tt, x)
            out_.float().pow(2).mean().backward()
        return fn

    threads = torch.get_num_threads()
    times1: dict[str, list[float]] = {"1": [], str(threads): []}
    step_times: dict[str, list[float]] = {"1": [], str(threads): []}
    for _ in range(rounds):
        for n in (1, threads):
            torch.set_num_threads(n)
            start = time.perf_counter()
            sampler(512)()
            times1[str(n)].append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(5):
                fwd_bwd()()
            step_times[str(n)].append((time.perf_counter() - start) / 5)
    torch.set_num_threads(threads)
    record(f"threads: {threads} vs 1, buffer sampling", "1", str(threads), {k: statistics.median(v) for k, v in times1.items()})
    record(f"threads: {threads} vs 1, model fwd+bwd (B={b})", "1", str(threads), {k: statistics.median(v) for k, v in step_times.items()})

    # bf16 for the training forward; channels-last for the UNet.
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl_policy = copy.deepcopy(policy).to(memory_format=torch.channels_last)
    xt_cl = xt.contiguous(memory_format=torch.channels_last)
    noise_cl = noise.contiguous(memory_format=torch.channels_last)

    def cl_sampler() -> None:
        with torch.no_grad():
            generate(cl_policy, noise_cl, solver=s.solver, steps=s.steps, batch_size=512)

    t = median_times({"fp32": fwd_bwd(), "bf16": fwd_bwd(precision="bf16"), "cl": fwd_bwd(cl_model, x=xt_cl),
                      "s": sampler(512), "s_cl": cl_sampler}, rounds)
    record(f"training fwd+bwd (B={b}): bf16 autocast vs fp32", "fp32", "bf16", t)
    record(f"training fwd+bwd (B={b}): channels-last vs contiguous", "fp32", "cl", t)
    record("buffer sampling: channels-last vs contiguous", "s", "s_cl", t)

    # Adam: one fused kernel against the default multi-tensor loop (the optimiser step after gradient clipping).
    fused_net, plain_net = copy.deepcopy(model), copy.deepcopy(model)
    for net in (fused_net, plain_net):
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    fused_opt, plain_opt = make_adam(fused_net, 1e-6, "cpu"), torch.optim.Adam(plain_net.parameters(), lr=1e-6)

    def adam(net: Any, opt: torch.optim.Optimizer) -> Callable[[], None]:
        def fn() -> None:
            for _ in range(10):
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
        return fn

    t = median_times({"plain": adam(plain_net, plain_opt), "fused": adam(fused_net, fused_opt)}, rounds * 4)
    record("clip + Adam step: fused vs multi-tensor (per step)", "plain", "fused", {k: v / 10 for k, v in t.items()})

    # Fusing the reference forward with another pass: the best it could do is the throughput gain of one pass at
    # 2B over two passes at B.
    x2, t2 = torch.cat([xt, xt]), torch.cat([tt, tt])
    ref = trainer.reference

    def two_at_b() -> None:
        with torch.inference_mode():
            ref(tt, xt)
            ref(tt, xt)

    def one_at_2b() -> None:
        with torch.inference_mode():
            ref(t2, x2)

    t = median_times({"2xB": two_at_b, "2B": one_at_2b}, rounds * 4)
    record(f"upper bound of a fused reference forward: one pass at {2 * b} vs two at {b}", "2xB", "2B", t)

    # torch.compile: steady-state speed and the one-off compile time.
    if not args.no_compile:
        compiled_model = torch.compile(copy.deepcopy(model))
        compiled_policy = torch.compile(copy.deepcopy(policy))
        start = time.perf_counter()
        fwd_bwd(compiled_model)()
        compile_train = time.perf_counter() - start
        start = time.perf_counter()
        sampler(512, net=compiled_policy)()
        compile_sample = time.perf_counter() - start
        t = median_times({"eager": fwd_bwd(), "compiled": fwd_bwd(compiled_model), "s": sampler(512),
                          "s_c": sampler(512, net=compiled_policy)}, rounds)
        record(f"training fwd+bwd (B={b}): torch.compile vs eager", "eager", "compiled", t)
        record("buffer sampling: torch.compile vs eager", "s", "s_c", t)
        rows.append(["torch.compile: one-off compile time (train / sample)", "", f"{compile_train:.0f} s / {compile_sample:.0f} s", ""])
        out.append({"what": "compile_seconds", "train": compile_train, "sample": compile_sample})

    table = markdown(["optimisation", "baseline", "variant", "speed-up"], rows)
    return table, out


# ----------------------------------------------------------------------------------------------------------------
# 5. Peak memory of the demo.


def section_memory(args: argparse.Namespace, savedir: str) -> tuple[str, list[dict]]:
    exe = Path(sys.executable).with_name("orwcfm")
    cmd = [str(exe), "demo", "--out", str(Path(savedir) / "demo"), "--no-progress"]
    if args.cache:
        cmd += ["--cache", args.cache]
    if args.quick:
        cmd += ["--set", "epochs=2"]
    start = time.perf_counter()
    log = Path(savedir) / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        # wait4 gives the resource usage of this one child (getrusage(RUSAGE_CHILDREN) would be the maximum over
        # every child so far, such as torch.compile's workers)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"demo failed ({proc.returncode}):\n{log.read_text()[-2000:]}")
    peak_mib = usage.ru_maxrss / 1024  # Linux: kilobytes
    summary = json.loads((Path(savedir) / "demo" / "summary.json").read_text())
    rows = [["orwcfm demo" + (" (epochs=2)" if args.quick else ""), f"{peak_mib:.0f} MiB", f"{seconds:.0f} s",
             f"{summary['wall_seconds']:.0f} s", f"{summary['target_fraction_after']:.3f}"]]
    table = markdown(["run", "peak RSS", "wall time (process)", "fine-tuning wall time", "target fraction after"], rows)
    return table, [{"peak_rss_mib": peak_mib, "seconds": seconds, "summary": summary}]


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({', '.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true", help="fewer variants, rounds and epochs (a smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--cache", default=None, help="asset cache folder (default $ORWCFM_CACHE or ~/.cache/orwcfm)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement (~1-2 min)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            parser.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"threads": args.threads, "torch": torch.__version__, "quick": args.quick}
    titles = {"anatomy": "1. Step anatomy", "target": "2. Time to target (95 % even)", "solvers": "3. Sampler quality per cost",
              "options": "4. Optimisations, each against its baseline", "memory": "5. Peak memory of the demo"}
    print(f"# orwcfm fine-tuning benchmark: digits -> even, {args.threads} torch threads, torch {torch.__version__}\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # torch.compile's one-off cost is measured from a cold cache, as a user's first run would pay it
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tmp) / "inductor"))
        for name in SECTIONS:
            if name not in only:
                continue
            start = time.perf_counter()
            table, data = globals()[f"section_{name}"](args, tmp)
            results[name] = data
            print(f"## {titles[name]} ({time.perf_counter() - start:.0f} s)\n\n{table}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
