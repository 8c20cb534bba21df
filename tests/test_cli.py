"""The command line: real runs on tiny settings, and one clear line (no traceback) for every user mistake."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from orwcfm.cli import main

QUICK = ["--no-progress", "--set", "log_every=5", "checkpoint_every=10", "num_samples=50", "sampling.steps=5"]


def test_pretrain_then_sample_digits(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", "digits", "--out", str(run), "--steps", "10", *QUICK,
                 "model.options.base_channels=8"]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    png = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(run), "-n", "64", "--out", str(png), "--steps", "3"]) == 0
    # 64 digits -> 8 x 8 grid of 8x8 images upscaled x4 with 1-pixel gaps
    with Image.open(png) as im:
        assert im.size == (8 * 33 + 1, 8 * 33 + 1)


def test_pretrain_then_sample_2d(tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", "moons", "--out", str(run), "--steps", "10", *QUICK]) == 0
    png = tmp_path / "scatter.png"
    assert main(["sample", "--ckpt", str(run / "checkpoints" / "step_0000010"), "-n", "100", "--out", str(png)]) == 0
    with Image.open(png) as im:
        assert im.size[0] > 300


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "--data", "digts", "--out", "{tmp}/r"], "unknown data set 'digts' (did you mean 'digits'?); available: 8gaussians"),
        (["pretrain", "--data", "digits", "--out", "{tmp}/r", "--steps", "0"], "config key 'steps' must be > 0, got 0"),
        (["pretrain", "--data", "digits", "--out", "{tmp}/r", "--set", "learning_rate=-1"], "config key 'learning_rate' must be > 0, got -1.0"),
        (["pretrain", "--data", "digits", "--out", "{tmp}/r", "--set", "learnig_rate=0.1"], "did you mean 'learning_rate'?"),
        (["pretrain", "--out", "{tmp}/r"], "pretrain needs --data NAME or --config FILE"),
        (["pretrain", "--data", "mnist", "--out", "{tmp}/r", "--data-root", "{tmp}"], "train-images-idx3-ubyte"),
        (["pretrain", "--config", "{tmp}/nope.yaml", "--out", "{tmp}/r"], "config file not found"),
        (["sample", "--ckpt", "{tmp}", "-n", "4", "--out", "{tmp}/x.png"], "no checkpoint found at"),
        (["sample", "--ckpt", "{tmp}", "-n", "0", "--out", "{tmp}/x.png"], "-n must be a positive number of samples, got 0"),
        (["finetune", "--config", "digits-evn", "--out", "{tmp}/r"], "config file not found: digits-evn"),
        (["finetune", "--config", "digits-even", "--out", "{tmp}/r", "--ref", "{tmp}/none"], "no checkpoint found at"),
        (["finetune", "--config", "digits-even", "--out", "{tmp}/r", "--set", "temperature=-1"], "must be >= 0, got -1.0"),
        (["finetune", "--config", "digits-even", "--out", "{tmp}/r", "--set", "reward=nope"], "unknown reward 'nope'"),
        (["finetune", "--config", "digits-even", "--out", "{tmp}/r", "--ref", "builtin:digts"], "did you mean 'digits'?"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("orwcfm: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("module", ["orwcfm.cli", "orwcfm"])  # python -m orwcfm works like the orwcfm command
def test_console_entry_point_has_no_traceback(tmp_path, module):
    proc = subprocess.run([sys.executable, "-m", module, "pretrain", "--data", "cifar100", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown data set 'cifar100' (did you mean 'cifar10'?)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_finetune_command_on_a_toy_task(tmp_path, capsys):
    ref = tmp_path / "ref"
    assert main(["pretrain", "--data", "gaussian-1d", "--out", str(ref), "--steps", "20", *QUICK]) == 0
    cfg = tmp_path / "task.yaml"
    cfg.write_text("reward: linear\nw2_coefficient: 0.5\ntemperature: 1.0\nbatch_size: 32\nepochs: 2\n"
                   "steps_per_epoch: 3\neval_samples: 50\nlog_every: 1\nsampling: {solver: euler, steps: 4}\n")
    out = tmp_path / "ft"
    assert main(["finetune", "--config", str(cfg), "--ref", str(ref), "--out", str(out), "--no-progress"]) == 0
    summary = (out / "summary.json").read_text()
    assert '"reward": "linear"' in summary and (out / "checkpoints" / "step_0000006").is_dir()
    # the --set overrides reach the run, and a finished run can be continued with --resume
    assert main(["finetune", "--config", str(cfg), "--ref", str(ref), "--out", str(out), "--no-progress",
                 "--resume", "--set", "epochs=3"]) == 0
    assert (out / "checkpoints" / "step_0000009").is_dir()


@pytest.mark.parametrize("task, data, model_set", [
    ("patches-jpeg", "patches", ["model.options.base_channels=8", "data.options.stride=64"]),
    ("toy-2d", "8gaussians", ["model.options.hidden=32"]),
])
def test_builtin_tasks_run_end_to_end_on_a_tiny_reference(tmp_path, task, data, model_set):
    ref = tmp_path / "ref"
    assert main(["pretrain", "--data", data, "--out", str(ref), "--steps", "3", *QUICK, *model_set]) == 0
    out = tmp_path / "ft"
    assert main(["finetune", "--config", task, "--ref", str(ref), "--out", str(out), "--no-progress", "--set",
                 "epochs=1", "steps_per_epoch=2", "batch_size=8", "buffer_size=16", "eval_samples=8",
                 "sampling.steps=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["reward_evaluations"] == 16
    if task == "patches-jpeg":  # the preset's baseline (1.0 kB) minus the JPEG size: a few hundred bytes at least
        assert 0.1 < 1.0 - summary["reward_mean_before"] < 20
