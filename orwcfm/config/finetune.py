"""``FinetuneConfig``: ORW-CFM-W2 fine-tuning of a pretrained flow toward a black-box reward."""

from __future__ import annotations

import math
from typing import Any, Literal

from ..algorithms import check_algorithm_config
from ..algorithms.orw_cfm_w2 import ORW_HELP
from ..errors import UserError
from .fields import SHARED_HELP, _in_unit_interval, _non_negative, _positive, dataclass_frozen, setting
from .sampling import SamplingConfig
from .t2i import TextToImageConfig


def _midpoint_x10() -> SamplingConfig:
    # Policy sampling is most of the cost of a step. Midpoint x 10 (20 network evaluations) is the cheapest
    # sampler that is not worse than Euler x 100 in digits-FD *and* keeps the fine-tuned model's diversity
    # (rk4 x 3 passes the first test, not the second): benchmarks/finetune_speed.py, docs/performance.md.
    return SamplingConfig(solver="midpoint", steps=10)


# ``buffer_size: auto``: the most steps one policy sample feeds between refreshes (benchmarks/readme_defaults.py,
# docs/performance.md: past it, the sampling time saved per step is small next to the step's own network passes,
# while the fine-tuned model's diversity starts to pay for the repeated samples).
AUTO_REUSE = 4


