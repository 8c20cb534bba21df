"""The evaluations' predicted share of a run (finetune/cost.py) against hand counts, and what train() says of it."""

import json

import pytest

from orwcfm.compare import _algorithm
from orwcfm.config import finetune_config
from orwcfm.finetune.cost import (AUTO_SHARE, MIN_AUTO_EVAL_SAMPLES, EvalPlan, large_share_hint, plan_evaluations,
                                  predict_cost)


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
    config = {"batch_size": 16, "eval_samples": 400, "eval_every": 1, "sampling": {"solver": "euler", "steps": 2},
              "log_every": 100, "savedir": str(tmp_path), "run_name": "r"}
    trainer = ORWCFMTrainer(model, config, "cpu", reward_fn=lambda x: -x.pow(2).sum(1), progress=True)
    summary = trainer.train(num_epochs=2, steps_per_epoch=2)
    err = capsys.readouterr().err
    # 3 evaluations of 400 x 20 passes against 4 tiny steps: nearly all of the work, and the user is told
    assert "the 3 evaluations (400 samples x 20 network passes each) are about 99 %" in err
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["evaluation_share_predicted"] == pytest.approx(summary.evaluation_share_predicted)
    assert summary.evaluation_share_predicted > 0.98
    assert 0 < saved["evaluation_seconds"] <= saved["wall_seconds"]


# ---------------------------------------------------------------------------------------------------------------
# eval_every / eval_samples: auto (the defaults of the README API) keep evaluations a small share of any run


README = dict(batch_size=128, w2_coefficient=1.0, temperature=0.5)  # the public README's dict, nothing on evaluation


def test_auto_shrinks_the_evaluations_of_a_short_run_to_the_floor():
    # the README's smoke run, train(num_epochs=1, steps_per_epoch=2): per step the model's forward + backward on B
    # rows (3 x 128), the reference on 128, and policy samples: buffer auto draws 128 x ceil(2 / 4) per 2-step
    # period, 64 a step, x 20 passes (midpoint x 10)
    cfg = finetune_config(**README)
    training = 2 * (3 * 128 + 128 + 64 * 20)
    # 500 samples would be 3 sets (reference, before, after) x 500 x 20 = 30000 rows, 89 % of the run; 10 % allows
    # 3584 / 9 = 398 rows, 6 samples: below the floor, so 64
    plan = plan_evaluations(cfg, _algorithm(cfg), num_epochs=1, steps_per_epoch=2)
    assert plan == EvalPlan(samples=MIN_AUTO_EVAL_SAMPLES, every=1, auto=("eval_samples", "eval_every"))
    cost = predict_cost(cfg, _algorithm(cfg), 1, 2, plan)
    assert cost.training == training and cost.evaluations == 3 * 64 * 20
    assert predict_cost(cfg, _algorithm(cfg), 1, 2, EvalPlan(500, 1)).evaluation_share == pytest.approx(
        30000 / (30000 + training))


def test_auto_spaces_the_evaluations_of_a_long_run_and_keeps_their_size():
    # digits at the README's batch: 12 epochs of 50 steps, OT (2B rows through the model)
    cfg = finetune_config(batch_size=128, coupling="ot", w2_coefficient=0.1)
    per_step = 3 * 256 + 128 + 128 * 13 * 20 / 50  # buffer auto: 128 x ceil(50 / 4) policy samples per 50 steps
    budget = AUTO_SHARE / (1 - AUTO_SHARE) * per_step * 600
    # every epoch: 14 sets of 500 x 20 (13 evaluations + the reference's) = 140000 rows > budget (104107);
    # every 2nd: 8 sets (before, 2, 4, .., 12 + the reference's) = 80000 rows, within it
    assert 14 * 500 * 20 > budget >= 8 * 500 * 20
    plan = plan_evaluations(cfg, _algorithm(cfg), num_epochs=12, steps_per_epoch=50)
    assert (plan.samples, plan.every, plan.evaluations(12)) == (500, 2, 7)
    # a long run of the README's setting fits every epoch at full size (9.4 %)
    cfg = finetune_config(**README)
    plan = plan_evaluations(cfg, _algorithm(cfg), num_epochs=10, steps_per_epoch=100)
    assert (plan.samples, plan.every) == (500, 1)


