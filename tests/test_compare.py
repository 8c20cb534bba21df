"""``orwcfm compare``: the budget of reward evaluations becomes each algorithm's steps, runs interleave seed by seed,
the table's intervals are the t-intervals of the seeds' numbers, and bad input is one line before any run."""

import csv
import json

import pytest
from scipy.stats import t as student_t

from orwcfm.cli import main
from orwcfm.compare import (QUICK_OVERRIDES, Target, aggregate, budget_schedule, fewest_to_target, interval, parse_target,
                            plan_compare, reached, tradeoff_axes)
from orwcfm.config import finetune_config
from orwcfm.errors import UserError

QUICK = ["batch_size=64", "buffer_size=128", "steps_per_epoch=4", "eval_samples=64",
         "sampling.steps=2", "eval_sampling.steps=2", "log_every=2"]


def test_the_budget_becomes_refreshes_and_steps():
    cfg = finetune_config(config_file="toy-2d", buffer_size=512, batch_size=128, steps_per_epoch=10)
    s = budget_schedule(cfg, 2048)  # 4 refreshes of 512, one per epoch
    assert (s.epochs, s.steps_per_epoch, s.reward_evaluations) == (4, 10, 2048)
    s = budget_schedule(finetune_config(config_file="toy-2d", buffer_size=512, batch_size=128, refresh_every=5,
                                        epochs=2), 2048)  # 4 refreshes every 5 steps: 20 steps over 2 epochs
    assert (s.epochs, s.steps_per_epoch, s.reward_evaluations) == (2, 10, 2048)
    s = budget_schedule(finetune_config(config_file="toy-2d", buffer_size=None, batch_size=128, epochs=3), 1000)
    # 7 fresh batches fit: all 7 in one epoch (3 epochs x 2 would leave one unspent)
    assert (s.epochs, s.steps_per_epoch, s.reward_evaluations) == (1, 7, 896)
    # a method that samples inside its loss: 4096 / 128 = 32 steps in at most 12 epochs -> 8 x 4, the whole budget
    s = budget_schedule(finetune_config(config_file="digits-even", algorithm="draft"), 4096)
    assert (s.epochs, s.steps_per_epoch, s.reward_evaluations) == (8, 4, 4096)
    s = budget_schedule(finetune_config(config_file="toy-2d", refresh="offline", buffer_size=512, batch_size=128,
                                        steps_per_epoch=10), 2048)
    assert s.overrides == {"buffer_size": 2048} and s.reward_evaluations == 2048 and (s.epochs, s.steps_per_epoch) == (4, 10)
    with pytest.raises(UserError, match=r"budget 100 is smaller than one refresh of orw-cfm-w2 \(512 reward "
                                        r"evaluations: buffer_size\)"):
        budget_schedule(cfg, 100)
    # buffer_size auto: a refresh every 10 steps at batch 128 draws 128 x ceil(10 / 4) = 384 samples
    auto = finetune_config(config_file="toy-2d", buffer_size="auto", batch_size=128, steps_per_epoch=10)
    s = budget_schedule(auto, 2000)  # 5 refreshes of 384 (1920), one per epoch
    assert (s.epochs, s.steps_per_epoch, s.reward_evaluations) == (5, 10, 1920)
    with pytest.raises(UserError, match=r"budget 300 is smaller than one refresh of orw-cfm-w2 \(384 reward "
                                        r"evaluations: buffer_size auto\)"):
        budget_schedule(auto, 300)


