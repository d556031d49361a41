"""What each op computes: one function shared by the lowering and by shape inference while tracing."""

from __future__ import annotations

import operator
from typing import Any, Callable

import mlx.core as mx
import numpy as np

from .errors import ShapeMismatchError, WriteTypeError, bad_write_message, describe_value
from .ir import Node, Op

BINARY_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "matmul": operator.matmul,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
}

UNARY_OPS: dict[str, Callable[[Any], Any]] = {
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": operator.abs,
    "invert": operator.invert,
}

def evaluate(node: Node, args: tuple, kwargs: dict) -> Any:
    """Compute a pure node's value from its resolved arguments."""
    op = node.op
    if op is Op.BINARY:
        return BINARY_OPS[node.target](args[0], args[1])
    if op is Op.UNARY:
        return UNARY_OPS[node.target](args[0])
    if op is Op.GETITEM:
        return args[0][args[1]]
    if op is Op.SETITEM:
        return functional_setitem(node, *args)
    if op is Op.CALL_FUNCTION:
        return node.target(*args, **kwargs)
    if op is Op.CALL_METHOD:
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    raise ValueError(f"op {op.value!r} is not a pure computation; it is handled by the runtime")


def functional_setitem(node: Node, x: mx.array, index: Any, value: Any) -> mx.array:
    """``x`` with ``x[index] = value``, leaving ``x`` itself untouched."""
    if not isinstance(x, mx.array):
        raise TypeError(f"cannot assign into a {type(x).__name__}; item assignment needs an mx.array")
    region = x[index]
    value_shape = tuple(getattr(value, "shape", ()))
    try:
        mx.broadcast_shapes(value_shape, tuple(region.shape))
    except ValueError:
        where = node.meta.get("module") or "a traced value"
        raise ShapeMismatchError(
            f"shape mismatch assigning into {where}: the indexed region {format_index(index)} has shape "
            f"{tuple(region.shape)} (of {tuple(x.shape)}), the value has shape {value_shape}; "
            f"traced at {node.source}"
        ) from None
    out = mx.array(x)
    out[index] = _batched_like(value, region)
    return out


def _batched_like(value: Any, region: mx.array) -> mx.array:
    """``value`` broadcast to ``region``'s shape, as a value computed from ``region``.

    Under ``mx.vmap`` (a user's, or a folded run's) MLX's rule for a slice assignment whose value is not
    mapped writes only the first mapped element (MLX 0.32: ``out[:, -1] = 0.0`` on a mapped ``out`` leaves
    the other elements unwritten). A value computed from the region is mapped exactly when the region is,
    so the write lands in every element. ``region == region`` is false only at NaN, where both branches are
    the value: the result is the value, whatever the region holds, and its gradient flows to the value only.
    """
    value = value if isinstance(value, mx.array) else mx.array(value)
    return mx.where(region == region, value, value)


def check_replacement(node: Node, original: Any, value: Any) -> Any:
    """Validate a write and give the value that flows on.

    A Python number (the recorder marks it ``meta["fill"]``) fills the original's shape *and dtype*. Any
    other value must be an array: an output replacement broadcasts to the original's shape; an input may
    change shape (e.g. cutting a norm's input to the last position).
    """
    path, _, phase = node.target
    if not isinstance(original, mx.array):
        return value
    if node.meta.get("fill"):
        return mx.broadcast_to(mx.array(value).astype(original.dtype), original.shape)
    if isinstance(value, np.ndarray):
        value = mx.array(value, dtype=original.dtype)
    if not isinstance(value, mx.array):
        raise WriteTypeError(_non_array_message(node, original, value))
    if phase == "input":
        return value
    try:
        shape = mx.broadcast_shapes(tuple(value.shape), tuple(original.shape))
    except ValueError:
        shape = None
    if shape != tuple(original.shape):
        raise ShapeMismatchError(
            f"shape mismatch replacing the {phase} of {path or '<model>'}: the module produces shape "
            f"{tuple(original.shape)}, the value has shape {tuple(value.shape)}; traced at {node.source}"
        )
    if value.shape != original.shape:
        value = mx.broadcast_to(value, original.shape)
    return value


def _non_array_message(node: Node, original: mx.array, value: Any) -> str:
    path, _, phase = node.target
    origin = node.meta.get("origin")  # the intervention function the value came from, if any
    given, returned = (f"the result of {origin}", describe_value(value)) if origin else (describe_value(value), "")
    shape = f" {tuple(original.shape)} (dtype {original.dtype})"
    return bad_write_message(f"the {phase} of {path or '<model>'}", given, node.source, shape, returned)


def format_index(index: Any) -> str:
    """Render an index like the user wrote it: ``[:, -1]``."""
    parts = index if isinstance(index, tuple) else (index,)

    def one(p: Any) -> str:
        if isinstance(p, slice):
            s = "" if p.start is None else str(p.start)
            s += ":" + ("" if p.stop is None else str(p.stop))
            return s + ("" if p.step is None else f":{p.step}")
        if p is Ellipsis:
            return "..."
        if isinstance(p, mx.array):
            return f"<array {tuple(p.shape)}>"
        return repr(p)

    return "[" + ", ".join(one(p) for p in parts) + "]"
