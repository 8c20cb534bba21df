"""One list of metric names: the summary table, the HTML report and sweeps read their labels from it."""

from orwcfm import metric_names
from orwcfm.finetune.summary import SUMMARY_EXTRA_ROWS, FinetuneSummary
from orwcfm.report.format import label as report_label


def test_every_summary_row_has_its_label_from_the_one_list():
    assert [k for k, _ in SUMMARY_EXTRA_ROWS] == list(metric_names.SUMMARY_EXTRA_KEYS)
    for key, text in SUMMARY_EXTRA_ROWS:
        assert key in metric_names.LABELS and text == metric_names.LABELS[key] == report_label(key)


def test_the_summary_table_prints_the_labels_of_the_list():
    summary = FinetuneSummary(reward="r", w2_coefficient=0.1, temperature=2.0, epochs=1, steps=3,
                              reward_evaluations=64, reward_mean_before=-1.0, reward_mean_after=-0.5,
                              diversity_before=4.0, diversity_after=3.5, wall_seconds=2.0,
                              metrics_before={"alignment": 0.9, "vendi": 8.0}, metrics_after={"alignment": 0.99, "vendi": 7.0})
    table = summary.table()
    assert "| alignment: samples in the prompted class | 0.9000 | 0.9900 |" in table
    assert "| Vendi score | 8.0000 | 7.0000 |" in table
    assert f"| {metric_names.label('reward_mean')} | -1.0000 | -0.5000 |" in table
    assert "class entropy" not in table  # measured by neither evaluation: no row
