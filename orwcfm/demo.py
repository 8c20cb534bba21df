"""``orwcfm demo``: the built-in main job.

For now (until fine-tuning lands) it builds the digits reference: it pretrains the 8x8 digits flow and the
digits classifier (cached after the first run), draws 1000 samples, and checks them with the classifier:
the mean top-class probability and the share of each digit. It leaves ``samples.png`` and ``summary.json``
in the run folder and prints a small table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .assets import builtin_reference, digits_classifier, reference_config
from .checkpoint import load_checkpoint
from .metrics import classify, mean_pairwise_distance
from .plotting import save_image_grid
from .sampling import sample


def run_demo(out: Path, *, cache: str | Path | None = None, steps: int | None = None, progress: bool = True,
             num_samples: int = 1000) -> dict:
    """Run the demo into ``out``; return the summary that is also written to ``out/summary.json``."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    config = reference_config("digits", **({"steps": steps} if steps else {}))
    classifier = digits_classifier(cache, progress=progress)
    reference = load_checkpoint(builtin_reference("digits", cache, config=config, progress=progress))
    model = reference.build_model("ema")

    samples = sample(model, num_samples, tuple(reference.spec.event_shape), generator=torch.Generator().manual_seed(1234),
                     solver=config.sampling.solver, steps=config.sampling.steps, batch_size=500)
    report = classify(classifier.model, samples)
    save_image_grid(samples[:100], out / "samples.png", nrow=10)
    summary = {
        "reference_checkpoint": str(reference.path),
        "classifier_heldout_accuracy": classifier.heldout_accuracy,
        "num_samples": num_samples,
        "mean_max_prob": report.mean_max_prob,
        "class_fractions": report.class_fractions,
        "diversity": mean_pairwise_distance(samples),
        "wall_seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    print(f"\ndigits reference: {reference.path}")
    print(f"classifier held-out accuracy      {classifier.heldout_accuracy:.3f}")
    print(f"mean max-probability ({num_samples} samples) {report.mean_max_prob:.3f}   (bar: >= 0.85)")
    print("class share  " + "  ".join(f"{d}:{f:.1%}" for d, f in enumerate(report.class_fractions)) + "   (bar: 5%..15% each)")
    print(f"diversity (mean pairwise distance) {summary['diversity']:.3f}")
    print(f"samples: {out / 'samples.png'}   summary: {out / 'summary.json'}   ({summary['wall_seconds']:.0f} s)")
    return summary
