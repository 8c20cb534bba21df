"""``orwcfm report``: the HTML page of a real (tiny) fine-tuning run, and of a sweep folder written by hand around two
such runs. The page is parsed back: every picture must be embedded byte for byte, nothing may point outside the
file, the numbers must be summary.json's, and text from files must arrive escaped."""

import argparse
import base64
import csv
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from orwcfm.config import finetune_config, pretrain_config
from orwcfm.errors import UserError
from orwcfm.finetune.run import run_finetune
from orwcfm.report import cmd_report, format_number, format_setting, write_report
from orwcfm.train import pretrain

QUICK = ["epochs=2", "steps_per_epoch=2", "eval_samples=32", "buffer_size=64", "batch_size=32", "log_every=1",
         "sampling.steps=4", "eval_sampling.steps=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, orwcfm_cache):
    """Two real toy-2d fine-tuning runs (alpha 0.1 and 1) from a 20-step 8gaussians reference (~12 s)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORWCFM_CACHE", str(orwcfm_cache))
        ref = pretrain(pretrain_config("8gaussians", steps=20, batch_size=32, num_samples=16, log_every=10,
                                       checkpoint_every=20, sampling={"steps": 4}), root / "ref", progress=False)
        for name, alpha in (("a", 0.1), ("b", 1.0)):
            config = finetune_config(config_file="toy-2d", overrides=[*QUICK, f"w2_coefficient={alpha}"],
                                     savedir=str(root / "runs"), run_name=name, ref_path=str(ref.checkpoint))
            run_finetune(config, progress=False)
    return {name: root / "runs" / name for name in ("a", "b")}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tensorboard", "report.html"))
    return dst


class Page(HTMLParser):
    """Tags, pictures, tables (class -> rows of cell texts), ids, links and visible text of a page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.imgs: list[dict] = []
        self.tables: list[tuple[str, bool, list[list[str]]]] = []  # (class, inside <details>, rows)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._details = 0
        self._style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "table":
            self.tables.append((a.get("class") or "", self._details > 0, []))
        elif tag == "tr":
            self.tables[-1][2].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "details":
            self._details += 1
        elif tag in ("style", "title"):  # not part of the page's body text
            self._style = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][2][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "details":
            self._details -= 1
        elif tag in ("style", "title"):
            self._style = False

    def handle_data(self, data):
        if self._style:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())

    def table(self, cls: str) -> list[list[str]]:
        found = [rows for c, _, rows in self.tables if cls in c.split()]
        assert len(found) == 1, f"expected one table of class {cls}, found {len(found)}"
        return found[0]

    def summary_rows(self) -> list[list[str]]:
        """The before/after table, with the rows of its collapsed continuation (when there is one)."""
        more = [rows[1:] for c, _, rows in self.tables if c == "summary-more"]
        return self.table("summary") + (more[0] if more else [])

    def samples(self) -> list[dict]:
        return [i for i in self.imgs if "sample" in (i.get("class") or "").split()]


def decode_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix):], validate=True)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        im.load()
    return data


def check_self_contained(report: Path, base: Path) -> Page:
    """Parse the report: no address outside the file, every picture an embedded PNG equal to its source file."""
    text = report.read_text(encoding="utf-8")
    for bad in ("http://", "https://", 'src="/', "url(", "@import"):
        assert bad not in text, f"{bad!r} in the report"
    page = Page(text)
    assert "script" not in page.tags and "link" not in page.tags
    assert page.imgs
    for img in page.imgs:
        data = decode_png(img["src"])
        if "data-source" in img:
            source = base / img["data-source"]
            assert data == source.read_bytes(), img["data-source"]
            with Image.open(io.BytesIO(data)) as a, Image.open(source) as b:
                assert a.size == b.size == (int(img["width"]), int(img["height"]))
    for href in page.links:  # in-page anchors only, and each one lands somewhere
        assert href.startswith("#") and href[1:] in page.ids, href
    return page


