"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption) become a request that the
training loop checks between steps; the loop then writes a checkpoint of the exact state and raises
:class:`Interrupted`, and ``--resume`` continues from that step as if nothing had happened.

SIGKILL cannot be caught: a killed run resumes from its last periodic checkpoint (written atomically, so it is
always whole) and, with every random state saved, repeats the lost steps exactly.
"""

from __future__ import annotations

import signal
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


class StopRequest:
    """A context manager that turns SIGINT/SIGTERM into ``self.signum`` (checked between steps).

    A second signal while the first is being handled raises ``KeyboardInterrupt`` at once (the user insists).
    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
