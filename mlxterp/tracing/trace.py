"""The trace context: records a graph inside ``with model.trace(...)``, runs it on exit, binds results."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import mlx.core as mx
import numpy as np

from mlxterp.compiler import CausalityError, Graph, Op, Ref, to_dot, to_json, to_text
from mlxterp.compiler import structure as keys
from mlxterp.compiler.semantics import format_index

from ..core import WrappedModel
from ..scalars import python_number
from . import context, guards
from .attached import SiteAttachments, is_part
from .stand_ins import StandIns
from .invoke import Invoke, InvokeError, Invokes, explain_causality
from .program import Program, build_program, check_param_name, param_default
from .proxy import _UNSET, Proxy, apply
from .results import ActivationDict, PendingActivations, rebind_in_frame
from .source import format_source, user_source

# Which Python numbers are data (lifted to params) and which are structure (axes, shapes): operands of
# arithmetic are data; for function calls only floats are; method arguments stay literal.
_DATA_NUMBERS = {Op.BINARY: (int, float), Op.CALL_FUNCTION: (float,)}
_ARITH_NUMBERS = _DATA_NUMBERS[Op.BINARY]
_REF_KEYED = frozenset({Op.BINARY, Op.UNARY})

# Nodes a sweep records again and again share what does not change between traces: the meta of a source
# line (immutable). Fewer objects retained per node keeps the recording cheap when the forward that ran just
# before has pushed the interpreter's memory out of cache. Structural keys come from compiler.structure.
_METAS: dict[Any, dict] = {}


def _meta(src: Any) -> dict:
    """The shared ``{"source": src}`` meta of a non-constant node (node metas are never mutated)."""
    meta = _METAS.get(src)
    if meta is None:
        if len(_METAS) > 100_000:  # generated code with endless distinct lines: stay bounded
            _METAS.clear()
        meta = _METAS[src] = {"source": src}
    return meta


RESID_MID = "resid_mid"  # the pseudo-phase of a layer's residual between its attention and MLP halves


def shift_residual(out: mx.array, new: mx.array, old: mx.array) -> mx.array:
    """A layer output ``h + f(h)`` moved to a new residual: ``out + (new - old)``."""
    return out + (new - old)


COMPILE_CHOICES = {False: "eager", True: "compiled", "eager": "eager", "compiled": "compiled", "auto": "auto"}


class Trace(SiteAttachments, StandIns):
    """Context manager for one traced forward (created by :meth:`InterpretableModel.trace`).

    After the block: ``output`` (the model's output), ``saved_values`` (``.save()``-d values by key),
    ``activations`` (captured module outputs, keyed ``"model." + path``), ``get``/``get_activation``,
    ``graph`` (the recorded IR), ``optimized_graph`` (after passes), ``mode`` ("eager"/"compiled").

    Given no inputs (``batch`` ``None``), the trace takes its prompts from ``with tr.invoke(prompt):``
    blocks (see :mod:`.invoke`); ``invokes`` lists them, and ``tokens`` / ``lengths`` are their batch
    once the block has ended.
    """

    def __init__(self, owner: WrappedModel, batch: Any, interventions: dict | None, compile: Any, capture: Any,
                 dictionaries: Any = None):
        if compile not in COMPILE_CHOICES:
            raise ValueError(f"compile={compile!r} is not valid; choose True, False, 'auto', 'eager' or 'compiled'")
        self._owner = owner
        self._invokes = Invokes(self) if batch is None else None
        self.tokens: mx.array = None if batch is None else batch.tokens
        """The input tokens, ``(batch, seq)`` int32, right-padded (with invokes: set when the block ends)."""
        self.lengths: tuple[int, ...] = () if batch is None else batch.lengths
        """Each row's real token count (its prompt's length before padding)."""
        self.compile_mode = COMPILE_CHOICES[compile]
        self.graph = Graph(captures=owner._capture_spec(capture))
        self._interventions = owner._check_interventions(interventions)
        self._splices = owner._check_dictionaries(dictionaries)
        self._attached: dict[tuple, dict[str, Any]] = {}  # site binding -> {name: attached object}
        self._versions: dict[tuple, int] = {}
        self._abstract: dict[int, Any] = {}
        self._saved: list[Proxy] = []
        self._save_keys: set[str] = set()
        self._param_names: set[str] = set()
        self.finished = False
        self._output: Any = None
        self.saved_values: dict[str, Any] = {}
        """``{key: array}`` of every ``.save()``-d value after the block (keys as :meth:`get` takes them)."""
        self.activations: Any = PendingActivations(self)
        """``{"model." + module path: array}``: module outputs captured as ``capture=`` asked (default: all),
        each ``(batch, seq, ...)`` as the module returned it."""
        self.mode: str | None = None
        self._result: Any = None

    # -- context protocol --------------------------------------------------------------------
    def __enter__(self) -> "Trace":
        context.push(self)
        if self._invokes is None:  # with invokes, each invoke begins with them (see Invokes.enter)
            try:
                self.begin()
            except BaseException:
                context.pop(self)
                raise
        return self

    def begin(self) -> None:
        """Record the model's edits (see :mod:`mlxterp.edits`), then the ``interventions=`` entries, then the
        ``dictionaries=`` splices, as the trace begins. A trace with invokes records them as each invoke begins
        instead (see :meth:`Invokes.enter <mlxterp.tracing.invoke.Invokes.enter>`)."""
        for _, record in self.beginning():
            record()

    def beginning(self) -> list[tuple[bool, Callable[[], None]]]:
        """What the trace records as it begins, in order (the model's edits, then the ``interventions=``
        entries, then the ``dictionaries=`` splices, which see the site as the interventions left it), each as
        (whether it computes each position from that position alone, the call recording it)."""
        from ..interventions import positionwise

        entries = [(edit.padding_safe, functools.partial(edit.apply, self)) for edit in self._owner.edits]
        entries += [(positionwise(fn, site), functools.partial(self._apply_intervention, site, fn, name))
                    for site, fn, name in self._interventions]
        # A dictionary encodes each token alone: a splice is position-wise (invokes record it once, on the batch).
        return entries + [(True, functools.partial(splice.apply, self)) for splice in self._splices]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        context.pop(self)
        self.finished = True
        if exc_type is not None:
            return False
        if self._invokes is not None:
            batch = self._invokes.finish()
            self.tokens, self.lengths = batch.tokens, batch.lengths
        try:
            result = self._owner._executor.run(self.graph, self.tokens, lambda: self._owner._probe(self.tokens),
                                               self.compile_mode)
        except CausalityError as e:
            if self._invokes is None:
                raise
            raise explain_causality(self._owner, self.graph, self._owner._probe(self.tokens).events, e) from e
        self._bind(result)
        rebind_in_frame(sys._getframe(1), {id(p): p._value for p in self._saved})
        # Proxies point at their trace; the trace lets go of them (and of the shape stand-ins) so that a
        # finished trace is freed as soon as it goes out of scope, without waiting for the cyclic GC.
        self._saved, self._abstract = [], {}
        return False

    def _apply_intervention(self, site: tuple[str, str], fn: Callable, name: str, kind: str = "interventions") -> None:
        """``fn`` applied to the value at ``site`` (``(path, phase)``, see ``ModuleIndex.resolve_site``);
        ``kind`` names the dict it came from in errors (``"edit"`` for a model's edits)."""
        from ..interventions import Intervention

        path, phase = site
        current = self.module_value(path, 0, phase)
        value = fn(current) if isinstance(fn, Intervention) else apply(fn, current)
        self.write(path, 0, phase, value, guards.intervention_origin(name, fn, kind))

    # -- invokes ------------------------------------------------------------------------------
    def invoke(self, inputs: Any, name: str | None = None) -> Invoke:
        """``with tr.invoke(prompt):``: one more prompt (or list of prompts) of this trace's batch, in a trace
        opened without inputs (``with model.trace() as tr:``). Inside its block, module values are the
        invoke's own: its rows of the batch, cut to its token width, as its prompt alone gives them.

        Args:
            inputs: what ``model.trace`` takes (a prompt, a list of prompts, token ids).
            name: a Python identifier naming the invoke (default ``invoke_0``, ``invoke_1``, ...): the prefix of
                its default save keys and the keyword that replaces its prompt in ``tr.program()``.
        """
        if self._invokes is None:
            raise InvokeError("tr.invoke(...) needs a trace opened without inputs: `with model.trace() as tr:`, "
                              "then one `with tr.invoke(prompt):` block per prompt; this trace was given its inputs "
                              "(a list of prompts there is one batch already)")
        return self._invokes.create(inputs, name)

    @property
    def invokes(self) -> list[Invoke]:
        """The invokes of this trace, in their rows' order (empty for a trace given its inputs)."""
        return [] if self._invokes is None else list(self._invokes.done)

    def recording_tokens(self, node_id: int | None = None, what: str = "a module value") -> mx.array:
        """The tokens whose probe gives the shapes of the values recorded now (of node ``node_id``'s
        invoke, in a trace with invokes; ``what`` names what asks, for the error outside any invoke)."""
        return self.tokens if self._invokes is None else self._invokes.tokens_for(node_id, what)

    # -- recording ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.finished:
            raise RuntimeError("this trace has finished; record operations inside its `with` block")

    def record(self, op: Op, target: Any, args: tuple, kwargs: dict | None = None, meta: dict | None = None) -> Proxy:
        """Append a node (proxies and constants in the arguments become references) and return its proxy."""
        if self.finished:
            self._check_open()
        src = user_source()
        numbers = _DATA_NUMBERS.get(op, ())
        args = self._lift(args, numbers, src)
        kwargs = self._lift(kwargs, numbers, src) if kwargs else {}
        key = None
        if not kwargs and op in _REF_KEYED and all(type(a) is Ref for a in args):
            # the common arithmetic node: its structural key is cheap to build here (see node_key)
            key = keys.refs_key(op, target, tuple(a.id for a in args))
        node = self.graph.add(op, target, args, kwargs, _meta(src) if meta is None else dict(meta, source=src), key)
        return Proxy(self, node.id)

    def record_call(self, fn: Callable, args: tuple, keeps_shape: bool = False, derived_from: int | None = None,
                    ) -> Proxy:
        """``fn(*args)`` recorded (as ``apply`` does). ``keeps_shape``: the value has the shape of the site it is
        written to (index checks downstream of an input it rewrites stay valid); ``derived_from``: the value is a
        new version that a write of node ``derived_from`` implies (a generation step where that write does not
        apply keeps the version before it)."""
        meta = {"keeps_shape": True} if keeps_shape else {}
        if derived_from is not None:
            meta["derived_from"] = derived_from
        return self.record(Op.CALL_FUNCTION, fn, args, None, meta or None)

    def binary(self, name: str, a: Any, b: Any) -> Proxy:
        """``a <name> b`` (an operator such as ``"add"``) with at least one operand a proxy of this trace."""
        if self.finished:
            self._check_open()
        if not (self._simple_operand(a) and self._simple_operand(b)):
            return self.record(Op.BINARY, name, (a, b))
        # The sweep-critical case (proxy op proxy/array/number) without the general lifting machinery.
        src = user_source()
        ra, rb = self._lift(a, _ARITH_NUMBERS, src), self._lift(b, _ARITH_NUMBERS, src)
        node = self.graph.add(Op.BINARY, name, (ra, rb), None, _meta(src),
                              keys.refs_key(Op.BINARY, name, (ra.id, rb.id)))
        return Proxy(self, node.id)

    def _simple_operand(self, value: Any) -> bool:
        kind = type(value)
        if kind is Proxy:
            return value._trace is self and value._value is _UNSET
        return kind is mx.array or kind is float or kind is int

    def _lift(self, value: Any, numbers: tuple, src: Any) -> Any:
        """Proxies -> refs; arrays and Python numbers of the ``numbers`` types (numpy scalars count as the
        Python numbers of their values) -> constant nodes."""
        kind = type(value)
        if kind is Proxy:
            if value._value is not _UNSET:  # a finished trace's saved value: plain data here
                return self._constant(value._value, False, src)
            if value._trace is not self:
                raise ValueError("a value from another trace was used here before that trace ran; each trace "
                                 f"records its own values ({value._describe()})")
            return Ref.of(value._node)
        if kind is mx.array:
            return self._constant(value, False, src)
        if kind is tuple:
            return tuple(self._lift(v, numbers, src) for v in value)
        if numbers and isinstance(value, (np.integer, np.floating)):  # a numpy scalar is a Python number here
            value = python_number(value)
            kind = type(value)
        if isinstance(value, numbers) and kind is not bool:
            return self._constant(value, True, src)
        if kind is slice:
            return slice(self._lift(value.start, (), src), self._lift(value.stop, (), src),
                         self._lift(value.step, (), src))
        # lists, dicts and subclasses (named tuples, OrderedDict, ...)
        if isinstance(value, mx.array):
            return self._constant(value, False, src)
        if isinstance(value, tuple):
            return tuple(self._lift(v, numbers, src) for v in value)
        if isinstance(value, list):
            return [self._lift(v, numbers, src) for v in value]
        if isinstance(value, dict):
            return {k: self._lift(v, numbers, src) for k, v in value.items()}
        return value

    def _constant(self, value: Any, weak: bool, src: Any = None) -> Ref:
        if self._invokes is not None and self._invokes.shared.active:  # one constant for every invoke's copy
            return Ref.of(self._invokes.shared.constant(value, weak, lambda: self._new_constant(value, weak, src)))
        return Ref.of(self._new_constant(value, weak, src))

    def _new_constant(self, value: Any, weak: bool, src: Any) -> int:
        return self.graph.add(Op.CONSTANT, None, (), None, {"value": value, "weak": weak, "source": src or user_source()},
                              keys.constant_key(value, weak)).id

    def param(self, name: str, default: Any) -> Proxy:
        """A named input of this trace's program (see :func:`mlxterp.param`)."""
        if self.finished:
            self._check_open()
        if self._invokes is not None and self._invokes.shared.active:  # one param for every invoke's copy
            return Proxy(self, self._invokes.shared.param(name, lambda: self._new_param(name, default)))
        return Proxy(self, self._new_param(name, default))

    def _new_param(self, name: str, default: Any) -> int:
        check_param_name(name, self._param_names)
        value, weak = param_default(name, default)
        self._param_names.add(name)
        return self.graph.add(Op.CONSTANT, None, (), None,
                              {"value": value, "weak": weak, "source": user_source(), "name": name},
                              keys.constant_key(value, weak, name)).id

    def program(self) -> "Program":
        """This trace as a :class:`~mlxterp.Program`: the optimized graph lowered once, replayable with
        new tokens and param values without recording again (see the Programs section of the README)."""
        if not self.finished:
            raise RuntimeError("tr.program() is available after the `with model.trace(...)` block has ended")
        if self._result is None:
            raise RuntimeError("this trace raised before it ran, so it has no program; fix the error and trace again")
        if self._invokes is not None:
            from .invoke_program import build_invoke_program

            return build_invoke_program(self._owner, self.graph, self.tokens, self.lengths, self._invokes.done)
        return build_program(self._owner, self.graph, self.tokens, self.lengths)

    def module_value(self, path: str, call_idx: int, phase: str) -> Proxy:
        """Proxy of a module call's current output or input (after any writes made so far); phase
        ``"resid_mid"`` reads layer ``path``'s residual between its attention and MLP halves."""
        if self.finished:
            self._check_open()
        if phase == RESID_MID:
            mid, mid_phase = self._owner._index.residual_site(path, RESID_MID)
            proxy = self.module_value(mid, call_idx, mid_phase)
            proxy._binding = (path, call_idx, phase)  # writes through it go to write_resid_mid
            return proxy
        binding = (path, call_idx, phase)
        node_id = self._versions.get(binding)
        if is_part(phase):
            if self._invokes is not None and not self._invokes.whole:  # the splice itself is recorded on the batch
                raise InvokeError(f"{phase.label} is read inside an invoke: a spliced dictionary's features, error "
                                  "and reconstruction are read and written in traces given their inputs "
                                  "(model.trace(prompts)); the dictionary itself is spliced into every invoke's rows")
            return Proxy(self, node_id, binding)
        if node_id is None:
            node_id = self.module_node(path, call_idx, phase)
        if self._invokes is not None:  # the open invoke's rows of it
            node_id = self._invokes.view(node_id, binding)
        return Proxy(self, node_id, binding)

    def module_node(self, path: str, call_idx: int, phase: str) -> int:
        """The node of a module call's value as the model computes it (before any write), made on first use."""
        op = Op.MODULE_OUTPUT if phase == "output" else Op.MODULE_INPUT
        node_id = self.graph.add(op, (path, call_idx), (), None, _meta(user_source()),
                                 keys.module_key(op, path, call_idx)).id
        self._versions[(path, call_idx, phase)] = node_id
        return node_id

    def write(self, path: str, call_idx: int, phase: str, value: Any, origin: str | None = None) -> None:
        """Replace a module call's output (or input) with ``value`` (phase ``"resid_mid"``: see
        :meth:`write_resid_mid`; ``origin``: the intervention the value came from)."""
        if self.finished:
            self._check_open()
        if phase == RESID_MID:
            self.write_resid_mid(path, call_idx, value)
            return
        if is_part(phase):
            self._write_part(path, call_idx, phase, value)
            return
        src = user_source()
        value, extra = guards.written_value(value, f"the {phase} of {path or '<model>'}", src, origin)
        target = (path, call_idx, phase)
        if self._invokes is not None:  # the batch value with the open invoke's rows written
            value, extra = self._invokes.row_write(target, value, extra, src)
        ref = self._lift(value, (int, float), src)
        if type(ref) is not Ref:
            ref = self._constant(value, isinstance(value, (int, float)), src)
        node = self.graph.add(Op.REPLACE, target, (ref,), None, _meta(src) if extra is None else dict(extra, source=src),
                              keys.replace_key(path, call_idx, phase, ref.id))
        self._versions[target] = node.id

    def write_resid_mid(self, layer_path: str, call_idx: int, value: Any) -> None:
        """Make ``value`` the residual between layer ``layer_path``'s attention and MLP halves: the MLP half's
        first module reads it, and the layer output, ``h + mlp_half(h)``, gets ``value - h`` added (equal to
        ``value + mlp_half(value)`` up to float rounding)."""
        mid, mid_phase = self._owner._index.residual_site(layer_path, RESID_MID)
        before = self.module_value(mid, call_idx, mid_phase)
        self.write(mid, call_idx, mid_phase, value)
        after = self.module_value(mid, call_idx, mid_phase)
        out = self.module_value(layer_path, call_idx, "output")
        self.write(layer_path, call_idx, "output", apply(shift_residual, out, after, before))
        self._versions[(layer_path, call_idx, RESID_MID)] = self._versions[(mid, call_idx, mid_phase)]

    def getitem(self, proxy: Proxy, index: Any) -> Proxy:
        """``proxy[index]``; integer indices are checked against the value's known shape."""
        self._check_index(proxy, index)
        return self.record(Op.GETITEM, None, (proxy, index))

    def _check_index(self, proxy: Proxy, index: Any) -> None:
        """IndexError for an integer index outside the value's known shape (see ``guards.check_index``)."""
        guards.check_index(proxy, index)

    def setitem(self, proxy: Proxy, index: Any, value: Any) -> None:
        """``proxy[index] = value``: functional update; a module's output/input is written through."""
        source_node = self.graph.node(proxy._node)
        if proxy._binding is None and source_node.op is Op.GETITEM:
            raise ValueError(
                f"cannot assign into a view at {format_source(user_source())}: "
                "`a = out[...]; a[...] = v` does not change `out`. "
                "Index the module value in one step instead, e.g. `model.layers[3].output[:, -1, :5] = v`"
            )
        where = self._binding_name(proxy._binding) if proxy._binding else None
        self._check_index(proxy, index)
        if self._invokes is not None:
            self._invokes.check_item_write(proxy, index)
        src = user_source()
        guards.check_item_value(value, f"{where or 'a traced value'}{format_index(index)}", src)
        # the assigned value is data (lifted); the index is structure
        value = self._lift(value, (int, float), src)
        new = self.record(Op.SETITEM, None, (proxy, index, value), meta={"module": where or "a traced value"})
        if proxy._binding is not None:
            path, idx, phase = proxy._binding
            self.write(path, idx, phase, new)
            proxy._node = self._versions[proxy._binding]
            if self._invokes is not None:  # the written batch value, seen through the invoke again
                proxy._node = self.module_value(path, idx, phase)._node
        else:
            proxy._node = new._node

    def save(self, proxy: Proxy, name: str | None) -> None:
        """Add a save node for ``proxy`` under ``name`` (default: ``layers.3.output`` style)."""
        if self.finished:
            self._check_open()
        key = name or self._default_key(proxy)
        base, i = key, 1
        while key in self._save_keys:
            key, i = f"{base}_{i}", i + 1
        self._save_keys.add(key)
        self.graph.add(Op.SAVE, key, (Ref.of(proxy._node),), None, _meta(user_source()),
                       keys.save_key(key, proxy._node))
        proxy._save_key = key
        self._saved.append(proxy)

    def _default_key(self, proxy: Proxy) -> str:
        if proxy._binding is not None:
            names = self._owner._save_names  # per model: the same bindings recur in every trace of a sweep
            key = names.get(proxy._binding)
            if key is None:
                path, idx, phase = proxy._binding
                if is_part(phase):
                    key = names[proxy._binding] = phase.label
                    return key
                short = self._owner._index.short(path)
                head = f"{short}.{phase}" if short else phase
                if self._owner._index.point_owner(path) is not None:  # an attention internal: no phase
                    head = short
                key = names[proxy._binding] = head if idx == 0 else f"{head}#{idx}"
            return key if self._invokes is None else self._invokes.save_key(proxy._node, key)
        node = self.graph.node(proxy._node)
        return f"{node.op.value}_{node.id}"

    # -- results -----------------------------------------------------------------------------
    @property
    def output(self) -> Any:
        """The model's output after the block (``None`` before): the logits ``(batch, seq, vocab)`` in the model's
        activation dtype (float32 for the default model; a float16 or bfloat16 model's own dtype), right-padded
        rows as ``tokens``.

        Raises:
            RuntimeError: the forward stopped early (nothing after some module was saved, written or captured),
                so no output was computed.
        """
        stop = self._result.entry.forward.stop_at if self._result is not None else None
        if self._output is None and stop is not None:
            raise RuntimeError(
                f"the model output was not computed: the forward stopped after the {stop[2]} of "
                f"{self._owner._index.short(stop[0]) or '<model>'}, since nothing later was saved, written or "
                "captured; save model.output inside the block (or trace with capture='all') to get it")
        return self._output

    def _bind(self, result: Any) -> None:
        self._result = result
        self.mode = result.mode
        self._output = result.output
        self.saved_values = dict(result.saves)
        self.activations = ActivationDict({self._owner._activation_name(k): v for k, v in result.captures.items()},
                                          self._owner._activation_key)
        for proxy in self._saved:
            proxy._value = self.saved_values[proxy._save_key]

    def get(self, name: str) -> Any:
        """A saved value by key (``"layers.3.output"``; other name forms resolve too), or ``None``."""
        if name in self.saved_values:
            return self.saved_values[name]
        point = self._owner._index._point(name)
        if point is not None:
            return self.saved_values.get(self._owner._index.short(point))
        for phase in ("output", "input"):
            if name.endswith("." + phase) or name == phase:
                module = name[: -len(phase) - 1] if name != phase else ""
                path = self._owner._index.resolve(module) if module else ""
                short = self._owner._index.short(path)
                key = f"{short}.{phase}" if short else phase
                return self.saved_values.get(key)
        return None

    def get_activation(self, name: str) -> Any:
        """A captured module output by module name (``"layers.3.attn"``, ``"model.layers.3.self_attn"``),
        or ``None`` if that module was not captured. Unknown names raise, listing the closest ones.
        Inside the block it returns a handle that becomes the array on exit."""
        if not self.finished:
            return self.pending_activation(name)
        path = self._owner._index.resolve(name)
        return self.activations.get(self._owner._activation_name(path))

    def pending_activation(self, name: str) -> Proxy:
        """Inside the block: a saved handle of module ``name``'s output (any accepted name form)."""
        self._check_open()
        path = self._owner._index.resolve(name)
        return self.module_value(path, 0, "output").save()

    @property
    def optimized_graph(self) -> Graph:
        """The graph after the passes (dead code removed, constants lifted, chains fused)."""
        if self._result is None:
            raise RuntimeError("the optimized graph exists once the trace has run (after its `with` block)")
        return self._result.entry.optimized

    def dump(self, optimized: bool = False) -> str:
        """A readable listing of the recorded graph (or the optimized one)."""
        return to_text(self.optimized_graph if optimized else self.graph)

    def to_dot(self, optimized: bool = False) -> str:
        """Graphviz DOT source of the recorded graph (or the optimized one)."""
        return to_dot(self.optimized_graph if optimized else self.graph)

    def to_json(self, optimized: bool = False) -> str:
        """JSON export of the recorded graph (or the optimized one)."""
        return to_json(self.optimized_graph if optimized else self.graph)


__all__ = ["Trace"]
