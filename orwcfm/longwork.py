"""Long work inside a run (the policy's sampling, an evaluation): a progress bar with the time left, and stops that
do not wait for it to finish.

The solvers call :func:`tick` once per step with the share of a sample-batch that step advanced
(``rows / steps``), so a bar opened with :func:`progress` counts samples and tqdm estimates the time left from them.
:func:`tick` also checks the innermost *prompt* :class:`~orwcfm.interrupt.StopRequest`: once a signal has arrived it
raises :class:`~orwcfm.interrupt.StopNow`, and the loop drops the unfinished work and writes the exact state of the
last whole step (``finetune/loop.py``). With no bar and no prompt stop open a tick is two list reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from .interrupt import check_stop

_BARS: list[tqdm] = []


def tick(samples: float) -> None:
    """``samples`` more samples' worth of integration done (a fraction for one step of a batch); raises
    :class:`~orwcfm.interrupt.StopNow` when a stop was requested."""
    check_stop()
    if _BARS:
        _BARS[-1].update(samples)


@contextmanager
def progress(desc: str, total: float, enabled: bool = True, delay: float = 2.0) -> Iterator[None]:
    """A bar of ``total`` samples named ``desc`` for the ticks inside (shown only once the work has taken ``delay``
    seconds, and removed when it ends, so that short work prints nothing)."""
    bar = tqdm(total=total, desc=desc, unit="sample", leave=False, delay=delay, disable=not enabled,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} samples [{elapsed}<{remaining}]")
    _BARS.append(bar)
    try:
        yield
    finally:
        _BARS.remove(bar)
        bar.close()
