"""User-facing errors.

Anything the *user* got wrong (a bad flag, a missing file, an unknown name) raises :class:`UserError`
with one sentence that names the bad value and what was expected. The command line prints that
sentence and exits with status 2 instead of showing a traceback; library callers can catch it.
Programming errors stay ordinary exceptions, so their tracebacks are not hidden.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A mistake in user input, reported as one clear line (no traceback on the command line)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest near-miss of ``name`` in ``choices``, else ``""``.

    >>> did_you_mean("learning_rte", ["learning_rate", "steps"])
    " (did you mean 'learning_rate'?)"
    >>> did_you_mean("zzz", ["learning_rate"])
    ''
    """
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """A :class:`UserError` for an unknown ``name`` of some ``kind``, listing every accepted value."""
    choices = sorted(choices)
    return UserError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; available: {', '.join(choices)}"
    )


class RankFailed(RuntimeError):
    """Raised on the ranks of a multi-process run that did not fail themselves, when another rank's error stops
    the run (that rank prints the error; these exit quietly with status 1)."""
