"""The stack of open traces, per thread, so proxies and ``apply`` know where to record.

Each thread records into its own innermost trace: two threads tracing at once never see each other's
traces (forwards of one model are serialised by the model's lock, see :mod:`mlxterp.compiler.locks`).
"""

from __future__ import annotations

import threading
from typing import Any

import mlx.core as mx

_LOCAL = threading.local()


class _ReleaseStreams:
    """Held by a worker thread's local state: when the thread ends, its MLX streams (and its per-thread
    compile cache) are released while Python still runs. MLX 0.32 asks each worker thread to call
    ``mx.clear_streams()`` before it ends; left to the C++ thread exit, the cache's clean-up can meet an
    interpreter that is shutting down and abort the process (``terminate called without an active
    exception``)."""

    def __del__(self) -> None:
        mx.clear_streams()


def _open() -> list[Any]:
    """This thread's stack of open traces."""
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
        if threading.current_thread() is not threading.main_thread():
            _LOCAL.release = _ReleaseStreams()
    return stack


def push(trace: Any) -> None:
    """Make ``trace`` the current trace of this thread."""
    _open().append(trace)


def pop(trace: Any) -> None:
    """Close ``trace`` (it must be the innermost open one)."""
    stack = _open()
    if stack and stack[-1] is trace:
        stack.pop()
    elif trace in stack:
        stack.remove(trace)


def current(module: Any, attr: str) -> Any:
    """This thread's innermost trace; ``module.attr`` names what was asked for in the error when there is none."""
    stack = _open()
    if not stack:
        what = f"{getattr(module, 'name', None) or 'model'}.{attr}"
        raise RuntimeError(
            f"{what} is only available inside a trace: use `with model.trace(inputs):` and read it in the block"
        )
    return stack[-1]


def recording_on(owner: Any) -> bool:
    """Whether this thread's innermost open trace records on the wrapped model ``owner``."""
    stack = getattr(_LOCAL, "stack", None)
    return bool(stack) and stack[-1]._owner is owner
