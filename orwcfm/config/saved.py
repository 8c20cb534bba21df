"""Reading a config saved by an earlier version of orwcfm (a run folder's ``config.yaml``, a checkpoint's meta).

A key added to a config class after a run was saved is absent from its saved dict. By this package's rule a new
key's default reproduces what the code did before the key existed (``event_shape: null`` = read the shape off the
model, as before), so the saved run is the run of today's defaults for that key: filling them in makes an old
saved config compare equal to the same settings resolved today, and a resumed sweep keeps its finished cells.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .coerce import plain, to_dict


def fill_defaults(cls: type, saved: Mapping[str, Any], defaults: Any = None) -> dict[str, Any]:
    """``saved`` (the plain dict of a ``cls`` config) with every key it lacks set to its default, in plain form.

    Nested sections are filled from the field's own default (FinetuneConfig's midpoint x 10 ``sampling``, not
    SamplingConfig's). Keys ``cls`` does not know are kept as they are (a removed key must still show as a
    difference), and nothing is validated: this only reads what was saved.

    >>> from orwcfm.config import FinetuneConfig
    >>> filled = fill_defaults(FinetuneConfig, {"w2_coefficient": 0.3, "sampling": {"steps": 4}})
    >>> filled["w2_coefficient"], filled["event_shape"], filled["sampling"]
    (0.3, None, {'steps': 4, 'solver': 'midpoint', 'batch_size': None, 'precision': 'fp32'})
    """
    defaults = cls() if defaults is None else defaults
    out = dict(saved)
    for field in dataclasses.fields(cls):
        default = getattr(defaults, field.name)
        if field.name not in out:
            out[field.name] = to_dict(default) if dataclasses.is_dataclass(default) else plain(default)
        elif dataclasses.is_dataclass(default) and isinstance(out[field.name], Mapping):
            out[field.name] = fill_defaults(type(default), out[field.name], default)
    return out
