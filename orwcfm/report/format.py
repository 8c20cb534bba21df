"""How the report writes numbers, settings, durations and config values (plain text; the templates escape it)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..metric_names import label  # noqa: F401 (the report's name for it)



def is_number(value: Any) -> bool:
    """An int or float that is not a bool (JSON true/false are not metrics)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)




def format_number(value: Any) -> str:
    """How the report writes a metric: 4 decimals, or 4 significant digits for very small or large numbers.

    >>> [format_number(v) for v in (-2.7782206535339355, 0.0, 1e-05, 123456.7, 512, True, None, float("nan"))]
    ['-2.7782', '0', '1e-05', '1.235e+05', '512', 'true', '—', 'nan']
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if 1e-3 <= abs(value) < 1e5:
            return f"{value:.4f}"
        return f"{value:.4g}"
    return str(value)


def format_setting(key: str, value: Any) -> str:
    """How the report writes a run setting of ``summary.json`` (alpha 0.1, not 0.1000; wall time in s / min / h).

    >>> format_setting("w2_coefficient", 0.1), format_setting("wall_seconds", 125.4), format_setting("epochs", 12)
    ('0.1', '2 min 05 s', '12')
    """
    if key == "wall_seconds" and is_number(value):
        return format_duration(value)
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return format_number(value)


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_change(before: Any, after: Any) -> str:
    """``after - before`` with its sign, or empty when either side is missing or not finite."""
    if is_number(before) and is_number(after) and math.isfinite(before) and math.isfinite(after):
        delta = after - before
        return ("+" if delta > 0 else "") + format_number(float(delta))
    return ""


def config_value(value: Any) -> str:
    """A config value as YAML-ish text: null, true/false, lists and mappings as JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as (dotted key, value) pairs; an empty mapping stays one value."""
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out