def test_runs_interleave_seed_by_seed_and_every_cell_is_checked_before_any_run(tmp_path):
    cells = plan_compare("toy-2d", ["orw-cfm-w2"], [0, 1], 4096, tmp_path / "cmp",
                         sweeps=["orw-cfm-w2:w2_coefficient=0.1,1"], overrides=QUICK)
    assert [(c.seed, c.setting.label) for c in cells] == [(0, "w2_coefficient=0.1"), (0, "w2_coefficient=1"),
                                                          (1, "w2_coefficient=0.1"), (1, "w2_coefficient=1")]
    assert [c.cell.config.w2_coefficient for c in cells] == [0.1, 1.0, 0.1, 1.0]
    assert [c.cell.config.seed for c in cells] == [0, 0, 1, 1]
    assert not (tmp_path / "cmp").exists()  # planning writes nothing
    # a setting of one algorithm only, beside another's sweep
    cells = plan_compare("toy-2d", ["orw-cfm-w2", "adrpo"], [0], 4096, tmp_path / "cmp", overrides=QUICK,
                         sweeps=["adrpo:beta0=0.5,2"], options=["adrpo:advantage_scale=none", "orw-cfm-w2:temperature=2"])
    assert [(c.algorithm, c.cell.config.temperature, dict(c.cell.config.algorithm_options)) for c in cells] == [
        ("orw-cfm-w2", 2.0, {}), ("adrpo", 1.0, {"advantage_scale": "none", "beta0": 0.5}),
        ("adrpo", 1.0, {"advantage_scale": "none", "beta0": 2.0})]
    assert all(c.cell.config.coupling == "independent" for c in cells if c.algorithm == "adrpo")
    # a setting the algorithm cannot do without wins over the same key given as its option
    (cell,) = plan_compare("toy-2d", ["adrpo"], [0], 4096, tmp_path / "cmp", overrides=QUICK,
                           options=["adrpo:coupling=ot"])
    assert cell.cell.config.coupling == "independent"
    bad = [
        (dict(algorithms=["orw-cfm-w3"]), r"unknown algorithm 'orw-cfm-w3'; known: .*orw-cfm-w2"),
        (dict(budget=10), r"budget 10 is smaller than one refresh of orw-cfm-w2 \(128 reward evaluations"),
        (dict(overrides=[*QUICK, "samples_per_prompt=3", "prompts=[a, b]"]),
         r"samples_per_prompt 3 (must divide|does not divide)"),
        (dict(sweeps=["orw-cfm-w2=0.1"]), r"expected ALGORITHM:KEY=V1,V2"),
        (dict(overrides=[*QUICK, "epochs=3"]), r"--set epochs: a comparison sets each run's epochs from --budget"),
        (dict(config="patches-jpeg", algorithms=["orw-cfm-w2", "draft"], overrides=[]),
         r"compare run draft,default,seed=0: algorithm draft back-propagates through the reward, but reward "
         r"jpeg-compressibility is a black box; use one of: adrpo, diffusion-nft, flow-grpo, offline-rwr, orw-cfm-w2"),
        (dict(sweeps=["adrpo:beta0=1"], algorithms=["orw-cfm-w2"]), r"names adrpo, which is not among --algorithms"),
    ]
    for change, message in bad:
        args = dict(config="toy-2d", algorithms=["orw-cfm-w2"], seeds=[0], budget=4096, out=tmp_path / "x",
                    sweeps=[], overrides=QUICK) | change
        with pytest.raises(UserError, match=message):
            plan_compare(**args)
    assert not (tmp_path / "x").exists()


def test_interval_is_the_t_interval_of_the_seeds():
    values = [0.5, 0.7, 0.9]
    mean, half = interval(values)
    sd = (sum((v - 0.7) ** 2 for v in values) / 2) ** 0.5
    assert mean == pytest.approx(0.7) and half == pytest.approx(student_t.ppf(0.975, 2) * sd / 3 ** 0.5)
    rows = [{"algorithm": "a", "setting": "default", "reward_mean": v} for v in values]
    (agg,) = aggregate(rows)
    assert agg["seeds"] == 3 and agg["reward_mean"] == pytest.approx(0.7) and agg["reward_mean_ci"] == pytest.approx(half)


@pytest.mark.slow
def test_a_comparison_from_the_command_line(tmp_path, toy_reference):
    out = tmp_path / "cmp"
    args = ["compare", "--config", "toy-2d", "--algorithms", "orw-cfm-w2", "--seeds", "2", "--budget", "512",
            "--sweep", "orw-cfm-w2:w2_coefficient=0.1,1", "--out", str(out), "--no-progress",
            "--set", *QUICK, f"ref_path={toy_reference}"]
    assert main(args) == 0
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["seed"] for r in rows} == {"0", "1"}
    assert all(int(r["reward_evaluations"]) == 512 for r in rows)  # 4 refreshes of 128, the whole budget
    table = (out / "compare.md").read_text()
    for setting in ("w2_coefficient=0.1", "w2_coefficient=1"):
        mine = [float(r["reward_mean"]) for r in rows if r["setting"] == setting]
        mean, half = interval(mine)
        assert f"| orw-cfm-w2 | {setting} | 2 | {mean:.4g} ± {half:.2g} |" in table
    assert (out / "tradeoff.png").is_file() and (out / "report.html").is_file()
    plan = json.loads((out / "sweep.json").read_text())
    assert [c["values"]["seed"] for c in plan["cells"]] == [0, 0, 1, 1]
    assert main(args) == 0  # run again: every run finished earlier, skipped


