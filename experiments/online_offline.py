"""Claim 4 (online beats offline): the same budget of reward evaluations spent online (the policy generates
new samples every epoch from the model being trained) versus offline (all samples drawn once from the
reference, weighted once, and reused for the whole run), on digits -> even.

    .venv/bin/python experiments/online_offline.py [--epochs 12] [--seeds 0 1 2] [--out runs/online_offline] [--set KEY=VALUE ...]

Both runs: the built-in ``digits-even`` settings, the same number of gradient steps and of reward evaluations
(online: ``buffer_size`` per epoch x epochs; offline: one buffer of that total size, never refreshed).
Writes docs/images/online_offline.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import Clock, eval_rows, fmt_ci, image_strip, markdown, plot_epochs, run_parser

from orwcfm.config import finetune_config
from orwcfm.finetune.run import run_finetune

KEYS = ("target_fraction", "gold_target_fraction", "diversity", "w2_to_reference")
COLUMNS = ("target_fraction", "gold_target_fraction", "reward_mean", "diversity", "class_entropy", "w2_to_reference",
           "digits_fd_target")


def main() -> None:
    parser = run_parser(__doc__, out="runs/online_offline")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    clock = Clock()

    base = finetune_config(config_file="digits-even", overrides=[*args.overrides, f"epochs={args.epochs}"])
    budget = base.buffer_size * args.epochs
    total_steps = args.epochs * base.steps_per_epoch
    modes = {
        "online": [],  # a fresh buffer of buffer_size policy samples every epoch
        "offline": [f"buffer_size={budget}", "refresh=offline"],  # one buffer, from the reference
    }
    rows: dict[str, dict[int, list]] = {m: {} for m in modes}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    evaluations: dict[str, int] = {}
    for seed in args.seeds:  # seeds outermost, modes interleaved: machine drift hits both alike
        for mode, extra in modes.items():
            name = f"{mode}_seed_{seed}"
            cfg = finetune_config(config_file="digits-even", savedir=args.out, run_name=name,
                                  overrides=[*args.overrides, f"epochs={args.epochs}", f"seed={seed}", *extra])
            summary = run_finetune(cfg, cache=args.cache, progress=False)
            rows[mode][seed] = eval_rows(Path(args.out) / name)
            walls[mode].append(summary.wall_seconds)
            evaluations[mode] = summary.reward_evaluations
            print(f"{name}: target fraction {summary.target_fraction_after:.3f} ({summary.wall_seconds:.0f} s)", flush=True)

    print(f"\nbudget: {budget} reward evaluations and {total_steps} gradient steps each; seeds {args.seeds}; "
          "mean ± 95 % t-interval over seeds\n")
    cols = [c for c in COLUMNS if all(c in r[-1] for m in modes for r in rows[m].values())]
    print(markdown(["mode", "reward evaluations", *cols, "wall s (mean)"],
                   [[m, evaluations[m], *(fmt_ci([r[-1][c] for r in rows[m].values()]) for c in cols),
                     f"{sum(walls[m]) / len(walls[m]):.0f}"] for m in modes]))
    diffs = [rows["online"][s][-1]["target_fraction"] - rows["offline"][s][-1]["target_fraction"] for s in args.seeds]
    gold = [rows["online"][s][-1]["gold_target_fraction"] - rows["offline"][s][-1]["gold_target_fraction"] for s in args.seeds]
    print(f"\nonline minus offline, paired by seed: target fraction {fmt_ci(diffs)}, gold {fmt_ci(gold)} "
          f"(per seed: {', '.join(f'{d:+.3f}' for d in diffs)})")
    print("\nper epoch (target fraction, mean over seeds):")
    print(markdown(["epoch", *modes], [[i, *(fmt_ci([r[i]["target_fraction"] for r in rows[m].values()]) for m in modes)]
                                       for i in range(args.epochs + 1)]))

    images = Path(args.images)
    first = args.seeds[0]
    plot_epochs({f"{m} seed {s}": r for m in modes for s, r in rows[m].items()}, KEYS, images / "online_offline.png",
                title=f"digits -> even, {budget} reward evaluations each, seeds {args.seeds}")
    image_strip([Path(args.out) / f"{m}_seed_{first}" / "samples" / f"epoch_{args.epochs:03d}.png" for m in modes],
                [f"{m} (seed {first})" for m in modes], images / "online_offline_samples.png")
    Path(args.out, "online_offline.json").write_text(json.dumps({m: {str(s): r for s, r in rows[m].items()} for m in modes}, indent=1))
    print(f"\nfigures: {images / 'online_offline.png'}; ran in {clock}")


if __name__ == "__main__":
    main()
