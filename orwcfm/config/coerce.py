"""dict <-> config dataclass, with type checks: the one place a value from YAML or ``--set`` becomes a typed setting.

A wrong type or an unknown key raises :class:`~orwcfm.errors.UserError` naming the dotted key, the bad value and
what is accepted (with a suggestion for near-miss spellings).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from ..errors import UserError, did_you_mean
from .parse import merge

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    """How a field's type is written in error messages and ``--help`` (``list of int | null``, ``'fp32' | 'bf16'``)."""
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


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """``value`` as one of the plain types bool, int, float, str, or UserError naming ``key``."""
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
    return _coerce_scalar(value, tp, key)


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a (nested) mapping, checking keys and types; absent keys keep their defaults.

    >>> from orwcfm.config import SamplingConfig
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
    """The default of field ``name`` of ``cls`` (its factory's product), or {} for a field without one."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is not dataclasses.MISSING:
        return field.default
    return {}


def plain(value: Any) -> Any:
    """``value`` in YAML/JSON form: tuples become lists, recursively."""
    if isinstance(value, (tuple, list)):
        return [plain(x) for x in value]
    if isinstance(value, dict):
        return {k: plain(x) for k, x in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass (tuples become lists)."""
    return plain(dataclasses.asdict(cfg))
