"""Checks made while recording, before anything runs: what a write may be, and integer indices against the
shapes the trace knows.

Both catch a mistake at the user's line instead of deep inside MLX, where an out-of-range index gives
garbage (``x[5]`` of 2 rows), a crash (``x[-3]``) or ``[squeeze] Cannot squeeze axis 1``, and where a list
written as an activation becomes an int32 array without a word.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import mlx.core as mx
import numpy as np

from mlxterp.compiler import Op, WriteTypeError
from mlxterp.compiler.errors import bad_write_message, describe_value
from mlxterp.compiler.semantics import format_index

from ..scalars import is_number, python_number
from .attached import is_part
from .proxy import Proxy
from .source import format_source, user_source

# -- writes ------------------------------------------------------------------------------------------


def written_value(value: Any, what: str, src: Any, origin: str | None = None) -> tuple[Any, dict | None]:
    """Check a value written to a module's output or input; return it and the write node's extra meta.

    A Python number is marked ``fill``: at run time it fills the activation's shape and dtype (an
    ``int`` would otherwise turn a float activation into int32). ``origin`` names the intervention the
    value comes from, for the run-time check of a function's result.
    """
    meta = None if origin is None else {"origin": origin}
    if _is_number(value):
        return python_number(value), dict(meta or {}, fill=True)
    if not _is_array_like(value) and not _structured(value):
        given = describe_value(value) if origin is None else f"{describe_value(value)} from {origin}"
        raise WriteTypeError(bad_write_message(what, given, format_source(src)))
    return value, meta


def check_item_value(value: Any, what: str, src: Any) -> None:
    """Check the value of ``module_value[index] = value`` (numbers are cast by the assignment itself)."""
    if not (_is_number(value) or _is_array_like(value)):
        raise WriteTypeError(bad_write_message(what, describe_value(value), format_source(src)))


def intervention_origin(name: str, fn: Callable, kind: str = "interventions") -> str:
    """``interventions['layers.1'] = bad_hook (defined at file:line)``, for errors about its result (``kind``:
    what the dict was, e.g. ``"edit"`` for a model's edits)."""
    label = getattr(fn, "__qualname__", None) or repr(fn)
    code = getattr(fn, "__code__", None)
    where = f" (defined at {code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{kind}[{name!r}] = {label}{where}"


def _is_number(value: Any) -> bool:
    """A number a write fills in (bools too: a boolean activation can be written)."""
    return is_number(value) or isinstance(value, (bool, np.bool_))


def _is_array_like(value: Any) -> bool:
    return isinstance(value, (Proxy, mx.array, np.ndarray))


def _structured(value: Any) -> bool:
    """A tuple holding traced values or arrays: the replacement of a module that returns a tuple."""
    return isinstance(value, tuple) and any(_is_array_like(v) for v in value)


# -- indices -----------------------------------------------------------------------------------------

# Ops whose stand-in value (Trace.abstract) is computed by MLX alone, never by user code (a user function
# may have side effects, so it is not called just to learn a shape).
_SHAPE_OPS = frozenset({Op.MODULE_OUTPUT, Op.MODULE_INPUT, Op.CONSTANT, Op.GETITEM, Op.SETITEM, Op.BINARY,
                        Op.UNARY, Op.CALL_METHOD, Op.CALL_FUNCTION})


def check_index(proxy: Proxy, index: Any) -> None:
    """Raise IndexError if an integer in ``index`` is outside the known shape of ``proxy``'s value.

    Slices, arrays and traced values as indices, ``None`` and ``...`` are left to MLX (a slice past the
    end is valid and empty). Values whose shape is not known for sure are not checked.
    """
    parts = index if type(index) is tuple else (index,)
    if not _has_checkable_int(parts):
        return
    shape = known_shape(proxy)
    if shape is None:
        return
    consumed = [p for p in parts if p is not None and p is not Ellipsis]
    if len(consumed) > len(shape):
        raise IndexError(f"too many indices for {_what(proxy)}: {format_index(index)} indexes {len(consumed)} "
                         f"axes and the value has shape {shape}; traced at {format_source(user_source())}")
    axis = 0
    for k, part in enumerate(parts):
        if part is Ellipsis:
            axis = len(shape) - sum(1 for p in parts[k + 1:] if p is not None and p is not Ellipsis)
        elif part is not None:
            if _is_int(part) and not -shape[axis] <= int(part) < shape[axis]:
                raise IndexError(_out_of_range(proxy, int(part), axis, shape))
            axis += 1


def _has_checkable_int(parts: tuple) -> bool:
    """Whether the index has an integer to check (and no bool mask, at most one ``...``): one fast pass, as
    every ``output[:, -1]`` of a sweep comes here."""
    found, ellipses = False, 0
    for part in parts:
        kind = type(part)
        if kind is int:
            found = True
        elif kind is slice or part is None:
            continue
        elif part is Ellipsis:
            ellipses += 1
        elif kind is bool or isinstance(part, np.bool_):
            return False
        elif isinstance(part, np.integer):
            found = True
    return found and ellipses <= 1


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _out_of_range(proxy: Proxy, index: int, axis: int, shape: tuple) -> str:
    n = shape[axis]
    valid = f"valid indices are {-n} to {n - 1}" if n else "the axis is empty"
    tokens = proxy._trace.recording_tokens(proxy._node).shape
    hint = ""
    if proxy._binding is not None and axis == 1 and len(shape) >= 2 and n == tokens[1] and shape[0] == tokens[0]:
        hint = f" (axis 1 is the token position: the input has {n} token{'s' if n != 1 else ''})"
    return (f"index {index} is out of range for axis {axis} of {_what(proxy)}, which has length {n} "
            f"(shape {shape}){hint}; {valid}; traced at {format_source(user_source())}")


def _what(proxy: Proxy) -> str:
    if proxy._binding is not None:
        path, _, phase = proxy._binding
        if is_part(phase):
            return phase.label
        return f"{proxy._trace._owner._index.short(path) or '<model>'} {phase}"
    node = proxy._trace.graph.node(proxy._node)
    return f"the traced value %{node.id} ({node.describe()})"


def known_shape(proxy: Proxy) -> tuple | None:
    """The shape ``proxy``'s value will have, where the trace knows it for sure; else ``None``."""
    trace = proxy._trace
    if _input_rewritten(trace):  # an input write may change the shapes the probe recorded downstream
        return None
    if proxy._binding is not None:  # a module's value, written or not: writes keep its shape
        return _probe_shape(trace, proxy._binding, proxy._node)
    if not _shape_is_safe(trace, proxy._node):
        return None
    try:
        value = trace.abstract(proxy._node)
    except Exception:  # noqa: BLE001 -- no shape known: this optional check is skipped; the run reports the error
        return None
    return tuple(value.shape) if isinstance(value, mx.array) else None


def _probe_shape(trace: Any, event: tuple, node_id: int | None = None) -> tuple | None:
    """The shape the probe gives at ``event`` (for the tokens of node ``node_id``'s invoke, if it has one)."""
    path, idx, phase = event
    if is_part(phase):  # a value attached to a site (a dictionary's features): the site's axes, its own width
        site = _probe_shape(trace, (path, idx, phase.site_phase), node_id)
        return None if site is None else site[:-1] + (phase.width,)
    if phase not in ("output", "input"):  # a residual value (resid_mid): read at a module's input
        path, phase = trace._owner._index.residual_site(path, phase)
    spec = trace._owner._probe(trace.recording_tokens(node_id)).values.get((path, idx, phase))
    return tuple(spec[0]) if isinstance(spec, tuple) else None


def _input_rewritten(trace: Any) -> bool:
    """Whether an input was written with a value that may have another shape (an invoke's row write keeps
    it: its value fills the invoke's rows of the batch value)."""
    graph = trace.graph
    for binding, node_id in trace._versions.items():
        node = graph.node(node_id)
        if binding[2] == "input" and node.op is Op.REPLACE:
            meta = graph.node(node.args[0].id).meta
            if "invoke" not in meta and not meta.get("keeps_shape"):  # a splice writes the value's own shape
                return True
    return False


def _shape_is_safe(trace: Any, node_id: int) -> bool:
    """Whether the node's stand-in is computed from module shapes and constants by MLX ops only."""
    graph, stack, seen = trace.graph, [node_id], set()
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        node = graph.node(nid)
        if node.meta.get("view"):  # an invoke's view of a module value: its shape is its invoke's (known)
            continue
        if node.op not in _SHAPE_OPS or (node.op is Op.CALL_FUNCTION and not _mlx_function(node.target)):
            return False
        if node.op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT):
            path, idx = node.target
            if _probe_shape(trace, (path, idx, "output" if node.op is Op.MODULE_OUTPUT else "input")) is None:
                return False
        stack.extend(node.refs())
    return True


def _mlx_function(fn: Any) -> bool:
    return str(getattr(fn, "__module__", "")).startswith("mlx.core") or isinstance(fn, operator.attrgetter)
