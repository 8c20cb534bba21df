"""Digits -> even: the demo task at several W2 coefficients (alpha), side by side.

    .venv/bin/python experiments/digits_even_alpha.py [--alphas 0 0.1 0.3 1] [--out runs/alpha] [--set KEY=VALUE ...]

Runs the built-in ``digits-even`` task once per alpha (everything else as in configs/finetune/digits-even.yaml,
unless --set says otherwise) and prints a Markdown table of target fraction, the share of each even digit and
diversity. This is what docs/results.md reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orwcfm.config import finetune_config
from orwcfm.finetune.run import run_finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0])
    parser.add_argument("--out", default="runs/alpha")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[])
    args = parser.parse_args()

    rows = []
    for alpha in args.alphas:
        cfg = finetune_config(config_file="digits-even", overrides=[*args.overrides, f"w2_coefficient={alpha}"],
                              savedir=args.out, run_name=f"alpha_{alpha:g}")
        s = run_finetune(cfg, cache=args.cache, progress=False)
        rows.append((alpha, s))
        print(f"alpha={alpha:g}: target fraction {s.target_fraction_after:.3f}, diversity {s.diversity_after:.3f}", flush=True)

    first = rows[0][1]
    print(f"\nreference: target fraction {first.target_fraction_before:.3f}, diversity {first.diversity_before:.3f}\n")
    print("| alpha | target fraction | 0 | 2 | 4 | 6 | 8 | diversity (ratio to reference) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for alpha, s in rows:
        h = s.class_histogram_after
        evens = " | ".join(f"{h[d]:.0%}" for d in (0, 2, 4, 6, 8))
        print(f"| {alpha:g} | {s.target_fraction_after:.3f} | {evens} | {s.diversity_after:.3f} "
              f"({s.diversity_after / s.diversity_before:.0%}) | {s.wall_seconds:.0f} |")
    print(f"\nrun folders under {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
