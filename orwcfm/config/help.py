"""The help of every config key, as ``orwcfm pretrain|finetune --help`` prints it after the flags."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from .coerce import _type_name, plain
from .fields import help_of

WIDTH = 100  # characters per line of the epilog (argparse's raw formatter prints it as written)


@dataclass(frozen=True)
class KeyHelp:
    """One config key: its dotted name, type, default (plain form; None for a section) and help sentence."""

    key: str
    type: str
    default: Any
    help: str
    section: bool = False  # a nested dataclass: its keys follow as key.name


def config_keys(cls: type, prefix: str = "", defaults: Any = None) -> list[KeyHelp]:
    """Every key of the config class ``cls`` in declaration order; a nested section is listed, then its keys as
    ``section.key`` with the section's own defaults (FinetuneConfig's sampling is midpoint x 10)."""
    defaults = cls() if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    rows: list[KeyHelp] = []
    for field in dataclasses.fields(cls):
        key, value = prefix + field.name, getattr(defaults, field.name)
        if dataclasses.is_dataclass(value):
            rows.append(KeyHelp(key, type(value).__name__, None, help_of(field), section=True))
            rows += config_keys(type(value), f"{key}.", value)
        else:
            rows.append(KeyHelp(key, _type_name(hints[field.name]), plain(value), help_of(field)))
    return rows


def _default_text(value: Any) -> str:
    """A default as YAML and --set read it: strings quoted like the type's choices ('ema'), the rest in JSON."""
    return repr(value) if isinstance(value, str) else json.dumps(value)


HEADER = ("config keys: set them in the --config YAML file or with --set KEY=VALUE (nested keys dotted, e.g.\n"
          "sampling.steps); the defaults shown are the built-in ones, before any preset or file:")


def config_help(cls: type) -> str:
    """The epilog text: a line ``key: type = default`` per key, then its help indented below."""
    lines = [HEADER, ""]
    for row in config_keys(cls):
        head = f"  {row.key}: {row.type}" + ("" if row.section else f" = {_default_text(row.default)}")
        lines.append(head)
        lines += textwrap.wrap(row.help, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6,
                               break_on_hyphens=False)  # keep names like logit-normal whole
    return "\n".join(lines)
