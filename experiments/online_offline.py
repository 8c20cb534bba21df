"""Claim 4 (online beats offline): the same budget of reward evaluations spent online (the policy generates
new samples every epoch from the model being trained) versus offline (all samples drawn once from the
reference, weighted once, and reused for the whole run), on digits -> even.

    .venv/bin/python experiments/online_offline.py [--epochs 12] [--out runs/online_offline] [--set KEY=VALUE ...]

Both runs: the built-in ``digits-even`` settings, the same number of gradient steps and of reward evaluations
(online: ``buffer_size`` per epoch x epochs; offline: one buffer of that total size, never refreshed).
Writes docs/images/online_offline.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import Clock, eval_rows, image_strip, markdown, plot_epochs, run_parser

from orwcfm.config import finetune_config
from orwcfm.finetune.run import run_finetune

KEYS = ("target_fraction", "gold_target_fraction", "diversity", "w2_to_reference")


def main() -> None:
    parser = run_parser(__doc__, out="runs/online_offline")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    clock = Clock()

    base = finetune_config(config_file="digits-even", overrides=[*args.overrides, f"epochs={args.epochs}"])
    budget = base.buffer_size * args.epochs
    total_steps = args.epochs * base.steps_per_epoch
    modes = {
        "online": [],  # a fresh buffer of buffer_size policy samples every epoch
        "offline": [f"buffer_size={budget}", f"refresh_every={total_steps + 1}"],  # one buffer, from the reference
    }
    rows, summaries = {}, {}
    for mode, extra in modes.items():
        cfg = finetune_config(config_file="digits-even", savedir=args.out, run_name=mode,
                              overrides=[*args.overrides, f"epochs={args.epochs}", *extra])
        summaries[mode] = run_finetune(cfg, cache=args.cache, progress=False)
        rows[mode] = eval_rows(Path(args.out) / mode)

    print(f"\nbudget: {budget} reward evaluations and {total_steps} gradient steps each\n")
    table = []
    for mode, s in summaries.items():
        last = rows[mode][-1]
        table.append([mode, s.reward_evaluations, s.steps, s.target_fraction_after, last.get("gold_target_fraction"),
                      s.diversity_after, last.get("w2_to_reference"), f"{s.wall_seconds:.0f}"])
    print(markdown(["mode", "reward evaluations", "steps", "target fraction", "gold target fraction", "diversity",
                    "W2 to reference", "wall s"], table))
    print("\nper epoch (target fraction): ")
    print(markdown(["epoch", *modes], [[i, *(rows[m][i]["target_fraction"] for m in modes)] for i in range(args.epochs + 1)]))

    images = Path(args.images)
    plot_epochs(rows, KEYS, images / "online_offline.png", title=f"digits -> even, {budget} reward evaluations each")
    image_strip([Path(args.out) / m / "samples" / f"epoch_{args.epochs:03d}.png" for m in modes], list(modes),
                images / "online_offline_samples.png")
    Path(args.out, "online_offline.json").write_text(json.dumps(rows, indent=1))
    print(f"\nfigures: {images / 'online_offline.png'}; ran in {clock}")


if __name__ == "__main__":
    main()
