"""Reward fine-tuning algorithms behind one interface (:class:`Algorithm`), run by one loop (``finetune/loop.py``).

``make_algorithm(config, ...)`` builds the one a fine-tuning config names (``algorithm``, default ``orw-cfm-w2``).
Each family is a module of this package with its own settings dataclass (``from_config(config)`` reads them: ORW-CFM-W2
from the top-level keys the public README uses, the others from ``algorithm_options``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import distributed as dist_util
from ..errors import UserError
from ..paths import StraightPath
from .base import Algorithm, Collected, LossContext, LossOutput, NetworkRows
from .orw_cfm_w2 import ORWCFMW2, ORWConfig



def _discover() -> dict[str, tuple[type, type]]:
    """Every algorithm of this package: each module lists its own in ``ALGORITHMS = {name: (Algorithm class,
    settings class)}``, so that adding a family is adding a file."""
    import importlib
    import pkgutil

    found: dict[str, tuple[type, type]] = {ORWCFMW2.name: (ORWCFMW2, ORWConfig)}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in ("base", "orw_cfm_w2"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.update(getattr(module, "ALGORITHMS", {}))
    return found


ALGORITHMS: dict[str, tuple[type, type]] = _discover()


def black_box_algorithms() -> list[str]:
    """The algorithms that need only reward values (no reward gradient), sorted."""
    return sorted(name for name, (cls, _) in ALGORITHMS.items() if not cls.needs_reward_gradient)


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


__all__ = ["ALGORITHMS", "Algorithm", "black_box_algorithms", "Collected", "LossContext", "LossOutput", "NetworkRows", "ORWCFMW2", "ORWConfig", "check_algorithm_config", "make_algorithm"]