def test_run_report(runs, tmp_path, capsys):
    run = copy_run(runs["a"], tmp_path / "run")
    assert cmd_report(argparse.Namespace(dir=str(run), out=None)) == 0
    report = run / "report.html"
    assert capsys.readouterr().out.strip() == f"wrote report: {report}"
    page = check_self_contained(report, run)
    summary = json.loads((run / "summary.json").read_text())

    # Title: run name, reward, alpha and tau; finished.
    assert page.visible.startswith("run finished reward distance · α = 0.1 · τ = 1")
    assert "unfinished" not in page.visible

    # One embedded grid per epoch, in epoch order, with captions.
    epochs = sorted(p.name for p in (run / "samples").glob("epoch_*.png"))
    assert len(epochs) == 3
    assert [i["data-source"] for i in page.samples()] == [f"samples/{name}" for name in epochs]
    assert "epoch 0 (before)" in page.visible and "epoch 2 · reward" in page.visible
    sources = {i.get("data-source") for i in page.imgs}
    assert "curves.png" in sources
    (loss,) = [i for i in page.imgs if "training loss" in i["alt"]]  # drawn from metrics.jsonl
    assert "data-source" not in loss

    # Summary table: every before/after number of summary.json, formatted; then the settings.
    rows = page.summary_rows()
    assert rows[0] == ["metric", "before", "after", "change"]
    for key in ("reward_mean", "diversity"):
        row = [format_number(summary[f"{key}_before"]), format_number(summary[f"{key}_after"])]
        assert row in [r[1:3] for r in rows], key
    assert rows[1][:3] == ["reward mean", format_number(summary["reward_mean_before"]),
                           format_number(summary["reward_mean_after"])]
    for side, column in (("before", 1), ("after", 2)):  # the full evaluation, when the trainer records it
        assert all(format_number(v) in [r[column] for r in rows] for v in summary.get(f"metrics_{side}", {}).values())
    settings = dict(page.table("settings")[1:])
    assert settings["reward"] == "distance"
    assert settings["W2 coefficient α"] == format_setting("w2_coefficient", summary["w2_coefficient"]) == "0.1"
    assert settings["temperature τ"] == "1"
    assert (settings["epochs"], settings["steps"]) == ("2", "4")
    assert settings["reward evaluations"] == str(summary["reward_evaluations"])
    assert settings["wall time"] == format_setting("wall_seconds", summary["wall_seconds"])

    # One evaluation row per epoch; the config collapsed, nested keys dotted.
    assert [r[:2] for r in page.table("evals")[1:]] == [["0", "0"], ["1", "2"], ["2", "4"]]
    ((_, collapsed, config),) = [t for t in page.tables if t[0] == "config"]
    assert collapsed
    config = dict(config[1:])
    assert config["reward_options.point"] == "[5.0, 0.0]" and config["sampling.steps"] == "4"


def test_text_from_files_is_escaped(runs, tmp_path):
    run = copy_run(runs["a"], tmp_path / "x")
    config_file = run / "config.yaml"
    config_file.write_text(config_file.read_text().replace("wandb_project: orwcfm", 'wandb_project: "<script>alert(1)</script>"'))
    summary = json.loads((run / "summary.json").read_text())
    summary["reward"] = "a<b>&c"
    (run / "summary.json").write_text(json.dumps(summary))
    text = write_report(run).read_text()
    assert "<script>" not in text and "<b>&c" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a&lt;b&gt;&amp;c" in text
    page = Page(text)
    assert "script" not in page.tags
    assert dict(page.table("config")[1:])["wandb_project"] == "<script>alert(1)</script>"
    assert dict(page.table("settings")[1:])["reward"] == "a<b>&c"


def test_unfinished_run(runs, tmp_path):
    run = copy_run(runs["a"], tmp_path / "half")
    (run / "summary.json").unlink()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "train/lo')  # a line cut short by a crash
    page = check_self_contained(write_report(run), run)
    assert "unfinished" in page.visible and "This run is unfinished" in page.visible
    assert "1 line of metrics.jsonl could not be parsed and was skipped" in page.visible
    assert len(page.samples()) == 3
    # before = the first evaluation, latest = the last one in metrics.jsonl
    evals = [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()[:-1]) if "eval/reward_mean" in row]
    rows = page.table("summary")
    assert rows[0][2] == "latest (step 4, epoch 2)"
    assert rows[1][:3] == ["reward mean", format_number(evals[0]["eval/reward_mean"]),
                            format_number(evals[-1]["eval/reward_mean"])]

    # Only config.yaml written so far: still a page, saying there is nothing yet.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(run / "config.yaml", fresh / "config.yaml")
    page = Page(write_report(fresh).read_text())
    assert "unfinished" in page.visible and "No sample grids yet" in page.visible and not page.imgs


