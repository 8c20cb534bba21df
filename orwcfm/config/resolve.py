"""Resolving a run's settings from their layers: defaults < preset < YAML file < keyword settings < ``--set``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .coerce import from_dict, to_dict
from .finetune import FinetuneConfig
from .parse import load_yaml, merge, parse_overrides
from .presets import FINETUNE_PRESETS, PRETRAIN_PRESETS
from .pretrain import PretrainConfig


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
    for layer in layers:  # the last layer that names the data set picks the preset
        section = layer.get("data")
        if isinstance(section, Mapping) and isinstance(section.get("name"), str):
            name = section["name"]
    if name in PRETRAIN_PRESETS:
        layers.insert(0, PRETRAIN_PRESETS[name])
    resolved: dict[str, Any] = {}
    for layer in layers:
        resolved = merge(resolved, layer)
    return from_dict(PretrainConfig, resolved)


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
