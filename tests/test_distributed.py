"""Several processes (gloo, CPU, launched by torchrun as a user would): equivalence with one process, a complete
run with one set of outputs, checkpoints that move between 2 and 1 processes, and a failing rank that stops all."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orwcfm.checkpoint import list_checkpoints, load_checkpoint
from orwcfm.finetune.orw import orw_cfm_w2_loss
from orwcfm.finetune.weights import logmeanexp, normalized_weights

sys.path.insert(0, str(Path(__file__).parent))
import dist_equivalence_worker as worker  # noqa: E402

pytestmark = pytest.mark.slow  # each test starts a torchrun group (a few seconds of process start-up)

TIMEOUT = 240  # seconds: a hung collective fails the test instead of hanging CI


def torchrun(args, tmp_path, nproc=2, env=None):
    """``torchrun --standalone --nproc_per_node N`` with ``args``; returns the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=full_env, cwd=tmp_path)


@pytest.fixture(scope="module")
def reference(toy_reference):
    return toy_reference


def test_two_process_step_equals_one_process_step_on_the_concatenated_batch(tmp_path):
    out = tmp_path / "two.pt"
    proc = torchrun([str(Path(worker.__file__)), str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(out, weights_only=True)

    x1, rewards, x0, t = worker.batch()
    model, reference = worker.nets()
    weights = normalized_weights(rewards, 3.0)
    one = orw_cfm_w2_loss(model, reference, x1, weights, x0, t, alpha=0.5)
    one.loss.backward()
    # the global softmax: each rank's slice of the gathered weights is the one-process weights
    torch.testing.assert_close(two["weights"], weights)
    torch.testing.assert_close(two["log_z"], logmeanexp(3.0 * rewards))  # the refresh's log Z over all ranks
    assert weights.max() > 2 * weights.min()  # a real tilt, not all ones
    torch.testing.assert_close(two["loss"], one.loss.detach(), rtol=1e-5, atol=1e-7)
    for g2, p in zip(two["grads"], model.parameters()):
        torch.testing.assert_close(g2, p.grad, rtol=1e-4, atol=1e-6)


QUICK = ["epochs=2", "steps_per_epoch=3", "eval_samples=64", "buffer_size=128", "batch_size=32", "log_every=1",
         "sampling.steps=4", "eval_sampling.steps=4", "keep_checkpoints=5"]


def test_two_process_finetuning_writes_one_set_of_outputs_and_resumes_in_one_process(reference, tmp_path):
    run = tmp_path / "run"
    args = ["-m", "orwcfm.cli", "finetune", "--config", "toy-2d", "--ref", str(reference), "--out", str(run),
            "--no-progress", "--set", *QUICK]
    proc = torchrun(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # only rank 0 prints
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if "eval/reward_mean" in r) == 3  # epochs 0, 1, 2: once each, not once per rank
    assert sum(1 for r in rows if "train/loss" in r) == 6
    ckpts = list_checkpoints(run)
    assert [c.name for c in ckpts] == ["step_0000003", "step_0000006"]
    loaded = load_checkpoint(run)
    assert loaded.meta["world_size"] == 2
    ranks = loaded.train_state()["ranks"]
    assert len(ranks) == 2 and ranks[0]["buffer"]["x"].shape == (64, 2)  # each rank held half the buffer
    assert not torch.equal(ranks[0]["buffer"]["x"], ranks[1]["buffer"]["x"])  # its own samples
    model = loaded.build_model("raw")
    assert model(torch.zeros(4), torch.zeros(4, 2)).shape == (4, 2)

    # the 2-process checkpoint continues in one process (and that one in two again)
    from orwcfm.cli import main

    assert main(["finetune", "--config", "toy-2d", "--ref", str(reference), "--out", str(run), "--no-progress",
                 "--resume", "--set", *QUICK, "epochs=3"]) == 0
    assert load_checkpoint(run).meta["step"] == 9 and load_checkpoint(run).meta["world_size"] == 1
    proc = torchrun([*args, "--resume", "--set", "epochs=4"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(run).meta["step"] == 12 and load_checkpoint(run).meta["world_size"] == 2


def test_a_rank_whose_reward_raises_stops_every_rank_and_the_error_is_shown_once(reference, tmp_path):
    reward_file = tmp_path / "flaky.py"
    reward_file.write_text(
        "import os\n\n"
        "def reward(point):  # a factory: toy-2d passes reward_options {point: ...}\n"
        "    def fn(x):\n"
        "        if os.environ.get('RANK') == '1':\n"
        "            raise ValueError('sensor offline on rank 1')\n"
        "        return -x.norm(dim=1)\n"
        "    return fn\n")
    run = tmp_path / "run"
    proc = torchrun(["-m", "orwcfm.cli", "finetune", "--config", "toy-2d", "--ref", str(reference), "--out", str(run),
                     "--no-progress", "--set", *QUICK, f"reward={reward_file}:reward"], tmp_path)
    assert proc.returncode != 0
    both = proc.stdout + proc.stderr
    assert both.count("orwcfm: error:") == 1, both[-3000:]
    assert "sensor offline on rank 1" in both
    assert not run.exists() or list_checkpoints(run) == []  # it failed at the first refresh, before any checkpoint


def test_two_process_pretraining_and_its_checkpoint_in_one_process(tmp_path):
    run = tmp_path / "pre"
    common = ["--data", "8gaussians", "--out", str(run), "--no-progress", "--set", "batch_size=64", "log_every=5",
              "checkpoint_every=10", "num_samples=50", "model.options.hidden=32"]
    proc = torchrun(["-m", "orwcfm.cli", "pretrain", "--steps", "20", *common], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint:") == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]  # logged once, by rank 0
    loaded = load_checkpoint(run)
    assert loaded.meta["world_size"] == 2 and len(loaded.train_state()["rank_generators"]) == 2
    from orwcfm.cli import main

    assert main(["pretrain", "--steps", "30", "--resume", *common]) == 0  # continues in one process
    assert load_checkpoint(run).meta["step"] == 30
