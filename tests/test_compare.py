"""``orwcfm compare``: the budget of reward evaluations becomes each algorithm's steps, runs interleave seed by seed,
the table's intervals are the t-intervals of the seeds' numbers, and bad input is one line before any run."""

import csv
import json

import pytest
from scipy.stats import t as student_t

from orwcfm.cli import main
from orwcfm.compare import aggregate, budget_schedule, interval, plan_compare
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
