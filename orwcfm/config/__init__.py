"""Configuration: frozen dataclasses, validated on construction, read from YAML and ``--set key=value``.

Every run resolves its settings into one of these dataclasses and saves the resolved form with its outputs,
so a checkpoint always says how it was made. Unknown keys, wrong types and out-of-range values raise
:class:`~orwcfm.errors.UserError` with the dotted key, the bad value and what is accepted (with a suggestion
for near-miss spellings), before any work starts. Every field carries a one-sentence help
(``orwcfm pretrain|finetune --help`` lists them).

Modules, one job each:

    fields    how a setting is declared (field + help) and the shared range checks
    parse     YAML files, --set overrides, merging layers
    coerce    dict <-> dataclass with type checks and unknown-key errors
    sampling  SamplingConfig (shared by pretraining and fine-tuning)
    pretrain  PretrainConfig, DataConfig, ModelConfig
    finetune  FinetuneConfig
    presets   the YAML presets in orwcfm/presets and the built-in references
    resolve   pretrain_config / finetune_config: the layers of a run's settings
    saved     reading configs saved before a key existed (missing keys get their defaults)
    help      the --help text of every key

Everything that was importable from the former single module ``orwcfm/config.py`` is importable from here.
"""

from __future__ import annotations

from .coerce import _coerce, _field_default, _type_name, from_dict, plain, to_dict
from .fields import SHARED_HELP, _non_negative, _positive, dataclass_frozen, help_of, setting
from .finetune import FinetuneConfig
from .help import KeyHelp, config_help, config_keys
from .parse import load_yaml, merge, numeric_string, parse_overrides, set_dotted
from .presets import BUILTIN_REFERENCES, FINETUNE_PRESETS, PRESETS_DIR, PRETRAIN_PRESETS, _load_presets
from .pretrain import DataConfig, ModelConfig, PretrainConfig
from .resolve import finetune_config, pretrain_config
from .sampling import SamplingConfig
from .saved import fill_defaults

__all__ = [
    "BUILTIN_REFERENCES", "DataConfig", "FINETUNE_PRESETS", "FinetuneConfig", "KeyHelp", "ModelConfig", "PRESETS_DIR",
    "PRETRAIN_PRESETS", "PretrainConfig", "SHARED_HELP", "SamplingConfig", "config_help", "config_keys",
    "dataclass_frozen", "fill_defaults", "finetune_config", "from_dict", "help_of", "load_yaml", "merge",
    "numeric_string", "parse_overrides", "plain", "pretrain_config", "set_dotted", "setting", "to_dict",
]
# The private helpers above (_coerce, _field_default, _type_name, _positive, _non_negative, _load_presets) are
# re-exported for code written against the former single module; they are not part of __all__.
