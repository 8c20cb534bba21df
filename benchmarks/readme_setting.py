"""Benchmark: the public README's own setting (torchcfm's 36M CIFAR-10 UNet, batch 128) on this machine.

    .venv/bin/python benchmarks/readme_setting.py                  # batch 128, about 5-10 min on 2 CPU cores
    .venv/bin/python benchmarks/readme_setting.py --batch 16       # a quicker look
    .venv/bin/python benchmarks/readme_setting.py --device cuda    # the GPU run (benchmarks/gpu_readme.sh)

The network is orwcfm's ``adm-unet`` at the README's options (state-dict compatible with torchcfm's
UNetModelWrapper: the cifar10-clip preset), randomly initialised (the timings do not depend on the weights). It
times, each a median of interleaved rounds: one forward of the policy without a graph (sampling), the reference's
forward, the model's forward and backward plus Adam (a training step's network work), at ``--batch`` rows; then
builds the cost of the published scheme (a fresh batch and 100 Euler steps per gradient step), of the preset's
(midpoint x 10, a buffer of 1024 reused for 100 steps) and of one evaluation (``eval_samples`` x 20 passes of the
model, the reference's two sets once per run), from those passes (the step-anatomy benchmarks measure a real step at
1.00-1.08x its passes), and the share of a run the preset's evaluations take. Peak memory: the resident set of a
subprocess that runs one training step's passes (CPU), or ``torch.cuda.max_memory_allocated`` (GPU). The CLIP
reward is not timed: its ViT-B/32 is not on this machine (nothing is downloaded); the README's reward adds one CLIP
forward per policy sample.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

README_UNET = {"num_res_blocks": 2, "num_channels": 128, "channel_mult": [1, 2, 2, 2], "num_heads": 4,
               "num_head_channels": 64, "attention_resolutions": "16", "dropout": 0.1}


def build(device: str) -> torch.nn.Module:
    from orwcfm.models import ModelSpec, build_model

    return build_model(ModelSpec("adm-unet", (3, 32, 32), README_UNET)).to(device)


def timed(fns: dict[str, Any], rounds: int, device: str) -> dict[str, float]:
    """Median seconds of each function, interleaved round by round (the first round is a warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def passes(batch: int, device: str, rounds: int) -> dict[str, float]:
    model, reference = build(device), build(device).eval().requires_grad_(False)
    model.train()  # dropout as in training; finetune_dropout false turns it off in a run, which costs the same
    optim = torch.optim.Adam(model.parameters(), lr=2e-4)
    gen = torch.Generator().manual_seed(0)
    x, target = (torch.randn(batch, 3, 32, 32, generator=gen).to(device) for _ in range(2))
    t = torch.rand(batch, generator=gen).to(device)

    def sample_pass() -> None:
        with torch.inference_mode():
            model(t, x)

    def reference_pass() -> None:
        with torch.inference_mode():
            reference(t, x)

    def train_pass() -> None:
        optim.zero_grad(set_to_none=True)
        (model(t, x) - target).pow(2).mean().backward()
        optim.step()

    return timed({"forward": sample_pass, "reference": reference_pass, "train": train_pass}, rounds, device)


def peak_memory(batch: int, device: str) -> float:
    """GiB at the peak of one training step's passes (a fresh subprocess on the CPU: its max resident set)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        passes(batch, device, rounds=1)
        return torch.cuda.max_memory_allocated() / 2**30
    code = (f"import sys; sys.path.insert(0, {repr(sys.path[0])}); import readme_setting as r, resource; "
            f"r.passes({batch}, 'cpu', 1); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 2**20  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128, help="rows per pass (the README's batch_size: 128)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-samples", type=int, default=256, help="the preset's eval_samples")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    params = sum(p.numel() for p in build("cpu").parameters())
    s = passes(args.batch, args.device, args.rounds)
    b = args.batch
    # per gradient step of batch b: the policy's samples (passes x rows / b batches), reference, model fwd+bwd
    published = 100 * s["forward"] + s["reference"] + s["train"]  # a fresh batch of b, Euler x 100
    preset_sampling = 1024 / b * 20 * s["forward"] / 100  # a buffer of 1024 at midpoint x 10, every 100 steps
    preset = preset_sampling + s["reference"] + s["train"]
    evaluation = args.eval_samples / b * 20 * s["forward"]  # the model's samples on the fixed noise
    reference_sets = 2 * evaluation  # once per run: the reference on the evaluation noise and on independent noise
    epoch = 100 * preset
    share = evaluation / (10 * epoch + evaluation)  # eval_every 10
    memory = peak_memory(b, args.device)
    rows = [("parameters", f"{params / 1e6:.1f} M"),
            (f"forward without a graph, batch {b}", f"{s['forward']:.3f} s"),
            (f"reference forward, batch {b}", f"{s['reference']:.3f} s"),
            (f"model forward + backward + Adam, batch {b}", f"{s['train']:.3f} s"),
            ("gradient step, published scheme (fresh batch, Euler x 100)", f"{published:.1f} s"),
            ("gradient step, cifar10-clip preset (buffer 1024 per 100 steps, midpoint x 10)", f"{preset:.2f} s"),
            ("speed-up of the preset's step", f"{published / preset:.1f}x"),
            (f"one evaluation ({args.eval_samples} samples x 20 passes)", f"{evaluation:.1f} s"),
            ("the reference's two sets (once per run)", f"{reference_sets:.1f} s"),
            ("evaluation share of a run (eval_every 10, 100 steps an epoch)", f"{100 * share:.1f} %"),
            (f"peak memory of a step's passes, batch {b}", f"{memory:.2f} GiB")]
    print(f"README setting on {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}\n")
    print("| quantity | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"passes": s, "params": params, "published": published, "preset": preset,
                       "evaluation": evaluation, "share": share, "memory_gib": memory, "batch": b}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
