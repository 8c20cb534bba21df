"""End to end: the README's main job builds a digits reference that meets its quality bar (slow: ~3 min)."""

import json

import pytest

from orwcfm.demo import run_demo


@pytest.mark.slow
def test_demo_reference_meets_the_quality_bar(tmp_path):
    summary = run_demo(tmp_path / "out", cache=tmp_path / "cache", progress=False)
    assert summary["classifier_heldout_accuracy"] >= 0.95
    # the classifier recognises the samples, and no digit is missing or dominant
    assert summary["mean_max_prob"] >= 0.85
    assert all(0.05 <= f <= 0.15 for f in summary["class_fractions"]), summary["class_fractions"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["num_samples"] == 1000
    assert (tmp_path / "out" / "samples.png").stat().st_size > 1000
    # a second run reuses both cached assets instead of training again
    again = run_demo(tmp_path / "out2", cache=tmp_path / "cache", progress=False)
    assert again["mean_max_prob"] == summary["mean_max_prob"]
    assert again["wall_seconds"] < summary["wall_seconds"] / 3
