"""ORWCFMTrainer end to end on a 1-D Gaussian reference: the README API, the method's behaviour, its outputs."""

import json
import sys
import types

import pytest
import torch

from orwcfm import ORWCFMTrainer
from orwcfm.checkpoint import list_checkpoints, load_checkpoint
from orwcfm.config import pretrain_config
from orwcfm.errors import UserError
from orwcfm.rewards import RewardError
from orwcfm.train import pretrain


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A flow for N(0, 1) in 1-D (an MLP with dropout, to exercise the dropout trap); its checkpoint folder."""
    run = tmp_path_factory.mktemp("ref")
    cfg = pretrain_config(data={"name": "gaussian-1d"}, steps=400, batch_size=256, learning_rate=3e-3, warmup_steps=20,
                          checkpoint_every=400, num_samples=100, ema_decay=0.99, log_every=100,
                          model={"kind": "mlp", "options": {"hidden": 64, "depth": 2, "dropout": 0.2}})
    return pretrain(cfg, run, progress=False).checkpoint


def make(reference, tmp_path, reward_fn=lambda x: -(x[:, 0] - 1.0).abs(), **settings):
    config = dict(learning_rate=3e-3, batch_size=256, buffer_size=1024, temperature=4.0, w2_coefficient=0.0,
                  sampling={"solver": "midpoint", "steps": 8}, eval_samples=1000, eval_every=1, log_every=10,
                  savedir=str(tmp_path), run_name="run")
    config.update(settings)
    model = load_checkpoint(reference).build_model("ema")
    trainer = ORWCFMTrainer(model, config, "cpu", reward_fn=reward_fn, progress=False)
    trainer.load_pretrained(reference)
    return trainer


def test_alpha_zero_concentrates_mass_at_the_reward_maximum(reference, tmp_path):
    trainer = make(reference, tmp_path, w2_coefficient=0.0)
    before = trainer.sample(2000, seed=0)
    trainer.train(num_epochs=6, steps_per_epoch=40)
    after = trainer.sample(2000, seed=0)
    assert before.std().item() == pytest.approx(1.0, abs=0.1)
    # reward -|x - 1| peaks at x = 1: the mass moves there and narrows (the limit is a point mass)
    assert after.mean().item() == pytest.approx(1.0, abs=0.15)
    assert after.std().item() < 0.45 * before.std().item()


def test_large_alpha_keeps_the_model_at_the_reference(reference, tmp_path):
    trainer = make(reference, tmp_path, w2_coefficient=100.0)
    before = trainer.sample(2000, seed=0)
    trainer.train(num_epochs=3, steps_per_epoch=40)
    after = trainer.sample(2000, seed=0)
    assert (after - before).abs().mean().item() < 0.05
    free = make(reference, tmp_path / "free", w2_coefficient=0.0)
    free.train(num_epochs=3, steps_per_epoch=40)
    assert (free.sample(2000, seed=0) - before).abs().mean().item() > 0.3


def test_w2_term_is_exactly_zero_at_the_first_step_with_dropout_model(reference, tmp_path):
    trainer = make(reference, tmp_path, w2_coefficient=1.0, log_every=1)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in trainer.model.modules())
    trainer.train(num_epochs=1, steps_per_epoch=2)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/w2" in r]
    assert train_rows[0]["train/w2"] == 0.0
    assert train_rows[1]["train/w2"] > 0.0  # the model moved after one step, and the term sees it


def test_run_folder_holds_every_output(reference, tmp_path):
    trainer = make(reference, tmp_path)
    summary = trainer.train(num_epochs=2, steps_per_epoch=10)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.json", "samples/epoch_000.png",
                 "samples/epoch_001.png", "samples/epoch_002.png"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    assert [p.name for p in list_checkpoints(run)] == ["step_0000010", "step_0000020"]
    saved = json.loads((run / "summary.json").read_text())
    for key in ("reward_mean_before", "reward_mean_after", "diversity_before", "diversity_after", "wall_seconds"):
        assert key in saved
    assert saved["reward_mean_after"] > saved["reward_mean_before"]
    assert summary.reward_evaluations == 2 * 1024  # one buffer per epoch (policy refreshed once per epoch)


def test_fresh_batch_every_step_mode_counts_reward_evaluations(reference, tmp_path):
    trainer = make(reference, tmp_path, buffer_size=None, batch_size=64)
    assert trainer.train(num_epochs=1, steps_per_epoch=5).reward_evaluations == 5 * 64


def test_resume_reproduces_an_uninterrupted_run(reference, tmp_path):
    full = make(reference, tmp_path / "a", refresh_every=7)
    full.train(num_epochs=2, steps_per_epoch=10)
    first = make(reference, tmp_path / "b", refresh_every=7)
    first.train(num_epochs=1, steps_per_epoch=10)
    resumed = make(reference, tmp_path / "b", refresh_every=7)
    resumed.resume(tmp_path / "b" / "run")
    assert resumed.step == 10
    resumed.train(num_epochs=2, steps_per_epoch=10)
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    assert resumed.history == full.history


def test_load_pretrained_reads_torchcfm_files_and_never_their_optimizer(reference, tmp_path):
    loaded = load_checkpoint(reference)
    model = loaded.build_model("raw")
    bogus_optim = torch.optim.Adam(model.parameters(), lr=123.0).state_dict()
    torch.save({"net_model": loaded.weights, "ema_model": loaded.ema_weights, "optim": bogus_optim,
                "sched": {"last_epoch": 9999}, "step": 9999}, tmp_path / "cfm.pt")
    trainer = ORWCFMTrainer(model, {"learning_rate": 1e-3, "warmup_steps": 10, "savedir": str(tmp_path)},
                            reward_fn=lambda x: x[:, 0], progress=False)
    trainer.load_pretrained(tmp_path / "cfm.pt")
    for key, value in loaded.ema_weights.items():
        torch.testing.assert_close(trainer.reference.state_dict()[key], value)
        torch.testing.assert_close(trainer.policy.state_dict()[key], value)
    trainer.load_pretrained(tmp_path / "cfm.pt", which="raw")
    for key, value in loaded.weights.items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value)
    # fine-tuning starts its own warm-up: nothing of the pretraining optimizer or scheduler was read
    assert trainer.optimizer.state_dict()["state"] == {}
    assert trainer.scheduler.last_epoch == 0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 10)


def test_bad_reward_stops_with_one_message_and_keeps_the_last_checkpoint(reference, tmp_path):
    calls = {"n": 0}

    def flaky(x):
        r = -(x[:, 0] - 1.0).abs()
        if len(x) == 1024:  # a training buffer (evaluations use 1000 samples)
            calls["n"] += 1
            if calls["n"] >= 3:  # the third buffer (epoch 3, step 20) goes bad
                r[:5] = float("nan")
        return r

    flaky.name = "flaky"
    trainer = make(reference, tmp_path, reward_fn=flaky)
    with pytest.raises(RewardError, match=r"reward 'flaky' returned 5 non-finite values \(NaN/inf\) out of 1024 at step 20"):
        trainer.train(num_epochs=3, steps_per_epoch=10)
    assert load_checkpoint(tmp_path / "run").step == 20  # the last good checkpoint is intact

    calls["n"] = 0
    dropping = make(reference, tmp_path / "drop", reward_fn=flaky, on_bad_reward="drop")
    summary = dropping.train(num_epochs=3, steps_per_epoch=10)
    assert summary.dropped_samples == 5
    rows = [json.loads(line) for line in (tmp_path / "drop" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-2]["train/dropped_samples"] == 5  # the last training row (the last row is the evaluation)


def test_reward_by_name_and_text_prompts_pick_the_reward(reference, tmp_path):
    from .tinyclip import tiny_clip

    model = load_checkpoint(reference).build_model()
    assert ORWCFMTrainer(model, {"reward": "linear"}, progress=False).reward_name == "linear"
    tiny_clip(tmp_path / "clip")
    trainer = ORWCFMTrainer(model, {"text_prompts": ["an image of dog", "not an image of dog"],
                                    "reward_options": {"model_path": str(tmp_path / "clip")}}, progress=False)
    assert trainer.reward_name == "clip" and type(trainer.reward_fn).__name__ == "ClipReward"
    with pytest.raises(UserError, match="no reward given"):
        ORWCFMTrainer(model, {}, progress=False)


def test_wandb_logging_when_asked(reference, tmp_path, monkeypatch):
    logged = []
    fake = types.SimpleNamespace(init=lambda **kw: types.SimpleNamespace(
        log=lambda row, step: logged.append((step, row)), finish=lambda: None))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    make(reference, tmp_path, use_wandb=True, wandb_project="p").train(num_epochs=1, steps_per_epoch=10)
    assert any("train/loss" in row for _, row in logged) and any("eval/reward_mean" in row for _, row in logged)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match="use_wandb needs the wandb package"):
        make(reference, tmp_path / "x", use_wandb=True).train(num_epochs=1, steps_per_epoch=1)


def test_unknown_shape_and_bad_arguments(reference, tmp_path):
    class Bare(torch.nn.Module):  # no attribute tells its sample shape
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, t, x):
            return self.scale * x

    trainer = ORWCFMTrainer(Bare(), {"savedir": str(tmp_path)}, reward_fn=lambda x: x.sum(1), progress=False)
    with pytest.raises(UserError, match="pass event_shape"):
        trainer.train(num_epochs=1, steps_per_epoch=1)
    with pytest.raises(UserError, match="num_epochs must be a positive integer, got 0"):
        make(reference, tmp_path).train(num_epochs=0, steps_per_epoch=1)
    with pytest.raises(UserError, match="unknown config key 'temprature' \\(did you mean 'temperature'\\?\\)"):
        ORWCFMTrainer(Bare(), {"temprature": 1.0}, reward_fn=lambda x: x.sum(1))
    with pytest.raises(UserError, match="reference not found"):
        make(reference, tmp_path).load_pretrained(tmp_path / "missing")


def test_sampling_mid_run_does_not_change_the_run(reference, tmp_path):
    plain = make(reference, tmp_path / "a")
    plain.train(num_epochs=1, steps_per_epoch=5)
    peeked = make(reference, tmp_path / "b")
    peeked.sample(100)  # a user looking at samples must not shift the training noise stream
    peeked.train(num_epochs=1, steps_per_epoch=5)
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(peeked.model.state_dict()[key], value, rtol=0, atol=0)


def test_a_reward_of_a_million_with_tau_one_trains_without_overflow(reference, tmp_path):
    # exp(1e6) overflows any float; the paper's loss is divided by exp(max tau r) per refresh (same minimiser)
    trainer = make(reference, tmp_path, reward_fn=lambda x: 1e6 - (x[:, 0] - 1.0).abs(), temperature=1.0)
    summary = trainer.train(num_epochs=2, steps_per_epoch=10)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert summary.reward_mean_after > summary.reward_mean_before  # and it still learns toward x = 1
    assert all(r["train/loss_log_scale"] < -1e5 for r in rows if "train/loss" in r)
    assert "divided by exp(" in (tmp_path / "run" / "notes.txt").read_text()


def test_resume_with_another_reference_is_refused(reference, tmp_path):
    trainer = make(reference, tmp_path)
    trainer.train(num_epochs=1, steps_per_epoch=2)
    from orwcfm.checkpoint import save_checkpoint

    loaded = load_checkpoint(reference)
    other = loaded.build_model("ema")
    with torch.no_grad():
        next(other.parameters()).add_(0.01)  # another reference: e.g. re-trained since the run started
    other_path = save_checkpoint(tmp_path / "other-ref", model=other, spec=loaded.spec, kind="pretrain", step=1, config={})
    fresh = ORWCFMTrainer(loaded.build_model("ema"), trainer.config, "cpu", reward_fn=lambda x: -x[:, 0].abs(),
                          progress=False)
    fresh.load_pretrained(other_path)
    with pytest.raises(UserError, match="was fine-tuned from another reference"):
        fresh.resume(tmp_path / "run")


def test_an_output_folder_that_cannot_be_created_is_one_line(reference, tmp_path, capsys):
    from orwcfm.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # works as root too, unlike chmod
    assert main(["finetune", "--config", "toy-2d", "--ref", str(reference), "--out", str(blocker / "run"),
                 "--no-progress", "--set", "epochs=1", "steps_per_epoch=2", "eval_samples=64", "buffer_size=64",
                 "batch_size=32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orwcfm: error: cannot create output folder") and err.count("\n") == 1


def test_with_an_ema_the_ema_is_the_runs_model_everywhere(reference, tmp_path):
    # One choice per run: the policy copies the EMA, every evaluation measures it, sample() draws from it, the
    # checkpoint records it and `orwcfm evaluate` defaults to it; a run without an EMA uses the raw weights.
    from orwcfm.finetune.evaluate import evaluate_checkpoint

    trainer = make(reference, tmp_path, w2_coefficient=0.0, ema_decay=0.9, eval_samples=200)
    summary = trainer.train(num_epochs=2, steps_per_epoch=10)
    assert summary.evaluated_weights == "ema" and trainer.evaluated_weights == "ema"
    ema, raw = trainer.ema.module, trainer.model
    assert any((a - b).abs().max() > 0 for a, b in zip(ema.parameters(), raw.parameters()))  # they differ
    # the last refresh (step 10) copied the EMA of that moment; the in-run evaluation measured the EMA now
    ev = trainer.evaluate()
    assert ev.reward_mean == pytest.approx(trainer.history[-1]["reward_mean"], rel=1e-6)
    torch.testing.assert_close(trainer.sample(50, seed=3), trainer.sample(50, seed=3, use_ema=True))
    assert not torch.equal(trainer.sample(50, seed=3), trainer.sample(50, seed=3, use_ema=False))
    ckpt_dir = trainer.save_checkpoint(tmp_path / "ck")
    assert load_checkpoint(ckpt_dir).meta["evaluated_weights"] == "ema"
    res = evaluate_checkpoint(ckpt_dir, reward="linear", num_samples=50)  # the run used a lambda: name one
    assert res.weights == "ema"

    trainer._refresh_policy()
    for p, q in zip(trainer.policy.parameters(), ema.parameters()):
        torch.testing.assert_close(p, q)
    plain = make(reference, tmp_path / "plain", w2_coefficient=0.0)
    assert plain.evaluated_weights == "raw" and plain.current_model() is plain.model


@pytest.mark.parametrize("period, expected", [(1, 64), (2, 64), (4, 64), (5, 128), (10, 192), (100, 1600)])
def test_auto_buffer_feeds_each_sample_to_at_most_four_steps(period, expected):
    from orwcfm.config import FinetuneConfig
    from orwcfm.config.finetune import AUTO_REUSE

    cfg = FinetuneConfig(batch_size=64)
    assert cfg.buffer_size == "auto"  # the default
    n = cfg.samples_per_refresh(period)
    assert n == expected and n % 64 == 0
    assert period * 64 / n <= AUTO_REUSE  # the guard: no sample feeds more steps than AUTO_REUSE
    assert FinetuneConfig(batch_size=64, buffer_size=None).samples_per_refresh(period) is None
    assert FinetuneConfig(batch_size=64, buffer_size=256).samples_per_refresh(period) == 256


def test_the_default_buffer_scores_one_auto_buffer_per_refresh_in_batch_sized_chunks(reference, tmp_path):
    """The README API's default (buffer_size auto): 10 steps per epoch at batch 64 draw 64 x ceil(10 / 4) = 192
    samples per refresh, the policy integrating them one batch (64) at a time, and the reward is called once per
    refresh, not once per step."""
    calls: list[int] = []

    def reward(x):
        calls.append(x.shape[0])
        return -(x[:, 0] - 1.0).abs()

    trainer = make(reference, tmp_path, reward_fn=reward, buffer_size="auto", batch_size=64)
    rows_seen: list[int] = []
    hook = trainer.policy.register_forward_pre_hook(lambda _m, args: rows_seen.append(args[1].shape[0]))
    calls.clear()  # the evaluation before training also calls it
    summary = trainer.train(num_epochs=2, steps_per_epoch=10)
    hook.remove()
    assert summary.reward_evaluations == 2 * 192
    assert calls.count(192) == 2  # the two refreshes (evaluations score eval_samples = 1000 at a time)
    assert max(rows_seen) == 64  # never more than a batch through the policy at once
    fresh = make(reference, tmp_path / "fresh", buffer_size=None, batch_size=64)
    assert fresh.train(num_epochs=2, steps_per_epoch=10).reward_evaluations == 2 * 10 * 64


@pytest.mark.parametrize("settings, message", [
    ({"buffer_size": "big"}, r"config key 'buffer_size': expected int \| 'auto' \| null, got 'big'"),
    ({"buffer_size": 32, "batch_size": 64}, r"'buffer_size' \(32\) must be at least batch_size \(64\)"),
    ({"refresh": "offline", "buffer_size": "auto"}, r"'offline' .* needs buffer_size, the number of samples \(got auto\)"),
])
def test_a_bad_buffer_size_is_one_line(settings, message):
    from orwcfm.config import finetune_config

    with pytest.raises(UserError, match=message):
        finetune_config(settings)
