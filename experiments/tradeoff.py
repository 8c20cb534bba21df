"""Claim 3 (trade-off): on digits -> even, reward falls and diversity rises as alpha (the W2 coefficient) grows;
raising tau (the temperature) does the opposite.

    .venv/bin/python experiments/tradeoff.py --which alpha [--values 0 0.05 0.3 1 3] [--out runs/tradeoff]
    .venv/bin/python experiments/tradeoff.py --which tau   [--values 0.5 1 2 4]

Each is an ``orwcfm sweep`` of the built-in ``digits-even`` task over one key (the other at its preset value:
alpha 0.05, tau 2), resumable like the command. Prints the table, whether each column is monotone, and writes
docs/images/tradeoff_<which>.png. The same table comes from
``orwcfm sweep --config digits-even --grid w2_coefficient=0,0.05,0.3,1,3 --out runs/tradeoff/alpha``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common import Clock, markdown, run_parser

from orwcfm.sweep import plan_sweep, run_sweep

KEYS = {"alpha": "w2_coefficient", "tau": "temperature"}
DEFAULTS = {"alpha": [0.0, 0.05, 0.3, 1.0, 3.0], "tau": [0.5, 1.0, 2.0, 4.0]}
COLUMNS = ("target_fraction", "reward_mean", "gold_target_fraction", "diversity", "vendi", "class_entropy", "w2_to_reference")


def monotone(values: list[float]) -> str:
    up = all(b >= a for a, b in zip(values, values[1:]))
    down = all(b <= a for a, b in zip(values, values[1:]))
    return "rising" if up else "falling" if down else "not monotone"


def main() -> None:
    parser = run_parser(__doc__, out="runs/tradeoff")
    parser.add_argument("--which", choices=KEYS, required=True)
    parser.add_argument("--values", type=float, nargs="+")
    args = parser.parse_args()
    clock = Clock()

    key, values = KEYS[args.which], args.values or DEFAULTS[args.which]
    grid = {key: values}
    out = Path(args.out) / args.which
    cells = plan_sweep("digits-even", grid, out, args.overrides)
    result = run_sweep(cells, out, grid=grid, config="digits-even", overrides=args.overrides, cache=args.cache, progress=False)

    rows = result.rows
    print(f"\n{args.which} sweep ({key} = {values}); reference: target fraction {result.reference['target_fraction']:.3f}, "
          f"diversity {result.reference['diversity']:.3f}\n")
    print(markdown([args.which, *COLUMNS, "wall s"],
                   [[r[key], *(r.get(c) for c in COLUMNS), f"{r['wall_seconds']:.0f}"] for r in rows]))
    print("\nas " + args.which + " grows: " + "; ".join(f"{c} {monotone([r[c] for r in rows])}" for c in COLUMNS if c in rows[0]))
    Path(args.images).mkdir(parents=True, exist_ok=True)
    if result.plot_path is not None:
        shutil.copy(result.plot_path, Path(args.images) / f"tradeoff_{args.which}.png")
    print(f"\nsweep folder {out}; figure {Path(args.images) / f'tradeoff_{args.which}.png'}; ran in {clock}")


if __name__ == "__main__":
    main()
