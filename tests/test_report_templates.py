"""The report's Jinja2 templates escape everything read from files and refuse a missing name; ``read_metrics``
reads a good, a damaged and a missing ``metrics.jsonl``. Run folders are written by hand (no training)."""

import html
import json
from pathlib import Path

import jinja2
import pytest
import yaml

from orwcfm.report import environment, write_report
from orwcfm.runlog import MetricsFile, read_metrics

SCRIPT = "<script>alert(1)</script>"
QUOTES = "&\"'"


def hand_run(folder: Path, config: dict) -> Path:
    """A finished run folder with one evaluation row, written without training."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": 0, "eval/reward_mean": 0.5}, {"step": 2, "train/loss": 1.0, "eval/reward_mean": 0.75}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({"reward": SCRIPT, "reward_mean_before": 0.5,
                                                     "reward_mean_after": 0.75, "steps": 2}))
    return folder


def assert_escaped(page: str, *texts: str) -> None:
    """Each text is on the page as escaped characters, never as raw markup."""
    assert "<script" not in page.lower()
    assert QUOTES not in page
    unescaped = html.unescape(page)
    for text in texts:
        assert text in unescaped, f"{text!r} is not on the page"


def test_hostile_run_name_and_config_value_are_escaped(tmp_path):
    # '/' cannot be in a folder name, so the closing tag lives in the config and the summary
    run = hand_run(tmp_path / f"<script>alert(1){QUOTES}", {"epochs": 1, "steps_per_epoch": 2,
                                                          "note": SCRIPT, "quotes": QUOTES, SCRIPT: 1})
    page = write_report(run).read_text(encoding="utf-8")
    assert_escaped(page, f"<script>alert(1){QUOTES}", SCRIPT, QUOTES)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;" in page


def test_hostile_sweep_cell_name_is_escaped(tmp_path):
    sweep = tmp_path / "sweep"
    name = f"{SCRIPT}{QUOTES}"
    hand_run(sweep / "cells" / "c1", {"epochs": 1})
    (sweep / "sweep.json").write_text(json.dumps({"config": QUOTES, "grid": {"w2_coefficient": [SCRIPT]},
                                                  "overrides": [SCRIPT],
                                                  "cells": [{"name": name, "values": {}, "run_dir": "cells/c1"},
                                                            {"name": SCRIPT, "values": {}, "run_dir": "cells/none"}]}))
    page = write_report(sweep).read_text(encoding="utf-8")
    assert_escaped(page, name, SCRIPT)
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # toc, table, sections, grid, overrides


def test_environment_escapes_and_refuses_missing_names():
    env = environment()
    assert env.from_string("{{ x }}").render(x="<b>&") == "&lt;b&gt;&amp;"
    with pytest.raises(jinja2.UndefinedError, match="missing"):
        env.from_string("value: {{ missing }}").render()
    with pytest.raises(jinja2.UndefinedError):  # a page template with part of its context left out
        env.get_template("run.html.j2").render(title="t")


def test_templates_are_in_the_package():
    folder = Path(environment().loader.searchpath[0])
    names = sorted(p.name for p in folder.glob("*.j2"))
    assert {"base.html.j2", "macros.html.j2", "run.html.j2", "sweep.html.j2"} <= set(names)


def test_read_metrics_good_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "eval/x": 1.5}\n\n{"step": 1, "train/loss": 2}\n')
    assert read_metrics(path) == MetricsFile(rows=[{"step": 0, "eval/x": 1.5}, {"step": 1, "train/loss": 2}],
                                             bad_lines=[], error=None)


def test_read_metrics_broken_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "tra\n{"step": 2}\n[1, 2]\n{"step": 3}')  # cut off, then a list
    got = read_metrics(path)
    assert got.rows == [{"step": 0}, {"step": 2}, {"step": 3}]
    assert got.bad_lines == [2, 4]
    assert got.error is None


def test_read_metrics_one_broken_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2\n')
    got = read_metrics(path)
    assert (got.rows, got.bad_lines, got.error) == ([{"step": 0}, {"step": 1}], [3], None)


def test_read_metrics_missing_file(tmp_path):
    got = read_metrics(tmp_path / "nothing" / "metrics.jsonl")
    assert got.rows == [] and got.bad_lines == []
    assert got.error and "No such file" in got.error


def test_report_notes_broken_metrics_lines(tmp_path):
    run = hand_run(tmp_path / "run", {"epochs": 1})
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{half\n")
    page = html.unescape(write_report(run).read_text(encoding="utf-8"))
    assert "1 line of metrics.jsonl could not be parsed and was skipped" in page


def test_hostile_sweep_grid_key_without_sweep_csv_is_escaped(tmp_path):
    # without sweep.csv the results table is built from the cells, its headers are the grid keys as written
    sweep = tmp_path / "sweep"
    key = f"{SCRIPT}{QUOTES}"
    hand_run(sweep / "cells" / "c1", {"epochs": 1})
    (sweep / "sweep.json").write_text(json.dumps({"config": "x", "grid": {key: [1, 2]}, "overrides": [],
                                                  "cells": [{"name": "c1", "values": {key: 1}, "run_dir": "cells/c1"}]}))
    assert not (sweep / "sweep.csv").exists()
    page = write_report(sweep).read_text(encoding="utf-8")
    assert "No sweep.csv yet" in page
    assert_escaped(page, key)
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # the table's header and the grid's axis