def test_the_target_is_reached_at_the_first_evaluation_at_or_above_it():
    curve = [{"epoch": 0, "reward_evaluations": 0, "reward_mean": -6.0, "diversity": 6.0},
             {"epoch": 1, "reward_evaluations": 256, "reward_mean": -5.5, "diversity": 5.8},
             {"epoch": 2, "reward_evaluations": 512, "reward_mean": -5.0, "diversity": 5.1},  # exactly the level
             {"epoch": 3, "reward_evaluations": 768, "reward_mean": -5.2, "diversity": 4.9}]
    assert reached(curve, Target("reward_mean", -5.0)) == (512, 5.1)
    assert reached(curve, Target("reward_mean", -4.0)) == (None, None)
    assert reached(curve, Target("reward_mean", -7.0)) == (0, 6.0)  # the reference already reaches it
    with pytest.raises(UserError, match="no reward_evaluations"):
        reached([{"epoch": 1, "reward_mean": 1.0}], Target("reward_mean", 0.0))
    rows = [{"algorithm": "a", "setting": "x", "reached_target": True, "evals_to_target": 512, "diversity_at_target": 5.0},
            {"algorithm": "a", "setting": "x", "reached_target": True, "evals_to_target": 1024, "diversity_at_target": 4.0},
            {"algorithm": "b", "setting": "y", "reached_target": True, "evals_to_target": 256, "diversity_at_target": 3.0},
            {"algorithm": "b", "setting": "y", "reached_target": False},
            {"algorithm": "c", "setting": "z", "reached_target": True, "evals_to_target": 128, "diversity_at_target": 2.0},
            {"algorithm": "c", "setting": "z", "reached_target": True, "evals_to_target": 128, "diversity_at_target": 2.0}]
    agg = aggregate(rows)
    assert [a["reached_seeds"] for a in agg] == [2, 1, 2]
    assert agg[0]["evals_to_target"] == 768 and agg[1]["evals_to_target"] == 256  # over the seeds that reached it
    text = fewest_to_target(agg, Target("reward_mean", -5.0))
    assert text.index("- c (z): 128") < text.index("- a (x): 768")  # fewest first, only the settings every seed reached
    assert "- b (y)" not in text and "fewer seeds than were run: b (y) 1/2" in text


@pytest.mark.parametrize("text, message", [
    ("target_fraction", r"expected METRIC=VALUE"),
    ("diversity=3", r"diversity is not a metric a target can name; use one of: reward_mean"),
    ("target_fraction=high", r"'high' is not a number"),
    ("target_fraction=nan", r"must be finite"),
])
def test_a_bad_target_is_one_line(text, message):
    with pytest.raises(UserError, match=message):
        parse_target(text)
    assert parse_target("target_fraction=0.9") == Target("target_fraction", 0.9)


def test_quick_shrinks_every_run_and_the_users_settings_win(tmp_path):
    (cell,) = plan_compare("digits-even", ["orw-cfm-w2"], [0], 1024, tmp_path / "q", quick=True,
                           overrides=["eval_samples=32"])
    cfg = cell.cell.config
    assert (cfg.batch_size, cfg.buffer_size, cfg.steps_per_epoch, cfg.sampling.steps) == (64, 128, 4, 2)
    assert cfg.eval_samples == 32 and cell.schedule.epochs == 8  # 1024 / 128 refreshes, one per epoch
    assert "steps_per_epoch=4" in QUICK_OVERRIDES


