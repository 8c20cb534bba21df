"""The tilt law of online reward-weighted CFM (alpha = 0), measured on a 1-D Gaussian.

    .venv/bin/python experiments/tilt_law.py [--taus 0.5 1.0] [--seeds 0 1 2] [--epochs 5] [--cache DIR]
    .venv/bin/python experiments/tilt_law.py --sweep      # the per-epoch convergence measurements behind the settings

Claim (Fan et al., ICLR 2025): each epoch of ORW-CFM without the W2 term fits p_{n+1}(x) ∝ p_n(x) exp(tau r(x)).
With the reference p_0 = N(0, 1) and r(x) = x, p_N = N(N tau, 1): the mean moves by tau per epoch and the
variance stays 1.

What runs: the built-in 1-D reference (``builtin:gaussian-1d``, an MLP flow pretrained on N(0, 1)) is fine-tuned
by ``ORWCFMTrainer`` with w2_coefficient = 0 and the built-in ``linear`` reward (r(x) = x); the policy is refreshed
and a buffer of policy samples redrawn once per epoch. After each epoch N = 1..epochs, ``samples`` samples are drawn
from fixed noise (one noise per seed) and their mean and variance compared with N tau and 1. Row N = 0 is the
reference itself. Three kinds of interval are reported:

* per seed, a 95 % sample-size interval (mean +- 1.96 s / sqrt(n); variance +- 1.96 sqrt((m4 - s^4) / n));
* across seeds (independent fine-tuning runs, each measured on its own noise), a 95 % t-interval of the per-seed
  values: it contains fitting, buffer and sampling error, so it is the one the claim is judged by;
* a "one-step" diagnostic: the exact tilt of the *previous* model (its samples re-weighted by exp(tau x)) against
  the fitted model, which separates the error of one epoch's fit from errors carried over from earlier epochs.

The defaults (lr 3e-5, batch 512, buffer 32768, 400 steps per epoch, independent pairing, midpoint x 10) come
from ``--sweep``; a last two-epoch run with OT pairing checks that OT pairing follows the tilt too (it did not
before the loss resampled by weight ahead of OT pairing; ``--no-ot-check`` skips it). docs/reproduction.md has
the numbers and the caveats.

Prints Markdown tables and the wall time, writes ``OUT/results.json`` and the figure (``--figure``).
Runs with one torch thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from orwcfm import ORWCFMTrainer
from orwcfm.assets import builtin_reference
from orwcfm.checkpoint import load_checkpoint
from orwcfm.plotting import _pyplot, _save_figure
from orwcfm.sampling import integrate

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Statistics.


def moments(x: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, float]:
    """Mean, variance, third and fourth cumulant of 1-D samples (optionally weighted), with 95 % sample intervals."""
    x = x.double().flatten()
    w = torch.full_like(x, 1.0 / len(x)) if weights is None else weights.double() / weights.sum()
    mean = (w * x).sum()
    c = x - mean
    m2, m3, m4 = (w * c**2).sum(), (w * c**3).sum(), (w * c**4).sum()
    n = len(x) if weights is None else float(1.0 / (w**2).sum())  # effective sample size of weighted samples
    var = m2 * len(x) / (len(x) - 1) if weights is None else m2
    return {"mean": float(mean), "var": float(var), "k3": float(m3), "k4": float(m4 - 3 * m2**2),
            "mean_ci": float(1.96 * math.sqrt(m2 / n)), "var_ci": float(1.96 * math.sqrt(max(float(m4 - m2**2), 0.0) / n)),
            "n": n}


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t interval of ``values`` (half-width nan for one value)."""
    t = torch.tensor(values, dtype=torch.float64)
    if len(values) < 2:
        return float(t.mean()), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * float(t.std(unbiased=True)) / math.sqrt(len(values))
    return float(t.mean()), float(half)


