"""Reward fine-tuning algorithms behind one interface (:class:`Algorithm`), run by one loop (``finetune/loop.py``).

``make_algorithm(config, ...)`` builds the one a fine-tuning config names (``algorithm``; today ``orw-cfm-w2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import distributed as dist_util
from ..errors import UserError
from ..paths import StraightPath
from .base import Algorithm, LossOutput, NetworkRows
from .orw_cfm_w2 import ORWCFMW2, ORWConfig

ALGORITHMS: dict[str, tuple[type, type]] = {ORWCFMW2.name: (ORWCFMW2, ORWConfig)}


def _lookup(config: Any) -> tuple[type, type]:
    name = getattr(config, "algorithm", ORWCFMW2.name)
    if name not in ALGORITHMS:
        raise UserError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def check_algorithm_config(config: Any) -> None:
    """Fail with one line, before any run starts, unless ``config`` names a known algorithm with valid settings."""
    _lookup(config)[1].from_config(config)


def make_algorithm(config: Any, *, path: StraightPath, coupling: Callable[..., Any],
                   dist: dist_util.DistContext = dist_util.DistContext()) -> Algorithm:
    """The algorithm named by ``config.algorithm`` (default ``orw-cfm-w2``), with its settings read off ``config``."""
    cls, settings = _lookup(config)
    return cls(settings.from_config(config), path=path, coupling=coupling, dist=dist)


__all__ = ["ALGORITHMS", "Algorithm", "LossOutput", "NetworkRows", "ORWCFMW2", "ORWConfig", "check_algorithm_config", "make_algorithm"]
