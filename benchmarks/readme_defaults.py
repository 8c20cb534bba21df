"""Benchmark: the README API's defaults against the published scheme, on digits -> even with a torchcfm UNet.

    .venv/bin/python benchmarks/readme_defaults.py                 # 2 seeds, about 20 min on 2 CPU cores
    .venv/bin/python benchmarks/readme_defaults.py --steps 10 --seeds 1 --pretrain-steps 50   # a smoke run

The user's path of the public README, on a task this CPU can run: a torchcfm-style UNet (orwcfm's ``adm-unet``,
state-dict compatible with ``UNetModelWrapper``; one level of 32 channels at 8x8, 162k parameters) pretrained on
scikit-learn's digits, saved as a torchcfm checkpoint (``net_model`` / ``ema_model`` / ``optim`` / ``sched`` /
``step``) and loaded with ``trainer.load_pretrained(path)``; then ``ORWCFMTrainer(model, config)`` with the README's
config keys and the paper's weights (``weighting: paper``), the digits-even preset's alpha, tau and learning rate,
batch 64, the policy refreshed once per epoch. Every variant takes the same gradient steps; they differ only in how
policy samples are produced:

- ``published``: a fresh batch of 64 and 100 Euler steps per gradient step (``buffer_size: null``);
- ``default``: nothing set, i.e. ``buffer_size: auto`` (64 x ceil(50 / 4) = 832 samples per 50-step refresh, each
  feeding about 4 steps) and the midpoint x 10 sampler;
- the guard: the same sampler with each sample feeding 1 (a fresh batch every step), 2, 8 and 16 steps.

Training time is ``trainer.run_steps`` alone (no evaluation), the variants advancing one epoch each in turn so that
the machine's drift slows all alike. Each model is then measured with one instrument: 1000 samples from the same
fixed noise, midpoint x 10 in float32: the mean reward (log p(even) under the digits classifier, the training
reward), the fraction of even digits, and the diversity (mean pairwise distance). Reward gain = mean reward after
minus the reference's; the bars: the default's speed-up >= 5x, its reward gain >= 90 % of the published scheme's,
its diversity within 5 % of it (means over the seeds). Prints a Markdown table (``--json`` also writes the rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from orwcfm import ORWCFMTrainer
from orwcfm.assets import cache_dir, digits_classifier
from orwcfm.checkpoint import load_checkpoint
from orwcfm.config import pretrain_config
from orwcfm.metrics import mean_pairwise_distance
from orwcfm.models.adm import ADMUNet
from orwcfm.rewards import load_reward
from orwcfm.sampling import generate
from orwcfm.train import pretrain

UNET = {"num_channels": 32, "num_res_blocks": 1, "channel_mult": [1], "attention_resolutions": "", "num_heads": 1,
        "num_head_channels": -1, "dropout": 0.1}
SHAPE = (1, 8, 8)
BATCH, STEPS_PER_EPOCH = 64, 50
# The README's config keys; alpha, tau, learning rate and OT pairing are the digits-even preset's.
README_CONFIG = {"learning_rate": 5e-4, "warmup_steps": 0, "w2_coefficient": 0.1, "temperature": 2.0,
                 "grad_clip": 1.0, "batch_size": BATCH, "use_wandb": False, "weighting": "paper", "coupling": "ot",
                 "reward": "digits-even", "reward_options": {"log_prob": True}, "steps_per_epoch": STEPS_PER_EPOCH,
                 "log_every": 10 ** 6, "keep_checkpoints": 1, "judge": "none"}
MIDPOINT = {"solver": "midpoint", "steps": 10}
VARIANTS: dict[str, dict[str, Any]] = {
    "published: fresh batch, euler x 100": {"buffer_size": None, "sampling": {"solver": "euler", "steps": 100}},
    "default: buffer auto (reuse 3.85), midpoint x 10": {},
    "reuse 1 (fresh batch), midpoint x 10": {"buffer_size": None, "sampling": MIDPOINT},
    "reuse 2, midpoint x 10": {"buffer_size": BATCH * STEPS_PER_EPOCH // 2, "sampling": MIDPOINT},
    "reuse 8, midpoint x 10": {"buffer_size": BATCH * STEPS_PER_EPOCH // 8, "sampling": MIDPOINT},
    "reuse 16, midpoint x 10": {"buffer_size": BATCH * STEPS_PER_EPOCH // 16, "sampling": MIDPOINT},
}
PUBLISHED, DEFAULT = list(VARIANTS)[:2]


@dataclass
class Row:
    variant: str
    seed: int
    train_seconds: float
    reward: float
    reward_gain: float
    even_fraction: float
    diversity: float
    reward_evaluations: int


def torchcfm_reference(cache: Path, steps: int) -> Path:
    """A torchcfm-format checkpoint of the UNet pretrained on digits (cached: pretrained once per ``steps``)."""
    out = cache / f"bench-digits-adm-{steps}.pt"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pretrain_config("digits", model={"kind": "adm-unet", "options": UNET}, steps=steps,
                              checkpoint_every=steps, num_samples=16, warmup_steps=min(200, steps // 10))
        ckpt = load_checkpoint(pretrain(cfg, tmp, progress=True).checkpoint)
        raw, ema = ckpt.build_model("raw").state_dict(), ckpt.build_model("ema").state_dict()
    torch.save({"net_model": raw, "ema_model": ema, "optim": {}, "sched": {}, "step": steps}, out)
    return out


def measure(model: torch.nn.Module, reward: Any, even: Any, noise: torch.Tensor) -> tuple[float, float, float]:
    """(mean reward, even fraction, diversity) of the model's samples from ``noise``, midpoint x 10, float32."""
    x = generate(model.eval(), noise, solver="midpoint", steps=10, batch_size=500)
    return reward(x).mean().item(), even(x).mean().item(), mean_pairwise_distance(x)


