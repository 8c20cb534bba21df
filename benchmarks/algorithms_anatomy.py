"""Benchmark: each fine-tuning algorithm's step against the network passes it is made of (digits-even, CPU).

    .venv/bin/python benchmarks/algorithms_anatomy.py                 # every algorithm that collects a buffer
    .venv/bin/python benchmarks/algorithms_anatomy.py --quick         # fewer rounds
    .venv/bin/python benchmarks/algorithms_anatomy.py --only adrpo,flow-grpo

For each algorithm, on the digits-even task (the demo's UNet; coupling independent for all, so that they do the
same work per row): a real step (``trainer.run_steps``, refreshes amortised) is timed against, in the same rounds,
interleaved, the passes it cannot do without: the algorithm's own ``collect`` of one refresh times the refreshes per
step, the reward of those samples, and the model's forward and backward, the reference's forward and the frozen
policy's forward on the rows ``Algorithm.network_rows`` declares. Bar: overhead ratio <= 1.15.

The methods that sample inside their loss (DRaFT, ReFL, Adjoint Matching: ``collects = False``) are not covered:
their passes are a sampling run with a graph through part of it, which this decomposition does not time.
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
EXTRA = {"offline-rwr": {"refresh": "offline", "refresh_every": None, "w2_coefficient": 0.0}}


def anatomy(name: str, cache: str | None, savedir: str, rounds: int) -> dict[str, Any]:
    trainer = make_trainer(cache, savedir, algorithm=name, **{**COMMON, **EXTRA.get(name, {})})
    cfg, alg = trainer.config, trainer.algorithm
    b, shape = cfg.batch_size, trainer._shape()
    rows = alg.network_rows(b)
    gen = torch.Generator().manual_seed(0)
    x1 = trainer.sample(rows.model, seed=1)
    xt, t = torch.randn((rows.model, *shape), generator=gen), torch.rand(rows.model, generator=gen)
    n = cfg.buffer_size or b
    noise = torch.randn((n, *shape), generator=gen)
    period = cfg.refresh_every or cfg.steps_per_epoch
    online = cfg.refresh != "offline"
    per_step = (1.0 / period if cfg.buffer_size else 1.0) if online else 0.0  # refreshes per step
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

    steps = period if cfg.buffer_size else 5
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
    names = args.only.split(",") if args.only else sorted(n for n, (c, _) in ALGORITHMS.items() if c.collects)
    results = []
    with tempfile.TemporaryDirectory() as savedir:
        for name in names:
            results.append(anatomy(name, args.cache, savedir, rounds=2 if args.quick else 4))
    table = markdown(["algorithm", "sampling / step (ms)", "reward / step (ms)", "model fwd+bwd (ms)",
                      "reference fwd (ms)", "policy fwd (ms)", "sum of passes (ms)", "measured step (ms)",
                      f"overhead (bar {BAR})", "rows model / ref / policy"],
                     [[r["algorithm"], r["sampling"], r["reward"], r["model"], r["reference"], r["policy"], r["passes"],
                       r["step"], f"{r['overhead']:.3f} ({'PASS' if r['overhead'] <= BAR else 'FAIL'})", r["rows"]]
                      for r in results])
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
