"""Finding the user's source line for a recorded node."""

from __future__ import annotations

import os
import sys
import threading

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = (_ROOT + os.sep, os.path.join(os.path.dirname(_ROOT), "compiler") + os.sep)
_IS_INTERNAL: dict[str, bool] = {}
_PINNED = threading.local()  # .source: the line nodes recorded now belong to (see pin)


def user_source() -> tuple[str, int] | str:
    """``(file, line)`` of the innermost frame outside mlxterp and the compiler (formatted later), or the
    line pinned by :func:`pin`."""
    pinned = getattr(_PINNED, "source", None)
    if pinned is not None:
        return pinned
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        internal = _IS_INTERNAL.get(filename)
        if internal is None:
            internal = _IS_INTERNAL[filename] = filename.startswith(_INTERNAL)
        if not internal:
            return (filename, frame.f_lineno)
        frame = frame.f_back
    return "<unknown>"


def pin(src: tuple[str, int] | str | None) -> tuple[str, int] | str | None:
    """From now on, nodes recorded in this thread say they were traced at ``src`` (``None``: at the user's
    line again); returns the previous pin, to restore. An edit replayed into a trace (see
    :mod:`mlxterp.edits`) keeps the line where the user wrote it, for errors and params."""
    previous = getattr(_PINNED, "source", None)
    _PINNED.source = src
    return previous


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn``, called by the caller of this function, point at the
    innermost frame outside mlxterp and the compiler (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def format_source(src: tuple[str, int] | str) -> str:
    """``file:line`` text of a :func:`user_source` result."""
    return f"{src[0]}:{src[1]}" if isinstance(src, tuple) else src
