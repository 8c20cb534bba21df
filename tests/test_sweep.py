"""``orwcfm sweep`` and ``orwcfm evaluate``: bad grids refused before any run, a real tiny sweep that resumes by
skipping finished cells, and a checkpoint evaluation whose numbers match an independent recomputation."""

import base64
import csv
import json

import pytest
import torch

from orwcfm.checkpoint import load_checkpoint
from orwcfm.cli import main
from orwcfm.config import pretrain_config
from orwcfm.errors import UserError
from orwcfm.finetune.evaluate import DigitsJudge, evaluate_checkpoint, make_judge
from orwcfm.metrics import empirical_w2
from orwcfm.sampling import integrate
from orwcfm.sweep import parse_grid, plan_sweep
from orwcfm.train import pretrain

QUICK = ["epochs=1", "steps_per_epoch=3", "eval_samples=48", "buffer_size=64", "batch_size=32", "log_every=1",
         "sampling.steps=4", "eval_sampling.steps=4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 20-step 8gaussians reference checkpoint (seconds)."""
    root = tmp_path_factory.mktemp("sweep-ref")
    return pretrain(pretrain_config("8gaussians", steps=20, batch_size=32, num_samples=16, log_every=10,
                                    checkpoint_every=20, sampling={"steps": 4}), root / "ref", progress=False).checkpoint


# ---------------------------------------------------------------------------------------------------------------
# Bad grids: refused before anything is written.


@pytest.mark.parametrize("grid, message", [
    (["w2_coeficient=0,1"], "--grid w2_coeficient: unknown config key (did you mean 'w2_coefficient'?)"),
    (["sampling.stepz=4,8"], "--grid sampling.stepz: unknown config key (did you mean 'sampling.steps'?)"),
    (["temperature="], "--grid temperature: empty value list"),
    (["temperature"], "--grid expects KEY=V1,V2,..., got 'temperature'"),
    (["temperature=1,2", "temperature=3"], "--grid temperature is given twice"),
    (["temperature=1,1.0"], "--grid temperature: a value is repeated"),
    (["run_name=a,b"], "--grid run_name: a sweep names its own runs"),
    (["learning_rate.x=1,2"], "'learning_rate' is a plain setting, it has no 'x'"),
])
def test_parse_grid_refuses(grid, message):
    with pytest.raises(UserError) as err:
        parse_grid(grid)
    assert message in str(err.value)
    assert "KEY=V1,V2" in str(err.value) or "twice" in message or "repeated" in message or "own runs" in message


@pytest.mark.parametrize("grid, message", [
    (["w2_coefficient=0,abc"], "sweep cell w2_coefficient=abc: config key 'w2_coefficient': expected a number, got 'abc'"),
    (["sampling.steps=4,2.5"], "config key 'sampling.steps': expected an integer, got 2.5"),
    (["temperature=1,-2"], "config key 'temperature' must be >= 0, got -2.0"),
    (["coupling=ot,sinkhorn"], "'sinkhorn' is not accepted"),
])
def test_wrong_value_types_are_refused_before_any_run(tmp_path, grid, message):
    out = tmp_path / "sweep"
    with pytest.raises(UserError) as err:
        plan_sweep("toy-2d", parse_grid(grid), out)
    assert message in str(err.value) and "--grid KEY=V1,V2" in str(err.value)
    assert not out.exists()


def test_cli_refuses_a_bad_grid_with_one_line_and_no_folder(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", "toy-2d", "--grid", "w2_coefficient=0,1", "--grid", "temperatur=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'temperature'" in err[0]
    assert not out.exists()


def test_grid_key_also_in_set_is_refused(tmp_path):
    with pytest.raises(UserError, match="--grid temperature and --set temperature both set"):
        plan_sweep("toy-2d", parse_grid(["temperature=1,2"]), tmp_path, overrides=["temperature=3"])


def test_grid_values_reach_each_cell_config(tmp_path):
    cells = plan_sweep("toy-2d", parse_grid(["w2_coefficient=0,0.5", "sampling.solver=euler,rk4"]), tmp_path, ["epochs=2"])
    assert [c.name for c in cells] == ["w2_coefficient=0,sampling.solver=euler", "w2_coefficient=0,sampling.solver=rk4",
                                       "w2_coefficient=0.5,sampling.solver=euler", "w2_coefficient=0.5,sampling.solver=rk4"]
    assert [(c.config.w2_coefficient, c.config.sampling.solver, c.config.epochs) for c in cells] == [
        (0.0, "euler", 2), (0.0, "rk4", 2), (0.5, "euler", 2), (0.5, "rk4", 2)]
    assert cells[0].run_dir == tmp_path / "cells" / cells[0].name


# ---------------------------------------------------------------------------------------------------------------
# A real sweep.


def test_sweep_runs_writes_table_and_plot_and_skips_finished_cells(tmp_path, reference, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", "toy-2d", "--grid", "w2_coefficient=0,1", "--out", str(out), "--no-progress",
            "--set", *QUICK, f"ref_path={reference}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/2] w2_coefficient=0: running" in printed and "[2/2] w2_coefficient=1: running" in printed

    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["w2_coefficient"] for r in rows] == ["0", "1"]
    for row in rows:
        summary = json.loads((out / "cells" / row["cell"] / "summary.json").read_text())
        assert float(row["diversity"]) == pytest.approx(summary["diversity_after"])
        assert float(row["reward_mean"]) == pytest.approx(summary["reward_mean_after"])
        assert float(row["w2_to_reference"]) > 0  # three steps of training moved the model
    md = (out / "sweep.md").read_text().splitlines()
    assert md[0].startswith("| w2_coefficient | reward_mean") and md[2].startswith("| reference |")
    assert (out / "tradeoff.png").stat().st_size > 1000
    plan = json.loads((out / "sweep.json").read_text())
    assert plan["grid"] == {"w2_coefficient": [0, 1]} and len(plan["cells"]) == 2

    # The report of the sweep: one file, the trade-off plot embedded byte for byte.
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert base64.b64encode((out / "tradeoff.png").read_bytes()).decode() in page
    assert "w2_coefficient=1" in page and 'src="http' not in page
    capsys.readouterr()

    # Run again: nothing is retrained.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/summary.json")}
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/summary.json")} == stamps

    # An interrupted cell (checkpoint, no summary) is resumed, not restarted: no new training rows.
    cell = out / "cells" / "w2_coefficient=1"
    (cell / "summary.json").unlink()
    lines = (cell / "metrics.jsonl").read_text().count("train/loss")
    assert main(argv) == 0
    assert "[2/2] w2_coefficient=1: resuming" in capsys.readouterr().out
    assert (cell / "metrics.jsonl").read_text().count("train/loss") == lines
    assert (cell / "summary.json").exists()

    # The same folder with other settings is refused before any run.
    assert main([*argv, "learning_rate=0.5"]) == 2
    assert "was run with other settings (learning_rate differ)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# orwcfm evaluate.


def test_evaluate_checkpoint_matches_independent_computation(tmp_path, reference, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "--config", "toy-2d", "--ref", str(reference), "--out", str(run), "--no-progress",
                 "--set", *QUICK, "w2_coefficient=0"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--ckpt", str(run), "-n", "64", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["reward"] == "distance" and result["num_samples"] == 64 and result["kind"] == "finetune"
    assert "| w2_to_reference |" in printed

    # Recompute the headline numbers by hand from the same noise.
    ckpt, ref = load_checkpoint(run), load_checkpoint(reference)
    noise = torch.randn((64, 2), generator=torch.Generator().manual_seed(3))
    x = integrate(ckpt.build_model("raw"), noise, solver="midpoint", steps=4).samples
    y = integrate(ref.build_model("ema"), noise, solver="midpoint", steps=4).samples
    target = torch.tensor([5.0, 0.0])
    assert result["metrics"]["reward_mean"] == pytest.approx((-(x - target).norm(dim=1)).mean().item(), rel=1e-5)
    assert result["metrics"]["w2_to_reference"] == pytest.approx(empirical_w2(x, y), rel=1e-5)
    assert result["metrics"]["w2_to_reference"] > 0
    # the floor: the reference against itself from the next 64 draws of the same stream (independent noise)
    gen = torch.Generator().manual_seed(3)
    first, second = torch.randn((64, 2), generator=gen), torch.randn((64, 2), generator=gen)
    assert torch.equal(first, noise)
    y2 = integrate(ref.build_model("ema"), second, solver="midpoint", steps=4).samples
    assert result["metrics"]["w2_to_reference_floor"] == pytest.approx(empirical_w2(y, y2), rel=1e-5)
    assert result["metrics"]["w2_to_reference_floor"] > 0
    assert "| w2_to_reference_floor |" in printed

    default_out = load_checkpoint(run).path / "evaluation.json"
    assert main(["evaluate", "--ckpt", str(run), "-n", "16"]) == 0 and default_out.exists()


def test_evaluate_refuses_missing_reward_and_tiny_n(reference, capsys):
    assert main(["evaluate", "--ckpt", str(reference), "-n", "16"]) == 2
    assert "records no reward (a pretrain checkpoint): pass --reward NAME" in capsys.readouterr().err
    with pytest.raises(UserError, match="-n must be at least 2 samples"):
        evaluate_checkpoint(reference, reward="distance", num_samples=1)


def test_evaluate_pretrained_checkpoint_with_a_named_reward(reference):
    from orwcfm.metrics import mean_pairwise_distance, vendi_score
    from orwcfm.rewards import load_reward

    result = evaluate_checkpoint(reference, reward="linear", num_samples=32)
    assert result.reference is None and "w2_to_reference" not in result.metrics
    # the samples are the checkpoint's, integrated with its own sampling settings from seed-0 noise
    noise = torch.randn((32, 2), generator=torch.Generator().manual_seed(0))
    x = integrate(load_checkpoint(reference).build_model("ema"), noise, solver=result.solver, steps=result.steps).samples
    assert torch.allclose(result.evaluation.samples, x, atol=1e-6)
    assert result.metrics["reward_mean"] == pytest.approx(load_reward("linear")(x).mean().item(), rel=1e-5)
    assert result.metrics["diversity"] == pytest.approx(mean_pairwise_distance(x), rel=1e-6)
    assert result.metrics["vendi"] == pytest.approx(vendi_score(x), rel=1e-6)  # no reference: median bandwidth


# ---------------------------------------------------------------------------------------------------------------
# The digits judge.


def test_digits_judge_on_real_digits():
    from orwcfm.data import load_dataset
    from orwcfm.rewards import load_reward

    data = load_dataset("digits")
    judge = make_judge("digits", load_reward("digits-even"))
    assert isinstance(judge, DigitsJudge) and judge.targets == (0, 2, 4, 6, 8)
    assert make_judge(None, None) is None
    out = judge(data.x, data.x)
    assert out["digits_fd_ref"] == pytest.approx(0.0, abs=1e-6)  # a set against itself
    assert out["digits_fd_data"] == pytest.approx(0.0, abs=1e-6)  # the judge's data are these digits
    assert out["class_entropy"] == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=0.01)  # balanced classes
    even = data.x[data.labels % 2 == 0]
    on_even = judge(even, None)
    # the gold classifier (an MLP, trained on the other half) recognises real even digits as even
    assert on_even["gold_target_fraction"] > 0.95 and on_even["gold_reward_mean"] > 0.9
    assert on_even["digits_fd_data"] > 1.0  # only half the classes: far from the data


LABEL_REWARD = '''
import torch

def signed_mean(x, cond):
    """Prompt 1 wants bright images, prompt 0 dark ones: the reward depends on the condition."""
    return x.flatten(1).mean(1) * (2 * cond.values.float() - 1)
'''


@pytest.mark.slow
def test_evaluate_a_conditional_checkpoint_under_its_prompts_and_guidance(tmp_path):
    # `orwcfm evaluate` must draw a conditional model's samples as its run did (spread over the prompts, the reference
    # under the same conditions, guidance as asked): recompute the numbers from the same noise and labels.
    from orwcfm.conditions import Labels
    from orwcfm.guidance import guided

    ref = pretrain(pretrain_config("digits", data={"name": "digits", "options": {"digits": [0, 1]}}, steps=20,
                                   batch_size=32, conditional=True, condition_dropout=0.2, num_samples=4,
                                   log_every=10, checkpoint_every=20, ema_decay=None,
                                   model={"kind": "unet", "options": {"base_channels": 8}}), tmp_path / "ref",
                   progress=False).checkpoint
    (tmp_path / "signed.py").write_text(LABEL_REWARD)
    run = tmp_path / "run"
    assert main(["finetune", "--config", "digits-align", "--ref", str(ref), "--out", str(run), "--no-progress",
                 "--set", *QUICK, f"reward={tmp_path / 'signed.py'}:signed_mean", "judge=none",
                 "prompts=[dark, bright]", "samples_per_prompt=4", "eval_sampling.guidance=2.0"]) == 0
    result = evaluate_checkpoint(run, num_samples=20, seed=3)
    assert result.prompts == ["dark", "bright"] and result.guidance == 2.0  # the run's evaluation guidance
    assert result.to_dict()["prompts"] == ["dark", "bright"]

    loaded, reference = load_checkpoint(run), load_checkpoint(ref).build_model("raw")
    noise = torch.randn((20, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    labels = Labels(torch.arange(20) % 2, 2)  # spread evenly: 0, 1, 0, 1, ...
    model = loaded.build_model(result.weights)
    x = integrate(guided(model, 2.0, labels), noise, solver="midpoint", steps=4, cond=labels).samples
    y = integrate(guided(reference, 2.0, labels), noise, solver="midpoint", steps=4, cond=labels).samples
    assert torch.allclose(result.evaluation.samples, x, atol=1e-5)
    signed = x.flatten(1).mean(1) * (2 * labels.values.float() - 1)
    assert result.metrics["reward_mean"] == pytest.approx(signed.mean().item(), rel=1e-5)
    assert result.metrics["w2_to_reference"] == pytest.approx(empirical_w2(x, y), rel=1e-5)
    # without the conditions the reward would be another number: the test fails for a prompt-blind evaluation
    blind = integrate(model, noise, solver="midpoint", steps=4).samples
    assert not torch.allclose(blind, x, atol=1e-3)

    plain = evaluate_checkpoint(run, num_samples=20, seed=3, guidance=1.0)  # the flag overrides the run's scale
    x1 = integrate(model, noise, solver="midpoint", steps=4, cond=labels).samples
    assert plain.guidance == 1.0 and torch.allclose(plain.evaluation.samples, x1, atol=1e-5)
    # a pretraining checkpoint has no prompts: its classes are the prompts
    assert evaluate_checkpoint(ref, reward=f"{tmp_path / 'signed.py'}:signed_mean", num_samples=8,
                               judge="none").prompts == ["class 0", "class 1"]
    with pytest.raises(UserError, match=r"guidance scale must be a number >= 0 \(1 = no guidance\), got -1"):
        evaluate_checkpoint(run, num_samples=8, guidance=-1.0)


def test_evaluate_refuses_guidance_for_an_unconditional_model(reference):
    with pytest.raises(UserError, match="guidance 2 needs a conditional model; this checkpoint's model is unconditional"):
        evaluate_checkpoint(reference, reward="linear", num_samples=8, guidance=2.0)
