"""Prompted digits (the CPU-sized analogue of the paper's text-image alignment): fine-tune a class-conditional digits
reference toward the prompted digit over several seeds, and print the before/after table of docs/results.md.

    .venv/bin/python experiments/prompted_digits.py [--config digits-align|mnist5k-align] [--seeds 0 1 2]
                                                    [--out runs/prompted] [--set KEY=VALUE ...]

Cells already finished in --out (their summary.json exists) are read, not rerun: adding seeds runs only the new ones.
``digits-align``: 8x8 digits, ``builtin:digits-cond``; ``mnist5k-align``: 28x28 real MNIST, ``builtin:mnist5k-cond``
(needs ``pip install 'orwcfm[mnist5k]'``; its reference is pretrained on first use, ~12-20 min on 2 CPU cores).
Bars of the issue: alignment >= 0.98 at guidance 1, diversity within a prompt >= 80 % of the reference's, per seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import Clock, eval_rows, fmt_ci, markdown, run_parser

from orwcfm.config import finetune_config
from orwcfm.finetune.run import run_finetune

ROWS = (("alignment", "alignment (reward classifier: sample in the prompted class)"),
        ("gold_alignment", "alignment, gold classifier (held out)"),
        ("diversity_per_condition", "diversity within a prompt (mean pairwise distance)"),
        ("vendi", "Vendi score (all samples)"),
        ("w2_to_reference", "empirical W2 to the reference"),
        ("digits_fd_data", "digits-FD to the data (all classes)"))
ALIGNMENT_BAR, DIVERSITY_BAR = 0.98, 0.80


def main() -> None:
    parser = run_parser(__doc__, out="runs/prompted")
    parser.add_argument("--config", default="digits-align", help="the task preset (digits-align or mnist5k-align)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    clock = Clock()

    before, after, walls = [], [], []
    for seed in args.seeds:
        name = f"{args.config}_seed_{seed}"
        cfg = finetune_config(config_file=args.config, savedir=args.out, run_name=name,
                              overrides=[*args.overrides, f"seed={seed}"])
        done = Path(args.out) / name / "summary.json"
        summary = json.loads(done.read_text()) if done.exists() else run_finetune(cfg, cache=args.cache,
                                                                                   progress=False).to_dict()
        rows = eval_rows(Path(args.out) / name)
        before.append(rows[0])
        after.append(rows[-1])
        walls.append(summary["wall_seconds"])

    ratios = [a["diversity_per_condition"] / b["diversity_per_condition"] for a, b in zip(after, before)]
    table = []
    for key, label in ROWS:
        if key not in after[0]:
            continue
        values = [r[key] for r in after]
        seeds = f" ({', '.join(f'{v:.3f}' for v in values)})" if key == "alignment" and len(values) > 1 else ""
        table.append([label, fmt_ci([r[key] for r in before]), fmt_ci(values) + seeds])
        if key == "diversity_per_condition":
            table.append(["... as a share of the reference's", "1",
                          fmt_ci(ratios) + (f" ({', '.join(f'{v:.3f}' for v in ratios)})" if len(ratios) > 1 else "")])
    floor = fmt_ci([r["w2_to_reference_floor"] for r in after]) if "w2_to_reference_floor" in after[0] else "n/a"
    print(f"\n{args.config}: {cfg.epochs} epochs of {cfg.steps_per_epoch} steps (batch {cfg.batch_size}, buffer "
          f"{cfg.buffer_size}), alpha {cfg.w2_coefficient:g}, tau {cfg.temperature:g}, evaluation {cfg.eval_samples} "
          f"samples at guidance {cfg.eval_sampling.guidance:g}; seeds {args.seeds} (mean ± 95 % t-interval)\n")
    print(markdown(["metric", "reference (before)", "after fine-tuning"], table))
    print(f"\nW2 floor of the reference at this sample size: {floor}; wall time a run: "
          f"{min(walls):.0f}-{max(walls):.0f} s")
    for seed, a, r in zip(args.seeds, after, ratios):
        ok = a["alignment"] >= ALIGNMENT_BAR and r >= DIVERSITY_BAR
        print(f"- seed {seed}: alignment {a['alignment']:.3f} (bar {ALIGNMENT_BAR}), diversity within a prompt "
              f"{r:.1%} of the reference's (bar {DIVERSITY_BAR:.0%}): {'PASS' if ok else 'FAIL'}")
    Path(args.out, f"{args.config}.json").write_text(json.dumps({"before": before, "after": after}, indent=1))
    print(f"ran in {clock}")


if __name__ == "__main__":
    main()
