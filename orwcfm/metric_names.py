"""One list of metric and setting names and the labels readers see (the summary table, the HTML report, sweeps).

>>> label("vendi"), label("some_new_metric"), short("w2_coefficient")
('Vendi score', 'some new metric', 'alpha')
"""

from __future__ import annotations

LABELS: dict[str, str] = {
    "reward_mean": "reward mean",
    "reward_std": "reward std",
    "target_fraction": "target fraction",
    "diversity": "diversity (mean pairwise distance)",
    "gold_target_fraction": "target fraction, gold classifier (held out)",
    "gold_class_entropy": "class entropy, gold classifier (nats)",
    "gold_reward_mean": "reward mean, gold classifier",
    "vendi": "Vendi score",
    "class_entropy": "class entropy (nats)",
    "w2_to_reference": "empirical W2 to reference (N-sample sets, same noise)",
    "w2_to_reference_floor": "its floor: empirical W2 between two independent reference N-sample sets",
    "w2_bound": "W2 bound (∫ E‖v − v_ref‖² dt)",
    "coupled_sq": "E‖X₁ − Y₁‖² (same noise)",
    "alignment": "alignment: samples in the prompted class",
    "gold_alignment": "alignment, gold classifier (held out)",
    "diversity_per_condition": "diversity within a prompt (mean pairwise distance)",
    "clip_diversity_per_prompt": "diversity within a prompt (CLIP image features, mean 1 − cos)",
    "digits_fd_data": "digits-FD to the data (all classes)",
    "digits_fd_target": "digits-FD to the target classes' data",
    "digits_fd_ref": "digits-FD to the reference",
    "w2_coefficient": "W2 coefficient α",
    "temperature": "temperature τ",
    "reward_evaluations": "reward evaluations",
    "wall_seconds": "wall time",
    "dropped_samples": "dropped samples",
}

# Short names for plot legends and sweep cells.
SHORT: dict[str, str] = {"w2_coefficient": "alpha", "temperature": "tau"}

# The evaluation metrics a run's before/after summary table shows when both evaluations measured them, in order.
SUMMARY_EXTRA_KEYS = ("alignment", "gold_alignment", "diversity_per_condition", "clip_diversity_per_prompt",
                      "gold_target_fraction", "vendi", "class_entropy", "w2_to_reference", "w2_to_reference_floor",
                      "w2_bound", "digits_fd_data", "digits_fd_target")


def label(key: str) -> str:
    """The reader's name of a metric or setting key."""
    return LABELS.get(key, key.replace("_", " "))


def short(key: str) -> str:
    """The short name of a (dotted) setting key, for legends."""
    return SHORT.get(key, key.split(".")[-1])
