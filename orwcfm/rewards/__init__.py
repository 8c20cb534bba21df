"""Rewards: plain callables ``x (B, *event_shape) -> (B,)``, built in or loaded from user code by name.

>>> "digits-even" in available_rewards()
True
>>> reward = load_reward("distance", point=[0.0, 0.0])
>>> reward(torch.tensor([[3.0, 4.0]]))
tensor([-5.])

``load_reward`` accepts a built-in name (see :func:`available_rewards`), ``package.module:attr`` or
``path/to/file.py:attr``. For user code, ``attr`` is the reward itself; given options, it is a factory called
with them that returns the reward.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch  # noqa: F401 - used by the doctest above

from orwcfm.errors import UserError, did_you_mean, unknown_name_error
from orwcfm.rewards.base import Reward, RewardBatch, RewardError, call_reward, reward_name, takes_condition
from orwcfm.rewards.clip import ClipReward, clip
from orwcfm.rewards.digits import DigitsAlignReward, DigitsTargetReward, digits_align, digits_even, digits_odd, digits_target
from orwcfm.rewards.jpeg import ShiftedJpegReward, jpeg_compressibility, jpeg_incompressibility
from orwcfm.rewards.toy import DistanceReward, LinearReward, RegionReward

__all__ = [
    "ClipReward",
    "DigitsAlignReward",
    "DigitsTargetReward",
    "DistanceReward",
    "LinearReward",
    "RegionReward",
    "Reward",
    "RewardBatch",
    "RewardError",
    "ShiftedJpegReward",
    "available_rewards",
    "call_reward",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "load_reward",
    "reward_name",
    "takes_condition",
    "reward_options",
]


def _jpeg_compressibility(baseline_kb: float = 0.0) -> Reward:
    """``-kB`` (``baseline_kb - kB`` with a baseline: see :class:`ShiftedJpegReward` for why)."""
    return jpeg_compressibility if baseline_kb == 0 else ShiftedJpegReward(compress=True, baseline_kb=baseline_kb)


def _jpeg_incompressibility(baseline_kb: float = 0.0) -> Reward:
    """``kB`` (``kB - baseline_kb`` with a baseline)."""
    return jpeg_incompressibility if baseline_kb == 0 else ShiftedJpegReward(compress=False, baseline_kb=baseline_kb)


# name -> factory(**options[, cache]); a factory with a ``cache`` parameter builds cached assets there.
REGISTRY: dict[str, Callable[..., Reward]] = {
    "digits-target": digits_target,
    "digits-even": digits_even,
    "digits-odd": digits_odd,
    "digits-align": digits_align,
    "jpeg-compressibility": _jpeg_compressibility,
    "jpeg-incompressibility": _jpeg_incompressibility,
    "linear": LinearReward,
    "distance": DistanceReward,
    "region": RegionReward,
    "clip": clip,
}


def available_rewards() -> list[str]:
    """Built-in reward names accepted by :func:`load_reward`, sorted."""
    return sorted(REGISTRY)


def _factory(name: str) -> Callable[..., Reward]:
    if name not in REGISTRY:
        raise unknown_name_error("reward", name, REGISTRY)
    return REGISTRY[name]


def reward_options(name: str) -> dict[str, Any]:
    """The options of built-in reward ``name`` with their defaults (``inspect.Parameter.empty`` if required).

    >>> reward_options("linear")
    {'weights': None, 'bias': 0.0}
    """
    params = inspect.signature(_factory(name)).parameters
    return {k: p.default for k, p in params.items() if k != "cache"}


def _builtin(name: str, cache: str | os.PathLike | None, options: dict[str, Any]) -> Reward:
    factory = _factory(name)
    accepted = reward_options(name)
    for option in options:
        if option not in accepted:
            takes = f"accepted options: {', '.join(accepted)}" if accepted else "it takes no options"
            raise UserError(f"unknown option '{option}' for reward '{name}'{did_you_mean(option, accepted)}; {takes}")
    missing = [k for k, default in accepted.items() if default is inspect.Parameter.empty and k not in options]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise UserError(f"reward '{name}' needs option{plural} {', '.join(map(repr, missing))}; "
                        f"accepted options: {', '.join(accepted)}")
    if "cache" in inspect.signature(factory).parameters:
        return factory(**options, cache=cache)
    return factory(**options)


def _load_file(path_text: str) -> ModuleType:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(f"reward file not found: {path}")
    resolved = path.resolve()
    # a unique module name per file, so two reward files called rewards.py do not replace each other
    module_name = f"orwcfm_user_reward_{resolved.stem}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot load reward file {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up here
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        detail = " ".join(str(err).split())
        raise UserError(f"reward file {path} failed to load: {type(err).__name__}: {detail}") from err
    return module


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise UserError(f"cannot import reward module '{module_name}': no module named '{err.name}' "
                            "(is it installed, or on PYTHONPATH?)") from err
        raise UserError(f"cannot import reward module '{module_name}': it needs module '{err.name}', "
                        "which is not installed") from err
    except Exception as err:
        raise UserError(f"cannot import reward module '{module_name}': {type(err).__name__}: "
                        f"{' '.join(str(err).split())}") from err


def _public_callables(module: ModuleType) -> list[str]:
    return sorted(
        k for k, v in vars(module).items()
        if not k.startswith("_") and callable(v) and getattr(v, "__module__", None) == module.__name__
    )


def _user(spec: str, options: dict[str, Any]) -> Reward:
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise UserError(f"reward '{spec}' must be written package.module:function or path/to/file.py:function")
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    module = _load_file(where) if is_file else _import(where)
    label = where if is_file else f"module '{where}'"
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = _public_callables(module)
            listing = f"public callables there: {', '.join(public)}" if public else "it defines no public callables"
            raise UserError(f"{label} has no attribute '{attr}'{did_you_mean(attr, public)}; {listing}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"'{spec}' is a {type(obj).__name__}, not a callable reward")
    if not options:
        return obj
    try:
        inspect.signature(obj).bind(**options)
    except TypeError as err:
        raise UserError(f"reward factory '{spec}' does not accept options {', '.join(options)}: {err}") from err
    except ValueError:  # no signature (some builtins): just call it
        pass
    try:
        reward = obj(**options)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"reward factory '{spec}' raised {type(err).__name__}: {' '.join(str(err).split())}") from err
    if not callable(reward):
        raise UserError(f"reward factory '{spec}' returned a {type(reward).__name__}, not a callable reward")
    return reward


def load_reward(name: str, *, cache: str | os.PathLike | None = None, **options: Any) -> Reward:
    """The reward called ``name``: a built-in (with ``options``), or ``package.module:attr`` / ``file.py:attr``.

    ``cache`` is where built-ins keep assets they train once (the digits classifier; default ``$ORWCFM_CACHE``).
    For user code, ``attr`` is the reward itself, or, when ``options`` are given, a factory called with them.
    Raises :class:`UserError` (one line) for an unknown name or option, a missing file, module or attribute.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"a reward name must be a non-empty string, got {name!r}")
    if ":" in name:
        return _user(name, options)
    return _builtin(name, cache, options)
