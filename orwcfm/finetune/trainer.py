"""``ORWCFMTrainer``: online reward-weighted fine-tuning with a W2 regulariser, as the public README uses it.

    trainer = ORWCFMTrainer(model, config, device)        # model: any nn.Module called as model(t, x)
    trainer.load_pretrained(config["ref_path"])           # our checkpoints, torchcfm .pt files, builtin:NAME
    trainer.train(num_epochs=..., steps_per_epoch=...)
    trainer.save_checkpoint("./checkpoints/run")

The facade over the pieces of a run: the networks' roles (``roles.py``: trained model, sampling policy, reference),
the algorithm (``orwcfm/algorithms``: ORW-CFM-W2 by default), the loop that runs it (``loop.py``: refresh, collect,
score, minibatch, loss, step, log, evaluate, checkpoint), the evaluation (``evaluate.py``), the checkpoints
(``state.py``) and the summary (``summary.py``). ``train()`` is the whole run; ``run_steps(n)`` is the gradient
steps alone (refresh, minibatch, loss, update), without evaluation or checkpoints: what the speed benchmark times.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import distributed as dist_util
from .. import longwork, runtime
from ..algorithms import make_algorithm
from ..conditions import ClassPrompts, index_cond
from ..config import FinetuneConfig, finetune_config
from ..couplings import get_coupling
from ..errors import UserError
from ..guidance import guided
from ..models import ModelSpec
from ..paths import StraightPath
from ..plotting import save_curves, save_prompt_grid, save_samples
from ..prompt_files import read_prompts
from ..rewards import load_reward, reward_name
from ..runlog import RunLogger
from ..sampling import check_solver, generate
from ..train import make_adam, warmup_schedule
from . import state as run_state
from .evaluate import Evaluation, ReferenceSet, eval_mode, evaluate, judge_dataset, make_judge, pretrained_on
from .loop import FinetuneLoop
from .roles import CopyRoles
from .summary import SUMMARY_EXTRA_ROWS, FinetuneSummary, summarise

__all__ = ["ORWCFMTrainer", "FinetuneSummary", "SUMMARY_EXTRA_ROWS", "fingerprint", "infer_event_shape", "resolve_reward"]


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


def check_prompts(prompts: Any, model: nn.Module, config: FinetuneConfig) -> None:
    """One line unless the prompt set fits the model (one class per prompt) and the samples drawn per refresh."""
    if prompts is None:
        return
    classes = getattr(getattr(model, "module", model), "num_classes", None)
    if isinstance(prompts, ClassPrompts) and classes is not None and classes != len(prompts):
        raise UserError(f"{len(prompts)} prompts for a model of {classes} classes: a class-conditional model needs one "
                        f"prompt per class, in class order")
    k = getattr(prompts, "samples_per_prompt", 1)
    # an auto buffer is a whole number of batches: the batch is what k must divide
    per_refresh = config.buffer_size if isinstance(config.buffer_size, int) else config.batch_size
    if per_refresh % k:
        raise UserError(f"samples_per_prompt {k} must divide the samples drawn per refresh "
                        f"({'buffer_size' if isinstance(config.buffer_size, int) else 'batch_size'} {per_refresh})")


class ORWCFMTrainer(FinetuneLoop):
    """Fine-tunes ``model`` toward a black-box reward with ORW-CFM-W2 (or the algorithm ``config`` names).

    Args:
        model: the velocity field, any ``nn.Module`` called as ``model(t, x)`` with ``t`` of shape (B,).
        config: a :class:`~orwcfm.config.FinetuneConfig` or the public README's config dict.
        device: where to train (default: ``config.device``).
        reward_fn: the reward, any callable (B, *shape) -> (B,); default: ``config.reward`` by name, else the CLIP
            reward of ``config.text_prompts``.
        event_shape: the shape of one sample; read off the model or the reference checkpoint when omitted.
        cache: where built-in assets (classifier, builtin:NAME references) are cached.
        progress: show progress bars.
        prompts: the conditions of a conditional model (e.g. :class:`~orwcfm.conditions.ClassPrompts`); None for
            an unconditional one.
        roles: the networks' roles (e.g. :class:`~orwcfm.t2i.lora.LoraRoles`: adapters of one network); default:
            three copies of ``model`` (:class:`~orwcfm.finetune.roles.CopyRoles`).
        time_grid: ``steps -> (steps + 1,)`` time grid of every sampler of the run (policy, sample(), evaluations),
            e.g. a text-to-image pipeline's shifted schedule (:func:`orwcfm.t2i.sd3.time_grid`); default uniform.
        decode: ``samples (N, *shape) -> images (N, 3, H, W) in [0, 1]`` for the sample grids of a latent model
            (its VAE decoder); with a text prompt set the grids show one row per prompt, captioned. Default: the
            samples are the images.
    """

    def __init__(self, model: nn.Module, config: FinetuneConfig | Mapping[str, Any] | None = None,
                 device: torch.device | str | None = None, *, reward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 event_shape: tuple[int, ...] | None = None, cache: str | Path | None = None, progress: bool = True,
                 prompts: Any = None, roles: Any = None,
                 time_grid: Callable[[int], torch.Tensor] | None = None,
                 decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        cfg = self.config = config if isinstance(config, FinetuneConfig) else finetune_config(config)
        for sampler in (cfg.sampling, cfg.eval_sampling):
            check_solver(sampler.solver, sampler.steps)
        self.device = torch.device(device if device is not None else cfg.device)
        self.cache, self.progress, self.prompts, self.time_grid = cache, progress, prompts, time_grid
        self.decode = decode
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        # Several processes (torchrun, accelerate launch): this rank's share of the batch and buffer, its own random
        # stream; rank 0 of N draws exactly what a single process draws (distributed.py).
        self.dist = dist_util.current()
        self.generator = runtime.seed_rank(cfg.seed, self.dist)  # policy noise, minibatch order, x0, t: on the CPU
        self._sample_generator = torch.Generator().manual_seed(cfg.seed + 2)  # sample() without a seed

        self.roles = roles or CopyRoles(model, self.device, ema_decay=cfg.ema_decay, dropout=cfg.finetune_dropout,
                                        compile=cfg.compile, dist=self.dist)
        # the sample shape: the argument, else the config's, else the model's attributes (else the reference's spec)
        self.event_shape = tuple(event_shape or cfg.event_shape or ()) or infer_event_shape(model)
        if self.prompts is None and cfg.prompts is not None:
            if cfg.eval_prompts is not None:
                raise UserError("config key 'eval_prompts' holds out text prompts; a class-conditional model's prompts "
                                "are its classes (prompt k is class k), so there is nothing to hold out")
            self.prompts = ClassPrompts(read_prompts(cfg.prompts).prompts, cfg.samples_per_prompt)
        check_prompts(self.prompts, model, cfg)
        self.spec: ModelSpec | None = None
        self.reference_data: str | None = None  # the data set the reference was pretrained on (picks the judge)
        self.reference_identity: dict[str, Any] = {"path": None, "weights": None, "sha256": fingerprint(self.reference)}
        self.reward_fn, self.reward_name = resolve_reward(cfg, reward_fn, cache)

        optimizer = make_adam(self.model, cfg.learning_rate, self.device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_schedule(cfg.warmup_steps, 1, "constant"))
        self.optim = runtime.Optimization(self.model, optimizer, scheduler, cfg.grad_clip, self.roles.ema)
        self.algorithm = make_algorithm(cfg, path=StraightPath(cfg.sigma_min), coupling=get_coupling(cfg.coupling),
                                        dist=self.dist)
        self._init_loop_state()
        self.run_dir = Path(cfg.savedir) / cfg.run_name if cfg.run_name else Path(cfg.savedir)
        self._reference_cache: ReferenceSet | None = None  # reference samples on the eval noise, and the W2 floor
        self._judge: Any = False  # built on first evaluation (False: not yet; None: no judge for this task)

    # The networks and the update rule, by the names the README and earlier releases use.
    model = property(lambda self: self.roles.model, doc="The trained network.")
    policy = property(lambda self: self.roles.policy(), doc="The frozen sampling policy.")
    reference = property(lambda self: self.roles.reference(), doc="The frozen pretrained reference.")
    ema = property(lambda self: self.roles.ema, doc="The EMA of the trained weights, or None.")
    optimizer = property(lambda self: self.optim.optimizer)
    scheduler = property(lambda self: self.optim.scheduler)
    _policy_net = property(lambda self: self.roles.policy_net())

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
            self.reference_data = pretrained_on(loaded)
            if loaded.spec is not None:
                self.spec = loaded.spec
                saved = tuple(loaded.spec.event_shape)
                if self.event_shape is not None and tuple(self.event_shape) != saved:
                    raise UserError(f"event_shape {list(self.event_shape)} does not match the reference {source}, whose "
                                    f"samples have shape {list(saved)}")
                self.event_shape = saved
        elif source.is_file():
            state = ckpt.load_foreign_state_dict(source, key={"ema": "ema_model", "raw": "net_model"}[which],
                                                 map_location=self.device)
        else:
            raise UserError(f"reference not found: {source} (expected a checkpoint folder, a run folder or a .pt file)")
        ckpt.load_weights(self.model, state, source=str(source))
        self.roles.reset_to_model()
        self.reference_identity = {"path": str(source), "weights": which, "sha256": fingerprint(self.reference)}
        self._reference_cache = None

    # ------------------------------------------------------------------------------------------------------------
    # Sampling and evaluation.

    def _shape(self) -> tuple[int, ...]:
        if self.event_shape is None:
            raise UserError("cannot tell the sample shape of this model: set event_shape: [C, H, W] or [dim] in the "
                            "config, or pass event_shape=... to ORWCFMTrainer")
        return self.event_shape

    @property
    def evaluated_weights(self) -> str:
        """``ema`` when the run keeps an EMA (then the EMA is its model everywhere), else ``raw``."""
        return "ema" if self.ema is not None else "raw"

    def current_model(self) -> nn.Module:
        """The run's model: the EMA of the trained weights when there is one, else the trained weights."""
        return self.roles.current()

    @torch.no_grad()
    def sample(self, n: int, *, use_ema: bool | None = None, seed: int | None = None, cond: Any = None) -> torch.Tensor:
        """``n`` samples (n, *shape) of the run's model (the EMA when the run keeps one, unless ``use_ema=False``),
        with the configured solver and guidance; a conditional run draws them under ``cond`` (default: spread
        evenly over its prompts)."""
        use_ema = self.ema is not None if use_ema is None else use_ema
        net = self.ema.module if use_ema and self.ema is not None else self.model
        # never the training generator: looking at samples mid-run must not change the run
        gen = torch.Generator().manual_seed(seed) if seed is not None else self._sample_generator
        x0 = torch.randn((n, *self._shape()), generator=gen).to(self.device)
        s = self.config.sampling
        if cond is None and self.prompts is not None:
            cond = self.prompts.spread(n, self.device)
        with eval_mode(net):
            return generate(guided(net, s.guidance, cond), x0, solver=s.solver, steps=s.steps, batch_size=s.batch_size,
                            precision=s.precision, cond=cond, times=self._times(s.steps))

    def _eval_noise(self) -> torch.Tensor:
        # The same noise at every evaluation, so before/after differences come from the model alone.
        gen = torch.Generator().manual_seed(self.config.seed + 1_000_003)
        return torch.randn((self.eval_plan.samples, *self._shape()), generator=gen).to(self.device)

    def _eval_cond(self) -> Any:
        """The evaluation's conditions: spread evenly over the prompts (None for an unconditional run)."""
        return self.prompts.spread(self.eval_plan.samples, self.device) if self.prompts is not None else None

    def _reference_cached(self) -> bool:
        """Whether the kept reference set was drawn on this run's evaluation noise (train() may resolve
        ``eval_samples: auto`` to another size than an evaluate() before it used)."""
        return self._reference_cache is not None and len(self._reference_cache.samples) == self.eval_plan.samples

    def _reference_eval(self) -> ReferenceSet:
        """The reference's samples on the evaluation noise, their median pairwise distance (the Vendi bandwidth)
        and the W2 floor (the empirical W2 from them to a second reference set of the same size from independent
        noise), computed once: every evaluation is compared with the same reference set."""
        if not self._reference_cached():
            from .evaluate import FLOOR_SEED_OFFSET, reference_set

            s = self.config.eval_sampling
            noise = self._eval_noise()
            gen = torch.Generator().manual_seed(self.config.seed + FLOOR_SEED_OFFSET)
            floor_noise = torch.randn(noise.shape, generator=gen).to(self.device)
            cond = self._eval_cond()
            self._reference_cache = reference_set(guided(self.reference, s.guidance, cond), noise, floor_noise,
                                                  solver=s.solver, steps=s.steps, batch_size=s.batch_size or 1000,
                                                  cond=cond, times=self._times(s.steps))
        return self._reference_cache

    def evaluate(self) -> Evaluation:
        """Metrics of the current model on the fixed evaluation noise, with distances to the reference.

        A progress bar (once it has taken 2 s) counts the samples integrated: the reference's two sets on the
        first evaluation of the process (they are kept for the rest of the run), then the model's."""
        n = self.eval_plan.samples
        total = n if self._reference_cached() else 3 * n
        with longwork.progress(f"evaluation (step {self.step})", total, enabled=self.progress and self.dist.is_main):
            return self._evaluate()

    def _evaluate(self) -> Evaluation:
        if self._judge is False:  # chosen by the configuration (and the reward's and reference's data set)
            dataset = judge_dataset(self.config.judge, self.reward_fn, self.reference_data)
            self._judge = make_judge(dataset, self.reward_fn, self.cache)
        ref = self._reference_eval()
        s = self.config.eval_sampling  # the fixed instrument, whatever sampler the policy uses
        cond = self._eval_cond()
        return evaluate(guided(self.current_model(), s.guidance, cond), self.reward_fn, self._eval_noise(),
                        solver=s.solver, steps=s.steps, batch_size=s.batch_size or 1000, name=self.reward_name,
                        step=self.step, reference=guided(self.reference, s.guidance, cond),
                        reference_samples=ref.samples, vendi_bandwidth=ref.bandwidth, reference_floor=ref.w2_floor,
                        judge=self._judge, cond=cond, times=self._times(s.steps))

    def _save_grid(self, ev: Evaluation, epoch: int) -> None:
        """``samples/epoch_NNN.png``: the evaluation's samples (decoded first for a latent model; one captioned
        row per prompt for text prompts)."""
        path, title = self.run_dir / "samples" / f"epoch_{epoch:03d}.png", f"epoch {epoch}: reward {ev.reward_mean:.3f}"
        if self.decode is None:
            save_samples(ev.samples[:100], path, title=title)
            return
        texts = getattr(self.prompts, "texts", None)
        prompts = len(getattr(self.prompts, "eval_prompts", ()))
        if texts is None or not prompts:
            save_samples(self.decode(ev.samples[:100]) * 2 - 1, path, title=title)
            return
        # the evaluation spreads its samples over the prompts in rounds (0, 1, .., E-1, 0, ..): sample r * E + p
        # is prompt p's r-th; decode only the grid's (up to 8 prompts x 4 samples)
        idx = torch.tensor([r * prompts + p for p in range(min(prompts, 8)) for r in range(4)
                            if r * prompts + p < len(ev.samples)])
        save_prompt_grid(self.decode(ev.samples[idx]), texts(index_cond(self._eval_cond(), idx)), path, title=title)

    def _refresh_policy(self) -> None:
        self.roles.refresh_policy()

    def evaluate_and_record(self, logger: RunLogger, epoch: int) -> None:
        """Evaluate, append the row to the history, log it, and draw the sample grid and the curves."""
        start = time.perf_counter()
        ev = self.evaluate()
        self.evaluation_seconds += time.perf_counter() - start
        # the reward evaluations spent so far: how many it took to reach a level (orwcfm compare --target)
        row = {"epoch": epoch, "step": self.step, "reward_evaluations": self.reward_evaluations, **ev.scalars(),
               **{k: v for k, v in ev.task.items() if isinstance(v, list)}}
        self.history.append(row)
        logger.log(self.step, ev.scalars(), prefix="eval/")
        self._save_grid(ev, epoch)
        save_curves(self.history, self.run_dir / "curves.png",
                    title=f"{self.reward_name}: alpha={self.config.w2_coefficient:g}, tau={self.config.temperature:g}")

    # ------------------------------------------------------------------------------------------------------------
    # The run, its summary and its checkpoints.

    def train(self, num_epochs: int, steps_per_epoch: int) -> FinetuneSummary:
        """Fine-tune for ``num_epochs`` epochs of ``steps_per_epoch`` gradient steps (continues after a resume).

        Writes into ``run_dir`` (``savedir``/``run_name``): ``config.yaml``, ``metrics.jsonl``, TensorBoard events,
        ``samples/epoch_NNN.png``, ``curves.png``, ``checkpoints/step_N`` after every epoch and ``summary.json``.
        """
        start = time.perf_counter()
        self.evaluation_seconds = 0.0
        super().train(num_epochs, steps_per_epoch)
        summary = dataclasses.replace(
            self.summary(num_epochs, wall_seconds=time.perf_counter() - start),
            evaluation_seconds=self.evaluation_seconds,
            evaluation_share_predicted=self.predicted_cost.evaluation_share if self.predicted_cost else None,
            eval_samples=self.eval_plan.samples, eval_every=self.eval_plan.every)
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
            if self.progress:
                print(summary.table())
        return summary

    def summary(self, epochs: int, wall_seconds: float) -> FinetuneSummary:
        """Before/after numbers from the evaluation history."""
        if not self.history:
            raise UserError("nothing to summarise: train() has not run")
        return summarise(self.history, reward=self.reward_name, config=self.config, epochs=epochs, steps=self.step,
                         reward_evaluations=self.reward_evaluations, dropped_samples=self.dropped_samples,
                         wall_seconds=wall_seconds, evaluated_weights=self.evaluated_weights)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write everything needed to continue into the checkpoint folder ``path`` (atomically).

        With several processes every rank must call this (it gathers each rank's random state and sample buffer);
        rank 0 writes. The checkpoint resumes with any number of processes (see :meth:`resume`).
        """
        return run_state.save(self, path)

    def resume(self, path: str | Path) -> None:
        """Continue from a fine-tuning checkpoint (or a run folder's newest intact one): model, policy, EMA,
        optimizer, scheduler, step, random state, the sample buffer and the metric history. The reference is
        re-loaded from the path recorded in the checkpoint (unless already loaded) and must have the same weights
        (SHA-256) as when the run started."""
        run_state.resume(self, path)
