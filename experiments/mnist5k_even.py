"""The paper's MNIST experiment at its real size: 28x28 real MNIST digits (``mnist5k``) fine-tuned toward even digits
with the paper's weights exp(tau r), alpha in {0, 0.3, 1}.

    .venv/bin/python experiments/mnist5k_even.py [--alphas 0 0.3 1] [--seeds 0] [--out runs/mnist5k] [--set KEY=VALUE ...]

Cells already finished in --out (their summary.json exists) are read, not rerun: adding seeds runs only the new ones.

The built-in ``mnist5k-even`` task (configs/finetune/mnist5k-even.yaml): the ``builtin:mnist5k`` reference (pretrained
and cached on first use, ~25 min on 2 CPU cores), the reward P(even | x) of a CNN trained on one half of the 5000 digits,
the gold MLP trained on the other half. Prints, per alpha, the final metrics and class histogram and the reward per
epoch; writes docs/images/mnist5k_even.png (curves) and docs/images/mnist5k_even_samples.png (grids).
For scale, the paper's project page shows the reward rising from about 0.43 to about 1.0 within 10k steps for
alpha = 0, 0.3 and 0.8, and alpha = 0 ending with every sample a "6" (read off a figure).
"""

from __future__ import annotations

import json
from pathlib import Path

from common import Clock, eval_rows, fmt_ci, image_strip, markdown, plot_epochs, run_parser

from orwcfm.config import finetune_config
from orwcfm.finetune.run import run_finetune

KEYS = ("reward_mean", "target_fraction", "gold_target_fraction", "diversity", "class_entropy", "digits_fd_target")
COLUMNS = ("reward_mean", "target_fraction", "gold_target_fraction", "diversity", "vendi", "class_entropy",
           "w2_to_reference", "w2_to_reference_floor", "digits_fd_target")


def main() -> None:
    parser = run_parser(__doc__, out="runs/mnist5k")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    clock = Clock()

    runs, finals, histograms, walls = {}, {}, {}, {}
    for alpha in args.alphas:
        for seed in args.seeds:
            name = f"alpha_{alpha:g}_seed_{seed}"
            cfg = finetune_config(config_file="mnist5k-even", savedir=args.out, run_name=name,
                                  overrides=[*args.overrides, f"w2_coefficient={alpha}", f"seed={seed}"])
            done = Path(args.out) / name / "summary.json"
            if done.exists():  # a finished cell is reused (rerun with more seeds, or after an interruption)
                summary = json.loads(done.read_text())
            else:
                summary = run_finetune(cfg, cache=args.cache, progress=False).to_dict()
            rows = eval_rows(Path(args.out) / name)
            runs[f"alpha={alpha:g} seed={seed}"] = rows
            finals.setdefault(alpha, []).append(rows[-1])
            histograms.setdefault(alpha, []).append(summary["class_histogram_after"])
            walls.setdefault(alpha, []).append(summary["wall_seconds"])
            if alpha == args.alphas[0] and seed == args.seeds[0]:
                reference = rows[0]

    print(f"\nmnist5k -> even, tau = {cfg.temperature:g}, {cfg.epochs} epochs of {cfg.steps_per_epoch} steps "
          f"(batch {cfg.batch_size}), seeds {args.seeds} (mean ± 95 % t-interval where more than one)")
    print("reference: " + ", ".join(f"{k} {reference[k]:.3f}" for k in COLUMNS if k in reference) + "\n")
    print(markdown(["alpha", *COLUMNS, "wall s"],
                   [[a, *(fmt_ci([r[c] for r in rs]) for c in COLUMNS), f"{sum(walls[a]) / len(walls[a]):.0f}"]
                    for a, rs in finals.items()]))
    print("\nclass histogram after (share of each digit 0..9, seed by seed):")
    for alpha, hs in histograms.items():
        for seed, h in zip(args.seeds, hs):
            print(f"- alpha {alpha:g}, seed {seed}: " + " ".join(f"{i}:{p:.0%}" for i, p in enumerate(h)))
    print("\nreward mean per epoch:")
    names = list(runs)
    epochs = min(len(r) for r in runs.values())
    print(markdown(["epoch", *names], [[i, *(runs[n][i]["reward_mean"] for n in names)] for i in range(epochs)]))

    images = Path(args.images)
    plot_epochs(runs, KEYS, images / "mnist5k_even.png", title=f"mnist5k -> even, tau = {cfg.temperature:g}")
    last = cfg.epochs
    strip = [Path(args.out) / f"alpha_{args.alphas[0]:g}_seed_{args.seeds[0]}" / "samples" / "epoch_000.png"]
    strip += [Path(args.out) / f"alpha_{a:g}_seed_{args.seeds[0]}" / "samples" / f"epoch_{last:03d}.png" for a in args.alphas]
    image_strip(strip, ["reference", *(f"alpha {a:g}" for a in args.alphas)], images / "mnist5k_even_samples.png")
    Path(args.out, "mnist5k_even.json").write_text(json.dumps({"runs": runs, "histograms": {str(a): h for a, h in histograms.items()}}, indent=1))
    print(f"\nfigures: {images / 'mnist5k_even.png'}, {images / 'mnist5k_even_samples.png'}; ran in {clock}")


if __name__ == "__main__":
    main()
