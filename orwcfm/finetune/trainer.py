"""``ORWCFMTrainer``: online reward-weighted fine-tuning with a W2 regulariser, as the public README uses it.

    trainer = ORWCFMTrainer(model, config, device)        # model: any nn.Module called as model(t, x)
    trainer.load_pretrained(config["ref_path"])           # our checkpoints, torchcfm .pt files, builtin:NAME
    trainer.train(num_epochs=..., steps_per_epoch=...)
    trainer.save_checkpoint("./checkpoints/run")

Three networks of one architecture: ``model`` (trained), ``policy`` (a frozen copy of ``model`` that generates
the training samples, refreshed every epoch or every ``refresh_every`` steps) and ``reference`` (the pretrained
model, frozen for the whole run). Data flow of one step::

    refresh?   policy <- model; buffer <- policy samples x1 (ODE from noise) and their rewards r (black box)
    minibatch  (x1, r) from the buffer (a fresh batch every step when buffer_size is null)
    weights    w = exp(tau * r), the paper's (or normalised: `weighting`)  (finetune/weights.py)
    loss       mean(w * ||v - u||^2 + alpha * ||v - v_ref||^2)      (finetune/orw.py)
    step       Adam, linear warm-up, gradient clipping, optional EMA
    log        every log_every steps (only then are numbers pulled off the device)
    epoch end  evaluate on fixed noise -> metrics, sample grid; checkpoint (atomic; last K kept)

``train()`` is the whole run; ``run_steps(n)`` is the gradient steps alone (refresh, minibatch, loss, update),
without evaluation or checkpoints: what the speed benchmark times.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import signal
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from .. import distributed as dist_util
from ..config import FinetuneConfig, finetune_config, to_dict
from ..couplings import get_coupling
from ..errors import UserError
from ..interrupt import Interrupted, StopRequest
from ..models import ModelSpec
from ..paths import StraightPath, make_time_sampler
from ..plotting import save_curves, save_samples
from ..rewards import call_reward, load_reward, reward_name
from ..runlog import RunLogger
from ..sampling import autocast, check_solver, generate
from ..train import make_adam, make_ema, warmup_schedule
from .buffer import Minibatch, SampleBuffer
from .evaluate import Evaluation, ReferenceSet, eval_mode, evaluate, make_judge
from .orw import orw_cfm_w2_loss
from .weights import RefreshScale, loss_weights, refresh_scale


def infer_event_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The sample shape a velocity field works on, read off common attributes (ours, torchcfm's UNet)."""
    inner = getattr(model, "module", model)  # XTAdapter, DDP
    if isinstance(getattr(inner, "in_channels", None), int) and isinstance(getattr(inner, "image_size", None), int):
        return (inner.in_channels, inner.image_size, inner.image_size)
    if isinstance(getattr(inner, "dim", None), int):
        return (inner.dim,)
    if isinstance(getattr(inner, "dim", None), (tuple, list)):  # torchcfm's UNetModelWrapper(dim=(C, H, W))
        return tuple(inner.dim)
    return None


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes and values): identifies the reference of a run."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resolve_reward(config: FinetuneConfig, reward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   cache: str | Path | None = None) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The reward and its name: ``reward_fn`` if given, else ``config.reward`` by name, else CLIP on ``text_prompts``."""
    if reward_fn is not None:
        return reward_fn, reward_name(reward_fn)
    if config.reward is not None:
        return load_reward(config.reward, cache=cache, **config.reward_options), config.reward
    if config.text_prompts is not None:
        return load_reward("clip", cache=cache, prompts=list(config.text_prompts), **config.reward_options), "clip"
    raise UserError("no reward given: pass reward_fn=..., or set 'reward' (a built-in name, package.module:function "
                    "or file.py:function), or 'text_prompts' for the CLIP reward")


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The plain numbers of a history row (epoch and step left out)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k not in ("epoch", "step")}


# The numbers summed on the device between logs (train/ in metrics.jsonl; w2_share is derived from them).
RUNNING_KEYS = ("loss", "fm", "w2", "w2_term", "max_weight", "log_z", "alpha_relative", "loss_log_scale")