def make_sweep(runs: dict[str, Path], root: Path) -> Path:
    """The layout of ``orwcfm sweep``: two finished cells, one never started, one unfinished."""
    cells = []
    for alpha, source in ((0.1, runs["a"]), (1.0, runs["b"]), (3.0, None), (10.0, runs["a"])):
        name = f"w2_coefficient={alpha:g}"
        cells.append({"name": name, "values": {"w2_coefficient": alpha}, "run_dir": f"cells/{name}"})
        if source is not None:
            copy_run(source, root / "cells" / name)
    (root / "cells" / "w2_coefficient=10" / "summary.json").unlink()
    (root / "sweep.json").write_text(json.dumps({"config": "toy-2d", "grid": {"w2_coefficient": [0.1, 1.0, 3.0, 10.0]},
                                                 "overrides": ["epochs=2"], "cells": cells}))
    header = ["w2_coefficient", "reward_mean_before", "reward_mean_after", "diversity_after"]
    records = []
    for cell in cells[:2]:
        s = json.loads((root / cell["run_dir"] / "summary.json").read_text())
        records.append([cell["values"]["w2_coefficient"], *(s[k] for k in header[1:])])
    with open(root / "sweep.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *records])
    (root / "sweep.md").write_text("| " + " | ".join(header) + " |\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    ax.plot([r[3] for r in records], [r[2] for r in records], "o")
    fig.savefig(root / "tradeoff.png")
    plt.close(fig)
    return root


def test_sweep_report(runs, tmp_path):
    sweep = make_sweep(runs, tmp_path / "sweep")
    out = write_report(sweep, tmp_path / "elsewhere" / "sweep.html")
    assert out == tmp_path / "elsewhere" / "sweep.html" and not (sweep / "report.html").exists()
    page = check_self_contained(out, sweep)
    assert page.visible.startswith("Sweep sweep config toy-2d · w2_coefficient ∈ {0.1, 1.0, 3.0, 10.0}")
    assert "4 cells: 2 finished, 1 unfinished, 1 missing" in page.visible

    # The results table is sweep.csv, numbers formatted, the first column linking to each cell's section.
    with open(sweep / "sweep.csv", newline="") as fh:
        header, *records = list(csv.reader(fh))
    (table,) = [rows for cls, _, rows in page.tables if not cls]
    assert table[0] == header
    # grid values as written, measured numbers formatted
    assert table[1:] == [[r[0], *(format_number(float(v)) for v in r[1:])] for r in records]
    assert [r[0] for r in table[1:]] == ["0.1", "1.0"]
    assert [h for h in page.links if h.startswith("#cell-") and h in ("#cell-1", "#cell-2")]
    assert {"cell-1", "cell-2", "cell-3", "cell-4", "results", "tradeoff"} <= page.ids
    sources = [i.get("data-source") for i in page.imgs]
    assert "tradeoff.png" in sources

    # Each cell with a run folder: its curves and its first and last grids; the missing one says so.
    for name in ("w2_coefficient=0.1", "w2_coefficient=1", "w2_coefficient=10"):
        for part in ("curves.png", "samples/epoch_000.png", "samples/epoch_002.png"):
            assert f"cells/{name}/{part}" in sources
        assert f"cells/{name}/samples/epoch_001.png" not in sources
    assert len(page.samples()) == 6
    assert "No run folder at cells/w2_coefficient=3" in page.visible
    s = json.loads((sweep / "cells" / "w2_coefficient=1" / "summary.json").read_text())
    assert f"reward mean {format_number(s['reward_mean_before'])} → {format_number(s['reward_mean_after'])}" in page.visible

    # Without sweep.csv (a sweep still running) the table comes from the cells' summaries.
    (sweep / "sweep.csv").unlink()
    page = Page(write_report(sweep).read_text())
    (table,) = [rows for cls, _, rows in page.tables if not cls]
    assert table[0][:3] == ["cell", "w2_coefficient", "status"]
    assert [r[2] for r in table[1:]] == ["finished", "finished", "missing", "unfinished"]


def test_not_a_run_or_sweep(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=re.escape(f"folder not found: {missing}")):
        write_report(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=re.escape(f"{empty} is neither a fine-tuning run folder")):
        write_report(empty)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match=re.escape(f"{a_file} is a file, not a folder")):
        write_report(a_file)
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "config.yaml").write_text("data:\n  name: moons\nsteps: 10\n")
    with pytest.raises(UserError, match=re.escape(f"{pretrained} is a pretraining run folder")):
        write_report(pretrained)
