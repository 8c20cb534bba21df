"""Benchmark: pretraining the digits reference on this machine, and the quality bar it must meet.

    .venv/bin/python benchmarks/pretrain_digits.py [--threads 2] [--steps N]

Prints a table: wall time of the classifier and of pretraining (steps/s), and how the classifier reads 1000
samples of the pretrained model (mean top-class probability >= 0.85; every digit between 5 % and 15 %).
Nothing is cached: it always trains from scratch in a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from orwcfm.assets import digits_classifier, reference_config
from orwcfm.checkpoint import load_checkpoint
from orwcfm.metrics import classify, mean_pairwise_distance
from orwcfm.models import num_parameters
from orwcfm.sampling import sample
from orwcfm.train import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the digits preset)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        clf = digits_classifier(Path(tmp) / "cache")
        t_clf = time.perf_counter() - t0

        config = reference_config("digits", **({"steps": args.steps} if args.steps else {}))
        t0 = time.perf_counter()
        result = pretrain(config, Path(tmp) / "run", progress=False)
        t_pre = time.perf_counter() - t0

        model = load_checkpoint(result.checkpoint).build_model("ema")
        t0 = time.perf_counter()
        x = sample(model, 1000, (1, 8, 8), generator=torch.Generator().manual_seed(1234),
                   solver=config.sampling.solver, steps=config.sampling.steps, batch_size=500)
        t_sample = time.perf_counter() - t0
        report = classify(clf.model, x)

    fractions = report.class_fractions
    rows = [
        ("torch threads", f"{torch.get_num_threads()}", ""),
        ("classifier: training time", f"{t_clf:.1f} s", ""),
        ("classifier: held-out accuracy", f"{clf.heldout_accuracy:.3f}", ""),
        ("reference: parameters", f"{num_parameters(model):,}", ""),
        ("reference: pretraining time", f"{t_pre:.1f} s ({config.steps} steps, {config.steps / t_pre:.1f} steps/s)",
         "PASS" if t_pre <= 300 else "FAIL (bar: <= 300 s)"),
        ("sampling 1000 (euler x 100)", f"{t_sample:.1f} s", ""),
        ("mean max-probability", f"{report.mean_max_prob:.3f}", "PASS" if report.mean_max_prob >= 0.85 else "FAIL (bar: >= 0.85)"),
        ("class share min / max", f"{min(fractions):.1%} / {max(fractions):.1%}",
         "PASS" if 0.05 <= min(fractions) and max(fractions) <= 0.15 else "FAIL (bar: 5%..15%)"),
        ("class shares 0..9", " ".join(f"{f:.1%}" for f in fractions), ""),
        ("diversity (mean pairwise distance)", f"{mean_pairwise_distance(x):.3f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value | bar |\n|{'-' * (width + 2)}|---|---|")
    for name, value, verdict in rows:
        print(f"| {name.ljust(width)} | {value} | {verdict} |")


if __name__ == "__main__":
    main()
