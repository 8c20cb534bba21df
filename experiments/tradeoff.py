"""Claim 3 (trade-off): on digits -> even, reward falls and diversity rises as alpha (the W2 coefficient) grows;
raising tau (the temperature) does the opposite.

    .venv/bin/python experiments/tradeoff.py --which alpha [--values ...] [--seeds 0 1 2] [--out runs/tradeoff]
    .venv/bin/python experiments/tradeoff.py --which tau   [--values ...]

Each is an ``orwcfm sweep`` of the built-in ``digits-even`` task over one key and the seeds (the other key at its
preset value), resumable like the command. Prints the table of means with 95 % t-intervals over the seeds, whether
each column's means are strictly monotone, non-strictly monotone or not, and whether neighbouring intervals
overlap, and writes docs/images/tradeoff_<which>.png (the sweep's plot: one point per cell and seed). The same
cells come from ``orwcfm sweep --config digits-even --grid w2_coefficient=... --grid seed=0,1,2``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common import Clock, fmt_ci, markdown, mean_ci, run_parser

from orwcfm.sweep import plan_sweep, run_sweep

KEYS = {"alpha": "w2_coefficient", "tau": "temperature"}
DEFAULTS = {"alpha": [0.0, 0.1, 1.0, 3.0], "tau": [1.0, 2.0, 4.0]}
COLUMNS = ("target_fraction", "reward_mean", "gold_target_fraction", "diversity", "vendi", "class_entropy",
           "w2_to_reference", "digits_fd_target")


def monotone(values: list[float]) -> str:
    """``rising`` / ``falling`` (strictly), ``non-decreasing`` / ``non-increasing`` (with ties), else ``not monotone``."""
    pairs = list(zip(values, values[1:]))
    if all(b > a for a, b in pairs):
        return "rising"
    if all(b < a for a, b in pairs):
        return "falling"
    if all(b >= a for a, b in pairs):
        return "non-decreasing"
    if all(b <= a for a, b in pairs):
        return "non-increasing"
    return "not monotone"


def separated(cis: list[tuple[float, float]]) -> str:
    """How many neighbouring pairs of 95 % intervals do not overlap (a monotone trend seeds cannot explain)."""
    apart = sum(abs(m2 - m1) > h1 + h2 for (m1, h1), (m2, h2) in zip(cis, cis[1:]))
    return f"{apart}/{len(cis) - 1} neighbours apart"


def main() -> None:
    parser = run_parser(__doc__, out="runs/tradeoff")
    parser.add_argument("--which", choices=KEYS, required=True)
    parser.add_argument("--values", type=float, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    clock = Clock()

    key, values = KEYS[args.which], args.values or DEFAULTS[args.which]
    grid = {key: values, "seed": args.seeds}
    out = Path(args.out) / args.which
    cells = plan_sweep("digits-even", grid, out, args.overrides)
    result = run_sweep(cells, out, grid=grid, config="digits-even", overrides=args.overrides, cache=args.cache, progress=False)

    by_value = {v: [r for r in result.rows if float(r[key]) == float(v)] for v in values}
    by_value = {v: rows for v, rows in by_value.items() if rows}  # values whose cells have not run yet are left out
    cols = [c for c in COLUMNS if all(c in r for r in result.rows)]
    print(f"\n{args.which} sweep ({key} = {values}, seeds {args.seeds}); mean ± 95 % t-interval over seeds; reference: "
          f"target fraction {result.reference['target_fraction']:.3f}, diversity {result.reference['diversity']:.3f}, "
          f"W2 floor {result.reference.get('w2_to_reference_floor', float('nan')):.3f}\n")
    print(markdown([args.which, *cols, "wall s (mean)"],
                   [[v, *(fmt_ci([r[c] for r in rows]) for c in cols),
                     f"{sum(r['wall_seconds'] for r in rows) / len(rows):.0f}"] for v, rows in by_value.items()]))
    print(f"\nas {args.which} grows (means; strict unless said):")
    for c in cols:
        cis = [mean_ci([r[c] for r in rows]) for rows in by_value.values()]
        print(f"- {c}: {monotone([m for m, _ in cis])}; {separated(cis)}")
    Path(args.images).mkdir(parents=True, exist_ok=True)
    if result.plot_path is not None:
        shutil.copy(result.plot_path, Path(args.images) / f"tradeoff_{args.which}.png")
    print(f"\nsweep folder {out}; figure {Path(args.images) / f'tradeoff_{args.which}.png'}; ran in {clock}")


if __name__ == "__main__":
    main()
