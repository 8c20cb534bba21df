"""Configuration: frozen dataclasses, validated on construction, read from YAML and ``--set key=value``.

Every run resolves its settings into one of these dataclasses and saves the resolved form with its outputs,
so a checkpoint always says how it was made. Unknown keys, wrong types and out-of-range values raise
:class:`~orwcfm.errors.UserError` with the dotted key, the bad value and what is accepted (with a suggestion
for near-miss spellings), before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from .errors import UserError, did_you_mean

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------
# Generic machinery: dict <-> dataclass with type checks.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to type ``tp``, or raise UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = did_you_mean(str(value), [str(c) for c in choices])
            raise UserError(f"config key '{key}': {value!r} is not accepted{hint}; accepted values: {', '.join(map(str, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"config key '{key}': expected a mapping of {tp.__name__} settings, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise UserError(f"config key '{key}': expected a list of {_type_name(item_tp)}, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key '{key}': expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp!r} for '{key}'")


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a (nested) mapping, checking keys and types.

    >>> from_dict(SamplingConfig, {"solver": "rk4", "steps": 10})
    SamplingConfig(solver='rk4', steps=10, batch_size=None, precision='fp32')
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(
                f"unknown config key '{prefix}{key}'{did_you_mean(prefix + str(key), [prefix + n for n in names])}; "
                f"accepted keys: {', '.join(prefix + n for n in names)}"
            )
        if isinstance(value, Mapping) and dataclasses.is_dataclass(hints[key]):
            # A partial mapping updates the field's own default (FinetuneConfig's midpoint x 10 sampling),
            # not the nested class's defaults: --set sampling.steps=4 keeps solver=midpoint.
            default = _field_default(cls, key)
            value = merge(to_dict(default) if dataclasses.is_dataclass(default) else {}, value)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _field_default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is not dataclasses.MISSING:
        return field.default
    return {}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML.

    >>> parse_overrides(["model.options.base_channels=64", "learning_rate=1e-3", "data.name=moons"])
    {'model': {'options': {'base_channels': 64}}, 'learning_rate': 0.001, 'data': {'name': 'moons'}}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise UserError(f"--set {key}: value '{raw}' is not valid YAML ({err.__class__.__name__})") from None
        set_dotted(out, key.strip(), numeric_string(value), what="--set")
    return out


def numeric_string(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a string that spells a number becomes that number."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return value


def set_dotted(out: dict[str, Any], key: str, value: Any, what: str = "--set") -> None:
    """``set_dotted(d, "a.b", 1)`` sets ``d["a"]["b"] = 1``, creating the inner mappings."""
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{what} {key}: '{part}' was already given a plain value")
    node[parts[-1]] = value


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one clear error for a missing file, bad YAML or a non-mapping document."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def _positive(name: str, value: float | int) -> None:
    if not value > 0:
        raise UserError(f"config key '{name}' must be > 0, got {value}")


def _non_negative(name: str, value: float | int) -> None:
    if not value >= 0:
        raise UserError(f"config key '{name}' must be >= 0, got {value}")


# ---------------------------------------------------------------------------------------------------------------
# The settings themselves.


dataclass_frozen = dataclasses.dataclass(frozen=True)


@dataclass_frozen
class DataConfig:
    """Which data set to train on (see ``orwcfm.data.available_datasets()``)."""

    name: str = "digits"
    root: str | None = None  # folder with the distribution files (mnist, cifar10)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # data-set specific, e.g. {split: test}


@dataclass_frozen
class ModelConfig:
    """The velocity network: ``kind`` is ``auto`` (MLP for vectors, UNet for images), ``mlp`` or ``unet``."""

    kind: str = "auto"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # constructor arguments


@dataclass_frozen
class SamplingConfig:
    """How samples are drawn: the ODE solver, its number of steps, how many samples are integrated at once and at
    which precision the network runs (``bf16``: bfloat16 autocast; the ODE state stays float32)."""

    solver: Literal["euler", "midpoint", "heun", "rk4", "dopri5"] = "euler"
    steps: int = 100
    batch_size: int | None = None  # samples integrated at once; null = all at once
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        _positive("sampling.steps", self.steps)
        if self.batch_size is not None:
            _positive("sampling.batch_size", self.batch_size)


@dataclass_frozen
class PretrainConfig:
    """Plain conditional flow matching on a data set (the reference model of fine-tuning)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    steps: int = 5000
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max gradient norm; null disables clipping
    ema_decay: float | None = 0.999  # null disables the EMA
    coupling: Literal["independent", "ot"] = "independent"
    sigma_min: float = 0.0
    time_sampler: Literal["uniform", "logit-normal"] = "uniform"
    seed: int = 0
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    num_samples: int = 100  # samples drawn for the grid / scatter plot at the end
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    device: str = "cpu"
    num_threads: int | None = None  # torch CPU threads; null keeps torch's default
    # Class-conditional pretraining: the model takes the data's labels (a label embedding, v(t, x, labels)) and each
    # label is withheld with probability condition_dropout, so that the same network also learns the unconditional
    # field that classifier-free guidance needs.
    conditional: bool = False
    condition_dropout: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.condition_dropout < 1.0:
            raise UserError(f"config key 'condition_dropout' must be in [0, 1), got {self.condition_dropout}")
        for name in ("steps", "batch_size", "learning_rate", "num_samples", "log_every", "checkpoint_every", "keep_checkpoints"):
            _positive(name, getattr(self, name))
        for name in ("warmup_steps", "weight_decay"):
            _non_negative(name, getattr(self, name))
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UserError(f"config key 'ema_decay' must be in (0, 1) or null, got {self.ema_decay}")
        if not 0.0 <= self.sigma_min < 1.0:
            raise UserError(f"config key 'sigma_min' must be in [0, 1), got {self.sigma_min}")
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads)


