"""Invokes: several prompts in one trace, run as one right-padded batch.

``with model.trace() as tr:`` opened without inputs takes its prompts from ``with tr.invoke(prompt):``
blocks. Every invoke owns rows of one batch (its prompts, in the order the invokes were opened), and
inside its block a module's value is the invoke's **view**: its rows of the batch value, cut to its own
token width (``value[r0:r0 + n, :width]``, and likewise on every axis that grows with the sequence, such
as both axes of an attention pattern). Shapes, indices (``[:, -1]`` is its last token) and ``proxy.shape``
are what the prompt alone gives; right padding after a token cannot change it under causal attention, so
the values are too.

The graph stays one graph of batch values: a view is a ``getitem`` node of the batch value, and a write
inside an invoke is a functional ``setitem`` of the invoke's rows into the batch value, which becomes the
module's new value (a ``replace``). Reads of other invokes' values are ordinary data dependences, so the
scheduler orders them; a write that needs a value the forward computes only later (invoke B writes layer 5
from invoke A's layer 20) cannot run in one forward and is refused, naming both lines
(:func:`explain_causality`).

The model's edits and the trace's ``interventions=`` are recorded as each invoke begins, on its view (each
invoke's copy sharing their constants: :class:`SharedConstants`), so an edit's ``[:, -1]``, a function of
the activation's shape and index checks see the invoke's own prompt, as in a trace of its own.

Which axes are cut is read off the model itself: the probe of the invoke's tokens and of tokens one
column wider (or narrower) differ exactly on the axes that follow the sequence.
"""

from __future__ import annotations

import keyword
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Optional

import mlx.core as mx

from mlxterp.compiler import CausalityError, ModuleNotCalledError, Op, Ref, ShapeMismatchError
from mlxterp.compiler.semantics import format_index

from ..inputs import TokenBatch, pad_rows
from . import context
from .source import format_source, user_source

from .proxy import Proxy

if TYPE_CHECKING:
    from .trace import Trace

RESERVED = ("tokens", "distributed")  # keywords of a program's call that name no invoke


class InvokeError(RuntimeError):
    """An invoke used where it cannot be: outside its trace's block, nested, on a trace given inputs, or a
    module read or written outside any invoke of a trace that has them."""


# -- views -------------------------------------------------------------------------------------------


# The width of the zero tokens whose probe is compared with an invoke's (see ``view_index``), by shape.
_OTHER: dict[tuple, mx.array] = {}
# Per model: the axes each (module tree, tokens shape, event) cuts, so that traces of a sweep (new invokes of
# known shapes) look them up instead of comparing probes again. Weak: a model's entries go with it.
_CUTS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def other_width(tokens: mx.array) -> mx.array:
    """Tokens of the same rows one column narrower (or wider, for one column): their probe differs from
    ``tokens``' exactly on the axes that follow the sequence (only their shape matters to a probe)."""
    rows, width = tokens.shape
    shape = (rows, width - 1 if width > 1 else 2)
    found = _OTHER.get(shape)
    if found is None:
        found = _OTHER[shape] = mx.zeros(shape, dtype=mx.int32)
        if len(_OTHER) > 256:
            _OTHER.clear()
    return found


def view_index(owner: Any, tokens: mx.array, first_row: int, event: tuple) -> tuple:
    """The index of the view of ``tokens``' rows (rows ``first_row..`` of a batch) in the batch value at
    ``event`` (``(path, call, phase)``): its rows, and ``:n`` on each axis of length ``n`` for these tokens
    that follows the sequence.

    Raises:
        ModuleNotCalledError: the forward never reaches ``event``.
        InvokeError: the value there is not an array with the batch as its first axis.
    """
    cache = _CUTS.setdefault(owner, {})
    key = (owner._executor.tree_version, tuple(tokens.shape), event)
    cuts = cache.get(key)
    if cuts is None:
        if len(cache) > 4096:
            cache.clear()
        cuts = cache[key] = _cuts(owner, tokens, event)
    return (slice(first_row, first_row + tokens.shape[0]),) + cuts