def test_every_run_gets_one_instrument_when_the_task_leaves_evaluations_on_auto(tmp_path):
    # a task file without eval_samples / eval_every: auto would size each run's evaluations by its own training
    # cost (Flow-GRPO's step costs more than ORW-CFM-W2's), so a comparison fixes them: 500 samples every epoch
    task = tmp_path / "task.yaml"
    task.write_text("ref_path: builtin:8gaussians\nreward: distance\nreward_options: {point: [5.0, 0.0]}\n"
                    "batch_size: 64\nbuffer_size: 256\nsteps_per_epoch: 10\n")
    assert finetune_config(config_file=task).eval_samples == "auto"
    cells = plan_compare(str(task), ["orw-cfm-w2", "flow-grpo"], [0], 1024, tmp_path / "c")
    assert {(c.cell.config.eval_samples, c.cell.config.eval_every) for c in cells} == {(500, 1)}
    # what the task sets is kept
    task.write_text(task.read_text() + "eval_samples: 100\neval_every: 2\n")
    cells = plan_compare(str(task), ["orw-cfm-w2"], [0], 1024, tmp_path / "d")
    assert (cells[0].cell.config.eval_samples, cells[0].cell.config.eval_every) == (100, 2)


def test_the_tradeoff_plot_uses_the_diversity_within_a_prompt_when_there_are_prompts():
    # prompted digits: a run that collapses every prompt onto one sample keeps its diversity across prompts
    prompted = [{"alignment": 1.0, "reward_mean": 0.0, "diversity": 6.3, "diversity_per_condition": 2.0},
                {"alignment": 0.97, "reward_mean": -0.1, "diversity": 6.0, "diversity_per_condition": 4.3}]
    assert tradeoff_axes(prompted) == ("diversity_per_condition", "alignment")
    assert tradeoff_axes([{"target_fraction": 0.9, "reward_mean": 0.0, "diversity": 5.0}]) == ("diversity", "target_fraction")
    assert tradeoff_axes([{"reward_mean": 0.0, "diversity": 5.0}, {"reward_mean": 1.0, "diversity": 4.0}]) == (
        "diversity", "reward_mean")


@pytest.mark.slow
def test_every_algorithm_through_a_quick_comparison_with_a_target(tmp_path, toy_reference):
    """All eight families through one ``compare --quick`` (the CI smoke run of the comparison), and the reward
    evaluations to the target checked against the runs' own logs: the first evaluation in metrics.jsonl at or above
    the level, its step turned into reward evaluations by the run's schedule."""
    from orwcfm.algorithms import ALGORITHMS

    names = sorted(ALGORITHMS)
    out = tmp_path / "cmp"
    level = -5.9  # the reference's reward is about -6.1: every family should pass it within the budget
    assert main(["compare", "--config", "toy-2d", "--algorithms", ",".join(names), "--seeds", "1", "--budget", "512",
                 "--quick", "--target", f"reward_mean={level}", "--out", str(out), "--no-progress",
                 "--set", f"ref_path={toy_reference}"]) == 0
    with open(out / "compare.csv") as f:
        rows = {r["algorithm"].split(" ")[0]: r for r in csv.DictReader(f)}
    assert sorted(rows) == names
    plan = {c["values"]["algorithm"].split(" ")[0]: c for c in json.loads((out / "sweep.json").read_text())["cells"]}
    for name in names:
        row, cell = rows[name], plan[name]
        assert int(row["reward_evaluations"]) == 512  # the whole budget: 4 refreshes of 128, or 8 steps of 64
        evals = [json.loads(line) for line in (out / cell["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        evals = [(r["step"], r["eval/reward_mean"]) for r in evals if "eval/reward_mean" in r]
        spe = cell["steps_per_epoch"]
        per_epoch = 512 // cell["epochs"]
        spent = [0 if step == 0 else (512 if name == "offline-rwr" else step // spe * per_epoch) for step, _ in evals]
        first = next((n for n, (_, r) in zip(spent, evals) if r >= level), None)
        assert row["reached_target"] == str(first is not None)
        assert (row["evals_to_target"] or None) == (str(first) if first is not None else None)
    assert "Reward evaluations to reach reward_mean >= -5.9" in (out / "compare.md").read_text()
    config = (out / plan["draft"]["run_dir"] / "config.yaml").read_text()
    assert "eval_samples: 64" in config
