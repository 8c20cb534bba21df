"""``markdown_table`` and the ``sweep.md`` written with it, against hand-written expected text."""

import pytest

from orwcfm.sweep import write_tables
from orwcfm.tables import markdown_table


def test_markdown_table_text():
    got = markdown_table(["cell", "reward", "note"], [["a", "0.5", ""], ["b=1", "-2", "x y"]],
                         align=["left", "right", "center"])
    assert got == ("| cell | reward | note |\n"
                   "|:---|---:|:---:|\n"
                   "| a | 0.5 |  |\n"
                   "| b=1 | -2 | x y |\n")
    assert markdown_table(["a"], []) == "| a |\n|---|\n"


def test_markdown_table_names_the_row_of_another_length():
    with pytest.raises(ValueError, match=r"row 2 has 1 cells but the header has 2 \(a, b\): \['short'\]"):
        markdown_table(["a", "b"], [["1", "2"], ["short"], ["5", "6"]])
    with pytest.raises(ValueError, match="align has 1 entries for 2 columns"):
        markdown_table(["a", "b"], [], align=["left"])
    with pytest.raises(ValueError, match="unknown alignment 'middle'"):
        markdown_table(["a"], [], align=["middle"])


def test_sweep_md_is_unchanged(tmp_path):
    rows = [{"cell": "w2_coefficient=0.1", "w2_coefficient": "0.1", "reward_mean": 0.123456, "wall_seconds": 12345.6,
             "reward_evaluations": None},
            {"cell": "w2_coefficient=1", "w2_coefficient": "1", "reward_mean": -2.0, "wall_seconds": 3.25,
             "reward_evaluations": 640}]
    csv_path, md_path, plot = write_tables(rows, {"reward_mean": 0.5}, tmp_path, grid_keys=["w2_coefficient"])
    assert plot is None  # no diversity column: no trade-off plot
    assert md_path.read_text() == ("| w2_coefficient | reward_mean | wall_seconds | reward_evaluations |\n"
                                   "|---|---|---|---|\n"
                                   "| reference | 0.5 |  |  |\n"
                                   "| 0.1 | 0.1235 | 12346 |  |\n"
                                   "| 1 | -2 | 3.25 | 640 |\n")