def _cuts(owner: Any, tokens: mx.array, event: tuple) -> tuple:
    """The index of the axes after the batch axis (see :func:`view_index`), trailing full slices dropped."""
    rows = tokens.shape[0]
    own = owner._probe(tokens).values.get(event)
    alt = owner._probe(other_width(tokens)).values.get(event)
    name = f"the {event[2]} of {owner._index.short(event[0]) or '<model>'}{_call(event)}"
    if own is None:
        raise ModuleNotCalledError(f"{name} is never reached by this model's forward; read a module the forward "
                                   "calls")
    if not (isinstance(own, tuple) and isinstance(alt, tuple) and len(own[0]) == len(alt[0]) and own[0]
            and own[0][0] == rows == alt[0][0]):
        held = own if not isinstance(own, tuple) else f"an array of shape {own[0]}"
        raise InvokeError(f"{name} is {held} for {rows} prompt row(s) of {tokens.shape[1]} tokens: an invoke reads "
                          "and writes arrays with one row per prompt first (batch, ...), and this value is not one; "
                          "read it in a trace given its inputs (model.trace(prompt))")
    parts = [slice(None) if n == m else slice(0, n) for n, m in zip(own[0][1:], alt[0][1:])]
    while parts and parts[-1] == slice(None):
        parts.pop()
    return tuple(parts)


def _call(event: tuple) -> str:
    return f" (call {event[1]})" if event[1] else ""


# -- the invokes of one trace ------------------------------------------------------------------------


class Invoke:
    """One ``with tr.invoke(prompt):`` block: its prompt(s), its rows of the trace's batch, its name.

    Attributes:
        name: the invoke's name: its save keys' prefix (``"clean.layers.3.output"``) and the keyword that
            replaces its prompt in the trace's program (``prog(clean="...")``).
        tokens: its own token ids ``(rows, width)`` (right-padded if it holds several prompts).
        lengths: each of its prompts' real length.
        row: its first row in the trace's batch (set when its block opens).
    """

    def __init__(self, invokes: "Invokes", batch: TokenBatch, name: str):
        self._invokes = invokes
        self.name = name
        self.tokens: mx.array = batch.tokens
        self.lengths: tuple[int, ...] = batch.lengths
        self.row: Optional[int] = None
        self.views: dict[int, int] = {}  # batch value node -> this invoke's view node
        self.indices: dict[tuple, tuple] = {}  # event -> the index of this invoke's view there

    @property
    def rows(self) -> slice:
        """Its rows of the trace's batch."""
        if self.row is None:
            raise InvokeError(f"invoke {self.name!r} has no rows: its `with` block never opened")
        return slice(self.row, self.row + self.tokens.shape[0])

    @property
    def output(self) -> Any:
        """After the trace: the model's output for this invoke, its rows cut to its width
        (``(rows, width, vocab)`` for a language model), what its prompt alone gives."""
        trace = self._invokes.trace
        if not trace.finished or trace._result is None:
            raise InvokeError(f"invoke {self.name!r}'s output exists once the trace's block has ended and run; "
                              "inside the block read model.output")
        return trace.output[self.rows, : self.tokens.shape[1]]

    def __enter__(self) -> "Invoke":
        self._invokes.enter(self)
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._invokes.exit(self)
        return False

    def __repr__(self) -> str:
        rows = f"rows {self.rows.start}..{self.rows.stop - 1}" if self.row is not None else "not opened"
        return f"Invoke({self.name!r}, tokens {tuple(self.tokens.shape)}, {rows})"


class SharedConstants:
    """What every invoke's copy of the edits and ``interventions=`` records once.

    In a trace with invokes, the model's edits and the trace's ``interventions=`` are recorded as each invoke
    begins, on its view (``with shared: trace.begin()``). Their constants (an edit's vector, the ``0.5`` of
    ``iv.scale(0.5)``) and named params are the same in every copy, so each is one constant of the trace and
    the trace's program has the params a trace without invokes has (``prog(const_0=v)`` or an edit's
    ``prog(alpha=a)`` sets it for every invoke). A later copy reuses the first copy's constant where it
    records the very same object at the same place (a function that makes a new array on every call gets a
    constant per invoke); a named param is one param by its name.
    """

    def __init__(self) -> None:
        self.active = False  # an invoke's copy is being recorded
        self._first: list[tuple] = []  # ((id, weak), value, node id) of the first copy's constants, in order
        self._sealed = False  # the first copy is recorded
        self._count = 0  # constants recorded so far by the current copy
        self._params: dict[str, int] = {}

    def __enter__(self) -> "SharedConstants":
        self.active, self._count = True, 0
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.active, self._sealed = False, True
        return False

    def constant(self, value: Any, weak: bool, make: Any) -> int:
        """The node of constant ``value`` in the current copy: the first copy's at this place if it is the same
        object, else ``make()``'s new one."""
        k, self._count = self._count, self._count + 1
        key = (id(value), weak)
        if k < len(self._first) and self._first[k][0] == key:
            return self._first[k][2]
        node_id = make()
        if not self._sealed:
            self._first.append((key, value, node_id))  # the value is kept: its id names no other object
        return node_id

    def param(self, name: str, make: Any) -> int:
        """The node of named param ``name``: made by the first copy that declares it."""
        found = self._params.get(name)
        if found is None:
            found = self._params[name] = make()
        return found