# The built-in settings live once, as YAML files inside the package (orwcfm/presets; the repository's configs/ folder
# is a link to it): pretrain/NAME.yaml is what `orwcfm pretrain --data NAME` uses, finetune/NAME.yaml is the task
# `orwcfm finetune --config NAME`. Each file's comments say why its values are what they are.
PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def _load_presets(kind: str) -> dict[str, dict[str, Any]]:
    return {path.stem: load_yaml(path) for path in sorted((PRESETS_DIR / kind).glob("*.yaml"))}


PRETRAIN_PRESETS: dict[str, dict[str, Any]] = _load_presets("pretrain")


# Built-in references that are more than a data set's plain preset: ``builtin:NAME`` -> its data set and settings.
BUILTIN_REFERENCES: dict[str, dict[str, Any]] = {
    # The class-conditional digits reference of the prompted-digits task: the digits preset, with the labels as
    # conditions and 10 % of them withheld (the null label that classifier-free guidance needs).
    "digits-cond": {"data": "digits", "conditional": True, "condition_dropout": 0.1},
}


def pretrain_config(data_name: str | None = None, config_file: str | Path | None = None,
                    overrides: Sequence[str] = (), **settings: Any) -> PretrainConfig:
    """Resolve a pretraining config: defaults < data-set preset < YAML file < ``settings`` < ``--set`` overrides.

    The preset is the one of ``data_name``, else of the data set the file or ``settings`` name.
    """
    file_data = load_yaml(config_file) if config_file else {}
    override_data = parse_overrides(overrides)
    layers: list[Mapping[str, Any]] = [file_data]
    if data_name is not None:
        layers.append({"data": {"name": data_name}})
    layers += [settings, override_data]
    name = None
    for layer in layers:
        section = layer.get("data")
        if isinstance(section, Mapping) and isinstance(section.get("name"), str):
            name = section["name"]
    if name in PRETRAIN_PRESETS:
        layers.insert(0, PRETRAIN_PRESETS[name])
    resolved: dict[str, Any] = {}
    for layer in layers:
        resolved = merge(resolved, layer)
    return from_dict(PretrainConfig, resolved)


