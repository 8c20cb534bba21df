"""Reading settings: YAML files, ``--set key=value`` overrides, and merging the layers of a resolution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML.

    >>> parse_overrides(["model.options.base_channels=64", "learning_rate=1e-3", "data.name=moons"])
    {'model': {'options': {'base_channels': 64}}, 'learning_rate': 0.001, 'data': {'name': 'moons'}}
    >>> parse_overrides(["event_shape=[1, 8, 8]"])
    {'event_shape': [1, 8, 8]}
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
