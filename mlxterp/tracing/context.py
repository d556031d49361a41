"""The stack of open traces, so proxies and ``apply`` know where to record."""

from __future__ import annotations

from typing import Any

_OPEN: list[Any] = []


def push(trace: Any) -> None:
    """Make ``trace`` the current trace."""
    _OPEN.append(trace)


def pop(trace: Any) -> None:
    """Close ``trace`` (it must be the innermost open one)."""
    if _OPEN and _OPEN[-1] is trace:
        _OPEN.pop()
    elif trace in _OPEN:
        _OPEN.remove(trace)


def current(module: Any, attr: str) -> Any:
    """The innermost open trace; ``module.attr`` names what was asked for in the error when there is none."""
    if not _OPEN:
        what = f"{getattr(module, 'name', None) or 'model'}.{attr}"
        raise RuntimeError(
            f"{what} is only available inside a trace: use `with model.trace(inputs):` and read it in the block"
        )
    return _OPEN[-1]
