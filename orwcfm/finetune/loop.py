"""The fine-tuning loop: one plain loop that runs any :class:`~orwcfm.algorithms.Algorithm`.

    refresh     policy <- the run's model, when due (every epoch, or every ``refresh_every`` steps; ``refresh:
                offline`` draws one buffer from the reference at step 0 and never refreshes)
    collect     the policy's samples x1 for this refresh, under conditions drawn from the prompt set (if any)
    score       their rewards r = reward(x1[, cond]) (the black box; checked on every rank; NaNs stop or drop)
    minibatch   (x1, r, cond) from the buffer (``buffer_size: auto`` sizes it so that each sample feeds about 4
                steps; a fresh batch every step when it is null)
    loss        the algorithm's objective of the minibatch, with fresh noise x0 and times t
    step        optimizer, warm-up schedule, gradient clipping, optional EMA       (runtime.Optimization)
    log         every ``log_every`` steps the running means (only then are numbers pulled off the device)
    evaluate    between epochs, on fixed noise: metrics, sample grid             (``evaluate_and_record``)
    checkpoint  between epochs, atomically; the last K kept; on SIGINT / SIGTERM the exact state, then out

:class:`FinetuneLoop` is the loop and the state it advances; :class:`~orwcfm.finetune.trainer.ORWCFMTrainer`
builds it from a config and adds loading, sampling, evaluation and checkpoints.
"""

from __future__ import annotations

import dataclasses
import sys
from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from .. import distributed as dist_util
from .. import runtime
from ..algorithms import Algorithm
from ..algorithms.base import Collected, LossContext
from ..conditions import Cond, index_cond
from ..config import FinetuneConfig, to_dict
from ..errors import UserError
from .. import longwork
from ..interrupt import StopNow, StopRequest
from ..paths import make_time_sampler
from ..rewards import call_reward
from ..runlog import RunLogger
from ..sampling import autocast
from .buffer import Minibatch, SampleBuffer
from .cost import EvalPlan, auto_plan_line, large_share_hint, plan_evaluations, predict_cost
from .roles import ModelRoles