class Invokes:
    """The invokes of a trace opened without inputs: which one is open, each one's views of module values
    and writes into its rows, and the batch they make when the block ends."""

    def __init__(self, trace: "Trace"):
        self.trace = trace
        self.done: list[Invoke] = []  # in the order their blocks opened: their rows' order
        self.current: Optional[Invoke] = None
        self.whole = False  # position-wise edits and interventions= recorded once on the whole batch
        self.shared = SharedConstants()  # what each invoke's copy of the edits and interventions= records once

    # -- opening and closing -----------------------------------------------------------------------
    def create(self, inputs: Any, name: Optional[str]) -> Invoke:
        """``tr.invoke(inputs, name=...)``: checked where the user wrote it, tokenized now."""
        trace = self.trace
        if trace.finished or not context.is_open(trace):
            raise InvokeError("tr.invoke(...) opens a block inside its trace's block: `with model.trace() as tr:` "
                              "then `with tr.invoke(prompt):` inside it; this trace's block is not open "
                              f"({'it has ended' if trace.finished else 'it was never entered'})")
        if self.current is not None:
            raise InvokeError(f"invokes do not nest: tr.invoke(...) at {format_source(user_source())} is inside "
                              f"invoke {self.current.name!r}; close it first (each invoke is its own `with` block "
                              "at the trace's level)")
        name = self._check_name(f"invoke_{len(self.done)}" if name is None else name)
        return Invoke(self, trace._owner._batch(inputs), name)

    def _check_name(self, name: Any) -> str:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED:
            raise ValueError(f"invoke name {name!r} is not valid: use a Python identifier other than 'tokens' and "
                             "'distributed' (it becomes a keyword of the trace's program: prog(clean='...'))")
        taken = {inv.name for inv in self.done}
        if name in taken or name in self.trace._param_names:
            kind = "an invoke" if name in taken else "a param"
            raise ValueError(f"invoke name {name!r} is already used by {kind} of this trace; give each invoke its "
                             f"own name (invokes so far: {', '.join(sorted(taken)) or 'none'})")
        return name

    def enter(self, invoke: Invoke) -> None:
        if invoke.row is not None:
            raise InvokeError(f"invoke {invoke.name!r} was already opened; each tr.invoke(...) opens one block")
        if self.trace.finished or not context.is_open(self.trace):
            raise InvokeError("an invoke's block opens inside its trace's block (`with model.trace() as tr:`)")
        if self.current is not None:
            raise InvokeError(f"invokes do not nest: invoke {invoke.name!r} opened inside {self.current.name!r}")
        invoke.name = self._check_name(invoke.name)
        invoke.row = sum(inv.tokens.shape[0] for inv in self.done)
        self.done.append(invoke)
        self.trace._param_names.add(invoke.name)  # a program's keywords: no param may take the name
        self.current = invoke
        try:
            self._begin(first=len(self.done) == 1)
        except BaseException:
            self.current = None
            raise

    def _begin(self, first: bool) -> None:
        """The model's edits and the trace's ``interventions=`` as the open invoke begins, on its view. Those
        that come first and compute each position from that position alone give every row what its prompt
        alone gives when applied to the whole batch: they are recorded once, on the batch value, as the first
        invoke begins (K row writes of one value cost K copies of it); the others on each invoke's view, every
        copy sharing their constants (:class:`SharedConstants`)."""
        entries = self.trace.beginning()
        lead = next((k for k, (positionwise, _) in enumerate(entries) if not positionwise), len(entries))
        if self.trace._splices and lead < len(entries):
            # Splices are recorded once on the batch (their parts are read on it, not per invoke), after every
            # edit and intervention: one recorded per invoke before them would come after the splice.
            raise InvokeError("dictionaries= with invokes needs every model edit and interventions= entry to compute "
                              "each position from that position alone; one does not: splice in a trace without "
                              "invokes (one prompt or a padded batch), or drop that edit or intervention")
        if first and lead:
            self.whole = True  # shapes stand in as the first invoke's: only axes after the tokens' are read
            try:
                for _, record in entries[:lead]:
                    record()
            finally:
                self.whole = False
        with self.shared:
            for _, record in entries[lead:]:
                record()

    def exit(self, invoke: Invoke) -> None:
        if self.current is invoke:
            self.current = None

    def finish(self) -> TokenBatch:
        """The batch of every invoke's prompts, in order (right-padded), when the trace's block ends.

        Raises:
            ValueError: the block opened no invoke (and the trace was given no inputs).
        """
        if not self.done:
            raise ValueError("this trace was given no inputs and its block opened no invoke: give the trace its "
                             "inputs (model.trace(prompt)) or open `with tr.invoke(prompt):` blocks inside it")
        rows = [row[:n] for inv in self.done for row, n in zip(inv.tokens.tolist(), inv.lengths)]
        return pad_rows(rows, self.trace._owner._pad_id())

    # -- values --------------------------------------------------------------------------------------
    def open_invoke(self, what: str) -> Invoke:
        """The open invoke."""
        if self.current is None:
            raise InvokeError(f"{what} is read or written outside any invoke of a trace that has invokes; do it "
                              "inside a `with tr.invoke(prompt):` block, where it is that invoke's value (values "
                              "read in invokes may be combined anywhere in the trace's block)")
        return self.current

    def index(self, invoke: Invoke, event: tuple) -> tuple:
        found = invoke.indices.get(event)
        if found is None:
            found = invoke.indices[event] = view_index(self.trace._owner, invoke.tokens, invoke.row, event)
        return found

    def view(self, node_id: int, event: tuple) -> int:
        """The open invoke's view of batch value ``node_id`` (module value ``event``, after its writes so
        far); the batch value itself while the whole batch is recorded (see :meth:`_begin`)."""
        invoke = self.open_invoke(self._describe(event))
        if self.whole:
            return node_id
        found = invoke.views.get(node_id)
        if found is None:
            meta = {"source": user_source(), "invoke": invoke.name, "event": event, "view": True}
            index = self.index(invoke, event)
            found = invoke.views[node_id] = self.trace.graph.add(Op.GETITEM, None, (Ref.of(node_id), index),
                                                                 None, meta).id
        return found

    def row_write(self, event: tuple, value: Any, extra: Optional[dict], src: Any) -> tuple[Any, Optional[dict]]:
        """A write of ``value`` to module value ``event`` in the open invoke: the batch value with the
        invoke's rows replaced (a ``setitem`` node), and the write's meta. Unchanged while the whole batch is
        recorded (see :meth:`_begin`)."""
        invoke = self.open_invoke(self._describe(event))
        if self.whole:
            return value, extra
        trace = self.trace
        where = self._describe(event)
        if isinstance(value, tuple):
            raise InvokeError(f"an invoke writes arrays into its rows; {where} was given a tuple at "
                              f"{format_source(src)}")
        index = self.index(invoke, event)
        self._check_shape(invoke, event, value, where, src)
        full = trace._versions.get(event)
        if full is None:
            full = trace.module_node(*event)
        ref = trace._lift(value, (int, float), src)
        meta = {"source": src, "module": where, "invoke": invoke.name, "event": event}
        node = trace.graph.add(Op.SETITEM, None, (Ref.of(full), index, ref), None, meta)
        return Proxy(trace, node.id), None

    def _check_shape(self, invoke: Invoke, event: tuple, value: Any, where: str, src: Any) -> None:
        """A value that cannot fill the invoke's view is refused where it was written."""
        from .guards import known_shape

        shape = tuple(value.shape) if isinstance(value, mx.array) else (
            known_shape(value) if isinstance(value, Proxy) else None)
        if shape is None:
            return
        spec = self.trace._owner._probe(invoke.tokens).values[event]
        try:
            fits = mx.broadcast_shapes(shape, spec[0]) == tuple(spec[0])
        except ValueError:
            fits = False
        if not fits:
            raise ShapeMismatchError(
                f"shape mismatch writing {where} in invoke {invoke.name!r}: the invoke's value has shape "
                f"{tuple(spec[0])} (its {invoke.tokens.shape[0]} row(s) x {invoke.tokens.shape[1]} tokens), the "
                f"value has shape {shape}; traced at {format_source(src)}. An invoke writes its own rows only")

    def check_item_write(self, proxy: Proxy, index: Any) -> None:
        """``proxy[index] = value`` on a module value writes the open invoke's rows: refused for another
        invoke's value (its rows are not the open invoke's) and for an index selecting none of its rows (an
        integer row out of range is an IndexError of the index check)."""
        node = self.trace.graph.node(proxy._node)
        if not node.meta.get("view"):
            return
        where, owner = self._describe(node.meta["event"]), node.meta["invoke"]
        invoke = self.open_invoke(where)
        if invoke.name != owner:
            raise InvokeError(f"{where} of invoke {owner!r} is written inside invoke {invoke.name!r} at "
                              f"{format_source(user_source())}: an invoke writes its own rows only; write "
                              f"{where} inside invoke {owner!r}, or write this invoke's own value with it")
        first = index[0] if type(index) is tuple and index else index
        if type(first) is slice:
            rows = self.trace.abstract(proxy._node).shape[0]
            if len(range(*first.indices(rows))) == 0:
                raise IndexError(f"index {format_index(index)} selects no row of {where} in invoke {owner!r}, which "
                                 f"has {rows} row(s): an invoke writes its own rows only; traced at "
                                 f"{format_source(user_source())}")

    def abstract(self, node: Any) -> mx.array:
        """A stand-in with the shape and dtype of a view (what the invoke's prompt alone gives)."""
        invoke = self.by_name(node.meta["invoke"])
        spec = self.trace._owner._probe(invoke.tokens).values[node.meta["event"]]
        return mx.zeros(spec[0], spec[1])

    def tokens_for(self, node_id: Optional[int], what: str) -> mx.array:
        """The tokens whose probe gives the shapes of node ``node_id`` (a view: its invoke's) or, for any
        other node, of the open invoke's values (``what``: what asks, for the error outside invokes)."""
        if node_id is not None:
            name = self.trace.graph.node(node_id).meta.get("invoke")
            if name is not None:
                return self.by_name(name).tokens
        return self.open_invoke(what).tokens

    def by_name(self, name: str) -> Invoke:
        return next(inv for inv in self.done if inv.name == name)

    def save_key(self, node_id: int, key: str) -> str:
        """A default save key, prefixed with the name of the invoke whose value it is."""
        name = self.trace.graph.node(node_id).meta.get("invoke")
        return key if name is None else f"{name}.{key}"

    def _describe(self, event: tuple) -> str:
        path, idx, phase = event
        return f"the {phase} of {self.trace._owner._index.short(path) or '<model>'}{_call(event)}"


