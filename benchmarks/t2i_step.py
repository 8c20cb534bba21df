"""Benchmark: one text-to-image fine-tuning step (ORW-CFM-W2 with LoRA roles) on a random SD3 transformer.

    .venv/bin/python benchmarks/t2i_step.py                    # mid-size model on the CPU, ~5 min on 2 cores
    .venv/bin/python benchmarks/t2i_step.py --quick            # smaller and shorter (the test runs this)
    .venv/bin/python benchmarks/t2i_step.py --size sd3.5-medium --resolution 512 --device cuda --base bf16 \\
        --batch 4 --steps 20                                   # the GPU run: SD3.5-medium's configuration, bf16
    .venv/bin/python benchmarks/t2i_step.py --size sd3.5-medium --layers 2 --resolution 64 --base bf16 --batch 1 \
        --steps 1                                              # that configuration's code path, tried on a CPU

Random weights (speed and memory do not depend on them); text embeddings are random tensors of the model's
shapes (every prompt is encoded once before training, so the text encoders are not part of a step). Sections, each
a Markdown table, every ratio measured side by side in one run:

1. ``anatomy``: a real step (``trainer.run_steps``, a fresh batch from the policy every step) against the sum of the
   network passes it is made of, timed alone and interleaved with it round by round: policy sampling (``steps``
   Euler passes of the batch, no gradient), VAE decoding, the reward, the reference forward, the model's forward
   and backward (on the rows ``Algorithm.network_rows`` declares). Bar: overhead ratio <= 1.15.
2. ``memory``: peak memory of that step against a plain LoRA training step of the same transformer and batch (one
   adapter, one forward on noised latents, MSE, backward, Adam: what diffusers' LoRA training scripts do), each
   measured in a fresh process (peak resident set on the CPU, ``max_memory_allocated`` on CUDA), plus the
   memory each had before its first step. Bar: ratio of peaks <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

OVERHEAD_BAR, MEMORY_BAR = 1.15, 1.3

# SD3Transformer2DModel configurations. "mid": the CPU benchmark's (about 24M parameters, 256 image tokens at 32 px
# with the one-block VAE); "sd3.5-medium": stabilityai/stable-diffusion-3.5-medium's transformer/config.json.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                 num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
                 out_channels=4),
    "mid": dict(sample_size=32, patch_size=2, in_channels=4, num_layers=6, attention_head_dim=64,
                num_attention_heads=6, caption_projection_dim=384, joint_attention_dim=64, pooled_projection_dim=64,
                out_channels=4),
    "sd3.5-medium": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                         num_attention_heads=24, caption_projection_dim=1536, joint_attention_dim=4096,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
}
TEXT_TOKENS = 333  # SD3: 77 CLIP tokens + 256 T5 tokens


def vae_for(size: str):
    """A random VAE: SD3's real configuration (8x, 16 channels) for the real-size model, else a one-block one."""
    from diffusers import AutoencoderKL

    if size == "sd3.5-medium":
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             block_out_channels=(128, 256, 512, 512), layers_per_block=2, use_quant_conv=False,
                             use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=4,
                         norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                         scaling_factor=1.5035)


def brightness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """A reward that costs next to nothing, so that the step's own parts are what is measured."""
    return images.mean((1, 2, 3))


