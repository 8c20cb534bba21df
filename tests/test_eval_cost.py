"""The evaluations' predicted share of a run (finetune/cost.py) against hand counts, and what train() says of it."""

import json

import pytest

from orwcfm.compare import _algorithm
from orwcfm.config import finetune_config
from orwcfm.finetune.cost import large_share_hint, predict_cost


def test_digits_even_preset_cost_is_the_hand_count():
    cfg = finetune_config(config_file="digits-even")  # batch 128, OT, buffer 1024 per 50-step epoch, 12 epochs
    cost = predict_cost(cfg, _algorithm(cfg), num_epochs=12, steps_per_epoch=50)
    # per step: the model's forward + backward on 2B = 256 rows (W2 interpolants of their own under OT), the
    # reference's forward on 128, and 1024 / 50 policy samples x 20 passes (midpoint x 10)
    per_step = 3 * 256 + 128 + 1024 / 50 * 20
    assert cost.training == pytest.approx(per_step * 600)
    # 13 evaluations (before + every epoch) and the reference's own samples, 1000 x 20 passes each
    assert cost.evaluations_made == 13 and cost.evaluations == 14 * 1000 * 20
    assert cost.evaluation_share == pytest.approx(280000 / (280000 + per_step * 600))
    assert "the 13 evaluations (1000 samples x 20 network passes each) are about 26 %" in large_share_hint(cost, cfg, 12)


def test_eval_every_and_a_fresh_batch_change_the_count():
    cfg = finetune_config(config_file="digits-even", eval_every=4, buffer_size=None, coupling="independent",
                          sampling={"solver": "euler", "steps": 100})
    cost = predict_cost(cfg, _algorithm(cfg), num_epochs=12, steps_per_epoch=50)
    assert cost.evaluations_made == 4  # before, 4, 8, 12
    assert cost.training == pytest.approx((3 * 128 + 128 + 128 * 100) * 600)  # B rows each; 128 fresh x 100 passes
    assert large_share_hint(cost, cfg, 12) is None  # 5 x 20000 against 8M: under 2 %


def test_cifar10_clip_preset_keeps_evaluation_a_small_share():
    cfg = finetune_config(config_file="cifar10-clip")
    cost = predict_cost(cfg, _algorithm(cfg), num_epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch)
    assert cost.evaluations_made == 1 + 100  # before, then every 10th of 1000 epochs
    assert cost.evaluation_share < 0.05


def test_train_records_the_time_in_evaluations_and_the_prediction(tmp_path, capsys):
    from orwcfm import ORWCFMTrainer
    from orwcfm.models import ModelSpec, build_model

    model = build_model(ModelSpec("mlp", (2,), {"hidden": 16, "depth": 1}))
    config = {"batch_size": 16, "eval_samples": 400, "sampling": {"solver": "euler", "steps": 2}, "log_every": 100,
              "savedir": str(tmp_path), "run_name": "r"}
    trainer = ORWCFMTrainer(model, config, "cpu", reward_fn=lambda x: -x.pow(2).sum(1), progress=True)
    summary = trainer.train(num_epochs=2, steps_per_epoch=2)
    err = capsys.readouterr().err
    # 3 evaluations of 400 x 20 passes against 4 tiny steps: nearly all of the work, and the user is told
    assert "the 3 evaluations (400 samples x 20 network passes each) are about 99 %" in err
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["evaluation_share_predicted"] == pytest.approx(summary.evaluation_share_predicted)
    assert summary.evaluation_share_predicted > 0.98
    assert 0 < saved["evaluation_seconds"] <= saved["wall_seconds"]
