"""Claim 2 (collapse): without the W2 term (alpha = 0), online reward-weighted fine-tuning on digits -> even
drives diversity down epoch by epoch.

    .venv/bin/python experiments/collapse.py [--epochs 30] [--alphas 0] [--out runs/collapse] [--set KEY=VALUE ...]

Runs the built-in ``digits-even`` task (configs/finetune/digits-even.yaml) with each alpha for --epochs epochs and
prints, per epoch, the target fraction and four views of diversity: mean pairwise distance, Vendi score, the
entropy of the class histogram (log 10 = 2.303 for ten equal classes, log 5 = 1.609 for five) and the digits-FD to
the real digits. Writes docs/images/collapse.png (curves) and docs/images/collapse_samples.png (grids).
"""

from __future__ import annotations

import json
from pathlib import Path

from common import Clock, eval_rows, image_strip, markdown, plot_epochs, run_parser

from orwcfm.config import finetune_config
from orwcfm.finetune.run import run_finetune

KEYS = ("target_fraction", "diversity", "vendi", "class_entropy", "digits_fd_data")


def main() -> None:
    parser = run_parser(__doc__, out="runs/collapse")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0])
    args = parser.parse_args()
    clock = Clock()

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
