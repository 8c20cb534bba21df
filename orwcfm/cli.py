"""The ``orwcfm`` command line.

    orwcfm pretrain --data NAME --out DIR [--steps N] [--config FILE] [--set key=value ...]
    orwcfm finetune --config FILE [--ref DIR] --out DIR [--set key=value ...] [--resume]
    orwcfm sample   --ckpt DIR -n N --out FILE.png
    orwcfm evaluate --ckpt DIR [--reward NAME] [-n N] [--out FILE.json]
    orwcfm sweep    --config FILE --grid KEY=V1,V2 [--grid ...] --out DIR [--set key=value ...]
    orwcfm compare  --config TASK --algorithms A,B --seeds N --budget EVALS --out DIR [--sweep A:KEY=V1,V2 ...] [--target M=V] [--quick]
    orwcfm algorithms                     (the fine-tuning algorithms and their settings)
    orwcfm report   RUN_OR_SWEEP_DIR [--out FILE.html]
    orwcfm demo     [--out DIR]

A user mistake (unknown name, bad value, missing file) prints one line, ``orwcfm: error: ...``, and exits
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .errors import RankFailed, UserError
from .interrupt import Interrupted


def _add_common_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override config keys, dotted for nested ones: --set learning_rate=1e-3 model.options.base_channels=64")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_common_run_flags_no_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override config keys in every cell: --set epochs=6")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_report(args: argparse.Namespace) -> int:
    from .report import cmd_report as report

    return report(args)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import pretrain_config
    from .train import pretrain

    if args.data is None and args.config is None:
        raise UserError("pretrain needs --data NAME or --config FILE (a config naming data.name)")
    settings = {}
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.data_root is not None:
        settings["data"] = {"root": args.data_root}
    if args.device is not None:
        settings["device"] = args.device
    config = pretrain_config(args.data, args.config, args.overrides, **settings)
    from . import distributed as dist_util

    finished = False
    try:  # under torchrun / accelerate launch, pretrain() joins the process group; leave it at the end
        result = pretrain(config, args.out, resume=args.resume, progress=not args.no_progress)
        ctx = dist_util.current()
        finished = True
    finally:
        dist_util.teardown(dist_util.current(), wait=finished)
    if ctx.is_main:
        print(f"pretrained {config.data.name}: {result.steps} steps, final loss {result.final_loss:.4f}, "
              f"{result.num_parameters:,} parameters, {result.wall_seconds:.0f} s")
        print(f"checkpoint: {result.checkpoint}")
        print(f"samples:    {result.samples_path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .plotting import save_samples
    from .sampling import check_solver, sample

    if args.n <= 0:
        raise UserError(f"-n must be a positive number of samples, got {args.n}")
    loaded = load_checkpoint(args.ckpt)
    sampling = loaded.meta.get("config", {}).get("sampling", {})
    solver = args.solver or sampling.get("solver", "euler")
    steps = args.steps or sampling.get("steps", 100)
    check_solver(solver, steps)
    model = loaded.build_model(args.weights, device=args.device)
    samples = sample(model, args.n, tuple(loaded.spec.event_shape), generator=torch.Generator().manual_seed(args.seed),
                     device=args.device, solver=solver, steps=steps, batch_size=args.batch_size)
    out = save_samples(samples.cpu(), args.out, title=f"{args.n} samples, {solver} x {steps}")
    print(f"wrote {args.n} samples ({solver}, {steps} steps, {args.weights} weights of {loaded.path}) to {out}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .config import finetune_config
    from .finetune.run import run_finetune

    out = Path(args.out)
    settings = {"savedir": str(out.parent), "run_name": out.name}
    if args.ref is not None:
        settings["ref_path"] = args.ref
    if args.device is not None:
        settings["device"] = args.device
    config = finetune_config(config_file=args.config, overrides=args.overrides, **settings)
    run_finetune(config, resume=args.resume, cache=args.cache, progress=not args.no_progress)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .finetune.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.ckpt, reward=args.reward, num_samples=args.n, seed=args.seed, weights=args.weights,
                                 solver=args.solver, steps=args.steps, cache=args.cache, device=args.device,
                                 guidance=args.guidance)
    out = Path(args.out) if args.out else Path(result.checkpoint) / "evaluation.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2))
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror}") from None
    print(result.table())
    print(f"\nmetrics written to {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_grid, plan_sweep, run_sweep

    grid = parse_grid(args.grid)
    cells = plan_sweep(args.config, grid, args.out, args.overrides)  # every cell validated before any run
    print(f"sweep of {len(cells)} cells into {args.out}: " + "; ".join(f"{k} in {v}" for k, v in grid.items()), flush=True)
    result = run_sweep(cells, args.out, grid=grid, config=args.config, overrides=args.overrides, cache=args.cache,
                       progress=not args.no_progress)
    print()
    print(result.markdown_path.read_text())
    print(f"table: {result.csv_path} and {result.markdown_path}; trade-off plot: {result.plot_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import parse_target, plan_compare, run_compare

    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    seeds = list(range(args.seeds))
    target = parse_target(args.target) if args.target is not None else None
    cells = plan_compare(args.config, algorithms, seeds, args.budget, args.out, args.sweep, args.overrides, args.option,
                         quick=args.quick)
    print(f"comparison of {len(algorithms)} algorithms x {len(seeds)} seeds ({len(cells)} runs, budget {args.budget} "
          f"reward evaluations each) into {args.out}", flush=True)
    plan = {"config": args.config, "budget": args.budget, "algorithms": algorithms, "seeds": seeds,
            "sweeps": list(args.sweep), "options": list(args.option), "overrides": list(args.overrides),
            "quick": args.quick, "target": args.target}
    result = run_compare(cells, args.out, plan=plan, cache=args.cache, progress=not args.no_progress, target=target)
    print()
    print((result.out / "compare.md").read_text())
    print(f"tables: {result.out / 'compare.csv'}, {result.out / 'compare.md'}; plot: {result.out / 'tradeoff.png'}; "
          f"report: {result.out / 'report.html'}")
    return 0


def cmd_algorithms(args: argparse.Namespace) -> int:
    from .algorithms import ALGORITHMS
    from .algorithms.base import settings_help

    for name, (cls, settings) in sorted(ALGORITHMS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        needs = " [needs a differentiable reward]" if cls.needs_reward_gradient else ""
        print(f"{name}: {doc}{needs}")
        where = "top-level keys" if name in ("orw-cfm-w2", "offline-rwr") else "algorithm_options"
        for key, text in settings_help(settings).items():
            print(f"    {key} ({where}): {text}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), cache=args.cache, progress=not args.no_progress, overrides=args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orwcfm", description="Reward fine-tuning of flow-matching models (ORW-CFM-W2).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .config import FinetuneConfig, PretrainConfig, config_help

    # Every config key, its type, default and help after the flags: the raw formatter keeps the epilog's layout.
    p = sub.add_parser("pretrain", help="train a flow-matching model on a data set (the reference model)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config_help(PretrainConfig))
    p.add_argument("--data", metavar="NAME", help="built-in data set (digits, patches, moons, mnist, ...)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    p.add_argument("--steps", type=int, metavar="N", help="optimisation steps (overrides the config)")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the files of mnist / cifar10")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    _add_common_run_flags(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a pretrained model toward a reward (ORW-CFM-W2)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config_help(FinetuneConfig))
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/finetune/)")
    p.add_argument("--ref", metavar="DIR", help="reference checkpoint or run folder, or builtin:NAME (overrides ref_path)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda")
    p.add_argument("--cache", metavar="DIR", help="cache of built-in assets (default $ORWCFM_CACHE or ~/.cache/orwcfm)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override config keys: --set w2_coefficient=0.3 temperature=2")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sample", help="draw samples from a checkpoint and save a grid or scatter plot")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint folder or run folder")
    p.add_argument("-n", type=int, default=64, metavar="N", help="number of samples (default 64)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to write the picture")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA (default) or raw weights")
    p.add_argument("--solver", help="ODE solver (default: the checkpoint's config)")
    p.add_argument("--steps", type=int, help="solver steps (default: the checkpoint's config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1000, help="samples integrated at once")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="sample a checkpoint and measure reward, diversity and distance to the reference")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint folder or run folder (its newest checkpoint)")
    p.add_argument("--reward", metavar="NAME", help="reward to measure (default: the one the run was fine-tuned with)")
    p.add_argument("-n", type=int, default=1000, metavar="N", help="number of samples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--weights", choices=("ema", "raw"), help="EMA or raw weights (default: EMA when the checkpoint has it)")
    p.add_argument("--solver", help="ODE solver (default: the checkpoint's config)")
    p.add_argument("--steps", type=int, help="solver steps (default: the checkpoint's config)")
    p.add_argument("--guidance", type=float, metavar="S", help="classifier-free guidance scale for a conditional "
                   "model (1 = none; default: the run's eval_sampling.guidance); the samples spread over its prompts")
    p.add_argument("--out", metavar="FILE.json", help="where to write the metrics (default CHECKPOINT/evaluation.json)")
    p.add_argument("--cache", metavar="DIR", help="cache of built-in assets (default $ORWCFM_CACHE or ~/.cache/orwcfm)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="fine-tune over a grid of settings; table and trade-off plot (resumable)")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config or built-in task name (digits-even, ...)")
    p.add_argument("--grid", metavar="KEY=V1,V2", action="append", default=[], required=True,
                   help="a config key and its values, e.g. --grid w2_coefficient=0,0.1,1 (repeat for more keys)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder (run again to resume: finished cells are skipped)")
    p.add_argument("--cache", metavar="DIR", help="cache of built-in assets (default $ORWCFM_CACHE or ~/.cache/orwcfm)")
    _add_common_run_flags_no_config(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("compare", help="several fine-tuning algorithms on one task, same budget of reward "
                                       "evaluations, several seeds; table, trade-off plot, report (resumable)")
    p.add_argument("--config", required=True, metavar="TASK", help="YAML config or built-in task name (toy-2d, ...)")
    p.add_argument("--algorithms", required=True, metavar="A,B,...", help="comma-separated (orwcfm algorithms lists them)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1 of every algorithm (default 3)")
    p.add_argument("--budget", type=int, required=True, metavar="EVALS", help="reward evaluations of every run")
    p.add_argument("--sweep", metavar="ALG:KEY=V1,V2", action="append", default=[],
                   help="values of one algorithm's regulariser, e.g. orw-cfm-w2:w2_coefficient=0.1,1 (repeatable)")
    p.add_argument("--option", metavar="ALG:KEY=VALUE", action="append", default=[],
                   help="a setting of one algorithm only, e.g. flow-grpo:clip_range=0.2 (repeatable)")
    p.add_argument("--target", metavar="METRIC=VALUE",
                   help="a level to reach, e.g. target_fraction=0.9: the table adds the reward evaluations each run "
                        "took to first reach it (at its per-epoch evaluations) and the diversity there")
    p.add_argument("--quick", action="store_true",
                   help="shrink every run to a smoke test (batch 64, buffer 128, 4 steps an epoch, 2-step solvers, "
                        "64 evaluation samples); --set values win")
    p.add_argument("--out", required=True, metavar="DIR", help="comparison folder (run again to resume)")
    p.add_argument("--cache", metavar="DIR", help="cache of built-in assets (default $ORWCFM_CACHE or ~/.cache/orwcfm)")
    _add_common_run_flags_no_config(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("algorithms", help="list the fine-tuning algorithms and their settings")
    p.set_defaults(func=cmd_algorithms)

    p = sub.add_parser("report", help="write a self-contained HTML report of a run or sweep folder")
    p.add_argument("dir", metavar="RUN_OR_SWEEP_DIR")
    p.add_argument("--out", metavar="FILE.html", help="default DIR/report.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the built-in main job (see README)")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (default runs/demo)")
    p.add_argument("--cache", metavar="DIR", help="where pretrained assets are cached (default $ORWCFM_CACHE or ~/.cache/orwcfm)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override settings of the digits-even task, e.g. --set w2_coefficient=0")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for user mistakes)."""
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    try:
        return int(args.func(args) or 0)
    except RankFailed:
        return 1  # another rank failed and printed why: the error is shown once
    except Interrupted as err:  # a checkpoint was written: one line, and the conventional 128 + signal status
        print(f"orwcfm: {err}", file=sys.stderr)
        return err.exit_code
    except UserError as err:
        print(f"orwcfm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("orwcfm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
