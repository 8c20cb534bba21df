"""Benchmark: the evaluations' share of a run under ``eval_every: auto`` / ``eval_samples: auto`` (the defaults)
against the former defaults (500 samples after every epoch).

    .venv/bin/python benchmarks/eval_share.py              # predictions, then two digits runs (about 3 min)
    .venv/bin/python benchmarks/eval_share.py --predict-only

1. Predicted shares (``orwcfm.finetune.cost``, network rows: a step-anatomy benchmark measures a step at 1.00-1.08x
   its passes) for the public README's setting (36M UNet, batch 128, its smoke run and longer ones) and for digits.
2. Measured on digits: the README API (``ORWCFMTrainer(model, config)``, ``ref_path: builtin:digits``, the
   digits-even preset's alpha, tau, learning rate and OT pairing, batch 128) trained for ``--epochs`` x 50 steps with
   no evaluation key set (auto), and the same run with the former defaults, one after the other: the seconds spent
   in evaluations (``summary.evaluation_seconds``) against the run's wall time, and the prediction.
"""

from __future__ import annotations

import argparse
import tempfile

from orwcfm import ORWCFMTrainer
from orwcfm.checkpoint import load_checkpoint
from orwcfm.compare import _algorithm
from orwcfm.config import finetune_config
from orwcfm.finetune.cost import EvalPlan, plan_evaluations, predict_cost
from orwcfm.finetune.run import resolve_reference
from orwcfm.tables import markdown_table

README = {"batch_size": 128, "w2_coefficient": 1.0, "temperature": 0.5, "learning_rate": 2e-4}
DIGITS = {"batch_size": 128, "w2_coefficient": 0.1, "temperature": 2.0, "learning_rate": 5e-4, "coupling": "ot",
          "ref_path": "builtin:digits", "reward": "digits-even", "reward_options": {"log_prob": True}}
FORMER = {"eval_samples": 500, "eval_every": 1}
SCENARIOS = [  # (label, config, epochs, steps per epoch)
    ("README setting, train(1, 2) (the issue's smoke run)", README, 1, 2),
    ("README setting, 10 x 100 steps", README, 10, 100),
    ("README setting, 1000 x 100 steps (the paper's length)", README, 1000, 100),
    ("digits, README API, 2 x 50 steps", DIGITS, 2, 50),
    ("digits, README API, 12 x 50 steps", DIGITS, 12, 50),
]


def predictions() -> str:
    rows = []
    for label, settings, epochs, steps in SCENARIOS:
        cfg = finetune_config(**{k: v for k, v in settings.items() if k not in ("ref_path",)})
        algorithm = _algorithm(cfg)
        auto = plan_evaluations(cfg, algorithm, epochs, steps)
        former = predict_cost(cfg, algorithm, epochs, steps, EvalPlan(500, 1))
        ours = predict_cost(cfg, algorithm, epochs, steps, auto)
        rows.append([label, f"{100 * former.evaluation_share:.1f} %", f"{auto.samples} every {auto.every}",
                     f"{100 * ours.evaluation_share:.1f} %",
                     f"{former.evaluations / max(ours.evaluations, 1):.1f}x"])
    return markdown_table(["run", "former defaults (500 every epoch): predicted share", "auto: samples / interval",
                           "auto: predicted share", "evaluation work, former / auto"], rows)


def measure(epochs: int) -> str:
    reference = resolve_reference("builtin:digits", progress=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("auto (the defaults)", {}), ("former defaults: 500 every epoch", FORMER)):
            config = {**DIGITS, **extra, "savedir": tmp, "run_name": label.split()[0], "log_every": 10 ** 6,
                      "judge": "none", "keep_checkpoints": 1}
            model = load_checkpoint(reference).build_model("ema")
            trainer = ORWCFMTrainer(model, config, "cpu", progress=False)
            trainer.load_pretrained(config["ref_path"])
            s = trainer.train(num_epochs=epochs, steps_per_epoch=50)
            rows.append([label, f"{s.eval_samples} every {s.eval_every}", str(len(trainer.history)),
                         f"{s.wall_seconds:.1f}", f"{s.evaluation_seconds:.1f}",
                         f"{100 * s.evaluation_seconds / s.wall_seconds:.1f} %",
                         f"{100 * s.evaluation_share_predicted:.1f} %", f"{s.reward_mean_after:.3f}"])
    return markdown_table(["digits run", "samples / interval", "evaluations", "wall time (s)", "in evaluations (s)",
                           "measured share", "predicted share", "reward after"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--predict-only", action="store_true")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the measured digits runs (50 steps each)")
    args = p.parse_args(argv)
    print(predictions())
    if not args.predict_only:
        print()
        print(measure(args.epochs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
