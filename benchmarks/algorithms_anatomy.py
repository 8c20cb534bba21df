"""Benchmark: each fine-tuning algorithm's step against the network passes it is made of (digits-even, CPU).

    .venv/bin/python benchmarks/algorithms_anatomy.py                 # every algorithm
    .venv/bin/python benchmarks/algorithms_anatomy.py --quick         # fewer rounds
    .venv/bin/python benchmarks/algorithms_anatomy.py --only adrpo,draft

For each algorithm, on the digits-even task (the demo's UNet; coupling independent for all, so that they do the
same work per row): a real step (``trainer.run_steps``, refreshes amortised) is timed against, in the same rounds,
interleaved, the passes it cannot do without: the algorithm's own ``collect`` of one refresh times the refreshes per
step, the reward of those samples, and the model's forward and backward, the reference's forward and the frozen
policy's forward on the rows ``Algorithm.network_rows`` declares. Bar: overhead ratio <= 1.15.

The methods that sample inside their loss (DRaFT, ReFL, Adjoint Matching: ``collects = False``) have no buffer;
their step is timed against the kinds of pass ``network_rows`` declares for it, each timed alone on a batch of B rows
and scaled by its rows / B: the model's forwards without a graph (sampling), its forwards with a graph and their
backward, the reference's forwards, the reference's forwards with a vector-Jacobian product in x (the lean adjoint),
and the reward's forward and backward. They run with a reference penalty (DRaFT and ReFL: 0.1) so that the
reference's passes are part of the step, as in the comparisons of docs/baselines.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import make_trainer, markdown, median_times  # noqa: E402

from orwcfm.algorithms import ALGORITHMS  # noqa: E402
from orwcfm.train import make_adam  # noqa: E402

BAR = 1.15
# every algorithm with the same pairing and refresh schedule; offline RWR draws its one buffer at step 0 (amortised
# over the run, so its per-step sampling is 0)
COMMON = {"coupling": "independent", "refresh_every": 10}
EXTRA = {"offline-rwr": {"refresh": "offline", "refresh_every": None, "w2_coefficient": 0.0},
         "draft": {"algorithm_options": {"reference_penalty": 0.1}},
         "refl": {"algorithm_options": {"reference_penalty": 0.1}}}


def anatomy_sampling_inside(name: str, cache: str | None, savedir: str, rounds: int) -> dict[str, Any]:
    """The step of a method that samples inside its loss, against the kinds of pass it declares."""
    trainer = make_trainer(cache, savedir, algorithm=name, **{**COMMON, **EXTRA.get(name, {})})
    b, shape = trainer.config.batch_size, trainer._shape()
    rows = trainer.algorithm.network_rows(b)
    graph = rows.model if rows.model_graph is None else rows.model_graph
    gen = torch.Generator().manual_seed(0)
    x1 = trainer.sample(b, seed=1)
    xt, t = torch.randn((b, *shape), generator=gen), torch.rand(b, generator=gen)
    probe = copy.deepcopy(trainer.model)
    make_adam(probe, 1e-6, "cpu")
    reward_fn = trainer.reward_fn

    def model_forward() -> None:
        with torch.no_grad():
            probe(t, xt)

    def model() -> None:
        probe.zero_grad(set_to_none=True)
        probe(t, xt).sub(x1).pow(2).mean().backward()

    def reference() -> None:
        with torch.inference_mode():
            trainer.reference(t, xt)

    def reference_vjp() -> None:
        x = xt.clone().requires_grad_(True)
        torch.autograd.grad(trainer.reference(t, x), x, grad_outputs=x1)

    def reward() -> None:
        x = x1.clone().requires_grad_(True)
        torch.autograd.grad(reward_fn(x).sum(), x)

    steps = 3
    trainer.run_steps(steps)  # warm-up
    times = median_times({"step": lambda: trainer.run_steps(steps), "model_forward": model_forward, "model": model,
                          "reference": reference, "reference_vjp": reference_vjp, "reward": reward},
                         rounds=rounds, warmup=0)
    ms = {k: 1e3 * v for k, v in times.items()}
    parts = {"model_forward": ms["model_forward"] * (rows.model - graph) / b, "model": ms["model"] * graph / b,
             "reference": ms["reference"] * (rows.reference - rows.reference_vjp) / b,
             "reference_vjp": ms["reference_vjp"] * rows.reference_vjp / b, "reward": ms["reward"] * rows.reward_grad / b}
    step = ms["step"] / steps
    passes = sum(parts.values())
    return {"algorithm": name, **parts, "passes": passes, "step": step, "overhead": step / passes,
            "rows": f"{rows.model - graph} / {graph} / {rows.reference - rows.reference_vjp} / {rows.reference_vjp} / "
                    f"{rows.reward_grad}"}


def anatomy(name: str, cache: str | None, savedir: str, rounds: int) -> dict[str, Any]:
    trainer = make_trainer(cache, savedir, algorithm=name, **{**COMMON, **EXTRA.get(name, {})})
    cfg, alg = trainer.config, trainer.algorithm
    b, shape = cfg.batch_size, trainer._shape()
    rows = alg.network_rows(b)
    gen = torch.Generator().manual_seed(0)
    x1 = trainer.sample(rows.model, seed=1)
    xt, t = torch.randn((rows.model, *shape), generator=gen), torch.rand(rows.model, generator=gen)
    period = cfg.refresh_every or cfg.steps_per_epoch
    buffer = cfg.samples_per_refresh(period)
    n = buffer or b
    noise = torch.randn((n, *shape), generator=gen)
    online = cfg.refresh != "offline"
    per_step = (1.0 / period if buffer else 1.0) if online else 0.0  # refreshes per step
    probe = copy.deepcopy(trainer.model)
    make_adam(probe, 1e-6, "cpu")

    def sampling() -> None:
        alg.collect(trainer._policy_net, noise, None, cfg.sampling, None)

    scored = trainer.sample(n, seed=2)  # one refresh's samples, drawn once outside the timing

    def reward() -> None:
        trainer.reward_fn(scored)

    def model() -> None:
        probe.zero_grad(set_to_none=True)
        probe(t, xt).sub(x1).pow(2).mean().backward()

    def reference() -> None:
        with torch.inference_mode():
            trainer.reference(t[: rows.reference], xt[: rows.reference])

    def policy() -> None:
        with torch.inference_mode():
            trainer.policy(t[: rows.policy], xt[: rows.policy])

    steps = period if buffer else 5
    trainer.run_steps(steps)  # warm-up, aligned to a refresh
    times = median_times({"step": lambda: trainer.run_steps(steps), "sampling": sampling, "reward": reward,
                          "model": model, "reference": reference, "policy": policy}, rounds=rounds, warmup=0)
    ms = {k: 1e3 * v for k, v in times.items()}
    parts = {"sampling": ms["sampling"] * per_step, "reward": ms["reward"] * per_step, "model": ms["model"],
             "reference": ms["reference"] if rows.reference else 0.0, "policy": ms["policy"] if rows.policy else 0.0}
    step = ms["step"] / steps
    passes = sum(parts.values())
    return {"algorithm": name, **parts, "passes": passes, "step": step, "overhead": step / passes,
            "rows": f"{rows.model} / {rows.reference} / {rows.policy}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated algorithms (default: every one that collects)")
    p.add_argument("--cache", default=None)
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else sorted(ALGORITHMS)
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        p.error(f"unknown algorithm {unknown[0]!r}; known: {', '.join(sorted(ALGORITHMS))}")
    results, inside = [], []
    rounds = 2 if args.quick else 4
    with tempfile.TemporaryDirectory() as savedir:
        for name in names:
            if ALGORITHMS[name][0].collects:
                results.append(anatomy(name, args.cache, savedir, rounds=rounds))
            else:
                inside.append(anatomy_sampling_inside(name, args.cache, savedir, rounds=rounds))
    table = markdown(["algorithm", "sampling / step (ms)", "reward / step (ms)", "model fwd+bwd (ms)",
                      "reference fwd (ms)", "policy fwd (ms)", "sum of passes (ms)", "measured step (ms)",
                      f"overhead (bar {BAR})", "rows model / ref / policy"],
                     [[r["algorithm"], r["sampling"], r["reward"], r["model"], r["reference"], r["policy"], r["passes"],
                       r["step"], f"{r['overhead']:.3f} ({'PASS' if r['overhead'] <= BAR else 'FAIL'})", r["rows"]]
                      for r in results])
    if results:
        print(table)
    if inside:
        print("\nMethods that sample inside their loss (rows: model no-graph / model graph / reference / reference "
              "with VJP / reward with gradient):\n")
        print(markdown(["algorithm", "model fwd, no graph (ms)", "model fwd+bwd (ms)", "reference fwd (ms)",
                        "reference fwd+VJP (ms)", "reward fwd+bwd (ms)", "sum of passes (ms)", "measured step (ms)",
                        f"overhead (bar {BAR})", "rows"],
                       [[r["algorithm"], r["model_forward"], r["model"], r["reference"], r["reference_vjp"], r["reward"],
                         r["passes"], r["step"], f"{r['overhead']:.3f} ({'PASS' if r['overhead'] <= BAR else 'FAIL'})",
                         r["rows"]] for r in inside]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
