"""Pretraining: the loop learns a distribution with a known answer, logs, checkpoints and resumes."""

import json

import pytest
import torch

from orwcfm.checkpoint import list_checkpoints, load_checkpoint
from orwcfm.config import pretrain_config
from orwcfm.errors import UserError
from orwcfm.sampling import sample
from orwcfm.train import pretrain, warmup_schedule


def gaussian_config(**kw):
    settings = dict(steps=600, batch_size=256, learning_rate=3e-3, warmup_steps=20, log_every=100,
                    checkpoint_every=300, num_samples=500, ema_decay=0.99,
                    model={"kind": "mlp", "options": {"hidden": 64, "depth": 2}},
                    data={"name": "gaussian-1d", "options": {"mean": 2.0, "std": 0.5}})
    settings.update(kw)
    return pretrain_config(**settings)


def test_pretraining_learns_a_gaussian(tmp_path):
    result = pretrain(gaussian_config(), tmp_path, progress=False)
    model = load_checkpoint(result.checkpoint).build_model("ema")
    x = sample(model, 4000, (1,), generator=torch.Generator().manual_seed(0), steps=50)
    # the flow of a Gaussian is exactly representable: mean 2 and std 0.5 must come out
    assert x.mean().item() == pytest.approx(2.0, abs=0.06)
    assert x.std().item() == pytest.approx(0.5, abs=0.06)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [100, 200, 300, 400, 500, 600]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (tmp_path / "samples.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").exists()
    assert any((tmp_path / "tensorboard").iterdir())
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000300", "step_0000600"]


def test_resume_continues_exactly(tmp_path):
    full = pretrain(gaussian_config(steps=40, checkpoint_every=20, log_every=10), tmp_path / "full", progress=False)
    half = gaussian_config(steps=20, checkpoint_every=20, log_every=10)
    pretrain(half, tmp_path / "split", progress=False)
    resumed = pretrain(gaussian_config(steps=40, checkpoint_every=20, log_every=10), tmp_path / "split", resume=True, progress=False)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for k in a.weights:
        torch.testing.assert_close(a.weights[k], b.weights[k], rtol=0, atol=0)
        torch.testing.assert_close(a.ema_weights[k], b.ema_weights[k], rtol=0, atol=0)


def test_warmup_then_cosine():
    f = warmup_schedule(10, 110, "cosine")
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    assert warmup_schedule(0, 10, "constant")(5) == 1.0


def test_unknown_dataset_fails_before_writing(tmp_path):
    with pytest.raises(UserError, match="unknown data set 'digts' \\(did you mean 'digits'\\?\\)"):
        pretrain(pretrain_config(data={"name": "digts"}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
