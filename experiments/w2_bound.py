"""Claim 6 (the W2 bound): the loss's W2 term tracks how far the fine-tuned model moves from the reference.

    .venv/bin/python experiments/w2_bound.py [--alphas 0.1 1] [--seeds 0 1 2] [--epochs 10] [--out runs/w2_bound]

Toy task: the built-in ``toy-2d`` (8 Gaussians reference, reward -||x - (5, 0)||). At the end of every epoch it
compares, in squared Euclidean units:
  * loss W2 term: mean ||v_theta - v_ref||^2 over the epoch's last logged training steps (the loss averages over
    dimensions; multiplied here by D = 2), on interpolants between noise and policy samples;
  * bound integral: ∫_0^1 E||v_theta(t, X_t) - v_ref(t, X_t)||^2 dt along the model's own ODE paths X_t;
  * coupled: E||X_1 - Y_1||^2, model and reference integrated from the same noise (a coupling, so >= W2^2);
  * empirical W2^2: the exact optimal-transport distance between 2000 model and 2000 reference samples.
Theory: W2^2 <= coupled <= e^{2L} * integral (L: Lipschitz constant of v_ref). Writes docs/images/w2_bound.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from common import Clock, eval_rows, fmt_ci, markdown, metric_rows, run_parser

from orwcfm.config import finetune_config
from orwcfm.finetune.run import run_finetune


def last_logged(run_dir: Path, key: str, steps_per_epoch: int, log_every: int) -> list[float]:
    """The training log value at the end of each epoch (each logged value averages the last log_every steps)."""
    values = {}
    for row in metric_rows(run_dir):
        if f"train/{key}" in row and row["step"] % steps_per_epoch == 0:
            values[row["step"] // steps_per_epoch] = row[f"train/{key}"]
    return [values[e] for e in sorted(values)]


def main() -> None:
    parser = run_parser(__doc__, out="runs/w2_bound")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    clock = Clock()

    from orwcfm.plotting import _pyplot, _save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(args.alphas), figsize=(4.6 * len(args.alphas), 3.6), dpi=120, squeeze=False)
    results: dict[str, dict[str, list]] = {}
    labels = ("loss W2 term (x D)", "bound integral along ODE", "coupled E|X1-Y1|^2", "empirical W2^2 (exact OT)")
    for ax, alpha in zip(axes[0], args.alphas):
        per_seed = {}
        for seed in args.seeds:
            name = f"alpha_{alpha:g}_seed_{seed}"
            cfg = finetune_config(config_file="toy-2d", savedir=args.out, run_name=name,
                                  overrides=[*args.overrides, f"w2_coefficient={alpha}", f"epochs={args.epochs}", f"seed={seed}"])
            run_finetune(cfg, cache=args.cache, progress=False)
            run = Path(args.out) / name
            dim = 2
            loss_term = [dim * v for v in last_logged(run, "w2", cfg.steps_per_epoch, cfg.log_every)]
            rows = eval_rows(run)[1:]  # epochs 1..N
            per_seed[seed] = [[e + 1, loss_term[e], r["w2_bound"], r["coupled_sq"], r["w2_to_reference"] ** 2,
                               r["w2_to_reference_floor"] ** 2, r["reward_mean"]] for e, r in enumerate(rows)]
        results[str(alpha)] = {str(k): v for k, v in per_seed.items()}
        table = [[e + 1, *(fmt_ci([per_seed[s][e][i] for s in args.seeds], 4) for i in range(1, 7))] for e in range(args.epochs)]
        print(f"\nalpha = {alpha:g} (tau {cfg.temperature:g}, weighting {cfg.weighting}), end of each epoch, squared Euclidean "
              f"units, mean ± 95 % t-interval over seeds {args.seeds}\n")
        print(markdown(["epoch", "loss W2 term", "bound integral", "coupled E\\|X1-Y1\\|^2", "empirical W2^2",
                        "W2^2 floor (two reference sets)", "reward mean"], table, 4))
        cells = [r for rs in per_seed.values() for r in rs]
        holds = sum(r[4] <= r[3] * 1.05 for r in cells)
        ratios = [r[4] / r[2] for r in cells]
        track = [abs(r[1] - r[2]) / r[2] for r in cells if r[0] > 1]
        print(f"empirical W2^2 <= coupled (5% sampling slack) in {holds}/{len(cells)} epochs x seeds; ratio empirical "
              f"W2^2 / bound integral: {min(ratios):.2f} .. {max(ratios):.2f}; |loss term - integral| / integral after "
              f"epoch 1: median {sorted(track)[len(track) // 2]:.2f}, largest {max(track):.2f}")
        for i, label in enumerate(labels, start=1):
            means = [sum(per_seed[s][e][i] for s in args.seeds) / len(args.seeds) for e in range(args.epochs)]
            ax.plot(range(1, args.epochs + 1), means, "o-", ms=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"alpha = {alpha:g} (mean of {len(args.seeds)} seeds)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("toy-2d: the W2 regulariser's terms against the measured distance to the reference", fontsize=9)
    images = Path(args.images)
    _save_figure(fig, images / "w2_bound.png")
    Path(args.out, "w2_bound.json").write_text(json.dumps(results, indent=1))
    print(f"\nfigure {images / 'w2_bound.png'}; ran in {clock}; e^2 = {math.e ** 2:.2f} (the factor for L = 1)")


if __name__ == "__main__":
    main()
