"""Programs: a recorded trace as a pure MLX function of its tokens and params.

``tr.program()`` lowers a trace's optimized graph once. Calling the program replays it with new tokens or
param values (no recording, no structural key, no passes), compiled per input shape; ``prog.fn`` is the
uncompiled pure function for ``mx.compile``/``mx.vmap``/``mx.grad`` compositions; ``prog.batched`` runs
``K`` variants of the params in one forward, folded into the batch axis. Params are the trace's constants:
those named with :func:`mlxterp.param`, and every other lifted constant (a steering vector, the ``0.5`` of
``iv.scale(0.5)``) under a generated name (``const_0``, ``const_1``, ...).
"""

from __future__ import annotations

import dataclasses
import keyword
import types
from typing import Any, Dict, Optional

import mlx.core as mx
import numpy as np

from mlxterp.compiler import Graph, Op, TraceError, to_text
from mlxterp.compiler.passes.lift import as_param
from mlxterp.compiler.structure import node_key

from .. import distributed as dist
from ..core import WrappedModel
from ..inputs import array_batch
from ..scalars import REAL_KINDS, is_complex, is_number, python_number
from . import context

TOKENS = "tokens"
RESERVED = (TOKENS, "distributed")  # keywords of a program's calls that are not params
# What MLX says when asked for the values of an array inside mx.compile or mx.vmap tracing.
_ABSTRACT = "Attempting to eval an array during function transformations"


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One input of a program: its name, shape and dtype, its default value, whether it is a Python
    number (``weak``: it takes the dtype of the array it meets, as in MLX), and where it was recorded."""

    name: str
    shape: tuple
    dtype: Any
    default: Any
    weak: bool
    source: str

    def __repr__(self) -> str:
        kind = "number" if self.weak else f"{self.shape} {self.dtype}"
        return f"ParamSpec({self.name!r}, {kind}, traced at {self.source})"


def param(name: str, default: Any) -> Any:
    """A named input of the current trace's program, with its default value.

    Inside ``with model.trace(...)``, ``steer = mlxterp.param("steer", mx.zeros(576))`` is used like any
    traced value; the trace runs with the default, and ``tr.program()(steer=v)`` replays with ``v``.

    Args:
        name: a Python identifier (it becomes a keyword of the program's call), not ``"tokens"``.
        default: an ``mx.array`` (or numpy array) or a number (a Python or numpy int or float: weak, it
            takes the dtype of the array it meets, as a Python number does in MLX).
    """
    return context.current(types.SimpleNamespace(name="mlxterp"), "param").param(name, default)


def check_param_name(name: Any, used: set) -> None:
    """A param name must be a free Python identifier (it is passed as a keyword)."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED:
        raise ValueError(f"param name {name!r} is not valid: use a Python identifier other than 'tokens' and "
                         "'distributed' (it becomes a keyword argument of the program, e.g. prog(steer=v))")
    if name in used:
        raise ValueError(f"param name {name!r} is already used in this trace; each param needs its own name")


def param_default(name: str, default: Any) -> tuple[Any, bool]:
    """The default as stored in the graph (an array, or a Python number kept weak) and its weakness."""
    if is_number(default):
        return python_number(default), True
    if not isinstance(default, (mx.array, np.ndarray)):
        raise TypeError(f"param {name!r} needs an mx.array, a numpy array or a number ({REAL_KINDS}) as its "
                        f"default, got {type(default).__name__} {default!r}")
    return (mx.array(default) if isinstance(default, np.ndarray) else default), False


def build_program(owner: WrappedModel, graph: Graph, tokens: mx.array, lengths: tuple, kind: Optional[type] = None,
                  **extra: Any) -> "Program":
    """Lower ``graph`` (saves only, no captures) for ``owner``'s model into a :class:`Program` (or ``kind``, a
    subclass, given ``extra`` arguments)."""
    saves_only = graph.with_captures(())
    lowered = owner._executor.program(saves_only, tokens, lambda: owner._probe(tokens))
    specs = []
    for node in _param_nodes(lowered.graph):
        value = graph.node(node.meta["constant_id"]).meta["value"]
        array = as_param(value)
        specs.append(ParamSpec(node.meta.get("name") or f"const_{node.target}", tuple(array.shape), array.dtype,
                               value, bool(node.meta.get("weak")), node.source))
    return (kind or Program)(owner, lowered, tuple(specs), tokens, lengths, saves_only, **extra)


def _param_nodes(graph: Graph) -> list:
    """The PARAM nodes of an optimized graph, in param order."""
    return sorted((n for n in graph if n.op is Op.PARAM), key=lambda n: n.target)


def relower(owner: WrappedModel, recorded: Graph, tokens: mx.array, old: Any) -> Any:
    """``recorded`` lowered again on ``owner``'s current module tree, with the same params as ``old``.

    Raises:
        TraceError: the graph reads or writes a module the current model no longer calls (the message
            says the model's modules were replaced since the program was recorded).
    """
    try:
        new = owner._executor.program(recorded, tokens, lambda: owner._probe(tokens))
    except TraceError as e:
        raise type(e)(f"a module of the model was replaced since this program was recorded (nn.quantize, a LoRA "
                      f"wrapper, an assignment), and the program no longer fits the current model: {e}. Record "
                      "the trace again on the current model") from e
    sources = [[n.meta["constant_id"] for n in _param_nodes(lowered.graph)] for lowered in (old, new)]
    if sources[0] != sources[1]:  # the passes do not depend on the tree: this would be a compiler bug
        raise RuntimeError(f"re-lowering a program after a module swap changed its params ({sources[0]} -> "
                           f"{sources[1]}); record the trace again")
    return new


class Program:
    """A recorded trace as a function (made by ``tr.program()``; see the module docstring).

    A program is a function of the model's current state: it reads the weights at every call, and after a
    module is replaced (``nn.quantize``, a LoRA wrapper, ``layer.mlp = other``) it is lowered again on the
    new modules at its next call (a ``ModuleNotCalledError`` if a module it reads or writes is gone).

    Attributes:
        params: ``{name: ParamSpec}`` in call order.
        saves: the keys of the dict a call returns.
        tokens, lengths: the recorded (default) tokens and each row's real length.
    """

    def __init__(self, owner: WrappedModel, lowered: Any, specs: tuple, tokens: mx.array, lengths: tuple,
                 recorded: Graph):
        self._owner = owner
        self._lowered = lowered
        self._recorded = recorded  # lowered again if a module of the model is replaced (see _current)
        self.params: Dict[str, ParamSpec] = {s.name: s for s in specs}
        self._index = {s.name: i for i, s in enumerate(specs)}
        self._defaults = [as_param(s.default) for s in specs]
        self.tokens = tokens
        self.lengths = lengths
        self.saves = tuple(n.target for n in lowered.graph if n.op is Op.SAVE)

    # -- running ---------------------------------------------------------------------------------
    def __call__(self, tokens: Any = None, **values: Any) -> Dict[str, mx.array]:
        """Replay with new ``tokens`` (anything ``model.trace`` accepts; default: the recorded ones) and
        param values by name (default: the recorded ones). Compiled; new shapes trace once each."""
        tokens, values, lowered = self._prepare(tokens, values)
        return lowered(tokens, self._bind(values))

    def fn(self, tokens: Any = None, params: Optional[Dict[str, Any]] = None) -> Dict[str, mx.array]:
        """The same function uncompiled and pure (``params`` by name, missing ones take their defaults):
        the form to put inside your own ``mx.compile``, ``mx.vmap`` or ``mx.grad``.

        Args:
            tokens: ``(batch, seq)`` int32 token ids (default: the recorded ones), or anything ``model.trace``
                accepts.
            params: ``{name: value}`` for any of the program's ``params`` (arrays of the param's shape, or numbers);
                differentiate with respect to them (``mx.grad(lambda p: prog.fn(params={"alpha": p})[...].sum())``).

        Returns:
            ``{save key: array}``: each saved value of one run, its shape and dtype as in the trace (e.g.
            ``(batch, seq, vocab)`` logits in the model's dtype for ``model.output``).
        """
        tokens, params, lowered = self._prepare(tokens, dict(params or {}))
        return lowered.fn(tokens, self._bind(params))

    def batched(self, tokens: Any = None, *, distributed: Any = "auto", **values: Any) -> Dict[str, mx.array]:
        """``K`` variants in one forward: every param given here has a leading axis of size ``K`` (one value
        per variant; the others keep their value for all). The tokens are repeated ``K`` times along the
        batch axis, so the model runs one ``K * batch`` forward; each save comes back with a leading ``K``
        axis. Equal to ``mx.vmap`` over the same params, and it needs no vmap rule of the model's kernels:
        MLX has none for quantized matmuls (``mx.vmap`` over a 4-bit model raises ``[QuantizedMatmul::vmap]
        NYI`` when the result is evaluated), and on a CPU one folded forward is also the faster form.

        ``distributed`` splits the ``K`` variants over ``mx.distributed`` processes (:mod:`mlxterp.distributed`):
        ``"auto"`` when the script was launched on several (``mlx.launch``), ``True`` to require that,
        ``False`` for this process alone; every rank returns all ``K``. Every rank must run the same program
        with the same tokens and values (checked before any work: ``DistributedMismatchError``).

        Args:
            tokens: ``(batch, seq)`` int32 token ids (default: the recorded ones), shared by every variant.
            distributed: ``"auto"``, ``True`` or ``False`` (see above).
            **values: ``name=array`` for the mapped params, each of shape ``(K, *param_shape)`` (``(K,)`` for a
                number param), cast to the param's dtype.

        Returns:
            ``{save key: array}``, each save's value for every variant stacked on a leading axis:
            ``(K, *shape)`` where ``shape`` is the save's shape in one run (e.g. ``(K, batch, vocab)``).

        Raises:
            ValueError: no mapped param, or mapped params whose leading axes differ.
        """
        tokens, values, lowered = self._prepare(tokens, values)
        if not values:
            raise ValueError(f"batched() needs at least one param with a leading variant axis; this program's "
                             f"params are: {', '.join(self.params) or 'none'}")
        k = {name: _leading(name, v) for name, v in values.items()}
        if len(set(k.values())) != 1:
            raise ValueError(f"batched() params must share their leading (variant) axis, got sizes {k}")
        group = dist.resolve_group(distributed)
        if group is not None:
            dist.check_same_call(group, "Program.batched", program=self._structure(), tokens=tokens, values=values)
        n = next(iter(k.values()))
        if group is not None and n >= dist.size(group):  # this rank's variants, then everyone's gathered
            mine = mx.array(np.array(dist.my_items(range(n), group), dtype=np.int32))
            values = {name: mx.array(v)[mine] for name, v in values.items()}
        bound = self._bind(values, mapped=True)
        mapped = frozenset(self._index[name] for name in values)
        out = lowered.folded(tokens, bound, mapped)
        if group is None or n < dist.size(group):
            return out
        return {name: dist.gather_array_items(value, n, group) for name, value in out.items()}

    def _structure(self) -> tuple:
        """What this program computes, for comparing it across processes: its graph's nodes (op, target,
        wiring; never the source lines) and its params' default values."""
        return tuple(node_key(n) for n in self.graph), tuple(self._defaults)

    def _current(self) -> Any:
        """The lowered program on the model's current module tree. A program is a function of the model's
        current state: as it sees weight edits, it follows replaced modules (quantized, wrapped, swapped),
        lowered again from its recorded graph on the first call after the change (the caller has checked
        the tree: :meth:`_tokens` does)."""
        lowered = self._lowered
        if lowered.tree_version != self._owner._executor.tree_version:
            lowered = self._lowered = relower(self._owner, self._recorded, self.tokens, lowered)
        return lowered

    # -- inputs ----------------------------------------------------------------------------------
    def _prepare(self, tokens: Any, values: Dict[str, Any]) -> tuple[mx.array, Dict[str, Any], Any]:
        """A call's tokens (checked), its param values, and the lowered program that runs them."""
        return self._tokens(tokens), values, self._current()

    def _tokens(self, tokens: Any) -> mx.array:
        """The tokens of a call, checked (and the model's module tree checked, see ``model._sync_tree``)."""
        if tokens is None:
            self._owner._sync_tree()
            return self.tokens  # checked when the trace recorded them
        if isinstance(tokens, mx.array):
            try:
                return self._owner._batch(tokens).tokens
            except (ValueError, RuntimeError) as e:  # MLX raises either, depending on how it is asked
                if _ABSTRACT not in str(e):
                    raise
            return self._placeholder_tokens(tokens)
        return self._owner._batch(tokens).tokens

    def _placeholder_tokens(self, tokens: mx.array) -> mx.array:
        """Tokens inside ``mx.compile`` / ``mx.vmap``: their ids are placeholders, so their range cannot be
        checked here, but everything their shape decides is (dtype, sizes, the model's position limit)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens inside a transform must be (batch, seq), got shape {tuple(tokens.shape)}")
        batch = array_batch(tokens)
        self._owner._check_length(batch.lengths)
        return batch.tokens

    def _bind(self, values: Dict[str, Any], mapped: bool = False) -> list:
        params = list(self._defaults)
        for name, value in values.items():
            index = self._index.get(name)
            if index is None:
                raise TypeError(f"this program has no param {name!r}; its params are: "
                                f"{', '.join(self.params) or 'none'} (and tokens=)")
            params[index] = self._check(self.params[name], value, mapped)
        return params

    @staticmethod
    def _check(spec: ParamSpec, value: Any, mapped: bool) -> mx.array:
        if is_number(value) or is_complex(value):  # a complex one is refused by check_cast for a real param
            array = mx.array(python_number(value))
        elif isinstance(value, (mx.array, np.ndarray)):
            array = value if isinstance(value, mx.array) else mx.array(value)
        else:
            raise TypeError(f"param {spec.name!r} takes an mx.array, a numpy array or a number ({REAL_KINDS}), "
                            f"got {type(value).__name__} {value!r}")
        shape = tuple(array.shape[1:] if mapped else array.shape)
        if shape != spec.shape:
            lead = "(K, " + ", ".join(map(str, spec.shape)) + ")" if mapped else str(spec.shape)
            raise ValueError(f"param {spec.name!r} has shape {spec.shape}; got a value of shape "
                             f"{tuple(array.shape)} (expected {lead})")
        check_cast(spec, array.dtype)
        return array if array.dtype == spec.dtype else array.astype(spec.dtype)

    # -- introspection ---------------------------------------------------------------------------
    @property
    def graph(self) -> Graph:
        """The optimized graph this program runs."""
        return self._lowered.graph

    def dump(self) -> str:
        """A readable listing of the optimized graph."""
        return to_text(self.graph)

    def __repr__(self) -> str:
        params = ", ".join(f"{s.name}: {'number' if s.weak else s.shape}" for s in self.params.values())
        return f"Program(tokens {tuple(self.tokens.shape)}, params [{params}], saves {list(self.saves)})"


def check_cast(spec: ParamSpec, dtype: Any) -> None:
    """Refuse a value that casting to the param's dtype would change silently: a complex value for a real
    param (its imaginary part dropped), a float one for an integer or boolean param (truncated)."""
    kind = spec.dtype
    if mx.issubdtype(dtype, mx.complexfloating) and not mx.issubdtype(kind, mx.complexfloating):
        raise TypeError(f"param {spec.name!r} is real ({kind}); got a complex value ({dtype}), whose imaginary "
                        "part would be dropped. Pass a real value (mx.real(v) if the real part is what you mean)")
    if mx.issubdtype(dtype, mx.inexact) and not mx.issubdtype(kind, mx.inexact):
        recorded = "a Python int" if spec.weak else f"an {kind} array"
        raise TypeError(f"param {spec.name!r} is {kind} (recorded from {recorded}); got a {dtype} value, which "
                        "would be truncated. Pass integers, or record the param as a float (e.g. 1.0 instead "
                        "of 1) to give it fractional values")


def _leading(name: str, value: Any) -> int:
    shape = getattr(value, "shape", ())
    if not shape:
        raise ValueError(f"batched() param {name!r} needs a leading variant axis, got a scalar")
    if shape[0] == 0:
        raise ValueError(f"batched() param {name!r} has shape {tuple(shape)}: no variants along its leading "
                         "axis; give at least one (K >= 1)")
    return int(shape[0])
