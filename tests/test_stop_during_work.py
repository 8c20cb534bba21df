"""Stops that do not wait (issue 16): SIGTERM / SIGINT during an evaluation or during the policy's sampling end the
run after at most one more solver step, with a checkpoint of the last whole step; the dropped work is redone on
resume and the resumed run equals the uninterrupted one bit for bit. A second signal exits at once with one line and
no traceback. As a subprocess: a run stopped in a long evaluation exits within seconds."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from orwcfm.checkpoint import list_checkpoints, load_checkpoint
from orwcfm.finetune.trainer import ORWCFMTrainer
from orwcfm.interrupt import Interrupted, StopNow, StopRequest, check_stop
from orwcfm.models.mlp import MLP

# Shared by every copy of the wrapped model (the trainer deep-copies it into the policy and the reference): when to
# send the signal (after how many more forwards), and how many forwards ran after it.
FIRE: dict = {"after": None, "since": None, "signal": signal.SIGTERM}


class Tripwire(MLP):
    """The toy MLP, which sends the process a signal on the chosen forward and counts the forwards after (the
    reference's weights load into it unchanged: same class layout)."""

    def forward(self, t, x):
        if FIRE["since"] is not None:
            FIRE["since"] += 1
        elif FIRE["after"] is not None:
            FIRE["after"] -= 1
            if FIRE["after"] == 0:
                FIRE["since"] = 0
                os.kill(os.getpid(), FIRE["signal"])
        return super().forward(t, x)


def tripwired(model):
    assert type(model) is MLP
    model.__class__ = Tripwire
    return model


def make_trainer(reference, run_dir, **extra):
    extra = {"eval_every": 1, **extra}  # an evaluation after every epoch unless a test says otherwise
    config = dict(eval_samples=200, eval_sampling={"solver": "midpoint", "steps": 20},
                  sampling={"solver": "midpoint", "steps": 10}, batch_size=32, buffer_size=128, learning_rate=1e-3,
                  reward="distance", reward_options={"point": [5.0, 0.0]}, savedir=str(run_dir.parent),
                  run_name=run_dir.name, seed=3, ema_decay=None, log_every=2, keep_checkpoints=5, **extra)
    trainer = ORWCFMTrainer(tripwired(load_checkpoint(reference).build_model("ema")), config, "cpu", progress=False)
    trainer.load_pretrained(reference)
    return trainer


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same(a, b):
    wa, ha = a
    wb, hb = b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
    strip = lambda h: [{k: v for k, v in row.items()} for row in h]  # noqa: E731
    assert strip(ha) == strip(hb)  # every evaluation, the dropped one redone


def arm(method_owner, name, calls_before, forwards, sig=signal.SIGTERM):
    """Fire the signal ``forwards`` forwards into the ``calls_before + 1``-th call of ``method_owner.name``."""
    original = getattr(method_owner, name)
    seen = {"n": 0}

    def wrapped(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == calls_before + 1:
            FIRE.update(after=forwards, since=None, signal=sig)
        return original(*args, **kwargs)

    setattr(method_owner, name, wrapped)


@pytest.mark.parametrize("where, calls_before, sig", [
    ("evaluation", 2, signal.SIGTERM),   # the evaluation after epoch 2 (epoch 0's is the first call)
    ("evaluation", 0, signal.SIGINT),    # the evaluation before any step (the reference's sets are drawn first)
    ("sampling", 5, signal.SIGTERM),     # the policy's refresh at step 10, mid-epoch 3 (refreshes at 0, 2, 4, ...)
])
def test_a_signal_inside_long_work_stops_after_one_solver_step_and_resumes_exactly(toy_reference, tmp_path, where,
                                                                                   calls_before, sig):
    run = tmp_path / "run"
    trainer = make_trainer(toy_reference, run, refresh_every=2)
    if where == "evaluation":
        arm(trainer, "_evaluate", calls_before, forwards=5, sig=sig)
    else:
        arm(trainer.algorithm, "collect", calls_before, forwards=5, sig=sig)
    with pytest.raises(Interrupted, match=rf"{signal.Signals(sig).name} at step \d+: checkpoint written") as err:
        trainer.train(3, 4)
    assert err.value.exit_code == 128 + sig
    assert FIRE["since"] <= 2  # at most the rest of one midpoint step (2 forwards) ran after the signal
    stopped = load_checkpoint(run).meta["step"]
    expected = {"evaluation": 4 * calls_before, "sampling": 2 * calls_before}[where]
    assert stopped == expected  # the last whole step: the dropped work was between steps or before this one's
    FIRE.update(after=None, since=None)
    again = make_trainer(toy_reference, run, refresh_every=2)
    again.resume(run)
    again.train(3, 4)
    uninterrupted = make_trainer(toy_reference, tmp_path / "straight", refresh_every=2)
    uninterrupted.train(3, 4)
    assert_same((weights(again), again.history), (weights(uninterrupted), uninterrupted.history))
    assert [c.name for c in list_checkpoints(run)][-1] == "step_0000012"


def test_the_second_signal_exits_at_once_with_one_line(capsys):
    with StopRequest(prompt=True) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(StopNow):
            check_stop()
        with pytest.raises(SystemExit) as exit_:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
    assert exit_.value.code == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "second SIGINT: exiting now" in err and "--resume" in err
    check_stop()  # outside the request nothing is pending


def test_outside_a_prompt_request_nothing_stops_long_work():
    with StopRequest() as stop:  # several processes: only between steps
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        check_stop()


@pytest.mark.slow
def test_sigterm_in_a_long_evaluation_of_the_cli_exits_within_seconds(toy_reference, tmp_path):
    # the evaluation: 20 000 samples x 400 midpoint steps of the MLP, about a minute on 2 cores
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "orwcfm.cli", "finetune", "--config", "toy-2d", "--ref", str(toy_reference),
           "--out", str(run), "--no-progress", "--set", "epochs=1", "steps_per_epoch=2", "eval_samples=20000",
           "eval_sampling.steps=400"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not (run / "config.yaml").exists():  # written just before the first evaluation starts
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert took < 10, f"took {took:.1f} s to stop"
    assert "SIGTERM at step 0: checkpoint written to" in err and "Traceback" not in err
    assert [c.name for c in list_checkpoints(run)] == ["step_0000000"]


# ----------------------------------------------------------------------------------------------- eval_every


def test_eval_every_evaluates_every_n_epochs_and_always_at_both_ends(toy_reference, tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(toy_reference, run, eval_every=2)
    trainer.train(5, 2)
    assert [row["epoch"] for row in trainer.history] == [0, 2, 4, 5]  # before, every 2nd epoch, and the last
    assert [c.name for c in list_checkpoints(run)] == [f"step_{s:07d}" for s in (2, 4, 6, 8, 10)]  # every epoch
    summary = trainer.summary(5, wall_seconds=0.0)
    assert [row["epoch"] for row in summary.curve] == [0, 2, 4, 5]


@pytest.mark.parametrize("value, epochs, message", [
    (0, 5, r"config key 'eval_every' must be > 0, got 0"),
    (-1, 5, r"config key 'eval_every' must be > 0, got -1"),
    (6, 5, r"config key 'eval_every' \(6 epochs\) is larger than the run \(5 epochs\): at most 5"),
])
def test_an_eval_interval_that_cannot_work_is_one_line_and_writes_nothing(toy_reference, tmp_path, value, epochs,
                                                                          message):
    from orwcfm.errors import UserError

    run = tmp_path / "run"
    with pytest.raises(UserError, match=message):
        make_trainer(toy_reference, run, eval_every=value).train(epochs, 2)
    assert not run.exists()
