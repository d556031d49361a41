"""What each op computes: one function shared by the lowering and by shape inference while tracing."""

from __future__ import annotations

import operator
from typing import Any, Callable

import mlx.core as mx

from .errors import ShapeMismatchError
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
            f"shape mismatch assigning into {where}: the indexed region {_fmt_index(index)} has shape "
            f"{tuple(region.shape)} (of {tuple(x.shape)}), the value has shape {value_shape}; "
            f"traced at {node.source}"
        ) from None
    out = mx.array(x)
    out[index] = value
    return out


def check_replacement(node: Node, original: Any, value: Any) -> Any:
    """Validate a whole-output replacement and broadcast it to the original shape and dtype."""
    path, _, phase = node.target
    if not isinstance(original, mx.array) or phase == "input":
        return value
    value = value if isinstance(value, mx.array) else mx.array(value, dtype=original.dtype)
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


def _fmt_index(index: Any) -> str:
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