class FinetuneLoop(ABC):
    """The state a fine-tuning run advances, and the loop that advances it.

    Subclasses provide :meth:`_shape`, :meth:`evaluate_and_record` and :meth:`save_checkpoint`.
    """

    config: FinetuneConfig
    algorithm: Algorithm
    roles: ModelRoles
    optim: runtime.Optimization
    dist: dist_util.DistContext
    device: torch.device
    generator: torch.Generator
    reward_fn: Any
    reward_name: str
    prompts: Any  # a prompt set with draw(n, generator) -> Cond, or None (unconditional)
    time_grid: Any  # steps -> (steps + 1,) time grid of the samplers, or None (uniform)
    run_dir: Path
    progress: bool

    def _times(self, steps: int) -> torch.Tensor | None:
        """The samplers' time grid for ``steps`` steps (None: uniform)."""
        return self.time_grid(steps) if self.time_grid is not None else None

    def _init_loop_state(self) -> None:
        cfg = self.config
        self.local_batch = dist_util.split(cfg.batch_size, self.dist, "batch_size")
        if isinstance(cfg.buffer_size, int):  # refused now, not at the first refresh, when it does not split evenly
            dist_util.split(cfg.buffer_size, self.dist, "buffer_size")
        self.time_sampler = make_time_sampler(cfg.time_sampler)
        self.step = 0
        self.steps_per_epoch: int | None = None  # set by train(); recorded in checkpoints
        self.buffer: SampleBuffer | None = None
        self.history: list[dict[str, Any]] = []  # one row per evaluation: epoch 0 is "before"
        self.reward_evaluations = 0
        self.dropped_samples = 0
        self.predicted_cost = None  # set by train(): finetune/cost.RunCost
        # how evaluations are made (auto resolved by train() from the run's length; before it: 500 samples)
        self.eval_plan = EvalPlan.outside_a_run(cfg)
        self.evaluation_seconds = 0.0  # spent in evaluations during this train() call
        self._noted = False  # the algorithm's one-time log remark (e.g. the loss was rescaled to stay in range)
        self._running: dict[str, torch.Tensor] | None = None  # sums of the logged numbers since the last log
        self._running_count = 0

    @abstractmethod
    def _shape(self) -> tuple[int, ...]: ...

    @abstractmethod
    def evaluate_and_record(self, logger: RunLogger, epoch: int) -> None: ...

    @abstractmethod
    def save_checkpoint(self, path: str | Path) -> Path: ...

    # ------------------------------------------------------------------------------------------------------------
    # refresh, collect, score, minibatch

    def _collect(self, n: int) -> SampleBuffer:
        """Draw ``n`` samples from the frozen policy (under conditions from the prompt set) and score them.

        A stop requested while the policy samples (:class:`StopNow`, single-process runs) drops the samples and
        puts the run's random streams back as they were before them, so that the checkpoint written next resumes
        into the very same draw."""
        streams = (self.generator.get_state(), torch.get_rng_state())
        try:
            x0 = torch.randn((n, *self._shape()), generator=self.generator).to(self.device)
            cond = self.prompts.draw(n, self.generator, self.device) if self.prompts is not None else None
            with longwork.progress(f"policy samples (step {self.step})", n, enabled=self.progress and self.dist.is_main):
                out = self.algorithm.collect(self.roles.policy_net(), x0, cond, self._policy_sampling(),
                                             self._times(self.config.sampling.steps))
        except StopNow:
            self.generator.set_state(streams[0])
            torch.set_rng_state(streams[1])
            raise
        x1, extras = (out.x, out.extras) if isinstance(out, Collected) else (out, {})
        rewards, valid = self._score(x1, cond)
        if valid is not None:
            keep = valid.to(x1.device)
            x1, cond = x1[keep], index_cond(cond, torch.nonzero(valid).flatten())
            extras = {k: v[keep] for k, v in extras.items()}
            rewards = rewards[valid.to(self.device)]
        buffer = SampleBuffer(x1, rewards, self.generator, cond=cond)
        buffer.extras.update(extras)
        return buffer

    def _policy_sampling(self) -> Any:
        """The policy's sampler; an ``auto`` buffer (many batches) is integrated one batch at a time unless
        ``sampling.batch_size`` says otherwise, so that the default's peak memory stays the fresh-batch scheme's."""
        sampling = self.config.sampling
        if self.config.buffer_size == "auto" and sampling.batch_size is None:
            return dataclasses.replace(sampling, batch_size=self.local_batch)
        return sampling

    def _score(self, x1: torch.Tensor, cond: Cond | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rewards (N,) of the policy's samples, and the mask of valid ones when some were dropped (the only
        place the reward is called during training)."""
        error: Exception | None = None
        try:
            scored = call_reward(self.reward_fn, x1, name=self.reward_name, step=self.step,
                                 on_bad=self.config.on_bad_reward, cond=cond)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks have been told
            error = err
        # Every rank learns whether any reward failed, so that none waits for ever in the next collective.
        if dist_util.any_rank(error is not None, self.dist, self.device):
            if error is not None:
                raise error
            raise dist_util.RankFailed(f"rank {self.dist.rank}: stopped because another rank's reward failed at step "
                                       f"{self.step} (that rank printed the error)")
        self.reward_evaluations += x1.shape[0]
        if scored.num_bad:
            self.dropped_samples += scored.num_bad
            return scored.values.to(self.device), scored.valid
        return scored.values.to(self.device), None

    def _next_batch(self) -> Minibatch:
        """Refresh the policy and its samples when due, then the next minibatch."""
        cfg = self.config
        if not self.algorithm.collects:  # the loss samples for itself: only the batch's size and shape are given
            b = self.local_batch
            return Minibatch(x=torch.zeros((b, *self._shape()), device=self.device), rewards=torch.zeros(b, device=self.device))
        # train() sets steps_per_epoch; run_steps() alone falls back to the config's
        period = cfg.refresh_every or self.steps_per_epoch or cfg.steps_per_epoch
        # offline: one buffer from the reference (the policy before any refresh), drawn at step 0 and never again
        due = self.step == 0 if cfg.refresh == "offline" else self.step % period == 0
        if due:
            self.roles.refresh_policy()
        per_refresh = cfg.samples_per_refresh(period)
        # A resumed run without its buffer (another number of processes) re-samples from the restored policy.
        if due or self.buffer is None or per_refresh is None:
            n = dist_util.split(per_refresh, self.dist, "buffer_size") if per_refresh else self.local_batch
            self.buffer = self._collect(n)
            self.algorithm.refresh(self.buffer)
        return self.buffer.next(min(self.local_batch, len(self.buffer)))

    def _check_reward_gradient(self) -> None:
        """One line, before any step, when the algorithm back-propagates through the reward and the reward has no
        gradient (a black box such as JPEG size): probed once on two zero samples (one prompt group when the run
        draws several samples per prompt)."""
        if not self.algorithm.needs_reward_gradient or getattr(self, "_reward_checked", False):
            return
        from ..rewards.base import takes_condition

        # two samples, or one group of samples_per_prompt (prompt sets draw whole groups)
        n = max(2, self.config.samples_per_prompt)
        x = torch.zeros((n, *self._shape()), device=self.device, requires_grad=True)
        cond = self.prompts.draw(n, torch.Generator().manual_seed(0), self.device) if self.prompts is not None else None
        try:
            with torch.enable_grad():
                r = self.reward_fn(x, cond) if cond is not None and takes_condition(self.reward_fn) else self.reward_fn(x)
            differentiable = isinstance(r, torch.Tensor) and r.requires_grad
        except Exception:  # noqa: BLE001 - e.g. a reward that converts to numpy: not differentiable either
            differentiable = False
        if not differentiable:
            from ..algorithms import black_box_algorithms

            raise UserError(f"algorithm {self.algorithm.name} back-propagates through the reward, but reward "
                            f"{self.reward_name} is not differentiable (its output carries no gradient); a black-box "
                            f"reward needs one of: {', '.join(black_box_algorithms())}")
        self._reward_checked = True

    def _loss_context(self) -> LossContext:
        """What the algorithm's loss asks for beyond the model and the reference: the frozen policy, the
        (differentiable) reward, a sampler of fresh conditions."""
        alg = self.algorithm
        cond_sampler = None
        if self.prompts is not None:
            def cond_sampler(n: int) -> Cond:
                return self.prompts.draw(n, self.generator, self.device)
        return LossContext(policy=self.roles.policy_net() if alg.uses_policy else None,
                           reward=self.reward_fn if alg.needs_reward_gradient else None, cond_sampler=cond_sampler)

    def _drop_prompts(self, batch: Minibatch) -> Minibatch:
        """Prompt dropout: each sample's condition replaced by the null one with probability ``prompt_dropout``,
        for the loss only (the rewards were computed under the real prompts), so that the unconditional field that
        classifier-free guidance extrapolates from keeps being trained. No draw when it is 0: runs without it keep
        their random streams."""
        p = self.config.prompt_dropout
        if p == 0 or batch.cond is None:
            return batch
        mask = torch.rand(len(batch.cond), generator=self.generator) < p
        return dataclasses.replace(batch, cond=batch.cond.drop(mask))

    # ------------------------------------------------------------------------------------------------------------
    # loss, step, log

    def run_steps(self, n: int, *, logger: RunLogger | None = None, bar: Any = None, total: int | None = None,
                  log: bool | None = None, stop: StopRequest | None = None) -> None:
        """``n`` gradient steps: refresh when due, minibatch, loss, update (no evaluation, no checkpoint).

        Nothing is read back from the device except every ``log_every`` steps (and at the step ``total``), when
        the running means (averaged over ranks) are logged to ``logger``: the hot loop never waits for the
        accelerator. ``log`` (default: whether there is a logger) must be the same on every rank. With ``stop``,
        the loop ends early (after a whole step) once a SIGINT/SIGTERM was received.
        """
        cfg = self.config
        log = logger is not None if log is None else log
        if self._running is None:  # kept across calls: a log interval may straddle an epoch's end
            self._running = {k: torch.zeros((), device=self.device) for k in self.algorithm.stat_keys}
        self._check_reward_gradient()
        reference = self.roles.reference() if self.algorithm.uses_reference else None
        context = self._loss_context()
        for _ in range(n):
            if runtime.stop_requested(stop, self.dist, self.device):
                return
            batch = self._drop_prompts(self._next_batch())
            x0 = torch.randn(batch.x.shape, generator=self.generator).to(self.device)
            t = self.time_sampler(batch.x.shape[0], self.generator).to(self.device)
            with autocast(self.device, cfg.precision):
                out = self.algorithm.loss(self.roles.train_net, reference, batch, x0, t, self.generator, context)
            grad_norm = self.optim.step(out.loss)
            self.reward_evaluations += self.algorithm.reward_evaluations(batch.x.shape[0])
            self.step += 1
            if bar is not None:
                bar.update(1)
            for key, value in out.stats.items():
                self._running[key] += value
            self._running_count += 1
            if log and (self.step % cfg.log_every == 0 or self.step == total):
                self._log(logger, bar, batch, grad_norm)

    def _log(self, logger: RunLogger | None, bar: Any, batch: Minibatch, grad_norm: torch.Tensor) -> None:
        """Average the running sums over the interval and the ranks, log them, and start a new interval."""
        running = self._running
        means = dist_util.mean_over_ranks({k: v / self._running_count for k, v in running.items()}, self.dist)
        row = {k: v.item() for k, v in means.items()}
        row.update(self.algorithm.log_row(row))
        note = self.algorithm.note(row)
        if note is not None and not self._noted and logger is not None:
            self._noted = True
            logger.note(self.step, note)
        runtime.check_finite(row["loss"], self.step, "fine-tuning", self.config.learning_rate)
        # a loss that samples for itself reports its batch's reward as a stat; the minibatch it was handed is zeros
        reward_mean = row.get("reward", 0.0) if not self.algorithm.collects else batch.rewards.mean().item()
        row.update(lr=self.optim.lr, grad_norm=float(grad_norm), reward_batch_mean=reward_mean,
                   dropped_samples=self.dropped_samples)
        if logger is not None:
            logger.log(self.step, row, prefix="train/")
        if bar is not None:
            bar.set_postfix({k: f"{row[k]:.4f}" if k == "loss" else f"{row[k]:.2e}" for k in ("loss", "w2") if k in row})
        for v in running.values():
            v.zero_()
        self._running_count = 0

    # ------------------------------------------------------------------------------------------------------------
    # epochs: evaluate and checkpoint between them

    def train(self, num_epochs: int, steps_per_epoch: int) -> Any:
        """Fine-tune for ``num_epochs`` epochs of ``steps_per_epoch`` gradient steps (continues after a resume).

        Writes into ``run_dir`` (``savedir``/``run_name``): ``config.yaml``, ``metrics.jsonl``, TensorBoard events,
        ``samples/epoch_NNN.png``, ``curves.png``, ``checkpoints/step_N`` after every epoch and ``summary.json``.
        """
        for name, value in (("num_epochs", num_epochs), ("steps_per_epoch", steps_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        cfg = self.config
        if cfg.eval_every != "auto" and cfg.eval_every > num_epochs:
            raise UserError(f"config key 'eval_every' ({cfg.eval_every} epochs) is larger than the run ({num_epochs} "
                            f"epochs): at most {num_epochs} (the evaluations before and after the run are always made)")
        self._shape()
        self._check_reward_gradient()  # before the run folder exists
        self.steps_per_epoch = steps_per_epoch
        main = self.dist.is_main  # with several processes only rank 0 evaluates and writes
        # how often and how large the evaluations are (auto: a small share of this run), and what they will cost
        # next to the training, said before the run when auto shrank them or they are a large share
        plan = plan_evaluations(cfg, self.algorithm, num_epochs, steps_per_epoch)
        self.eval_plan = plan
        self.predicted_cost = predict_cost(cfg, self.algorithm, num_epochs, steps_per_epoch, plan)
        for line in (auto_plan_line(plan, self.predicted_cost),
                     large_share_hint(self.predicted_cost, cfg, num_epochs, plan)):
            if line is not None and main and self.progress:
                print(line, file=sys.stderr, flush=True)
        if main:
            runtime.make_run_dir(self.run_dir)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        logging = (RunLogger(self.run_dir, wandb_project=cfg.wandb_project if cfg.use_wandb else None,
                             run_name=cfg.run_name, config=to_dict(cfg)) if main else nullcontext(None))
        # a single process honours a stop inside long work too (sampling, evaluation); several wait for the step's
        # end, where every rank agrees to stop at the same step
        with logging as logger, StopRequest(prompt=not self.dist.enabled) as stop:
            try:
                self._train_epochs(num_epochs, steps_per_epoch, logger, stop)
            except StopNow:  # inside sampling or an evaluation: that work is dropped, the last whole step is saved
                runtime.interrupt(stop, self.step, self._save_during_run, self.dist)
        self.history = dist_util.broadcast_object(self.history, self.dist)  # every rank returns the same summary

    def _train_epochs(self, num_epochs: int, steps_per_epoch: int, logger: RunLogger | None, stop: StopRequest) -> None:
        """The epochs of :meth:`train`: the evaluation before training (or the one a stop dropped), then steps up to
        each epoch's end, its evaluation and its checkpoint."""
        main = self.dist.is_main
        total = num_epochs * steps_per_epoch
        epoch = self.step // steps_per_epoch

        def due(e: int) -> bool:  # the epochs that end with an evaluation
            return self.eval_plan.due(e, num_epochs)

        if not self.history:
            if main:
                self.evaluate_and_record(logger, epoch=0)
        elif self.step % steps_per_epoch == 0 and due(epoch) and self.history[-1]["epoch"] < epoch:
            # stopped during this epoch's evaluation, which was dropped: it is made now, then the epoch's checkpoint
            if main:
                self.evaluate_and_record(logger, epoch=epoch)
            self._save_during_run()  # collective: every rank
            dist_util.barrier(self.dist)
        with tqdm(total=total, initial=min(self.step, total), disable=not (self.progress and main), unit="step",
                  desc=f"finetune {self.reward_name}") as bar:
            while self.step < total:
                # up to the end of the epoch: evaluation and checkpoints happen only between epochs
                self.run_steps(min(steps_per_epoch - self.step % steps_per_epoch, total - self.step),
                               logger=logger, bar=bar, total=total, log=True, stop=stop)
                if runtime.stop_requested(stop, self.dist, self.device):  # the exact state, then out
                    runtime.interrupt(stop, self.step, self._save_during_run, self.dist)
                if self.step % steps_per_epoch == 0:
                    if main and due(self.step // steps_per_epoch):
                        self.evaluate_and_record(logger, epoch=self.step // steps_per_epoch)
                    self._save_during_run()  # collective: every rank
                    dist_util.barrier(self.dist)

    def _save_during_run(self) -> Path:
        """The periodic checkpoint (every rank); a failed write stops the run with one line naming what is kept."""
        path = ckpt.step_dir(self.run_dir, self.step)
        return runtime.save_and_prune(lambda: self.save_checkpoint(path), path, self.run_dir,
                                      self.config.keep_checkpoints, self.dist)
