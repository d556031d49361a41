"""Points: named values inside a module call, exposed as hook events of their own.

A point's path is ``<module path>.<name>`` (say ``model.layers.3.self_attn.pattern``). It fires like a call
of a module that returns what it receives: events ``(point path, call_idx, "input")`` then ``"output"``, so
reads, writes, saves and captures work on it as on a module. A module's points exist only while the module
runs through a *runner*, which computes them and calls ``emit(name, value)`` at each one, continuing with
what ``emit`` returns (the value, or what a write replaced it with). Modules whose points nobody asked
for run as they are.

Whoever builds the executor supplies the :class:`Points` (which modules have runners, which paths are
points); the compiler knows nothing of what a point means.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import mlx.nn as nn

Emit = Callable[[str, Any], Any]
Runner = Callable[[nn.Module, Callable, tuple, dict, Emit], Any]
"""``runner(module, original __call__, args, kwargs, emit) -> the module's output``: computes a module's
output explicitly, calling ``emit(point, value)`` at each point it offers (see :class:`Points`)."""


class Points(Protocol):
    """The points a model offers (see the module docstring)."""

    def owner(self, path: str) -> Optional[str]:
        """The path of the module whose runner emits point ``path``, or ``None`` if ``path`` is not a point."""

    def runner(self, module_path: str) -> Optional[Runner]:
        """The runner of the module at ``module_path``, or ``None`` if it has no points."""


def point_path(owner: str, name: str) -> str:
    """The path of point ``name`` of the module at ``owner``."""
    return f"{owner}.{name}"


def identity_call(_module: Any, value: Any) -> Any:
    """What a point does as a "module call": return its input."""
    return value
