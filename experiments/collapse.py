"""Claim 2 (collapse): without the W2 term (alpha = 0), online reward-weighted fine-tuning on digits -> even
drives diversity down epoch by epoch.

    .venv/bin/python experiments/collapse.py [--epochs 30] [--alphas 0] [--out runs/collapse] [--set KEY=VALUE ...]
    .venv/bin/python experiments/collapse.py --sweep runs/tradeoff/alpha [--seeds 0 1 2]   # reads, runs nothing

Runs the built-in ``digits-even`` task (configs/finetune/digits-even.yaml) with each alpha for --epochs epochs and
prints, per epoch, the target fraction and four views of diversity: mean pairwise distance, Vendi score, the
entropy of the class histogram (log 10 = 2.303 for ten equal classes, log 5 = 1.609 for five) and the digits-FD to
the real digits. Writes docs/images/collapse.png (curves) and docs/images/collapse_samples.png (grids).
"""

from __future__ import annotations

import json
from pathlib import Path

from common import Clock, eval_rows, fmt_ci, image_strip, markdown, plot_epochs, run_parser

from orwcfm.config import finetune_config
from orwcfm.finetune.run import run_finetune

KEYS = ("target_fraction", "diversity", "vendi", "class_entropy", "digits_fd_data")
SEED_KEYS = ("target_fraction", "diversity", "vendi", "class_entropy", "digits_fd_target")


def from_sweep(sweep: Path, seeds: list[int], images: Path) -> None:
    """The alpha = 0 cells of an alpha-by-seed sweep (experiments/tradeoff.py): per-epoch means ± 95 % t-intervals
    over the seeds, and in how many seeds each diversity measure fell from every epoch to the next."""
    runs = {f"seed {s}": eval_rows(sweep / "cells" / f"w2_coefficient=0,seed={s}") for s in seeds}
    epochs = min(len(r) for r in runs.values())
    print(f"\nalpha = 0, seeds {seeds}: mean ± 95 % t-interval per epoch\n")
    print(markdown(["epoch", *SEED_KEYS], [[i, *(fmt_ci([r[i][k] for r in runs.values()]) for k in SEED_KEYS)]
                                           for i in range(epochs)]))
    for key in ("diversity", "vendi", "class_entropy"):
        falls = [sum(r[i + 1][key] < r[i][key] for i in range(epochs - 1)) for r in runs.values()]
        print(f"- {key}: fell in {', '.join(map(str, falls))} of {epochs - 1} epoch-to-epoch steps (by seed)")
    plot_epochs(runs, SEED_KEYS, images / "collapse.png", title="digits -> even, alpha = 0: per epoch, by seed")


def main() -> None:
    parser = run_parser(__doc__, out="runs/collapse")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0])
    parser.add_argument("--sweep", type=Path, help="read the alpha = 0 cells of this tradeoff sweep instead of running")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    clock = Clock()
    if args.sweep is not None:
        from_sweep(args.sweep, args.seeds, Path(args.images))
        return

    runs = {}
    for alpha in args.alphas:
        cfg = finetune_config(config_file="digits-even", savedir=args.out, run_name=f"alpha_{alpha:g}",
                              overrides=[*args.overrides, f"w2_coefficient={alpha}", f"epochs={args.epochs}"])
        run_finetune(cfg, cache=args.cache, progress=False)
        runs[f"alpha={alpha:g}"] = rows = eval_rows(Path(args.out) / f"alpha_{alpha:g}")
        print(f"\nalpha = {alpha:g}, tau = {cfg.temperature:g}, {args.epochs} epochs of {cfg.steps_per_epoch} steps\n")
        shown = [i for i in range(len(rows)) if i % max(1, args.epochs // 10) == 0 or i == len(rows) - 1]
        print(markdown(["epoch", *KEYS], [[i, *(rows[i][k] for k in KEYS)] for i in shown]))

    images = Path(args.images)
    plot_epochs(runs, KEYS, images / "collapse.png", title="digits -> even: diversity per epoch")
    first = Path(args.out) / f"alpha_{args.alphas[0]:g}" / "samples"
    epochs = [0, args.epochs // 3, 2 * args.epochs // 3, args.epochs]
    image_strip([first / f"epoch_{e:03d}.png" for e in epochs], [f"epoch {e}" for e in epochs], images / "collapse_samples.png")
    Path(args.out, "collapse.json").write_text(json.dumps(runs, indent=1))
    print(f"\nfigures: {images / 'collapse.png'}, {images / 'collapse_samples.png'}; ran in {clock}")


if __name__ == "__main__":
    main()
