"""Exceptions raised by the compiler: each names the node, its op and the user's source line."""

from __future__ import annotations


class TraceError(Exception):
    """Base class for errors about a recorded intervention program."""


class GraphError(TraceError, ValueError):
    """The graph is malformed (a dangling reference, a cycle, an unknown op, a duplicate save key)."""


class CausalityError(TraceError, ValueError):
    """A write depends on a value that the model computes only after the written module runs."""


class ShapeMismatchError(TraceError, ValueError):
    """A value written into a module's output or input has a shape that does not fit."""


class ModuleNotCalledError(TraceError, RuntimeError):
    """A node is attached to a module call that never happened during the forward pass."""


class NodeExecutionError(TraceError, RuntimeError):
    """A node failed while the patched forward ran; the message says which node and where it was traced."""