@dataclass_frozen
class FinetuneConfig:
    """ORW-CFM-W2 fine-tuning. The first block holds the public ORW-CFM README's keys, as written there."""

    # --- the public README's config dict ---
    learning_rate: float = setting(2e-4, help="Adam's learning rate (> 0), constant after the warm-up.")
    warmup_steps: int = setting(
        0, help="Steps of linear learning-rate warm-up from 0 (>= 0); 0 starts at the full rate (the public "
                "README's CIFAR setting is 5000).")
    w2_coefficient: float = setting(
        1.0, help=ORW_HELP["w2_coefficient"])
    temperature: float = setting(
        0.5, help=ORW_HELP["temperature"])
    grad_clip: float | None = setting(1.0, help=SHARED_HELP["grad_clip"])
    batch_size: int = setting(128, help="Policy samples per gradient step (> 0), over all processes (each of N "
                                        "processes takes batch_size / N).")
    text_prompts: tuple[str, ...] | None = setting(
        None, help="Prompts of the CLIP reward, the target then its contrast (at least two), used when reward is "
                   "null; null = no CLIP reward.")
    use_wandb: bool = setting(False, help="Also log to Weights & Biases (needs the wandb package); false = "
                                          "metrics.jsonl and TensorBoard only.")
    wandb_project: str = setting("orwcfm", help="Weights & Biases project the run logs to when use_wandb is true.")
    run_name: str | None = setting(None, help="Name of the run: its folder is savedir/run_name (and its wandb "
                                              "name); null = write into savedir itself.")
    savedir: str = setting("./results", help="Folder that holds the run folder (savedir/run_name): checkpoints, "
                                             "metrics, sample grids, summary.")
    ref_path: str | None = setting(
        None, help="The pretrained reference the run starts from and is held to: a checkpoint or run folder, "
                   "builtin:NAME (pretrained and cached on first use), or a torchcfm .pt file (net_model / "
                   "ema_model; on the command line with ref_model); null = none, which the command line refuses.")
    # --- ours ---
    ref_model: dict[str, Any] | None = setting(
        None, help="The network a torchcfm .pt reference is loaded into on the command line (a .pt file holds "
                   "weights only): {kind, event_shape, options}, e.g. kind adm-unet (torchcfm's UNetModelWrapper), "
                   "event_shape [3, 32, 32] (see the cifar10-clip preset); null for orwcfm checkpoint folders, "
                   "which carry their architecture.")
    ref_weights: Literal["ema", "raw"] = setting(
        "ema", help="Which weights of the reference are loaded: ema or raw (torchcfm files: ema_model / net_model).")
    # See orwcfm/finetune/weights.py for what alpha is measured against under each weighting.
    weighting: Literal["paper", "buffer-normalized", "batch-normalized"] = setting(
        "paper", help=ORW_HELP["weighting"])
    reward: str | None = setting(
        None, help="Reward to maximise: a built-in name (e.g. digits-even, jpeg-compressibility; for a text-to-image "
                   "model also clip-score, pickscore, aesthetic), package.module:function or path/to/file.py:function "
                   "(called fn(images, prompts) for a text-to-image model); null = the CLIP reward of text_prompts.")
    reward_options: dict[str, Any] = setting(
        factory=dict, help="Keyword arguments of the reward, e.g. {log_prob: true} or {baseline_kb: 5}; {} = its "
                           "defaults.")
    on_bad_reward: Literal["stop", "drop"] = setting(
        "stop", help="What a NaN or inf reward does: stop the run with one message, or drop those samples (counted "
                     "in train/dropped_samples).")
    epochs: int = setting(10, help="Epochs the command line runs (> 0), each followed by an evaluation and a "
                                   "checkpoint; the library's train() takes num_epochs instead.")
    steps_per_epoch: int = setting(100, help="Gradient steps per epoch (> 0).")
    refresh_every: int | None = setting(
        None, help="Gradient steps between refreshes of the sampling policy from the model (> 0); null = once per "
                   "epoch.")
    buffer_size: int | Literal["auto"] | None = setting(
        "auto", help="Policy samples drawn and scored per refresh and reused as minibatches until the next one: an "
                     "integer (at least batch_size, over all processes); auto = batch_size x ceil(P / 4) for a refresh "
                     "period of P steps, so that each sample feeds about 4 steps and never more (the policy is "
                     "frozen between refreshes; past about 4 reuses the time saved no longer pays for the lost "
                     "freshness, docs/performance.md); null = a fresh batch every step (the published scheme).")
    sampling: SamplingConfig = setting(
        factory=_midpoint_x10, help="The policy's sampler of the training samples (midpoint x 10: the cheapest that "
                                    "keeps digits-FD and diversity, docs/performance.md).")
    # The instrument of every evaluation (before training, after each epoch, orwcfm evaluate): kept apart from the
    # policy's sampler so that making training cheaper never changes how its results are measured. float32 only.
    eval_sampling: SamplingConfig = setting(
        factory=_midpoint_x10, help="The sampler of every evaluation, apart from the policy's so that cheaper "
                                    "training never changes how results are measured (fp32 only; batch_size null "
                                    "= 1000 at a time).")
    coupling: Literal["independent", "ot"] = setting(
        "independent", help="How noise is paired with the policy's samples: independent, or ot (the exact minibatch "
                            "optimal-transport assignment; the reward weights then act by resampling before pairing).")
    sigma_min: float = setting(0.0, help=SHARED_HELP["sigma_min"])
    time_sampler: Literal["uniform", "logit-normal"] = setting("uniform", help=SHARED_HELP["time_sampler"])
    # EMA of the fine-tuned weights; null disables. When on, the EMA is the run's model everywhere: the policy refresh,
    # every evaluation, sample() and `orwcfm evaluate` (one choice, recorded in the run).
    ema_decay: float | None = setting(
        None, help="Decay in (0, 1) of an EMA of the fine-tuned weights, which is then the run's model everywhere "
                   "(policy refresh, evaluations, sample(), orwcfm evaluate); null = no EMA.")
    finetune_dropout: bool = setting(
        False, help="Train with the network's dropout on; false keeps it off, as the reference runs, so the W2 term "
                    "is exactly 0 at the first step.")
    seed: int = setting(0, help="Seed of the policy noise, minibatch order, x0 and t draws and of the fixed "
                                "evaluation noise (each process offsets the training streams).")
    eval_samples: int | Literal["auto"] = setting(
        "auto", help="Samples drawn from fixed noise at each evaluation (>= 2: diversity needs pairs); auto = 500, "
                     "fewer (at least 64) where even the evaluations before and after the run would be over 10 % of "
                     "its network work (a short run of a large model); train() says what auto chose.")
    eval_every: int | Literal["auto"] = setting(
        "auto", help="Evaluate every this many epochs (>= 1, at most the run's epochs); the evaluation before "
                     "training and after the last epoch are always made. auto = every epoch while the evaluations "
                     "stay within 10 % of the run's predicted network work, else the smallest interval that does. "
                     "Checkpoints are still written after every epoch; train() says one line when the evaluations "
                     "would be over 25 % of the run's network work.")
    log_every: int = setting(10, help=SHARED_HELP["log_every"])
    keep_checkpoints: int = setting(2, help=SHARED_HELP["keep_checkpoints"])
    device: str = setting("cpu", help=SHARED_HELP["device"])
    num_threads: int | None = setting(None, help=SHARED_HELP["num_threads"])
    precision: Literal["fp32", "bf16"] = setting(
        "fp32", help="Precision of the training step's forward passes: fp32, or bf16 (autocast; slower on a CPU, "
                     "meant for GPUs).")
    compile: bool = setting(False, help="torch.compile the trained model and the policy (about a minute on a CPU, "
                                        "pays only on long runs); false = eager.")
    # Added after the first releases: a config saved without them reads as their defaults (orwcfm.config.saved).
    refresh: Literal["online", "offline"] = setting(
        "online", help="The refresh schedule: online refreshes the sampling policy from the model (every epoch or "
                       "every refresh_every steps); offline draws one buffer from the reference at the start and "
                       "never refreshes (offline reward-weighted regression; needs buffer_size).")
    algorithm: str = setting("orw-cfm-w2", help="The fine-tuning algorithm (orwcfm.algorithms): orw-cfm-w2, the "
                                                "paper's (w2_coefficient 0 is ORW-CFM).")
    weight_groups: Literal["batch", "condition"] = setting("batch", help=ORW_HELP["weight_groups"])
    prompts: str | tuple[str, ...] | None = setting(
        None, help="The prompts the policy samples under and the reward sees: a list, or a .txt file (one prompt per "
                   "line) or .jsonl file ({\"prompt\": ...} per line); for a class-conditional model in class order "
                   "(prompt k is class k, e.g. \"a handwritten 3\" is the digit 3); null = an unconditional model.")
    samples_per_prompt: int = setting(
        1, help="k, samples drawn per prompt at each refresh, consecutively (a condition group, as group-relative "
                "methods draw them; must divide the samples per refresh); 1 draws every sample's prompt "
                "independently.")
    judge: Literal["auto", "none", "digits", "mnist5k"] = setting(
        "auto", help="Independent classifiers that judge the samples at every evaluation: auto takes the reward's "
                     "data set, else the reference's pretraining data when it is a labelled digit set; none = no "
                     "judge; or name the digit set.")
    event_shape: tuple[int, ...] | None = setting(
        None, help="Shape of one sample, e.g. [1, 8, 8] or [2], for models without shape attributes (a non-empty "
                   "list of positive integers); null = read it off the model or the reference checkpoint.")

    algorithm_options: dict[str, Any] = setting(
        factory=dict, help="Settings of the algorithm other than orw-cfm-w2 (whose settings are the top-level keys), "
                           "e.g. {clip_range: 0.2} for flow-grpo; {} = its defaults; orwcfm algorithms lists them.")
    # Text-to-image (a diffusers pipeline instead of an orwcfm reference; needs the t2i extra).
    model: str | None = setting(
        None, help="A diffusers text-to-image pipeline to fine-tune with LoRA: a save_pretrained folder, a hub id "
                   "already in the local cache (nothing is downloaded) or builtin:tiny-sd3 (a tiny random one, for "
                   "smoke runs); its base transformer is the reference. null = fine-tune an orwcfm reference (ref_path).")
    eval_prompts: str | tuple[str, ...] | None = setting(
        None, help="Held-out prompts of every evaluation (a list, .txt or .jsonl file), never trained on; null = the "
                   "training prompts.")
    prompt_dropout: float = setting(
        0.0, help="Probability in [0, 1) that a training sample's prompt is replaced by the null one (the empty "
                  "prompt, or the null class) in the loss, both terms, so that the unconditional field guidance "
                  "needs keeps being trained; the reward always sees the real prompt. 0 = never.")
    t2i: TextToImageConfig = setting(
        factory=TextToImageConfig, help="Settings of a run on a diffusers pipeline (model): resolution, LoRA, base "
                                        "precision, gradient checkpointing, decoding.")

    def samples_per_refresh(self, period: int) -> int | None:
        """Policy samples drawn and scored at each refresh (over all processes) when the policy is refreshed every
        ``period`` gradient steps: ``buffer_size``, or for ``auto`` ``batch_size * ceil(period / AUTO_REUSE)`` (each
        sample feeds at most AUTO_REUSE steps: a period of 100 steps at batch 128 draws 25 x 128); None = a fresh
        batch every step (``buffer_size: null``)."""
        if self.buffer_size == "auto":
            return self.batch_size * math.ceil(period / AUTO_REUSE)
        return self.buffer_size

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_size", "epochs", "steps_per_epoch", "eval_samples", "eval_every", "log_every",
                     "keep_checkpoints"):
            if getattr(self, name) != "auto":
                _positive(name, getattr(self, name))
        for name in ("warmup_steps", "w2_coefficient", "temperature"):
            _non_negative(name, getattr(self, name))
        for name in ("grad_clip", "refresh_every", "num_threads", "ema_decay"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.ema_decay is not None and not self.ema_decay < 1.0:
            raise UserError(f"config key 'ema_decay' must be in (0, 1) or null, got {self.ema_decay}")
        if isinstance(self.buffer_size, int) and self.buffer_size < self.batch_size:
            raise UserError(f"config key 'buffer_size' ({self.buffer_size}) must be at least batch_size ({self.batch_size}) or null")
        if self.weighting == "buffer-normalized" and self.buffer_size is None:
            raise UserError("config key 'weighting': 'buffer-normalized' normalises over the samples of one refresh, "
                            "which needs 'buffer_size' (samples drawn per refresh), but buffer_size is null; set "
                            "buffer_size, or use weighting 'paper' or 'batch-normalized'")
        if self.eval_samples != "auto" and self.eval_samples < 2:
            raise UserError(f"config key 'eval_samples' must be at least 2 (diversity needs pairs), got {self.eval_samples}")
        _in_unit_interval("sigma_min", self.sigma_min)
        if self.eval_sampling.precision != "fp32":
            raise UserError(f"config key 'eval_sampling.precision' must be fp32 (evaluations are the fixed instrument; "
                            f"use sampling.precision to speed up training), got {self.eval_sampling.precision!r}")
        if self.text_prompts is not None and len(self.text_prompts) < 2:
            raise UserError(f"config key 'text_prompts' needs at least two prompts (target, contrast), got {list(self.text_prompts)}")
        check_algorithm_config(self)  # the algorithm's own settings (e.g. weight_groups with weighting)
        _positive("samples_per_prompt", self.samples_per_prompt)
        if self.refresh == "offline" and (not isinstance(self.buffer_size, int) or self.refresh_every is not None):
            raise UserError("config key 'refresh': 'offline' draws one buffer from the reference and never refreshes: "
                            f"it needs buffer_size, the number of samples (got {self.buffer_size}), and no "
                            f"refresh_every (got {self.refresh_every})")
        for key in ("prompts", "eval_prompts"):
            value = getattr(self, key)
            if isinstance(value, str) and not value.strip():
                raise UserError(f"config key '{key}' must be a prompt file, a non-empty list of prompts or null, got ''")
            if isinstance(value, tuple) and (len(value) == 0 or not all(p.strip() for p in value)):
                raise UserError(f"config key '{key}' must be a non-empty list of non-empty prompts, a prompt file or "
                                f"null, got {list(value)}")
        _in_unit_interval("prompt_dropout", self.prompt_dropout)
        if self.model is not None and self.prompts is None:
            raise UserError("config key 'model' (a text-to-image pipeline) needs 'prompts': a list, or a .txt / .jsonl "
                            "file of prompts")
        if self.model is not None and self.ref_path is not None:
            raise UserError(f"config keys 'model' ({self.model}) and 'ref_path' ({self.ref_path}) both name the model "
                            "to start from: a pipeline's reference is its own base transformer; set one of them")
        if self.eval_prompts is not None and self.prompts is None:
            raise UserError("config key 'eval_prompts' needs 'prompts' (the training prompts)")
        if self.prompt_dropout > 0 and self.prompts is None:
            raise UserError(f"config key 'prompt_dropout' ({self.prompt_dropout}) needs a conditional run: 'prompts' is null")
        if self.weight_groups == "condition" and self.prompts is None:
            raise UserError("config key 'weight_groups': 'condition' normalises within each prompt, but 'prompts' is null")
        if self.event_shape is not None and not (self.event_shape and min(self.event_shape) > 0):
            raise UserError(f"config key 'event_shape' must be a non-empty list of positive integers, e.g. [1, 8, 8], got {list(self.event_shape)}")
