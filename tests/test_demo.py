"""End to end (slow, a few minutes): the digits reference and the README's main job meet their quality bars.

Both tests share the session cache, so the digits reference is pretrained once.
"""

import json

import pytest
import torch

from orwcfm.assets import builtin_reference, digits_classifier
from orwcfm.checkpoint import load_checkpoint
from orwcfm.demo import run_demo
from orwcfm.metrics import classify
from orwcfm.sampling import sample


@pytest.mark.slow
def test_digits_reference_meets_the_quality_bar(orwcfm_cache):
    classifier = digits_classifier(orwcfm_cache)
    assert classifier.heldout_accuracy >= 0.95
    model = load_checkpoint(builtin_reference("digits", orwcfm_cache, progress=False)).build_model()
    x = sample(model, 1000, (1, 8, 8), generator=torch.Generator().manual_seed(1234), steps=100, batch_size=500)
    report = classify(classifier.model, x)
    # the classifier recognises the samples, and no digit is missing or dominant
    assert report.mean_max_prob >= 0.85
    assert all(0.05 <= f <= 0.15 for f in report.class_fractions), report.class_fractions


@pytest.mark.slow
def test_demo_finetunes_toward_even_digits_and_keeps_diversity(tmp_path, orwcfm_cache):
    summary = run_demo(tmp_path / "demo", cache=orwcfm_cache, progress=False)
    assert 0.35 <= summary["target_fraction_before"] <= 0.65
    assert summary["target_fraction_after"] >= 0.95
    hist = summary["class_histogram_after"]
    # no even digit is lost. Not ">= 10 %": the smallest even class is 5-11 % across seeds and machines (seed 0 gave
    # 11 % on one machine, 9 % on another with the same code and versions; docs/results.md), so 10 % is not a bar
    # this demo meets; collapse onto a few digits would put some even class near 0
    assert all(hist[d] >= 0.05 for d in (0, 2, 4, 6, 8)), hist
    assert summary["diversity_after"] >= 0.7 * summary["diversity_before"]
    run = tmp_path / "demo"
    assert json.loads((run / "summary.json").read_text()) == summary
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "samples/epoch_000.png"):
        assert (run / name).exists(), name
    assert load_checkpoint(run).meta["kind"] == "finetune"
