"""The intermediate representation: a closed set of ops, immutable nodes, and a graph of them.

A node is a small record ``(id, op, target, args, kwargs, meta)``. ``args`` and ``kwargs`` are nested
Python structures (tuples, lists, dicts, slices, literals) in which :class:`Ref` marks a use of another
node's value. ``meta`` holds facts that are not part of the program's structure, such as the user's
source line. Ops:

``module_output``  target ``(path, call_idx)``: what the module returned on its ``call_idx``-th call.
``module_input``   target ``(path, call_idx)``: the input of that call: its first positional argument, or
                   the first parameter of the module's ``__call__`` when the caller passed it by name.
``constant``       a value given while tracing (an ``mx.array`` or a Python number), in ``meta["value"]``;
                   ``meta["name"]`` names a program input (``mlxterp.param``).
``param``          target ``index``: a lifted constant, read from the ``params`` list at run time.
``getitem``        args ``(x, index)``: ``x[index]``.
``setitem``        args ``(x, index, value)``: a copy of ``x`` with ``x[index] = value`` (functional).
``call_function``  target ``fn``: ``fn(*args, **kwargs)``.
``call_method``    target ``name``: ``args[0].name(*args[1:], **kwargs)``.
``binary``         target an operator name (``"add"``, ``"mul"``, ...): ``op(args[0], args[1])``.
``unary``          target an operator name (``"neg"``, ``"abs"``, ...): ``op(args[0])``.
``replace``        target ``(path, call_idx, phase)`` with phase ``"output"`` or ``"input"``: a write; the
                   module's output (or input) becomes ``args[0]``. Side effect: never dropped.
``save``           target a key: ``args[0]`` is returned to the user under that key. Side effect.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

if TYPE_CHECKING:
    import networkx as nx


class Op(str, Enum):
    """The closed set of node ops (see the module docstring for each one's meaning)."""

    MODULE_OUTPUT = "module_output"
    MODULE_INPUT = "module_input"
    CONSTANT = "constant"
    PARAM = "param"
    GETITEM = "getitem"
    SETITEM = "setitem"
    CALL_FUNCTION = "call_function"
    CALL_METHOD = "call_method"
    BINARY = "binary"
    UNARY = "unary"
    REPLACE = "replace"
    SAVE = "save"


SIDE_EFFECT_OPS = frozenset({Op.REPLACE, Op.SAVE})
MODULE_OPS = frozenset({Op.MODULE_OUTPUT, Op.MODULE_INPUT})


class Ref:
    """A use of another node's value inside ``args`` / ``kwargs``."""

    __slots__ = ("id",)

    def __init__(self, node_id: int):
        self.id = node_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Ref", self.id))

    def __repr__(self) -> str:
        return f"%{self.id}"

    @staticmethod
    def of(node_id: int) -> "Ref":
        """The shared ``Ref`` to ``node_id`` (refs are immutable; recorders reuse them across graphs)."""
        if type(node_id) is not int or node_id < 0:  # not a recorder's id: no sharing
            return Ref(node_id)
        if node_id >= len(_REFS):
            _REFS.extend(Ref(i) for i in range(len(_REFS), node_id + 64))
        return _REFS[node_id]


_REFS: list[Ref] = []


class Node(NamedTuple):
    """One operation of a recorded program. Immutable (a tuple): passes build new nodes.

    ``meta["source"]`` is the user's line, as a ``"file:line"`` string or a ``(file, line)`` pair
    (recorded cheaply, formatted on demand by :attr:`source`).
    """

    id: int
    op: Op
    target: Any = None
    args: tuple = ()
    kwargs: dict = {}
    meta: dict = {}

    @property
    def source(self) -> str:
        """The user's ``file:line`` where this node was recorded, or ``"<unknown>"``."""
        src = self.meta.get("source", "<unknown>")
        return f"{src[0]}:{src[1]}" if isinstance(src, tuple) else src

    def refs(self) -> list[int]:
        """Ids of the nodes this node reads, in argument order."""
        found: list[int] = []
        map_refs((self.args, self.kwargs), lambda r: found.append(r.id) or r)
        return found

    def replace(self, **changes: Any) -> "Node":
        """A copy of this node with some fields changed."""
        return self._replace(**changes)

    def describe(self) -> str:
        """A short human-readable name: op and target."""
        return f"{self.op.value}[{target_name(self.target)}]" if self.target is not None else self.op.value

    def __eq__(self, other: object) -> bool:  # identity of records, not tuple equality (meta is not structure)
        return self is other

    def __hash__(self) -> int:
        return id(self)


def target_name(target: Any) -> str:
    """Readable form of a node target (functions by qualified name)."""
    if callable(target) and hasattr(target, "__qualname__"):
        module = getattr(target, "__module__", "") or ""
        # mx.* for MLX's own functions only (mlxterp's names start with "mlx" too)
        prefix = "mx." if module == "mlx.core" or module.startswith("mlx.core.") else (module + "." if module else "")
        return prefix + target.__qualname__
    if isinstance(target, tuple) and len(target) >= 2 and isinstance(target[0], str):
        path, idx = target[0] or "<model>", target[1]
        rest = "".join(f", {t}" for t in target[2:])
        return f"{path}" + (f"#{idx}" if idx else "") + rest
    return repr(target) if not isinstance(target, str) else target


def map_refs(value: Any, fn: Callable[[Ref], Any]) -> Any:
    """Rebuild a nested args structure, replacing every :class:`Ref` with ``fn(ref)``."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_refs(v, fn) for v in value)
    if isinstance(value, list):
        return [map_refs(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_refs(v, fn) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(map_refs(value.start, fn), map_refs(value.stop, fn), map_refs(value.step, fn))
    return value


_new_tuple = tuple.__new__


class Graph:
    """An ordered collection of nodes; insertion order is a valid topological order.

    ``captures`` names module calls whose outputs are returned as activations besides the saves:
    ``"all"`` (every module), or a tuple of ``(path, call_idx)``.
    """

    def __init__(self, nodes: list[Node] | None = None, captures: Any = ()):
        self._nodes: dict[int, Node] = {}
        self.captures = captures
        for node in nodes or []:
            self._nodes[node.id] = node
        self._next_id = max(self._nodes) + 1 if self._nodes else 0
        # Structural keys supplied by whoever built a node (see structure.node_key), by node id; a recorder
        # that already knows a node's structure saves recomputing it on every trace.
        self.known_keys: dict[int, Any] = {}

    def add(self, op: Op, target: Any = None, args: tuple = (), kwargs: dict | None = None,
            meta: dict | None = None, key: Any = None) -> Node:
        """Append a node with the next free id and return it.

        ``key``, when given, must equal what :func:`compiler.structure.node_key` computes for the node
        (recorders pass it to keep per-trace cache lookups cheap; tests check the two agree).
        """
        node_id = self._next_id
        # tuple.__new__ directly: a NamedTuple's generated __new__ is a Python-level call (this is per node)
        node = _new_tuple(Node, (node_id, op if type(op) is Op else Op(op), target,
                                 args if type(args) is tuple else tuple(args), kwargs or {}, meta or {}))
        self._nodes[node_id] = node
        self._next_id = node_id + 1
        if key is not None:
            self.known_keys[node_id] = key
        return node

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: int) -> bool:
        return node_id in self._nodes

    def node(self, node_id: int) -> Node:
        """The node with this id (KeyError naming it if absent)."""
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"graph has no node %{node_id}") from None

    @property
    def nodes(self) -> list[Node]:
        """All nodes in order."""
        return list(self._nodes.values())

    def with_captures(self, captures: Any) -> "Graph":
        """The same nodes (and recorder keys) with other captures."""
        graph = Graph(list(self._nodes.values()), captures=captures)
        graph.known_keys = dict(self.known_keys)
        return graph

    def with_nodes(self, nodes: list[Node]) -> "Graph":
        """A new graph with these nodes and the same captures (used by passes)."""
        return Graph(nodes, captures=self.captures)

    def users(self) -> dict[int, list[int]]:
        """Map from node id to the ids of nodes that read it."""
        users: dict[int, list[int]] = {n.id: [] for n in self}
        for node in self:
            for ref in node.refs():
                users.setdefault(ref, []).append(node.id)
        return users

    def to_networkx(self) -> "nx.DiGraph":
        """The data-flow graph as a ``networkx.DiGraph`` (edge ``a -> b`` when ``b`` reads ``a``)."""
        import networkx as nx  # only graph exports need it: importing mlxterp stays light

        g = nx.DiGraph()
        for node in self:
            g.add_node(node.id, op=node.op.value, target=target_name(node.target), source=node.source)
        for node in self:
            for ref in node.refs():
                g.add_edge(ref, node.id)
        return g

    def __repr__(self) -> str:
        from .export import to_text

        return to_text(self)
