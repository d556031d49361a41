"""Ctrl-C at a safe point: a long computation made of steps (a sweep's chunks) takes an interrupt when the
current step ends, never in the middle of one.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, which may be inside a trace
that is installing or removing its hooks. Inside :func:`at_step_end`, SIGINT only records that it came;
when the step ends, the previous handler is put back and the signal raised again, so the interrupt
behaves exactly as it would have (``KeyboardInterrupt`` by default), at a point where the model is whole.
A second Ctrl-C during the same step is not deferred: whoever presses twice means it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


@contextlib.contextmanager
def at_step_end() -> Iterator[None]:
    """Defer SIGINT to the end of the ``with`` block (main thread only; elsewhere a no-op)."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; None: a handler not installed from Python, left alone
        return
    pending = []

    def record(signum: int, frame: Any) -> None:
        if pending:  # pressed twice: act now
            signal.signal(signal.SIGINT, previous)
            signal.raise_signal(signal.SIGINT)
        pending.append(signum)

    signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        signal.raise_signal(signal.SIGINT)