def pm(value: float, half: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isnan(half) else f"{value:.{digits}f} ± {half:.{digits}f}"


# ---------------------------------------------------------------------------------------------------------------
# Runs.


def make_trainer(args: argparse.Namespace, ref: Path, tau: float, seed: int, run_name: str, **settings: Any) -> ORWCFMTrainer:
    config = dict(w2_coefficient=0.0, temperature=tau, reward="linear", learning_rate=args.lr, batch_size=args.batch_size,
                  buffer_size=args.buffer_size, refresh_every=None, coupling=args.coupling,
                  sampling={"solver": args.solver, "steps": args.solver_steps}, seed=seed, eval_samples=256,
                  log_every=100, keep_checkpoints=1, num_threads=args.threads, savedir=str(args.out), run_name=run_name)
    config.update(settings)
    trainer = ORWCFMTrainer(load_checkpoint(ref).build_model("ema"), config, "cpu", cache=args.cache, progress=False)
    trainer.load_pretrained(ref)
    return trainer


def run_chain(args: argparse.Namespace, ref: Path, tau: float, seed: int, epochs: int,
              **settings: Any) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """One fine-tuning run: a row per N = 0..epochs (measured moments, one-step target) and the samples."""
    name = f"tau_{tau:g}_seed_{seed}" + "".join(f"_{k}_{v}" for k, v in settings.items())
    trainer = make_trainer(args, ref, tau, seed, name, **settings)
    noise_seed = 10_000 + seed  # the same noise after every epoch of this run; another noise for another seed
    x = trainer.sample(args.samples, seed=noise_seed)[:, 0]
    rows, samples = [{"N": 0, **moments(x)}], [x]
    for n in range(1, epochs + 1):
        # the exact tilt of the current policy, estimated by re-weighting its samples: what epoch n should fit
        target = moments(x, torch.softmax(tau * x.double(), 0))
        start = time.perf_counter()
        trainer.train(num_epochs=n, steps_per_epoch=args.steps_per_epoch)
        x = trainer.sample(args.samples, seed=noise_seed)[:, 0]
        samples.append(x)
        rows.append({"N": n, **moments(x), "target_mean": target["mean"], "target_var": target["var"],
                     "target_ess": target["n"], "seconds": time.perf_counter() - start})
        print(f"  tau={tau:g} seed={seed} N={n}: mean {rows[-1]['mean']:.3f} (N tau = {n * tau:g}), "
              f"var {rows[-1]['var']:.3f}, k3 {rows[-1]['k3']:+.3f} [{rows[-1]['seconds']:.0f} s]", flush=True)
    if args.solver_check and seed == args.seeds[0]:
        rows[-1]["solver_check"] = solver_check(trainer, noise_seed, args)
    return rows, samples


@torch.no_grad()
def solver_check(trainer: ORWCFMTrainer, noise_seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Discretisation error: the same noise through the configured solver and through adaptive dopri5 (tol 1e-5)."""
    x0 = torch.randn(5000, 1, generator=torch.Generator().manual_seed(noise_seed))
    model = trainer.model.eval()
    coarse = integrate(model, x0, solver=args.solver, steps=args.solver_steps).samples[:, 0]
    fine = integrate(model, x0, solver="dopri5").samples[:, 0]
    return {"mean_diff": float(coarse.mean() - fine.mean()), "var_diff": float(coarse.var() - fine.var()),
            "max_abs_diff": float((coarse - fine).abs().max())}


def summarise(tau: float, runs: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Across-seed t-intervals per N."""
    seeds = sorted(runs)
    out = []
    for n in range(len(runs[seeds[0]])):
        per = [runs[s][n] for s in seeds]
        row = {"N": n, "predicted_mean": n * tau, "predicted_var": 1.0, "seeds": seeds}
        for key in ("mean", "var", "k3"):
            row[key], row[key + "_tci"] = t_interval([p[key] for p in per])
        row["mean_sample_ci"] = max(p["mean_ci"] for p in per)
        row["var_sample_ci"] = max(p["var_ci"] for p in per)
        if n > 0:
            row["one_step_mean_err"], row["one_step_mean_err_tci"] = t_interval([p["mean"] - p["target_mean"] for p in per])
            row["one_step_var_err"], row["one_step_var_err_tci"] = t_interval([p["var"] - p["target_var"] for p in per])
        row["mean_holds"] = abs(row["mean"] - n * tau) <= row["mean_tci"] if len(seeds) > 1 else None
        row["var_holds"] = abs(row["var"] - 1.0) <= row["var_tci"] if len(seeds) > 1 else None
        out.append(row)
    return out


def _yes(flag: bool | None) -> str:
    return "—" if flag is None else ("yes" if flag else "no")


def table(tau: float, summary: list[dict[str, Any]], runs: dict[int, list[dict[str, Any]]]) -> str:
    first = min(runs)
    lines = [f"tau = {tau:g}, {len(runs)} seeds; ± is a 95 % interval",
             "",
             f"| N | N tau | mean (t-CI over seeds) | mean, seed {first} (sample CI) | variance (t-CI over seeds) | "
             f"variance, seed {first} (sample CI) | k3 (mean over seeds) | one-step error: mean / variance | "
             f"prediction in t-CI: mean / var |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary:
        one = runs[first][row["N"]]
        step = "—" if row["N"] == 0 else (f"{pm(row['one_step_mean_err'], row['one_step_mean_err_tci'])} / "
                                          f"{pm(row['one_step_var_err'], row['one_step_var_err_tci'])}")
        lines.append(f"| {row['N']} | {row['predicted_mean']:g} | {pm(row['mean'], row['mean_tci'])} | "
                     f"{pm(one['mean'], one['mean_ci'])} | {pm(row['var'], row['var_tci'])} | {pm(one['var'], one['var_ci'])} | "
                     f"{row['k3']:+.3f} | {step} | {_yes(row['mean_holds'])} / {_yes(row['var_holds'])} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Figure.


def draw(results: dict[str, Any], samples: list[torch.Tensor], path: Path) -> Path:
    plt = _pyplot()
    taus = [float(t) for t in results["taus"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for i, tau in enumerate(taus):
        summary = results["summary"][f"{tau:g}"]
        ns = [r["N"] for r in summary]
        c = colors[i % len(colors)]
        # the reference row (N = 0) has no fitting spread: its interval is the sampling one
        axes[0].plot(ns, [n * tau for n in ns], "--", color=c, alpha=0.6, label=f"N tau (tau={tau:g})")
        for seed_rows in results["runs"][f"{tau:g}"].values():  # each seed, faint
            axes[0].plot(ns, [r["mean"] for r in seed_rows], ".", color=c, alpha=0.35)
            axes[1].plot(ns, [r["var"] for r in seed_rows], ".", color=c, alpha=0.35)
        axes[0].errorbar(ns, [r["mean"] for r in summary], yerr=[r["mean_tci"] if not math.isnan(r["mean_tci"]) else 0 for r in summary],
                         fmt="o", color=c, capsize=4, label=f"measured, tau={tau:g}")
        axes[1].errorbar([n + 0.06 * (i - (len(taus) - 1) / 2) for n in ns], [r["var"] for r in summary],
                         yerr=[r["var_tci"] if not math.isnan(r["var_tci"]) else 0 for r in summary],
                         fmt="o-", color=c, capsize=4, label=f"tau={tau:g}")
    axes[0].set(xlabel="epoch N", ylabel="mean of samples", title="mean (95% t-CI over seeds; dots: seeds) vs N tau")
    axes[0].legend(fontsize=8)
    axes[1].axhline(1.0, color="k", ls="--", alpha=0.6, label="predicted (1)")
    axes[1].set(xlabel="epoch N", ylabel="variance of samples", title="variance (95% t-CI over seeds)")
    axes[1].legend(fontsize=8)

    tau = taus[0]
    grid = torch.linspace(-4, max(len(samples) - 1, 1) * tau + 4, 400)
    for n, xs in enumerate(samples):
        c = plt.get_cmap("viridis")(n / max(len(samples) - 1, 1))
        axes[2].hist(xs.numpy(), bins=80, density=True, histtype="step", color=c, label=f"N={n}")
        axes[2].plot(grid, torch.exp(-0.5 * (grid - n * tau) ** 2) / math.sqrt(2 * math.pi), ":", color=c)
    axes[2].set(xlabel="x", ylabel="density", title=f"samples (tau={tau:g}, seed {results['seeds'][0]}) vs N(N tau, 1) (dotted)")
    axes[2].legend(fontsize=7, ncol=2)
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# The sweep behind the settings.


def sweep(args: argparse.Namespace, ref: Path) -> None:
    """One epoch (tau = taus[0]) at several learning rates and buffer sizes: mean and variance error vs steps.

    The policy is refreshed once (refresh_every = the largest step count); the model is measured after 100, 200,
    400 and 800 steps against the exact tilt of the reference (its own samples re-weighted).
    """
    tau, checkpoints = args.taus[0], (100, 200, 400, 800)
    settings = [(3e-4, args.buffer_size), (1e-4, args.buffer_size), (args.lr, args.buffer_size), (args.lr, 8192)]
    print(f"one epoch, tau = {tau:g}: error of the fitted model against the exact tilt of the reference "
          f"(mean ± sd over seeds {args.seeds}); batch {args.batch_size}\n")
    print("| learning rate | buffer | " + " | ".join(f"{s} steps: mean / var / k3 error" for s in checkpoints) + " |")
    print("|---|---|" + "---|" * len(checkpoints))
    for lr, buffer in settings:
        errs: dict[int, list[tuple[float, float]]] = {s: [] for s in checkpoints}
        for seed in args.seeds:
            chunk = checkpoints[0]
            trainer = make_trainer(args, ref, tau, seed, f"sweep_lr_{lr:g}_buf_{buffer}_seed_{seed}", learning_rate=lr,
                                   buffer_size=buffer, refresh_every=checkpoints[-1])
            x = trainer.sample(args.samples, seed=10_000 + seed)[:, 0]
            target = moments(x, torch.softmax(tau * x.double(), 0))
            for k in range(1, checkpoints[-1] // chunk + 1):
                trainer.train(num_epochs=k, steps_per_epoch=chunk)
                if k * chunk in errs:
                    m = moments(trainer.sample(args.samples, seed=10_000 + seed)[:, 0])
                    errs[k * chunk].append((m["mean"] - target["mean"], m["var"] - target["var"], m["k3"] - target["k3"]))
        cells = []
        for s in checkpoints:
            e = torch.tensor(errs[s], dtype=torch.float64)
            sd = e.std(0, unbiased=True) if len(e) > 1 else torch.full((3,), float("nan"))
            cells.append(" / ".join(f"{e[:, i].mean():+.3f} ± {sd[i]:.3f}" for i in range(3)))
        print(f"| {lr:g} | {buffer} | " + " | ".join(cells) + " |", flush=True)


# ---------------------------------------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON-safe: nan (an interval of one seed) becomes null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taus", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=400)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--buffer-size", type=int, default=32768)
    parser.add_argument("--coupling", default="independent", choices=["independent", "ot"])
    parser.add_argument("--solver", default="midpoint")
    parser.add_argument("--solver-steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=20000, help="samples per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache", default=None, help="cache of built-in references (default $ORWCFM_CACHE or ~/.cache/orwcfm)")
    parser.add_argument("--out", type=Path, default=Path("runs/tilt_law"))
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "images" / "tilt_law.png")
    parser.add_argument("--no-ot-check", dest="ot_check", action="store_false",
                        help="skip the two-epoch run with OT pairing (which does not follow the tilt)")
    parser.add_argument("--no-solver-check", dest="solver_check", action="store_false")
    parser.add_argument("--sweep", action="store_true", help="only run the per-epoch convergence sweep")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ref = builtin_reference("gaussian-1d", args.cache, progress=False)
    print(f"reference: {ref} ({time.perf_counter() - start:.0f} s to load or pretrain)", flush=True)
    if args.sweep:
        sweep(args, ref)
        print(f"\nwall time {time.perf_counter() - start:.0f} s")
        return

    results: dict[str, Any] = {"claim": "p_N = N(N tau, 1) for r(x) = x, alpha = 0, reference N(0, 1)",
                               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "reference": str(ref), "taus": args.taus, "seeds": args.seeds, "runs": {}, "summary": {}}
    tables, histogram = [], []
    for tau in args.taus:
        runs = {}
        for seed in args.seeds:
            runs[seed], samples = run_chain(args, ref, tau, seed, args.epochs)
            if not histogram:
                histogram = samples  # the figure's histograms: the first run's samples after each epoch
        summary = summarise(tau, runs)
        results["runs"][f"{tau:g}"] = {str(s): r for s, r in runs.items()}
        results["summary"][f"{tau:g}"] = summary
        tables.append(table(tau, summary, runs))

    ot_rows = None
    if args.ot_check:
        ot_rows, _ = run_chain(args, ref, args.taus[0], args.seeds[0], 2, coupling="ot")
        results["ot_check"] = ot_rows

    wall = time.perf_counter() - start
    results["wall_seconds"] = wall
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(_finite(results), indent=1))
    figure = draw(results, histogram, args.figure)

    print()
    ref_row = results["runs"][f"{args.taus[0]:g}"][str(args.seeds[0])][0]
    print(f"reference (N = 0, seed {args.seeds[0]}'s noise, {args.samples} samples): mean {pm(ref_row['mean'], ref_row['mean_ci'])}, "
          f"variance {pm(ref_row['var'], ref_row['var_ci'])}, k3 {ref_row['k3']:+.3f}, k4 {ref_row['k4']:+.3f}")
    print(f"settings: lr {args.lr:g}, batch {args.batch_size}, buffer {args.buffer_size}, {args.steps_per_epoch} steps/epoch, "
          f"{args.coupling} pairing, {args.solver} x {args.solver_steps}, alpha 0, reward linear (r = x)\n")
    for t in tables:
        print(t + "\n")
    first_runs = results["runs"][f"{args.taus[0]:g}"]
    check = first_runs[str(args.seeds[0])][-1].get("solver_check")
    if check:
        print(f"solver check (final model, tau={args.taus[0]:g}, seed {args.seeds[0]}, 5000 samples, same noise): "
              f"{args.solver} x {args.solver_steps} minus dopri5: mean {check['mean_diff']:+.4f}, variance "
              f"{check['var_diff']:+.4f}, largest per-sample difference {check['max_abs_diff']:.4f}")
    if ot_rows:
        print(f"OT pairing (tau={args.taus[0]:g}, seed {args.seeds[0]}): " + ", ".join(
            f"N={r['N']}: mean {r['mean']:.3f} (N tau = {r['N'] * args.taus[0]:g}), var {r['var']:.3f}" for r in ot_rows))
    print(f"\nresults: {args.out / 'results.json'}; figure: {figure}")
    print(f"wall time {wall:.0f} s ({args.threads} torch thread{'s' if args.threads > 1 else ''})")


if __name__ == "__main__":
    main()
