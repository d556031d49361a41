"""Pre-built interventions: functions ``activation -> activation`` for the ``interventions=`` dict.

Each one works on a plain ``mx.array`` and on a traced value alike. Inside a trace it records graph
nodes whose numbers (the factor of ``scale(0.5)``, the vector of ``add_vector(v)``) are lifted into
parameters, so a sweep over values reuses one compiled program instead of retracing.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import mlx.core as mx
import numpy as np

from .adapters.attention import KEY_AXIS_POINTS
from .inputs import is_int
from .scalars import REAL_KINDS, is_number, python_number
from .tracing.proxy import apply

Activation = Any  # an mx.array, or a traced value inside a trace


class Intervention:
    """Base class: a named, composable ``activation -> activation`` function."""

    def __call__(self, x: Activation) -> Activation:
        raise TypeError(f"{type(self).__name__} must override __call__")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"iv.{type(self).__name__.lower()}({fields})"


class _ZeroOut(Intervention):
    def __call__(self, x: Activation) -> Activation:
        return apply(mx.zeros_like, x)

    def __repr__(self) -> str:
        return "iv.zero_out"


zero_out = _ZeroOut()
"""Set activations to zero: ``zero_out(x) -> zeros_like(x)`` (same shape and dtype)."""
zero_out.__doc__ = "Set activations to zero: ``zero_out(x) -> zeros_like(x)`` (same shape and dtype)."


class scale(Intervention):  # noqa: N801 (the seed's name)
    """Multiply activations by ``factor`` (a number keeps the activation's dtype; an ``mx.array`` broadcasts
    to its shape and promotes its dtype as MLX does)."""

    def __init__(self, factor: float):
        if not (is_number(factor) or isinstance(factor, mx.array)):
            raise TypeError(f"scale(factor) needs a number ({REAL_KINDS}) or an mx.array, got "
                            f"{type(factor).__name__} {factor!r}")
        self.factor = python_number(factor)

    def __call__(self, x: Activation) -> Activation:
        return x * self.factor


class add_vector(Intervention):  # noqa: N801
    """Add a steering ``vector`` (broadcastable to the activation's shape: ``(hidden,)`` adds it at every
    position of a ``(batch, seq, hidden)`` activation).

    The sum has MLX's promoted dtype: a float32 vector added to a float16 or bfloat16 activation makes it
    float32 (and so everything computed from it); give the vector the activation's dtype
    (``v.astype(mx.float16)``) to keep the model's.
    """

    def __init__(self, vector: mx.array):
        self.vector = vector if isinstance(vector, mx.array) else mx.array(vector)

    def __call__(self, x: Activation) -> Activation:
        return x + self.vector


def _filled_like(x: mx.array, value: mx.array) -> mx.array:
    return mx.broadcast_to(value.astype(x.dtype), x.shape)


class replace_with(Intervention):  # noqa: N801
    """Replace activations with ``value`` (a number, or an array broadcastable to the activation), cast to
    the activation's dtype."""

    def __init__(self, value: Union[mx.array, float]):
        if not (is_number(value) or isinstance(value, mx.array)):
            raise TypeError(f"replace_with(value) needs a number ({REAL_KINDS}) or an mx.array, got "
                            f"{type(value).__name__} {value!r}")
        self.value = value if isinstance(value, mx.array) else mx.array(float(value))

    def __call__(self, x: Activation) -> Activation:
        return apply(_filled_like, x, self.value)


class clamp(Intervention):  # noqa: N801
    """Clamp activations to ``[min_val, max_val]`` (either bound may be ``None``; the dtype is kept)."""

    def __init__(self, min_val: Optional[float] = None, max_val: Optional[float] = None):
        if min_val is None and max_val is None:
            raise ValueError("clamp needs min_val, max_val or both; got neither")
        for name, bound in (("min_val", min_val), ("max_val", max_val)):
            if bound is not None and not is_number(bound):
                raise TypeError(f"clamp({name}) needs a number ({REAL_KINDS}) or None, got "
                                f"{type(bound).__name__} {bound!r}")
        min_val, max_val = python_number(min_val), python_number(max_val)
        if min_val is not None and max_val is not None and min_val > max_val:
            raise ValueError(f"clamp got min_val={min_val} > max_val={max_val}")
        self.min_val, self.max_val = min_val, max_val

    def __call__(self, x: Activation) -> Activation:
        lo = None if self.min_val is None else float(self.min_val)
        hi = None if self.max_val is None else float(self.max_val)
        return apply(mx.clip, x, lo, hi)


def _gaussian_like(x: mx.array) -> mx.array:
    return mx.random.normal(x.shape, dtype=x.dtype)


class noise(Intervention):  # noqa: N801
    """Add Gaussian noise with standard deviation ``std`` (in the activation's units; drawn in the
    activation's dtype, fresh on every run)."""


    def __init__(self, std: float = 0.1):
        if not is_number(std) or std < 0:
            raise ValueError(f"noise(std) needs a non-negative number ({REAL_KINDS}), got {std!r}")
        self.std = python_number(std)

    def __call__(self, x: Activation) -> Activation:
        return x + apply(_gaussian_like, x) * float(self.std)