def run(args: argparse.Namespace) -> list[Row]:
    cache = cache_dir(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    digits_classifier(cache)  # built once, outside the timings
    ref_path = torchcfm_reference(cache, args.pretrain_steps)
    reward = load_reward("digits-even", cache=cache, log_prob=True)
    even = load_reward("digits-even", cache=cache, log_prob=False)
    noise = torch.randn((1000, *SHAPE), generator=torch.Generator().manual_seed(1234))
    reference = ADMUNet(SHAPE, **UNET)
    ref_trainer = ORWCFMTrainer(reference, {**README_CONFIG, "savedir": tempfile.mkdtemp()}, "cpu", progress=False)
    ref_trainer.load_pretrained(str(ref_path))
    ref_reward, ref_even, ref_div = measure(ref_trainer.model, reward, even, noise)
    print(f"reference: reward {ref_reward:.3f}, even fraction {ref_even:.3f}, diversity {ref_div:.3f}", flush=True)
    rows: list[Row] = []
    for seed in range(args.seeds):
        trainers: dict[str, ORWCFMTrainer] = {}
        seconds = {name: 0.0 for name in VARIANTS}
        for name, settings in VARIANTS.items():
            config = {**README_CONFIG, **settings, "seed": seed, "savedir": tempfile.mkdtemp()}
            trainer = ORWCFMTrainer(ADMUNet(SHAPE, **UNET), config, "cpu", progress=False)
            trainer.load_pretrained(str(ref_path))  # the README's call, on a torchcfm .pt file
            trainers[name] = trainer
        for epoch in range(args.epochs):  # interleaved: each variant one epoch in turn
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.run_steps(args.steps)
                seconds[name] += time.perf_counter() - start
            print(f"seed {seed} epoch {epoch + 1}: " + ", ".join(f"{n.split(':')[0].split(',')[0]} {s:.0f}s"
                                                              for n, s in seconds.items()), flush=True)
        for name, trainer in trainers.items():
            r, e, d = measure(trainer.model, reward, even, noise)
            rows.append(Row(name, seed, seconds[name], r, r - ref_reward, e, d, trainer.reward_evaluations))
    return rows


def table(rows: list[Row]) -> str:
    def mean(name: str, key: str) -> float:
        return statistics.fmean(getattr(r, key) for r in rows if r.variant == name)

    def spread(name: str, key: str, fmt: str) -> str:
        values = [getattr(r, key) for r in rows if r.variant == name]
        return " / ".join(format(v, fmt) for v in values)

    pub_time, pub_gain, pub_div = (mean(PUBLISHED, k) for k in ("train_seconds", "reward_gain", "diversity"))
    lines = ["| variant | train time (s), per seed | speed-up vs published | reward gain, per seed | gain vs published "
             "| even fraction | diversity, per seed | diversity vs published | reward evaluations |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r.variant for r in rows):
        speed = pub_time / mean(name, "train_seconds")
        gain = mean(name, "reward_gain") / pub_gain if pub_gain else float("nan")
        div = mean(name, "diversity") / pub_div - 1
        lines.append(f"| {name} | {spread(name, 'train_seconds', '.1f')} | {speed:.2f}x | "
                     f"{spread(name, 'reward_gain', '.3f')} | {100 * gain:.0f} % | {mean(name, 'even_fraction'):.3f} | "
                     f"{spread(name, 'diversity', '.3f')} | {100 * div:+.1f} % | {mean(name, 'reward_evaluations'):.0f} |")
    d_speed = pub_time / mean(DEFAULT, "train_seconds")
    d_gain = mean(DEFAULT, "reward_gain") / pub_gain if pub_gain else float("nan")
    d_div = abs(mean(DEFAULT, "diversity") / pub_div - 1)
    verdict = (f"\ndefault against published: {d_speed:.2f}x faster (bar 5x: {'PASS' if d_speed >= 5 else 'FAIL'}), "
               f"{100 * d_gain:.0f} % of its reward gain (bar 90 %: {'PASS' if d_gain >= 0.9 else 'FAIL'}), diversity "
               f"within {100 * d_div:.1f} % (bar 5 %: {'PASS' if d_div <= 0.05 else 'FAIL'})")
    return "\n".join(lines) + verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of 50 steps (one refresh each)")
    parser.add_argument("--steps", type=int, default=STEPS_PER_EPOCH, help="gradient steps per epoch")
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    README_CONFIG["steps_per_epoch"] = args.steps
    rows = run(args)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