# -- explaining what one forward cannot do -----------------------------------------------------------


def explain_causality(owner: Any, graph: Any, events: Iterable[tuple], error: CausalityError) -> CausalityError:
    """The scheduler's :class:`CausalityError` for a trace with invokes, restated when the late value is
    another invoke's: every invoke runs in the same forward, so a write can read another invoke's value only
    from a module the forward computes before (or at) the one written."""
    rank = {e: i for i, e in enumerate(events)}

    def site(event: tuple) -> str:
        return f"the {event[2]} of {module(event)}"

    def module(event: tuple) -> str:
        return f"{owner._index.short(event[0]) or '<model>'}{_call(event)}"

    for node in graph:
        if node.op is not Op.SETITEM or node.meta.get("invoke") is None or "view" in node.meta:
            continue
        written = node.meta["event"]
        for read in _views_read(graph, node.args[2]):
            if read.meta["invoke"] != node.meta["invoke"] and rank.get(read.meta["event"], -1) > rank.get(written, -1):
                late = read.meta["event"]
                return CausalityError(
                    f"invoke {node.meta['invoke']!r} writes {site(written)} (traced at {node.source}) from "
                    f"{site(late)} in invoke {read.meta['invoke']!r} (read at {read.source}), which the model "
                    f"computes later: all invokes run as one batched forward, in which {module(late)} runs after "
                    f"{module(written)} for every row. Run invoke {read.meta['invoke']!r} in a trace of its own "
                    "first and pass its value in (a saved array, or a program's param)")
    return error


def _views_read(graph: Any, ref: Any) -> list:
    """The view nodes a value is computed from (not looking past them)."""
    found, stack, seen = [], [r.id for r in _refs(ref)], set()
    while stack:
        node = graph.node(stack.pop())
        if node.id in seen:
            continue
        seen.add(node.id)
        if node.meta.get("view"):
            found.append(node)
        else:
            stack.extend(node.refs())
    return found


def _refs(value: Any) -> list:
    from mlxterp.compiler.ir import map_refs

    found: list = []
    map_refs(value, lambda r: found.append(r) or r)
    return found
