"""Crashes and signals, as real subprocesses: a run killed with SIGKILL mid-epoch and resumed ends with exactly
the weights and metrics of an uninterrupted run; SIGTERM / SIGINT write a checkpoint of the exact step and exit
with 128 + the signal, and resuming from it is exact too."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from orwcfm.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.slow  # subprocesses and real signals: ~10 s each

SLOW_REWARD = (
    "import time\n\n"
    "def reward(point):  # toy-2d passes reward_options {point: ...}\n"
    "    target = __import__('torch').tensor(point)\n"
    "    def fn(x):\n"
    "        time.sleep(0.03)  # a slow black box: each step takes long enough to be interrupted mid-epoch\n"
    "        return -(x - target).norm(dim=1)\n"
    "    return fn\n")


@pytest.fixture(scope="module")
def reference(toy_reference):
    return toy_reference


def command(reference, run, reward_file, *extra):
    # a fresh batch every step (buffer_size null), so the slow reward runs every step
    return [sys.executable, "-m", "orwcfm.cli", "finetune", "--config", "toy-2d", "--ref", str(reference),
            "--out", str(run), "--no-progress", "--set", "epochs=3", "steps_per_epoch=20", "eval_samples=64",
            "buffer_size=null", "batch_size=32", "log_every=5", "keep_checkpoints=5", f"reward={reward_file}:reward",
            *extra]


def start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_checkpoint(run, step, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "checkpoints" / f"step_{step:07d}" / "meta.json").exists():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def final_state(run):
    loaded = load_checkpoint(run)
    return loaded.meta["step"], loaded.weights, json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(reference, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    reward_file = tmp / "slow.py"
    reward_file.write_text(SLOW_REWARD)
    run = tmp / "run"
    proc = subprocess.run(command(reference, run, reward_file), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return reward_file, final_state(run)


def assert_same_run(a, b):
    step_a, weights_a, summary_a = a
    step_b, weights_b, summary_b = b
    assert step_a == step_b == 60
    assert weights_a.keys() == weights_b.keys()
    for k in weights_a:
        assert torch.equal(weights_a[k], weights_b[k]), k  # bit for bit
    for key in ("reward_mean_after", "diversity_after", "reward_evaluations", "metrics_after"):
        assert summary_a[key] == summary_b[key], key


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(reference, uninterrupted, tmp_path):
    reward_file, whole = uninterrupted
    run = tmp_path / "run"
    proc = start(command(reference, run, reward_file))
    wait_for_checkpoint(run, 20, proc)
    time.sleep(0.3)  # ~10 steps into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [c.name for c in list_checkpoints(run)] == ["step_0000020"]  # the kill lost only epoch 2's steps

    resumed = subprocess.run(command(reference, run, reward_file, "--resume"), capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(final_state(run), whole)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_write_the_exact_step_and_resume_exactly(reference, uninterrupted, tmp_path, sig):
    reward_file, whole = uninterrupted
    run = tmp_path / "run"
    proc = start(command(reference, run, reward_file))
    wait_for_checkpoint(run, 20, proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]
    stopped_at = load_checkpoint(run).meta["step"]
    assert 20 <= stopped_at < 60  # a checkpoint of the very step it stopped at (mid-epoch 2, unless very slow)
    assert f"{signal.Signals(sig).name} at step {stopped_at}: checkpoint written to" in err
    assert "Traceback" not in err

    resumed = subprocess.run(command(reference, run, reward_file, "--resume"), capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(final_state(run), whole)


def test_sigterm_during_pretraining_writes_a_checkpoint_and_resumes(tmp_path):
    run = tmp_path / "pre"
    cmd = [sys.executable, "-m", "orwcfm.cli", "pretrain", "--data", "8gaussians", "--out", str(run), "--no-progress",
           "--steps", "100000", "--set", "batch_size=64", "checkpoint_every=50", "log_every=50", "num_samples=20"]
    proc = start(cmd)
    wait_for_checkpoint(run, 50, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    step = load_checkpoint(run).meta["step"]
    assert step > 50 and f"SIGTERM at step {step}" in err
    from orwcfm.cli import main

    assert main(["pretrain", "--data", "8gaussians", "--out", str(run), "--no-progress", "--resume", "--steps",
                 str(step + 10), "--set", "batch_size=64", "checkpoint_every=50", "log_every=50", "num_samples=20"]) == 0
    assert load_checkpoint(run).meta["step"] == step + 10


def test_full_disk_during_a_run_stops_with_one_line_and_the_previous_checkpoint_resumes(reference, tmp_path, monkeypatch,
                                                                                        capsys):
    import orwcfm.checkpoint as ckpt
    from orwcfm.cli import main

    real_save_file = ckpt.save_file
    run = tmp_path / "run"

    def disk_fills_up(*args, **kwargs):  # the first checkpoint fits, the second finds the disk full
        if list_checkpoints(run):
            raise OSError(28, "No space left on device")
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", disk_fills_up)
    args = ["finetune", "--config", "toy-2d", "--ref", str(reference), "--out", str(run), "--no-progress", "--set",
            "epochs=2", "steps_per_epoch=3", "eval_samples=64", "buffer_size=64", "batch_size=32", "log_every=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "orwcfm: error: cannot write checkpoint" in err and "No space left on device" in err
    assert "the newest intact checkpoint is" in err and "step_0000003" in err
    assert [c.name for c in list_checkpoints(run)] == ["step_0000003"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000003"]  # no half-written folder

    monkeypatch.setattr(ckpt, "save_file", real_save_file)  # space freed: the run continues from step 3
    assert main([*args, "--resume"]) == 0
    assert load_checkpoint(run).meta["step"] == 6
