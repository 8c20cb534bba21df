"""Build velocity fields from a JSON-serialisable spec, so a checkpoint's sidecar can rebuild its model.

>>> spec = default_spec("auto", (2,))
>>> spec.kind, spec.options["hidden"]
('mlp', 256)
>>> ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
True
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from orwcfm.errors import UserError, did_you_mean, unknown_name_error
from orwcfm.models.adm import DEFAULT_CHANNEL_MULT, ADMUNet
from orwcfm.models.mlp import MLP
from orwcfm.models.unet import UNet


def _mlp_shape_kwargs(shape: tuple[int, ...]) -> dict[str, int]:
    if len(shape) != 1:
        raise UserError(f"model 'mlp' needs a 1-D event shape (dim,), got {shape}")
    return {"dim": shape[0]}


def _unet_shape_kwargs(shape: tuple[int, ...]) -> dict[str, int]:
    if len(shape) != 3 or shape[1] != shape[2]:
        raise UserError(f"model 'unet' needs a square image event shape (C, H, H), got {shape}")
    return {"in_channels": shape[0], "image_size": shape[1]}


def _adm_shape_kwargs(shape: tuple[int, ...]) -> dict[str, Any]:
    if len(shape) != 3:
        raise UserError(f"model 'adm-unet' needs an image event shape (C, H, W), got {shape}")
    return {"dim": shape}


# kind -> (constructor, event_shape -> the constructor's shape kwargs)
_MODELS: dict[str, tuple[type[nn.Module], Callable[[tuple[int, ...]], dict[str, Any]]]] = {
    "mlp": (MLP, _mlp_shape_kwargs),
    "unet": (UNet, _unet_shape_kwargs),
    "adm-unet": (ADMUNet, _adm_shape_kwargs),
}
_SHAPE_ARGS = {"mlp": {"dim"}, "unet": {"in_channels", "image_size"}, "adm-unet": {"dim"}}


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively, so that a spec equals its own JSON round trip."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a velocity field: ``kind`` ("mlp" | "unet" | "adm-unet"), ``event_shape`` ((dim,) or (C, H, W))
    and ``options`` (constructor kwargs other than the shape ones; JSON values, lists not tuples)."""

    kind: str
    event_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "event_shape", tuple(int(s) for s in self.event_shape))
        object.__setattr__(self, "options", _jsonable(dict(self.options)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: ``{"kind": str, "event_shape": [int, ...], "options": {...}}``."""
        return {"kind": self.kind, "event_shape": list(self.event_shape), "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys are a :class:`UserError`."""
        keys = {"kind", "event_shape", "options"}
        for key in d:
            if key not in keys:
                raise UserError(f"unknown model spec key '{key}'{did_you_mean(key, keys)}; expected {sorted(keys)}")
        for key in ("kind", "event_shape"):
            if key not in d:
                raise UserError(f"model spec is missing '{key}' (got keys {sorted(d)})")
        return cls(kind=d["kind"], event_shape=tuple(d["event_shape"]), options=dict(d.get("options") or {}))

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict())


def available_models() -> list[str]:
    """Names accepted as ``ModelSpec.kind``."""
    return sorted(_MODELS)


def _check_options(kind: str, options: dict[str, Any]) -> None:
    cls, _ = _MODELS[kind]
    accepted = [p for p in inspect.signature(cls).parameters if p not in _SHAPE_ARGS[kind]]
    for name in options:
        if name in _SHAPE_ARGS[kind]:
            raise UserError(f"model option '{name}' of '{kind}' is set by event_shape; remove it from the options")
        if name not in accepted:
            raise UserError(
                f"unknown option '{name}' for model '{kind}'{did_you_mean(name, accepted)}; "
                f"accepted: {', '.join(accepted)}"
            )


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model of ``spec``'s architecture (errors in the spec are :class:`UserError`).

    >>> build_model(ModelSpec("unet", (1, 8, 8), {"base_channels": 8})).base_channels
    8
    """
    if spec.kind not in _MODELS:
        raise unknown_name_error("model", spec.kind, _MODELS)
    cls, shape_kwargs = _MODELS[spec.kind]
    _check_options(spec.kind, spec.options)
    kwargs = {**shape_kwargs(spec.event_shape), **spec.options}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # the constructors' own validation: bad values in the spec
        raise UserError(f"cannot build model '{spec.kind}' from {spec.to_dict()}: {err}") from err


def _unet_levels(image_size: int) -> dict[str, Any]:
    """Resolution schedule for a square image: two halvings when the size allows it, else one, else none."""
    if image_size % 4 == 0 and image_size >= 16:
        return {"channel_mult": [1, 2, 2], "attention_resolutions": [image_size // 4]}
    if image_size % 2 == 0:
        return {"channel_mult": [1, 2], "attention_resolutions": [image_size // 2]}
    return {"channel_mult": [1], "attention_resolutions": []}


def _adm_defaults(shape: tuple[int, ...]) -> dict[str, Any]:
    """torchcfm's CIFAR-10 recipe (the README's): 128 channels, 2 blocks, 64-channel heads, dropout 0.1, attention
    at 16x16 (else at half the width), and torchcfm's channel_mult for the width (left ``None`` where it has none:
    the model then asks for one)."""
    width = shape[2]
    mult = DEFAULT_CHANNEL_MULT.get(width)
    attention = "16" if mult is not None and 16 in [width >> level for level in range(len(mult))] else ""
    if not attention and width % 2 == 0:
        attention = str(width // 2)
    return {"num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_head_channels": 64, "dropout": 0.1,
            "attention_resolutions": attention, "channel_mult": None if mult is None else list(mult)}


def default_spec(kind: str, event_shape: Sequence[int]) -> ModelSpec:
    """The default architecture for ``event_shape``, with every constructor option written out.

    ``kind="auto"`` picks "mlp" for 1-D event shapes and "unet" for (C, H, W) images. Writing all options
    out (instead of relying on the constructors' defaults) keeps old sidecars valid if a default changes.
    For UNets the resolution schedule follows the image size: 8 -> (1, 2) with attention at 4x4;
    32 -> (1, 2, 2) with attention at 8x8; 28 -> (1, 2, 2) with attention at 7x7. ``adm-unet`` gets torchcfm's
    CIFAR-10 configuration (about 36M parameters at 32x32), never chosen by ``auto``.
    """
    shape = tuple(int(s) for s in event_shape)
    if kind == "auto":
        if len(shape) not in (1, 3):
            raise UserError(f"cannot choose a model for event shape {shape}: expected (dim,) or (C, H, W)")
        kind = "mlp" if len(shape) == 1 else "unet"
    if kind not in _MODELS:
        raise unknown_name_error("model", kind, [*_MODELS, "auto"])
    cls, shape_kwargs = _MODELS[kind]
    shape_kwargs(shape)  # validates the shape for this kind
    options = {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if name not in _SHAPE_ARGS[kind] and p.default is not inspect.Parameter.empty
    }
    if kind == "unet":
        options.update(_unet_levels(shape[1]))
    if kind == "adm-unet":
        options.update(_adm_defaults(shape))
    return ModelSpec(kind, shape, options)