def make_run(args: argparse.Namespace, savedir: str) -> Any:
    """The trainer of a LoRA run on a random transformer of ``args.size`` (fresh batch every step)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from orwcfm.finetune.trainer import ORWCFMTrainer
    from orwcfm.t2i.family import SD3
    from orwcfm.t2i.lora import LoraRoles, LoraSettings
    from orwcfm.t2i.prompts import PromptTable, TextPrompts
    from orwcfm.t2i.rewards import DecodedReward
    from orwcfm.t2i.sd3 import LatentSpace, SD3Field, time_grid

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.base == "bf16" else torch.float32
    torch.manual_seed(0)
    sizes = {**SIZES[args.size], **({"num_layers": args.layers} if args.layers else {})}
    transformer = SD3Transformer2DModel(**sizes).to(device)
    vae = vae_for(args.size).to(device).eval().requires_grad_(False)
    if dtype != torch.float32:
        transformer, vae = transformer.to(dtype), vae.to(dtype)
    gen = torch.Generator().manual_seed(0)
    prompts = 8
    table = PromptTable(tuple(f"prompt {i}" for i in range(prompts)),
                        torch.randn(prompts, TEXT_TOKENS, sizes["joint_attention_dim"], generator=gen).to(device),
                        torch.randn(prompts, sizes["pooled_projection_dim"], generator=gen).to(device),
                        torch.zeros(TEXT_TOKENS, sizes["joint_attention_dim"], device=device),
                        torch.zeros(sizes["pooled_projection_dim"], device=device))
    per_prompt = 2 if args.batch % 2 == 0 else 1
    text = TextPrompts(table, samples_per_prompt=per_prompt)
    space = LatentSpace.of(vae)
    shape = SD3.latent_shape(space, transformer.config, args.resolution, args.resolution)
    roles = LoraRoles(SD3Field(transformer), transformer, LoraSettings(rank=args.rank, alpha=args.rank),
                      gradient_checkpointing=args.checkpointing)
    reward = DecodedReward(brightness, vae, text, chunk=args.batch)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    grid = time_grid(scheduler, args.steps)
    config = {"batch_size": args.batch, "buffer_size": None, "w2_coefficient": 0.1, "temperature": 1.0,
              "samples_per_prompt": per_prompt, "prompts": list(table.prompts), "learning_rate": 1e-4, "ema_decay": None,
              "sampling": {"solver": "euler", "steps": args.steps}, "savedir": savedir, "log_every": 10 ** 6,
              "device": args.device, "precision": "bf16" if args.base == "bf16" else "fp32"}
    trainer = ORWCFMTrainer(roles.model, config, device, reward_fn=reward, event_shape=shape, progress=False,
                            prompts=text, roles=roles, time_grid=lambda steps: grid, decode=reward.images)
    return trainer, roles, reward, text, shape


def median_times(fns: dict[str, Callable[[], Any]], rounds: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median wall seconds of each function, interleaved round by round (a drifting machine slows all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
                      *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)])


# ----------------------------------------------------------------------------------------------------------------
# 1. Step anatomy.


def section_anatomy(args: argparse.Namespace, savedir: str) -> tuple[str, dict]:
    from orwcfm.sampling import generate

    trainer, roles, reward, text, shape = make_run(args, savedir)
    device = torch.device(args.device)
    b = args.batch
    rows = trainer.algorithm.network_rows(b)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn((b, *shape), generator=gen).to(device)
    cond = text.draw(b, gen, device)
    big = text.draw(rows.model, gen, device)
    xt, t = torch.randn((rows.model, *shape), generator=gen).to(device), torch.rand(rows.model, generator=gen).to(device)
    target = torch.randn_like(xt)
    times_grid = trainer._times(args.steps)
    x1 = generate(roles.policy_net(), noise, solver="euler", steps=args.steps, cond=cond, times=times_grid)
    images = reward.images(x1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def sampling() -> None:
        generate(roles.policy_net(), noise, solver="euler", steps=args.steps, cond=cond, times=times_grid)

    def decoding() -> None:
        reward.images(x1)

    def scoring() -> None:
        reward.fn(images, text.texts(cond))

    def reference() -> None:
        with torch.no_grad():
            roles.reference()(t[: rows.reference], xt[: rows.reference], big.index(torch.arange(rows.reference)))

    def model() -> None:  # forward and backward of the trained adapter; no optimizer step, so nothing changes
        roles.model(t, xt, big).sub(target).pow(2).mean().backward()
        for p in roles.trainable_parameters():
            p.grad = None

    trainer.run_steps(1)  # warm-up (the first refresh, Adam's state)
    steps = 1 if args.quick else 2
    for fn in (sampling, decoding, scoring, reference, model):
        fn()
    measured = median_times({"step": lambda: trainer.run_steps(steps), "sampling": sampling, "decoding": decoding,
                             "reward": scoring, "reference": reference, "model": model},
                            rounds=2 if args.quick else 4, sync=sync)
    ms = {k: 1e3 * v for k, v in measured.items()}
    ms["step"] /= steps
    passes = sum(ms[k] for k in ("sampling", "decoding", "reward", "reference", "model"))
    ratio = ms["step"] / passes
    table = markdown(["model", "batch", "sampling (ms)", "decoding (ms)", "reward (ms)", "reference fwd (ms)",
                      "model fwd+bwd (ms)", "sum of passes (ms)", "measured step (ms)", f"overhead ratio (bar {OVERHEAD_BAR})"],
                     [[f"{args.size}{f' ({args.layers} blocks)' if args.layers else ''} @ {args.resolution}px, {args.base}", b, ms["sampling"], ms["decoding"],
                       ms["reward"], ms["reference"], ms["model"], passes, ms["step"],
                       f"{ratio:.3f} ({'PASS' if ratio <= OVERHEAD_BAR else 'FAIL'})"]])
    table += (f"\n\nImages per second of the step (sampling included): {b / (ms['step'] / 1e3):.2f}; "
              f"model rows {rows.model}, reference rows {rows.reference}; "
              f"{sum(p.numel() for p in roles.transformer.parameters()) / 1e6:.1f}M transformer parameters.")
    return table, {**ms, "passes": passes, "overhead": ratio}


# ----------------------------------------------------------------------------------------------------------------
# 2. Memory: each variant in a fresh process.


def _rss_mib() -> float:
    """The process's resident set now (MiB), from /proc/self/statm."""
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class RssPeak:
    """The largest resident set seen while the block runs, polled every millisecond from a thread (the steps'
    torch kernels release the GIL). ``ru_maxrss`` would not do: it keeps the peak of the imports and the build."""

    def __enter__(self) -> RssPeak:
        import threading

        self.peak, self._stop = _rss_mib(), threading.Event()

        def poll() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss_mib())
                self._stop.wait(0.001)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def memory_child(args: argparse.Namespace, savedir: str) -> dict:
    """Run in a fresh process: build, then ``steps`` steps of ``args.variant``; the memory before and the peak."""
    trainer, roles, reward, text, shape = make_run(args, savedir)
    device = torch.device(args.device)
    if args.variant == "plain-lora":
        # a plain LoRA training step on the same transformer and batch: the trained adapter, noised latents, MSE
        opt = torch.optim.Adam(roles.trainable_parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)

        def step() -> None:
            x1 = torch.randn((args.batch, *shape), generator=gen).to(device)
            x0 = torch.randn((args.batch, *shape), generator=gen).to(device)
            t = torch.rand(args.batch, generator=gen).to(device)
            tt = t.view(-1, 1, 1, 1)
            cond = text.draw(args.batch, gen, device)
            loss = roles.model(t, (1 - tt) * x0 + tt * x1, cond).sub(x1 - x0).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        def step() -> None:
            trainer.run_steps(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2 ** 20
        for _ in range(args.measure_steps):
            step()
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        before = _rss_mib()
        with RssPeak() as rss:
            for _ in range(args.measure_steps):
                step()
        peak = rss.peak
    base = sum(p.numel() * p.element_size() for n, p in roles.transformer.named_parameters() if "lora_" not in n)
    adapters = sum(p.numel() * p.element_size() for n, p in roles.transformer.named_parameters() if "lora_" in n)
    return {"variant": args.variant, "before_mib": before, "peak_mib": peak, "base_weights_mib": base / 2 ** 20,
            "adapter_weights_mib": adapters / 2 ** 20}


def section_memory(args: argparse.Namespace, savedir: str) -> tuple[str, dict]:
    results = {}
    for variant in ("plain-lora", "orw-cfm-w2"):
        cmd = [sys.executable, __file__, "--memory-child", variant, "--size", args.size, "--resolution",
               str(args.resolution), "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device,
               "--base", args.base, "--rank", str(args.rank)] + (["--layers", str(args.layers)] if args.layers else []) + (["--checkpointing"] if args.checkpointing else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"memory run {variant} failed:\n{out.stderr[-3000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, ours = results["plain-lora"], results["orw-cfm-w2"]
    ratio = ours["peak_mib"] / plain["peak_mib"]
    extra = (ours["peak_mib"] - ours["before_mib"]) / max(plain["peak_mib"] - plain["before_mib"], 1e-9)
    what = "peak resident set" if args.device == "cpu" else "max_memory_allocated"
    table = markdown(["step", "memory before the steps (MiB)", f"{what} (MiB)", "growth during the steps (MiB)"],
                     [[v, r["before_mib"], r["peak_mib"], r["peak_mib"] - r["before_mib"]] for v, r in results.items()])
    table += (f"\n\nThe transformer's base weights: {ours['base_weights_mib']:.1f} MiB ({args.base}), held once; the two "
              f"adapters (trained and policy, fp32): {ours['adapter_weights_mib']:.1f} MiB."
              f"\n\nRatio of peaks, ORW-CFM-W2 step / plain LoRA step: **{ratio:.3f}** (bar {MEMORY_BAR}: "
              f"{'PASS' if ratio <= MEMORY_BAR else 'FAIL'}); ratio of the growth during the steps: {extra:.3f}. "
              f"{args.size} @ {args.resolution}px, batch {args.batch}, base {args.base}, "
              f"gradient checkpointing {'on' if args.checkpointing else 'off'}.")
    return table, {"plain": plain, "ours": ours, "ratio": ratio, "growth_ratio": extra}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny model, fewer rounds (what the test runs)")
    p.add_argument("--only", default="anatomy,memory", help="comma-separated sections: anatomy, memory")
    p.add_argument("--size", default=None, choices=sorted(SIZES), help="transformer configuration (default mid; "
                                                                        "tiny with --quick)")
    p.add_argument("--layers", type=int, default=None, help="override the number of transformer blocks (to try the "
                                                            "real-size configuration's code path on a CPU)")
    p.add_argument("--resolution", type=int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--batch", type=int, default=4, help="images per gradient step (default 4)")
    p.add_argument("--steps", type=int, default=4, help="Euler steps of the policy's sampler (default 4)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--base", default="fp32", choices=("fp32", "bf16"), help="dtype of the frozen base weights")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the transformer")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("--memory-child", dest="variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--measure-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = args.size or ("tiny" if args.quick else "mid")
    return args


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse(argv)
    with tempfile.TemporaryDirectory() as savedir:
        if args.variant is not None:
            print(json.dumps(memory_child(args, savedir)))
            return 0
        out: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "variant"}}
        sections = {"anatomy": ("1. Step anatomy", section_anatomy), "memory": ("2. Peak memory", section_memory)}
        for name in args.only.split(","):
            title, fn = sections[name]
            table, numbers = fn(args, savedir)
            print(f"\n## {title}\n\n{table}\n", flush=True)
            out[name] = numbers
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
