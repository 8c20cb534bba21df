"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption) become a request that the
training loop checks between steps, and, in a single-process run, that long work inside a step or between epochs
(the policy's sampling, an evaluation: :mod:`orwcfm.longwork`) checks at every solver step, so that a stop never
waits for it; the loop then drops that work, writes a checkpoint of the exact state of the last whole step and
raises :class:`Interrupted`, and ``--resume`` continues from that step as if nothing had happened. A second signal
exits at once with one line (no traceback, no checkpoint: the newest one on disk is whole).

SIGKILL cannot be caught: a killed run resumes from its last periodic checkpoint (written atomically, so it is
always whole) and, with every random state saved, repeats the lost steps exactly.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

from .errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(UserError):
    """The run stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopNow(BaseException):
    """Raised by :func:`check_stop` inside long work once a stop was requested; the loop that opened the prompt
    :class:`StopRequest` catches it (a BaseException, like KeyboardInterrupt, so that no ``except Exception``
    around a reward or a metric swallows it)."""


_PROMPT: list[StopRequest] = []  # the prompt stop requests open now, innermost last


def check_stop() -> None:
    """Raise :class:`StopNow` when the innermost prompt :class:`StopRequest` has received a signal."""
    if _PROMPT and _PROMPT[-1].signum is not None:
        raise StopNow


class StopRequest:
    """A context manager that turns SIGINT/SIGTERM into ``self.signum`` (checked between steps; with ``prompt``,
    also by :func:`check_stop` inside long work).

    A second signal while the first is being handled exits at once: one line on stderr and ``SystemExit`` with
    status 128 + the signal (no traceback; the run's newest checkpoint is whole, since every write is atomic).
    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, prompt: bool = False) -> None:
        self.signum: int | None = None
        self.prompt = prompt
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            print(f"orwcfm: second {signal.Signals(signum).name}: exiting now, without a new checkpoint (the newest "
                  "one in the run folder is whole; continue with --resume)", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            if self.prompt:
                _PROMPT.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _PROMPT:
            _PROMPT.remove(self)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
