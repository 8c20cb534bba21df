"""Benchmark: a digits-even fine-tuning step with 1 process x 2 threads against 2 processes x 1 thread.

    .venv/bin/python benchmarks/distributed_step.py            # runs both, prints a table

The 2-process run is started with torchrun (gloo on the CPU); each variant times 2 epochs of 50 steps after one
warm-up epoch, with the same global batch (128) and buffer (1024). Also prints the bytes each rank sends per step:
the DDP gradient all-reduce (ring: 2 (N - 1) / N x the gradient size) and the all_gather of the batch's rewards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def worker(out: str, cache: str | None) -> None:
    """One rank (or the single process): time run_steps and write the result (rank 0)."""
    from finetune_speed import make_trainer

    from orwcfm import distributed as dist_util

    ctx, _ = dist_util.setup("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cache, tmp)
        trainer.run_steps(50)  # warm-up epoch (includes a refresh)
        dist_util.barrier(ctx)
        start = time.perf_counter()
        trainer.run_steps(100)
        dist_util.barrier(ctx)
        seconds = (time.perf_counter() - start) / 100
        params = sum(p.numel() for p in trainer.model.parameters())
    if ctx.is_main:
        Path(out).write_text(json.dumps({"world_size": ctx.world_size, "threads": torch.get_num_threads(),
                                         "step_ms": 1e3 * seconds, "params": params}))
    dist_util.teardown(ctx)


def main() -> int:
    cache = os.environ.get("ORWCFM_CACHE")
    here = Path(__file__).resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, cmd, env in (
            ("1 process x 2 threads", [sys.executable, str(here), "--worker"], {"OMP_NUM_THREADS": "2"}),
            ("2 processes x 1 thread", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                        "--nproc_per_node=2", str(here), "--worker"], {"OMP_NUM_THREADS": "1"}),
        ):
            out = Path(tmp) / "out.json"
            proc = subprocess.run([*cmd, str(out), cache or ""], env={**os.environ, **env}, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append((label, json.loads(out.read_text())))
    base = rows[0][1]["step_ms"]
    params = rows[0][1]["params"]
    print("| layout | step (ms) | relative | bytes sent per rank per step |\n|---|---|---|---|")
    for label, r in rows:
        n = r["world_size"]
        grad = 4 * params * 2 * (n - 1) / n  # ring all-reduce of float32 gradients
        rewards = 4 * 128 // n * (n - 1) + 8 * (n - 1)  # all_gather of this rank's rewards (+ its size)
        sent = f"{grad + rewards:,.0f} (gradients {grad:,.0f}, rewards {rewards:,})" if n > 1 else "0"
        print(f"| {label} | {r['step_ms']:.1f} | {r['step_ms'] / base:.2f}x | {sent} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        worker(sys.argv[2], sys.argv[3] or None)
    else:
        raise SystemExit(main())