def _zeroed_heads(x: mx.array, heads: tuple, axis: int) -> mx.array:
    """``x`` with the entries of ``heads`` along ``axis`` set to zero (checked against ``x``'s shape)."""
    _check_heads(tuple(x.shape), heads, axis)
    keep = np.ones(x.shape[axis], dtype=bool)
    keep[list(heads)] = False
    mask = mx.array(keep).reshape([-1 if a == axis % x.ndim else 1 for a in range(x.ndim)])
    return mx.where(mask, x, mx.zeros((), dtype=x.dtype))


def _check_heads(shape: tuple, heads: tuple, axis: int) -> None:
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"zero_out_heads(axis={axis}): the activation has shape {shape}, no axis {axis}; heads are "
                         "axis 2 of layers.N.attn.heads (batch, seq, heads, head_dim), axis 1 of pattern and scores")
    n = shape[axis]
    bad = [h for h in heads if not -n <= h < n]
    if bad:
        raise IndexError(f"zero_out_heads: head {bad[0]} is out of range; the activation has {n} heads (axis {axis} "
                         f"of shape {shape}): valid heads are {-n} to {n - 1}")


class zero_out_heads(Intervention):  # noqa: N801
    """Set some attention heads to zero: for ``layers.N.attn.heads`` (each head's output before the output
    projection, ``(batch, seq, heads, head_dim)``) the listed heads then contribute nothing to the layer.

    Args:
        heads: a head index or a list of them (negative ones count from the end).
        axis: the heads axis of the activation (2 for ``heads``, ``q``, ``k``, ``v``; 1 for ``pattern`` and
            ``scores``).

    Head indices are structure (as indices are in a trace), checked against the activation's shape when
    it is known (in a trace; an edit recorded in a ``with model.edit()`` block has no shapes, so there
    they are checked when each forward runs).
    """

    def __init__(self, heads: Any, axis: int = 2):
        listed = [heads] if is_int(heads) else heads
        if not isinstance(listed, (list, tuple)) or not listed or not all(is_int(h) for h in listed):
            raise TypeError(f"zero_out_heads(heads) needs a head index or a non-empty list of them, got {heads!r}")
        if not is_int(axis):
            raise TypeError(f"zero_out_heads(axis) needs an int, got {axis!r}")
        self.heads = [int(h) for h in listed]
        self.axis = int(axis)

    def __call__(self, x: Activation) -> Activation:
        shape = _known_shape(x)
        if shape is not None:  # a mistake shows at the caller's line, before anything runs
            _check_heads(shape, tuple(self.heads), self.axis)
        return apply(_zeroed_heads, x, tuple(self.heads), self.axis)


def _known_shape(x: Activation) -> Optional[tuple]:
    """The activation's shape, or ``None`` where it is not known (a value recorded in an edit)."""
    from .edits import EditError

    try:
        return tuple(x.shape)
    except EditError:
        return None


class InterventionComposer(Intervention):
    """Compose interventions left to right: ``compose().add(f).add(g).build()`` computes ``g(f(x))``."""

    def __init__(self) -> None:
        self._fns: list[Callable] = []

    def add(self, fn: Callable[[mx.array], mx.array]) -> "InterventionComposer":
        """Append ``fn``; returns ``self`` for chaining."""
        if not callable(fn):
            raise TypeError(f"compose().add needs a callable (activation -> activation), got {type(fn).__name__}")
        self._fns.append(fn)
        return self

    def build(self) -> "InterventionComposer":
        """The composed intervention (a copy: later ``add`` calls do not change it)."""
        if not self._fns:
            raise ValueError("compose() has no interventions; call .add(fn) before .build()")
        built = InterventionComposer()
        built._fns = list(self._fns)
        return built

    def __call__(self, x: Activation) -> Activation:
        for fn in self._fns:
            x = fn(x) if isinstance(fn, Intervention) else apply(fn, x)
        return x

    def __repr__(self) -> str:
        return " >> ".join(repr(f) for f in self._fns) or "iv.compose()"


def positionwise(fn: Callable, site: tuple) -> bool:
    """Whether ``fn``, applied at ``site`` (``(path, phase)``), is one of the library's interventions that
    compute each token position from that position alone (scale, clamp, zero_out, noise, zero_out_heads, a
    per-feature add_vector or replace_with, a composition of these). Any other function may count positions
    from the end or mix positions, which right padding (or a prompt split in parts) would change. An array
    broadcast over the last axis is per feature, except at an attention score or pattern, whose last axis is
    the key positions."""
    if isinstance(fn, InterventionComposer):
        return all(positionwise(f, site) for f in fn._fns)
    keyed = site[0].rpartition(".")[2] in KEY_AXIS_POINTS
    if isinstance(fn, scale):
        return _per_feature(fn.factor, keyed)
    if isinstance(fn, add_vector):
        return _per_feature(fn.vector, keyed)
    if isinstance(fn, replace_with):
        return _per_feature(fn.value, keyed)
    return isinstance(fn, (clamp, noise, zero_out_heads, _ZeroOut))


def _per_feature(value: Any, keyed: bool) -> bool:
    """A number, or an array with no token axis (at most one axis, broadcast over the last, which is not
    ``keyed`` by positions)."""
    return not isinstance(value, mx.array) or value.ndim == 0 or (value.ndim == 1 and not keyed)


def compose() -> InterventionComposer:
    """Start a composition of interventions (see :class:`InterventionComposer`)."""
    return InterventionComposer()


__all__ = ["Intervention", "InterventionComposer", "add_vector", "clamp", "compose", "noise", "replace_with",
           "scale", "zero_out", "zero_out_heads"]