def _frozen_copy(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


# Metrics shown in the summary table when the evaluation measured them (key, label).
SUMMARY_EXTRA_ROWS = (
    ("gold_target_fraction", "target fraction, gold classifier (held out)"),
    ("vendi", "Vendi score"),
    ("class_entropy", "class entropy (nats)"),
    ("w2_to_reference", "empirical W2 to reference (N-sample sets, same noise)"),
    ("w2_to_reference_floor", "its floor: empirical W2 between two independent reference N-sample sets"),
    ("digits_fd_data", "digits-FD to the data (all classes)"),
    ("digits_fd_target", "digits-FD to the target classes' data"),
)


@dataclass(frozen=True)
class FinetuneSummary:
    """The headline numbers of a run (written to ``summary.json``)."""

    reward: str
    w2_coefficient: float
    temperature: float
    epochs: int
    steps: int
    reward_evaluations: int
    reward_mean_before: float
    reward_mean_after: float
    diversity_before: float
    diversity_after: float
    wall_seconds: float
    target_fraction_before: float | None = None
    target_fraction_after: float | None = None
    class_histogram_after: list[float] | None = None
    dropped_samples: int = 0
    metrics_before: dict[str, float] | None = None  # every scalar of the first evaluation (epoch 0)
    metrics_after: dict[str, float] | None = None  # and of the last
    weighting: str = "paper"  # what alpha is measured against (finetune/weights.py)
    evaluated_weights: str = "raw"  # the weights every evaluation measured: ema when the run keeps an EMA

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def table(self) -> str:
        """A small Markdown table: before / after for each metric."""
        rows = [("reward mean", self.reward_mean_before, self.reward_mean_after),
                ("diversity (mean pairwise distance)", self.diversity_before, self.diversity_after)]
        if self.target_fraction_before is not None:
            rows.insert(1, ("target fraction", self.target_fraction_before, self.target_fraction_after))
        before, after = self.metrics_before or {}, self.metrics_after or {}
        for key, label in SUMMARY_EXTRA_ROWS:
            if key in before and key in after:
                rows.append((label, before[key], after[key]))
        lines = ["| metric | before | after |", "|---|---|---|"]
        lines += [f"| {name} | {a:.4f} | {b:.4f} |" for name, a, b in rows]
        if self.class_histogram_after is not None:
            lines.append("| class histogram after | | " + " ".join(f"{i}:{f:.0%}" for i, f in enumerate(self.class_histogram_after)) + " |")
        lines.append(f"| alpha / tau / weighting / epochs / steps | | {self.w2_coefficient:g} / {self.temperature:g} / "
                     f"{self.weighting} / {self.epochs} / {self.steps} |")
        lines.append(f"| reward evaluations / wall time | | {self.reward_evaluations} / {self.wall_seconds:.0f} s |")
        return "\n".join(lines)


class ORWCFMTrainer:
    """Fine-tunes ``model`` toward a black-box reward with ORW-CFM-W2.

    Args:
        model: the velocity field, any ``nn.Module`` called as ``model(t, x)`` with ``t`` of shape (B,).
        config: a :class:`~orwcfm.config.FinetuneConfig` or the public README's config dict.
        device: where to train (default: ``config.device``).
        reward_fn: the reward, any callable (B, *shape) -> (B,); default: ``config.reward`` by name, else the CLIP
            reward of ``config.text_prompts``.
        event_shape: the shape of one sample; read off the model or the reference checkpoint when omitted.
        cache: where built-in assets (classifier, builtin:NAME references) are cached.
        progress: show progress bars.
    """

    def __init__(self, model: nn.Module, config: FinetuneConfig | Mapping[str, Any] | None = None,
                 device: torch.device | str | None = None, *, reward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 event_shape: tuple[int, ...] | None = None, cache: str | Path | None = None, progress: bool = True) -> None:
        cfg = self.config = config if isinstance(config, FinetuneConfig) else finetune_config(config)
        for sampler in (cfg.sampling, cfg.eval_sampling):
            check_solver(sampler.solver, sampler.steps)
        self.device = torch.device(device if device is not None else cfg.device)
        self.cache, self.progress = cache, progress
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        # Several processes (torchrun, accelerate launch): this rank's share of the batch and buffer, its own random
        # stream; rank 0 of N draws exactly what a single process draws (distributed.py).
        self.dist = dist_util.current()
        self.local_batch = dist_util.split(cfg.batch_size, self.dist, "batch_size")
        self.local_buffer = dist_util.split(cfg.buffer_size, self.dist, "buffer_size") if cfg.buffer_size else None
        rank_seed = cfg.seed + self.dist.rank * dist_util.SEED_STRIDE
        torch.manual_seed(rank_seed)  # dropout and other global-RNG use
        self.generator = torch.Generator().manual_seed(rank_seed)  # policy noise, minibatch order, x0, t: on the CPU
        self._sample_generator = torch.Generator().manual_seed(cfg.seed + 2)  # sample() without a seed

        self.model = model.to(self.device)
        # The reference runs without dropout; unless asked otherwise the model does too (eval mode), so that
        # model == reference gives a W2 term of exactly 0 and the regulariser measures weights, not dropout noise.
        self.model.train(cfg.finetune_dropout)
        self.policy = _frozen_copy(self.model)
        self.reference = _frozen_copy(self.model)
        # With an EMA, the EMA is the run's model: what the policy copies, what every evaluation measures.
        self.ema = make_ema(self.model, cfg.ema_decay)
        # torch.compile wraps the modules and shares their parameters: checkpoints and load_state_dict keep
        # working on the plain modules. Off by default: compiling costs about a minute on a CPU.
        # DDP averages the gradients over ranks during backward (its forward is the model's).
        self._train_net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self._train_net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._train_net = torch.compile(self._train_net) if cfg.compile else self._train_net
        self._policy_net = torch.compile(self.policy) if cfg.compile else self.policy
        self.event_shape = tuple(event_shape) if event_shape else infer_event_shape(model)
        self.spec: ModelSpec | None = None
        self.reference_identity: dict[str, Any] = {"path": None, "weights": None, "sha256": fingerprint(self.reference)}

        self.reward_fn, self.reward_name = resolve_reward(cfg, reward_fn, cache)

        self.optimizer = make_adam(self.model, cfg.learning_rate, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_schedule(cfg.warmup_steps, 1, "constant"))
        self.path = StraightPath(cfg.sigma_min)
        self.time_sampler = make_time_sampler(cfg.time_sampler)
        self.coupling = get_coupling(cfg.coupling)

        self.step = 0
        self.steps_per_epoch: int | None = None  # set by train(); recorded in checkpoints
        self.buffer: SampleBuffer | None = None
        self._scale: tuple[SampleBuffer, RefreshScale] | None = None  # the weight scale of the current buffer
        self._noted_shift = False  # the one log line saying the loss was rescaled to stay in float range
        self.history: list[dict[str, Any]] = []  # one row per evaluation: epoch 0 is "before"
        self.reward_evaluations = 0
        self.dropped_samples = 0
        self.run_dir = Path(cfg.savedir) / cfg.run_name if cfg.run_name else Path(cfg.savedir)
        self._reference_cache: ReferenceSet | None = None  # reference samples on the eval noise, and the W2 floor
        self._running: dict[str, torch.Tensor] | None = None  # sums of the logged numbers since the last log
        self._running_count = 0
        self._judge: Any = False  # built on first evaluation (False: not yet; None: no judge for this task)

    # ------------------------------------------------------------------------------------------------------------
    # Loading.

    def load_pretrained(self, path: str | Path | None = None, which: str | None = None) -> None:
        """Set model, sampling policy and reference to pretrained weights.

        ``path``: one of our checkpoint or run folders, a torchcfm ``.pt`` file (``ema_model`` by default,
        ``net_model`` with ``which="raw"``), or ``builtin:NAME`` (a built-in reference, pretrained and cached on
        first use). Only weights are read: a pretraining run's optimizer and scheduler state never is, so
        fine-tuning starts with its own warm-up.
        """
        path = path if path is not None else self.config.ref_path
        which = which or self.config.ref_weights
        if path is None:
            raise UserError("load_pretrained needs a path (or config 'ref_path')")
        if str(path).startswith("builtin:"):
            from ..assets import builtin_reference

            path = builtin_reference(str(path)[len("builtin:"):], self.cache, progress=self.progress)
        source = Path(path)
        if source.is_dir():
            loaded = ckpt.load_checkpoint(source)
            state, source = loaded.state_dict(which), loaded.path
            if loaded.spec is not None:
                self.spec = loaded.spec
                self.event_shape = self.event_shape or tuple(loaded.spec.event_shape)
        elif source.is_file():
            state = ckpt.load_foreign_state_dict(source, key={"ema": "ema_model", "raw": "net_model"}[which],
                                                 map_location=self.device)
        else:
            raise UserError(f"reference not found: {source} (expected a checkpoint folder, a run folder or a .pt file)")
        ckpt.load_weights(self.model, state, source=str(source))
        for frozen in (self.policy, self.reference):
            frozen.load_state_dict(self.model.state_dict())
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
            self.ema.n_averaged.zero_()
        self.reference_identity = {"path": str(source), "weights": which, "sha256": fingerprint(self.reference)}
        self._reference_cache = None

    # ------------------------------------------------------------------------------------------------------------
    # Sampling and evaluation.

    def _shape(self) -> tuple[int, ...]:
        if self.event_shape is None:
            raise UserError("cannot tell the sample shape of this model: pass event_shape=(C, H, W) or (dim,) to ORWCFMTrainer")
        return self.event_shape

    @property
    def evaluated_weights(self) -> str:
        """``ema`` when the run keeps an EMA (then the EMA is its model everywhere), else ``raw``."""
        return "ema" if self.ema is not None else "raw"

    def current_model(self) -> nn.Module:
        """The run's model: the EMA of the trained weights when there is one, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def sample(self, n: int, *, use_ema: bool | None = None, seed: int | None = None) -> torch.Tensor:
        """``n`` samples (n, *shape) of the run's model (the EMA when the run keeps one, unless ``use_ema=False``),
        with the configured solver."""
        use_ema = self.ema is not None if use_ema is None else use_ema
        net = self.ema.module if use_ema and self.ema is not None else self.model
        # never the training generator: looking at samples mid-run must not change the run
        gen = torch.Generator().manual_seed(seed) if seed is not None else self._sample_generator
        x0 = torch.randn((n, *self._shape()), generator=gen).to(self.device)
        s = self.config.sampling
        with eval_mode(net):
            return generate(net, x0, solver=s.solver, steps=s.steps, batch_size=s.batch_size, precision=s.precision)

    def _eval_noise(self) -> torch.Tensor:
        # The same noise at every evaluation, so before/after differences come from the model alone.
        gen = torch.Generator().manual_seed(self.config.seed + 1_000_003)
        return torch.randn((self.config.eval_samples, *self._shape()), generator=gen).to(self.device)

    def _reference_eval(self) -> ReferenceSet:
        """The reference's samples on the evaluation noise, their median pairwise distance (the Vendi bandwidth)
        and the W2 floor (the empirical W2 from them to a second reference set of the same size from independent
        noise), computed once: every evaluation is compared with the same reference set."""
        if self._reference_cache is None:
            from .evaluate import FLOOR_SEED_OFFSET, reference_set

            s = self.config.eval_sampling
            noise = self._eval_noise()
            gen = torch.Generator().manual_seed(self.config.seed + FLOOR_SEED_OFFSET)
            floor_noise = torch.randn(noise.shape, generator=gen).to(self.device)
            self._reference_cache = reference_set(self.reference, noise, floor_noise, solver=s.solver, steps=s.steps,
                                                  batch_size=s.batch_size or 1000)
        return self._reference_cache

    def evaluate(self) -> Evaluation:
        """Metrics of the current model on the fixed evaluation noise, with distances to the reference."""
        if self._judge is False:
            self._judge = make_judge(self.event_shape, self.reward_fn, self.cache)
        ref = self._reference_eval()
        s = self.config.eval_sampling  # the fixed instrument, whatever sampler the policy uses
        return evaluate(self.current_model(), self.reward_fn, self._eval_noise(), solver=s.solver, steps=s.steps,
                        batch_size=s.batch_size or 1000, name=self.reward_name, step=self.step,
                        reference=self.reference, reference_samples=ref.samples, vendi_bandwidth=ref.bandwidth,
                        reference_floor=ref.w2_floor, judge=self._judge)

    def _collect(self, n: int) -> SampleBuffer:
        """Draw ``n`` samples from the frozen policy and score them (the only place the reward is called)."""
        cfg = self.config
        x0 = torch.randn((n, *self._shape()), generator=self.generator).to(self.device)
        s = cfg.sampling
        x1 = generate(self._policy_net, x0, solver=s.solver, steps=s.steps, batch_size=s.batch_size, precision=s.precision)
        error: Exception | None = None
        try:
            scored = call_reward(self.reward_fn, x1, name=self.reward_name, step=self.step, on_bad=cfg.on_bad_reward)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks have been told
            error = err
        # Every rank learns whether any reward failed, so that none waits for ever in the next collective.
        if dist_util.any_rank(error is not None, self.dist, self.device):
            if error is not None:
                raise error
            raise dist_util.RankFailed(f"rank {self.dist.rank}: stopped because another rank's reward failed at step "
                                       f"{self.step} (that rank printed the error)")
        self.reward_evaluations += n
        rewards = scored.values.to(self.device)
        if scored.num_bad:
            self.dropped_samples += scored.num_bad
            x1, rewards = x1[scored.valid.to(x1.device)], rewards[scored.valid.to(self.device)]
        return SampleBuffer(x1, rewards, self.generator)

    def _refresh_policy(self) -> None:
        self.policy.load_state_dict(self.current_model().state_dict())

    # ------------------------------------------------------------------------------------------------------------
    # Training.

    def train(self, num_epochs: int, steps_per_epoch: int) -> FinetuneSummary:
        """Fine-tune for ``num_epochs`` epochs of ``steps_per_epoch`` gradient steps (continues after a resume).

        Writes into ``run_dir`` (``savedir``/``run_name``): ``config.yaml``, ``metrics.jsonl``, TensorBoard events,
        ``samples/epoch_NNN.png``, ``curves.png``, ``checkpoints/step_N`` after every epoch and ``summary.json``.
        """
        for name, value in (("num_epochs", num_epochs), ("steps_per_epoch", steps_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        cfg = self.config
        self._shape()
        start = time.perf_counter()
        total = num_epochs * steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        main = self.dist.is_main  # with several processes only rank 0 evaluates and writes
        if main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"cannot create output folder {self.run_dir}: {err.strerror}") from None
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

        logging = (RunLogger(self.run_dir, wandb_project=cfg.wandb_project if cfg.use_wandb else None,
                             run_name=cfg.run_name, config=to_dict(cfg)) if main else nullcontext(None))
        with logging as logger, StopRequest() as stop:
            if not self.history and main:
                self._evaluate_and_record(logger, epoch=0)
            with tqdm(total=total, initial=min(self.step, total), disable=not (self.progress and main), unit="step",
                      desc=f"finetune {self.reward_name}") as bar:
                while self.step < total:
                    # up to the end of the epoch: evaluation and checkpoints happen only between epochs
                    self.run_steps(min(steps_per_epoch - self.step % steps_per_epoch, total - self.step),
                                   logger=logger, bar=bar, total=total, log=True, stop=stop)
                    if self._stopping(stop):  # SIGINT / SIGTERM: the exact state, then out
                        where = self._save_during_run()
                        if main:
                            ckpt.prune_checkpoints(self.run_dir, cfg.keep_checkpoints)
                        dist_util.barrier(self.dist)
                        signum = stop.signum or signal.SIGTERM
                        raise Interrupted(f"{signal.Signals(signum).name} at step {self.step}: checkpoint written to "
                                          f"{where}; continue with --resume", signum)
                    if self.step % steps_per_epoch == 0:
                        if main:
                            self._evaluate_and_record(logger, epoch=self.step // steps_per_epoch)
                        self._save_during_run()  # collective: every rank
                        if main:
                            ckpt.prune_checkpoints(self.run_dir, cfg.keep_checkpoints)
                        dist_util.barrier(self.dist)

        self.history = dist_util.broadcast_object(self.history, self.dist)  # every rank returns the same summary
        summary = self.summary(num_epochs, wall_seconds=time.perf_counter() - start)
        if main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
            if self.progress:
                print(summary.table())
        return summary

    def _save_during_run(self) -> Path:
        """The periodic checkpoint; a failed write (full disk) stops the run with one line naming what is kept."""
        path = ckpt.step_dir(self.run_dir, self.step)
        return ckpt.save_or_explain(lambda: self.save_checkpoint(path), path, self.run_dir)

    def _stopping(self, stop: StopRequest | None) -> bool:
        """Whether a stop was requested (on any rank: every rank must stop at the same step)."""
        return stop is not None and dist_util.any_rank(stop.signum is not None, self.dist, self.device)

    def _next_batch(self) -> Minibatch:
        """Refresh the policy and its samples when due, then the next minibatch (x (B, *shape), rewards (B,))."""
        cfg = self.config
        # train() sets steps_per_epoch; run_steps() alone falls back to the config's
        period = cfg.refresh_every or self.steps_per_epoch or cfg.steps_per_epoch
        due = self.step % period == 0
        if due:
            self._refresh_policy()
        # A resumed run without its buffer (another number of processes) re-samples from the restored policy.
        if due or self.buffer is None or cfg.buffer_size is None:
            self.buffer = self._collect(self.local_buffer or self.local_batch)
        return self.buffer.next(min(self.local_batch, len(self.buffer)))

    def _refresh_scale(self) -> RefreshScale:
        """log Z and the float-range shift of the current buffer (computed once per buffer, on every rank)."""
        if self._scale is None or self._scale[0] is not self.buffer:
            cfg = self.config
            self._scale = (self.buffer, refresh_scale(self.buffer.rewards, cfg.temperature, cfg.w2_coefficient, self.dist))
        return self._scale[1]

    def run_steps(self, n: int, *, logger: RunLogger | None = None, bar: Any = None, total: int | None = None,
                  log: bool | None = None, stop: StopRequest | None = None) -> None:
        """``n`` gradient steps: refresh when due, minibatch, weights, loss, update (no evaluation, no checkpoint).

        Nothing is read back from the device except every ``log_every`` steps (and at the step ``total``), when
        the running means (averaged over ranks) are logged to ``logger``: the hot loop never waits for the
        accelerator. ``log`` (default: whether there is a logger) must be the same on every rank. With ``stop``,
        the loop ends early (after a whole step) once a SIGINT/SIGTERM was received.
        """
        cfg = self.config
        log = logger is not None if log is None else log
        if self._running is None:  # kept across calls: a log interval may straddle an epoch's end
            self._running = {k: torch.zeros((), device=self.device) for k in RUNNING_KEYS}
        running = self._running
        reference = self.reference if cfg.w2_coefficient > 0 else None  # alpha = 0: no reference pass at all
        for _ in range(n):
            if self._stopping(stop):
                return
            batch = self._next_batch()
            lw = loss_weights(batch.rewards, cfg.temperature, cfg.w2_coefficient, cfg.weighting,
                              self._refresh_scale(), self.dist)
            x0 = torch.randn(batch.x.shape, generator=self.generator).to(self.device)
            t = self.time_sampler(batch.x.shape[0], self.generator).to(self.device)
            with autocast(self.device, cfg.precision):
                out = orw_cfm_w2_loss(self._train_net, reference, batch.x, lw.weights, x0, t, alpha=lw.w2_coefficient,
                                      path=self.path, coupling=self.coupling, generator=self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            if bar is not None:
                bar.update(1)

            for key, value in (("loss", out.loss.detach()), ("fm", out.fm), ("w2", out.w2),
                               ("w2_term", lw.w2_coefficient * out.w2), ("max_weight", lw.weights.max()),
                               ("log_z", lw.log_z), ("alpha_relative", lw.alpha_relative), ("loss_log_scale", -lw.shift)):
                running[key] += value
            self._running_count += 1
            if log and (self.step % cfg.log_every == 0 or self.step == total):
                means = dist_util.mean_over_ranks({k: v / self._running_count for k, v in running.items()}, self.dist)
                row = {k: v.item() for k, v in means.items()}
                # the share of the loss that is the regulariser: how strong alpha is in practice
                row["w2_share"] = row["w2_term"] / (row["fm"] + row["w2_term"]) if row["fm"] + row["w2_term"] > 0 else 0.0
                if row["loss_log_scale"] != 0 and not self._noted_shift and logger is not None:
                    self._noted_shift = True
                    logger.note(self.step, f"exp(tau * r) or alpha is outside float range here (largest log-coefficient "
                                           f"{-row['loss_log_scale']:.1f}): the paper's loss is divided by "
                                           f"exp({-row['loss_log_scale']:.1f}), which keeps its minimiser; train/loss "
                                           f"is the rescaled loss (train/loss_log_scale says by how much)")
                if not math.isfinite(row["loss"]):
                    raise RuntimeError(f"fine-tuning diverged at step {self.step}: loss is {row['loss']}; "
                                       f"try a smaller learning_rate (now {cfg.learning_rate})")
                row.update(lr=self.scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                           reward_batch_mean=batch.rewards.mean().item(), dropped_samples=self.dropped_samples)
                if logger is not None:
                    logger.log(self.step, row, prefix="train/")
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", w2=f"{row['w2']:.2e}")
                for v in running.values():
                    v.zero_()
                self._running_count = 0

    def _evaluate_and_record(self, logger: RunLogger, epoch: int) -> None:
        ev = self.evaluate()
        row = {"epoch": epoch, "step": self.step, **ev.scalars(),
               **{k: v for k, v in ev.task.items() if isinstance(v, list)}}
        self.history.append(row)
        logger.log(self.step, ev.scalars(), prefix="eval/")
        save_samples(ev.samples[:100], self.run_dir / "samples" / f"epoch_{epoch:03d}.png",
                     title=f"epoch {epoch}: reward {ev.reward_mean:.3f}")
        save_curves(self.history, self.run_dir / "curves.png",
                    title=f"{self.reward_name}: alpha={self.config.w2_coefficient:g}, tau={self.config.temperature:g}")

    def summary(self, epochs: int, wall_seconds: float) -> FinetuneSummary:
        """Before/after numbers from the evaluation history."""
        if not self.history:
            raise UserError("nothing to summarise: train() has not run")
        first, last = self.history[0], self.history[-1]
        return FinetuneSummary(
            reward=self.reward_name, w2_coefficient=self.config.w2_coefficient, temperature=self.config.temperature,
            epochs=epochs, steps=self.step, reward_evaluations=self.reward_evaluations,
            reward_mean_before=first["reward_mean"], reward_mean_after=last["reward_mean"],
            diversity_before=first["diversity"], diversity_after=last["diversity"], wall_seconds=wall_seconds,
            target_fraction_before=first.get("target_fraction"), target_fraction_after=last.get("target_fraction"),
            class_histogram_after=last.get("class_histogram"), dropped_samples=self.dropped_samples,
            metrics_before=_numbers(first), metrics_after=_numbers(last), weighting=self.config.weighting,
            evaluated_weights=self.evaluated_weights,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints.

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write everything needed to continue into the checkpoint folder ``path`` (atomically).

        With several processes every rank must call this (it gathers each rank's random state and sample buffer);
        rank 0 writes. The checkpoint resumes with any number of processes (see :meth:`resume`).
        """
        ranks = dist_util.gather_objects(
            {"generator": self.generator.get_state(), "buffer": self.buffer.state_dict() if self.buffer is not None else None},
            self.dist)
        if not self.dist.is_main:
            return Path(path)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "host_rng": ckpt.host_rng_state(),  # random / np.random, for rewards that use them
            "step": torch.tensor(self.step),
            "reward_evaluations": torch.tensor(self.reward_evaluations),
            "dropped_samples": torch.tensor(self.dropped_samples),
            "ema_n_averaged": self.ema.n_averaged.cpu() if self.ema is not None else torch.tensor(0),
        }
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        if self.dist.enabled:  # rank r's stream and buffer, to continue exactly with the same number of processes
            state["ranks"] = ranks
        extra = {"reference": self.reference_identity, "reward": self.reward_name, "history": self.history,
                 "event_shape": list(self._shape()), "steps_per_epoch": self.steps_per_epoch,
                 "world_size": self.dist.world_size, "evaluated_weights": self.evaluated_weights}
        return ckpt.save_checkpoint(path, model=self.model, spec=self.spec, kind="finetune", step=self.step,
                                    config=to_dict(self.config), ema_model=self.ema.module if self.ema is not None else None,
                                    policy_model=self.policy, train_state=state, extra=extra)

    def _restore_rank_state(self, state: dict[str, Any]) -> None:
        """This rank's random stream and sample buffer from a checkpoint written by any number of processes.

        Same number of processes: each rank continues exactly where it stopped. Another number: rank r keeps
        the stream of saved rank r if there was one (else its own fresh stream), and the saved buffers are pooled
        and dealt out again in equal shares, so the run continues from the same policy samples.
        """
        saved = state.get("ranks") or [{"generator": state["generator"], "buffer": state.get("buffer")}]
        ctx = self.dist
        if ctx.rank < len(saved):
            self.generator.set_state(saved[ctx.rank]["generator"])
        buffers = [r["buffer"] for r in saved if r["buffer"] is not None]
        if len(saved) == ctx.world_size:
            mine = saved[ctx.rank]["buffer"]
            self.buffer = SampleBuffer.from_state_dict(mine, self.generator, self.device) if mine is not None else None
        elif len(buffers) == len(saved):
            x = torch.cat([b["x"] for b in buffers])
            rewards = torch.cat([b["rewards"] for b in buffers])
            share = len(x) // ctx.world_size
            rows = slice(ctx.rank * share, (ctx.rank + 1) * share)
            self.buffer = SampleBuffer(x[rows].to(self.device), rewards[rows].to(self.device), self.generator)
        else:
            self.buffer = None  # re-sampled from the restored policy at the next step

    def resume(self, path: str | Path) -> None:
        """Continue from a fine-tuning checkpoint (or a run folder's newest intact one).

        Restores model, policy, EMA, optimizer, scheduler, step, random state, the sample buffer and the metric
        history. The reference is re-loaded from the path recorded in the checkpoint (unless already loaded) and
        must have the same weights (SHA-256) as when the run started.
        """
        loaded = ckpt.load_checkpoint(path)
        if loaded.meta.get("kind") != "finetune":
            raise UserError(f"{loaded.path} is a {loaded.meta.get('kind')} checkpoint, not a fine-tuning one: use load_pretrained")
        recorded = loaded.meta["reference"]
        if self.reference_identity["path"] is None and recorded.get("path"):
            self.load_pretrained(recorded["path"], recorded.get("weights"))
        if self.reference_identity["sha256"] != recorded["sha256"]:
            raise UserError(f"{loaded.path} was fine-tuned from another reference (weights differ from "
                            f"{self.reference_identity['path'] or 'the model given'}); load the reference it recorded: {recorded.get('path')}")
        state = loaded.train_state()
        if state is None:
            raise UserError(f"checkpoint {loaded.path} has no training state to resume from")
        ckpt.load_weights(self.model, loaded.weights, source=str(loaded.path))
        if loaded.policy_weights is not None:
            ckpt.load_weights(self.policy, loaded.policy_weights, source=str(loaded.path))
        if self.ema is not None and loaded.ema_weights is not None:
            ckpt.load_weights(self.ema.module, loaded.ema_weights, source=str(loaded.path))
            self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "host_rng" in state:
            ckpt.set_host_rng_state(state["host_rng"])
        self.step = int(state["step"])
        self.reward_evaluations = int(state["reward_evaluations"])
        self.dropped_samples = int(state["dropped_samples"])
        self._restore_rank_state(state)
        self.history = list(loaded.meta.get("history", []))
        if loaded.spec is not None:
            self.spec = loaded.spec