def test_values_the_user_sets_are_never_changed():
    cfg = finetune_config(**README, eval_samples=300, eval_every=1)
    assert plan_evaluations(cfg, _algorithm(cfg), 1, 2) == EvalPlan(300, 1)  # 83 % of the run, as asked
    cfg = finetune_config(**README, eval_samples=300)  # only the interval is auto: the size stays 300
    plan = plan_evaluations(cfg, _algorithm(cfg), 12, 2)
    assert plan.samples == 300 and plan.every == 12 and plan.auto == ("eval_every",)
    # only the size is auto: the interval stays 1, so the 13 evaluations + the reference's set share the budget:
    # 14 x n x 20 <= 43008 / 9 (12 x 2 steps of 1792 rows) gives n = 17, below the floor, so 64
    cfg = finetune_config(**README, eval_every=1)
    plan = plan_evaluations(cfg, _algorithm(cfg), 12, 2)
    assert (plan.samples, plan.every, plan.auto) == (MIN_AUTO_EVAL_SAMPLES, 1, ("eval_samples",))
    # and between the floor and 500: 12 epochs of 30 steps, every epoch, n = floor(budget / (14 x 20)) = 170
    training = 12 * 30 * (3 * 128 + 128 + 128 * 8 * 20 / 30)  # buffer auto: 128 x ceil(30 / 4) per epoch
    plan = plan_evaluations(cfg, _algorithm(cfg), 12, 30)
    assert plan.samples == int(AUTO_SHARE / (1 - AUTO_SHARE) * training // (14 * 20)) and 64 < plan.samples < 500


def test_bad_eval_values_are_one_line():
    from orwcfm.errors import UserError

    for key, value, text in (("eval_every", 0, "config key 'eval_every' must be > 0, got 0"),
                             ("eval_samples", 1, "config key 'eval_samples' must be at least 2"),
                             ("eval_samples", "many", "config key 'eval_samples': expected int | 'auto', got 'many'")):
        with pytest.raises(UserError) as err:
            finetune_config(**{key: value})
        assert text in str(err.value) and "\n" not in str(err.value)


def test_train_with_auto_evaluates_as_planned_and_says_so(tmp_path, capsys):
    from orwcfm import ORWCFMTrainer
    from orwcfm.models import ModelSpec, build_model

    model = build_model(ModelSpec("mlp", (2,), {"hidden": 16, "depth": 1}))
    config = {"batch_size": 16, "sampling": {"solver": "euler", "steps": 2}, "log_every": 100,
              "savedir": str(tmp_path), "run_name": "r"}
    trainer = ORWCFMTrainer(model, config, "cpu", reward_fn=lambda x: -x.pow(2).sum(1), progress=True)
    assert trainer.eval_plan.samples == 500  # before train() knows the run's length
    assert trainer.evaluate().samples.shape == (500, 2)  # keeps a 500-sample reference set, which train() redraws
    summary = trainer.train(num_epochs=3, steps_per_epoch=2)
    # 6 tiny steps: before and after only, on the floor's 64 samples, and the user is told
    assert (summary.eval_samples, summary.eval_every) == (MIN_AUTO_EVAL_SAMPLES, 3)
    assert [row["epoch"] for row in trainer.history] == [0, 3]
    assert "evaluations: 64 samples every 3 epoch(s) and after the last" in capsys.readouterr().err
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (saved["eval_samples"], saved["eval_every"]) == (64, 3)
    assert trainer.evaluate().samples.shape == (64, 2)  # the run's instrument, also after it


def test_the_eval_share_benchmark_predicts_from_the_same_module(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import eval_share

    assert eval_share.main(["--predict-only"]) == 0
    out = capsys.readouterr().out
    # the smoke run: 89 % of the work in evaluations at the former defaults, the floor's 64 samples under auto
    assert "| README setting, train(1, 2) (the issue's smoke run) | 89.3 % | 64 every 1 | 51.7 % | 7.8x |" in out


def test_the_plans_count_of_evaluations_is_the_epochs_it_calls_due():
    for epochs in range(1, 25):
        for every in range(1, epochs + 1):
            plan = EvalPlan(samples=2, every=every)
            due = [e for e in range(1, epochs + 1) if plan.due(e, epochs)]
            assert plan.evaluations(epochs) == 1 + len(due) and due[-1] == epochs