@dataclass_frozen
class FinetuneConfig:
    """ORW-CFM-W2 fine-tuning. The first block holds the public ORW-CFM README's keys, as written there."""

    # --- the public README's config dict ---
    learning_rate: float = 2e-4
    warmup_steps: int = 0  # linear warm-up of the learning rate (the README's CIFAR setting is 5000)
    w2_coefficient: float = 1.0  # alpha: weight of the W2 bound ||v - v_ref||^2; 0 = plain ORW-CFM
    temperature: float = 0.5  # tau: the paper's weights are exp(tau * reward) (see `weighting`)
    grad_clip: float | None = 1.0  # max gradient norm; null disables clipping
    batch_size: int = 128
    text_prompts: tuple[str, ...] | None = None  # CLIP reward prompts (used when no reward is named)
    use_wandb: bool = False
    wandb_project: str = "orwcfm"
    run_name: str | None = None
    savedir: str = "./results"  # run folder: checkpoints, metrics, grids, summary
    ref_path: str | None = None  # reference: checkpoint folder, run folder, torchcfm .pt, or builtin:NAME
    # --- ours ---
    ref_weights: Literal["ema", "raw"] = "ema"  # which weights of the reference (torchcfm: ema_model / net_model)
    # paper: w = exp(tau r), alpha as written (the paper's loss); buffer-normalized: w = exp(tau r) / mean over the
    # refresh's samples (alpha relative to weights averaging 1; another method); batch-normalized: B * softmax(tau r)
    # per minibatch (earlier orwcfm releases). See orwcfm/finetune/weights.py.
    weighting: Literal["paper", "buffer-normalized", "batch-normalized"] = "paper"
    reward: str | None = None  # built-in name, package.module:function or path/to/file.py:function
    reward_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    on_bad_reward: Literal["stop", "drop"] = "stop"  # NaN/inf rewards: stop the run, or drop those samples
    epochs: int = 10  # used by the command line; the library takes num_epochs in train()
    steps_per_epoch: int = 100
    refresh_every: int | None = None  # refresh the sampling policy every K steps; null = once per epoch
    buffer_size: int | None = None  # policy samples drawn per refresh and reused; null = a fresh batch every step
    # Policy sampling is most of the cost of a step. Midpoint x 10 (20 network evaluations) is the cheapest
    # sampler that is not worse than Euler x 100 in digits-FD *and* keeps the fine-tuned model's diversity
    # (rk4 x 3 passes the first test, not the second): benchmarks/finetune_speed.py, docs/performance.md.
    sampling: SamplingConfig = dataclasses.field(default_factory=lambda: SamplingConfig(solver="midpoint", steps=10))
    # The instrument of every evaluation (before training, after each epoch, orwcfm evaluate): kept apart from the
    # policy's sampler so that making training cheaper never changes how its results are measured. float32 only.
    eval_sampling: SamplingConfig = dataclasses.field(default_factory=lambda: SamplingConfig(solver="midpoint", steps=10))
    coupling: Literal["independent", "ot"] = "independent"
    sigma_min: float = 0.0
    time_sampler: Literal["uniform", "logit-normal"] = "uniform"
    # EMA of the fine-tuned weights; null disables. When on, the EMA is the run's model everywhere: the policy refresh,
    # every evaluation, sample() and `orwcfm evaluate` (one choice, recorded in the run).
    ema_decay: float | None = None
    finetune_dropout: bool = False  # train with dropout on (the reference never uses it; see docs)
    seed: int = 0
    eval_samples: int = 500  # samples drawn (from fixed noise) to evaluate before training and after each epoch
    log_every: int = 10
    keep_checkpoints: int = 2
    device: str = "cpu"
    num_threads: int | None = None
    precision: Literal["fp32", "bf16"] = "fp32"  # the training step's forward passes (bf16: autocast)
    compile: bool = False  # torch.compile the trained model and the policy (pays only for long runs)

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_size", "epochs", "steps_per_epoch", "eval_samples", "log_every", "keep_checkpoints"):
            _positive(name, getattr(self, name))
        for name in ("warmup_steps", "w2_coefficient", "temperature"):
            _non_negative(name, getattr(self, name))
        for name in ("grad_clip", "refresh_every", "num_threads", "ema_decay"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.ema_decay is not None and not self.ema_decay < 1.0:
            raise UserError(f"config key 'ema_decay' must be in (0, 1) or null, got {self.ema_decay}")
        if self.buffer_size is not None and self.buffer_size < self.batch_size:
            raise UserError(f"config key 'buffer_size' ({self.buffer_size}) must be at least batch_size ({self.batch_size}) or null")
        if self.weighting == "buffer-normalized" and self.buffer_size is None:
            raise UserError("config key 'weighting': 'buffer-normalized' normalises over the samples of one refresh, "
                            "which needs 'buffer_size' (samples drawn per refresh), but buffer_size is null; set "
                            "buffer_size, or use weighting 'paper' or 'batch-normalized'")
        if self.eval_samples < 2:
            raise UserError(f"config key 'eval_samples' must be at least 2 (diversity needs pairs), got {self.eval_samples}")
        if not 0.0 <= self.sigma_min < 1.0:
            raise UserError(f"config key 'sigma_min' must be in [0, 1), got {self.sigma_min}")
        if self.eval_sampling.precision != "fp32":
            raise UserError(f"config key 'eval_sampling.precision' must be fp32 (evaluations are the fixed instrument; "
                            f"use sampling.precision to speed up training), got {self.eval_sampling.precision!r}")
        if self.text_prompts is not None and len(self.text_prompts) < 2:
            raise UserError(f"config key 'text_prompts' needs at least two prompts (target, contrast), got {list(self.text_prompts)}")


FINETUNE_PRESETS: dict[str, dict[str, Any]] = _load_presets("finetune")


def finetune_config(config: FinetuneConfig | Mapping[str, Any] | None = None, config_file: str | Path | None = None,
                    overrides: Sequence[str] = (), **settings: Any) -> FinetuneConfig:
    """Resolve a fine-tuning config: defaults < ``config`` (dataclass or the README's dict) < YAML file (or the name
    of a built-in task, e.g. ``digits-even``) < ``settings`` < ``--set`` overrides."""
    base = to_dict(config) if isinstance(config, FinetuneConfig) else dict(config or {})
    if config_file is not None and str(config_file) in FINETUNE_PRESETS and not Path(config_file).exists():
        file_layer: Mapping[str, Any] = FINETUNE_PRESETS[str(config_file)]
    elif config_file is not None:
        file_layer = load_yaml(config_file)
    else:
        file_layer = {}
    resolved = base
    for layer in (file_layer, settings, parse_overrides(overrides)):
        resolved = merge(resolved, layer)
    return from_dict(FinetuneConfig, resolved)
