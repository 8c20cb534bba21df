"""``PretrainConfig``: plain conditional flow matching on a data set, and its data and model sections."""

from __future__ import annotations

from typing import Any, Literal

from ..errors import UserError
from .fields import SHARED_HELP, _in_unit_interval, _non_negative, _positive, dataclass_frozen, setting
from .sampling import SamplingConfig


@dataclass_frozen
class DataConfig:
    """Which data set to train on (see ``orwcfm.data.available_datasets()``)."""

    name: str = setting("digits", help="Built-in data set to train on, e.g. digits, patches, moons, 8gaussians, "
                                       "mnist5k, mnist or cifar10 (orwcfm.data.available_datasets()).")
    root: str | None = setting(None, help="Folder holding the data set's files, needed by mnist and cifar10 and "
                                          "refused by the built-in data sets; null = none.")
    options: dict[str, Any] = setting(factory=dict, help="Options of the data set, e.g. {mean: 1} for gaussian-1d or "
                                                         "{path: FILE} for mnist5k; unknown options are refused.")


@dataclass_frozen
class ModelConfig:
    """The velocity network: ``kind`` is ``auto`` (MLP for vectors, UNet for images), ``mlp`` or ``unet``."""

    kind: str = setting("auto", help="Velocity network: auto (an MLP for (dim,) data, a UNet for (C, H, W) images), "
                                     "mlp or unet.")
    options: dict[str, Any] = setting(factory=dict, help="Constructor arguments that replace the architecture's "
                                                         "defaults for this shape, e.g. {base_channels: 64}.")


@dataclass_frozen
class PretrainConfig:
    """Plain conditional flow matching on a data set (the reference model of fine-tuning)."""

    data: DataConfig = setting(factory=DataConfig, help="The data set to learn.")
    model: ModelConfig = setting(factory=ModelConfig, help="The velocity network.")
    steps: int = setting(5000, help="Optimisation steps of the whole run (> 0).")
    batch_size: int = setting(128, help="Data samples per optimisation step (> 0), over all processes (each of N "
                                        "processes takes batch_size / N).")
    learning_rate: float = setting(2e-3, help="Adam's peak learning rate (> 0), reached after the warm-up.")
    warmup_steps: int = setting(200, help="Steps of linear learning-rate warm-up from 0 (>= 0); 0 starts at the "
                                          "full rate.")
    lr_schedule: Literal["constant", "cosine"] = setting(
        "cosine", help="Learning rate after the warm-up: constant, or cosine decay to 0 at the last step.")
    weight_decay: float = setting(0.0, help="Adam's L2 weight decay (>= 0); 0 = none.")
    grad_clip: float | None = setting(1.0, help=SHARED_HELP["grad_clip"])
    ema_decay: float | None = setting(
        0.999, help="Decay in (0, 1) of the exponential moving average of the weights (closer to 1 averages over "
                    "more steps, about 1 / (1 - decay)), saved beside the raw weights and used for the end-of-run "
                    "samples; null disables the EMA.")
    coupling: Literal["independent", "ot"] = setting(
        "independent", help="How noise is paired with data in a minibatch: independent, or ot (the exact minibatch "
                            "optimal-transport assignment, within each class when conditional).")
    sigma_min: float = setting(0.0, help=SHARED_HELP["sigma_min"])
    time_sampler: Literal["uniform", "logit-normal"] = setting("uniform", help=SHARED_HELP["time_sampler"])
    seed: int = setting(0, help="Seed of the data, noise and time draws and of the model's initialisation (each "
                                "process offsets it).")
    sampling: SamplingConfig = setting(
        factory=SamplingConfig, help="Sampler of the end-of-run sample picture (solver and steps) and the default "
                                     "of `orwcfm sample` on this run.")
    num_samples: int = setting(100, help="Samples drawn (> 0) for the grid or scatter plot RUN/samples.png at the end.")
    log_every: int = setting(50, help=SHARED_HELP["log_every"])
    checkpoint_every: int = setting(1000, help="Steps between checkpoints (> 0); the last step is always saved.")
    keep_checkpoints: int = setting(2, help=SHARED_HELP["keep_checkpoints"])
    device: str = setting("cpu", help=SHARED_HELP["device"])
    num_threads: int | None = setting(None, help=SHARED_HELP["num_threads"])
    # Class-conditional pretraining: the model takes the data's labels (a label embedding, v(t, x, labels)) and each
    # label is withheld with probability condition_dropout, so that the same network also learns the unconditional
    # field that classifier-free guidance needs.
    conditional: bool = setting(False, help="Train a class-conditional field v(t, x, label) on the data's labels "
                                            "(needs a labelled data set and a unet); false = unconditional.")
    condition_dropout: float = setting(
        0.1, help="Probability in [0, 1) that a conditional run withholds a sample's label, so the network also "
                  "learns the unconditional field classifier-free guidance needs; 0 never withholds.")

    def __post_init__(self) -> None:
        _in_unit_interval("condition_dropout", self.condition_dropout)
        for name in ("steps", "batch_size", "learning_rate", "num_samples", "log_every", "checkpoint_every", "keep_checkpoints"):
            _positive(name, getattr(self, name))
        for name in ("warmup_steps", "weight_decay"):
            _non_negative(name, getattr(self, name))
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UserError(f"config key 'ema_decay' must be in (0, 1) or null, got {self.ema_decay}")
        _in_unit_interval("sigma_min", self.sigma_min)
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads)
