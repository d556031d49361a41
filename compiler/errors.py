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


class WriteTypeError(TraceError, TypeError):
    """A value written into a module's output or input is not an array (``None``, a list, a string...)."""


class ModuleNotCalledError(TraceError, RuntimeError):
    """A node is attached to a module call that never happened during the forward pass."""


class NodeExecutionError(TraceError, RuntimeError):
    """A node failed while the patched forward ran; the message says which node and where it was traced."""


def describe_value(value: object) -> str:
    """A short description of a user's value for error messages: ``None``, ``list [1, 2, 3]``."""
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def bad_write_message(what: str, given: str, source: str, shape: str = "", returned: str = "") -> str:
    """The text of a :class:`WriteTypeError`: ``given`` was written to ``what`` (``returned``: what the
    function named by ``given`` returned)."""
    result = f"; it returned {returned}" if returned else ""
    return (f"cannot write {given} to {what}, traced at {source}{result}: a write takes an mx.array or a traced "
            f"value broadcastable to its shape{shape}, or a Python number (filled in at its shape and dtype)")
