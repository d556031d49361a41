"""The nodes of a model's circuit graph: senders, receivers, and which edges exist.

A **sender** writes into the residual stream: the token embedding (``embed``), each attention head through
its slice of the output projection (``layers.L.attn.heads.H``) and each MLP (``layers.L.mlp``). A
**receiver** reads the residual stream: with ``receivers="heads"`` (the default, as in the EAP papers) the
query, key and value inputs of every head separately (``layers.L.attn.heads.H.q``; keys and values per
key-value head, ``layers.L.attn.heads.G.k`` / ``.v``, as ``attn.k`` indexes them), every MLP's input
(``layers.L.mlp``) and the logits (``logits``, the final norm's input); with ``receivers="layers"`` a layer's
whole attention (``layers.L.attn``) instead of its heads' inputs.

Nodes are ordered by when they run: the embedding, then per layer its attention receivers, its heads, its
MLP receiver, its MLP; the logits last. An edge ``(sender, receiver)`` exists when the sender runs before the
receiver; the senders a receiver reads are then a prefix of the sender order (:meth:`CircuitGraph.reads`).
Groups of nodes (a layer's heads, its MLP) are the unit later kinds of nodes (dictionary features and their
error terms) will extend.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from typing import Iterable, List, Sequence, Tuple

import numpy as np

GRANULARITIES = ("heads", "layers")
Edge = Tuple[str, str]

_HEAD = re.compile(r"^layers\.(\d+)\.(?:self_)?attn\.heads\.(\d+)$")
_HEAD_INPUT = re.compile(r"^layers\.(\d+)\.(?:self_)?attn\.heads\.(\d+)\.([qkv])$")
_ATTN = re.compile(r"^layers\.(\d+)\.(?:self_)?attn$")
_MLP = re.compile(r"^layers\.(\d+)\.mlp$")


@dataclasses.dataclass(frozen=True)
class CircuitGraph:
    """The senders and receivers of a model (see the module docstring).

    Attributes:
        n_layers: transformer layers.
        n_heads: query heads per layer.
        n_kv_heads: key-value heads per layer (fewer under grouped-query attention).
        granularity: ``"heads"`` (q/k/v receivers per head) or ``"layers"`` (one attention receiver per layer).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    granularity: str = "heads"

    def __post_init__(self) -> None:
        check_granularity(self.granularity)

    def as_record(self) -> dict:
        """The graph as a saved result holds it (:meth:`from_record` inverts it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "CircuitGraph":
        """The graph of a saved record (the inverse of :meth:`as_record`)."""
        return cls(**record)

    # -- senders -----------------------------------------------------------------------------------
    @property
    def senders(self) -> List[str]:
        """Every sender name, in the order they run."""
        names = ["embed"]
        for layer in range(self.n_layers):
            names += [f"layers.{layer}.attn.heads.{h}" for h in range(self.n_heads)] + [f"layers.{layer}.mlp"]
        return names

    @property
    def n_senders(self) -> int:
        """The number of senders: the embedding, then each layer's heads and its MLP."""
        return 1 + self.n_layers * (self.n_heads + 1)

    def layer_senders(self, layer: int) -> range:
        """Indices of layer ``layer``'s senders (its heads, then its MLP)."""
        start = 1 + layer * (self.n_heads + 1)
        return range(start, start + self.n_heads + 1)

    # -- receivers ---------------------------------------------------------------------------------
    @property
    def attn_receivers(self) -> int:
        """Attention receivers per layer: ``n_heads + 2 * n_kv_heads`` (q, k, v) or 1 (``"layers"``)."""
        return self.n_heads + 2 * self.n_kv_heads if self.granularity == "heads" else 1

    def attn_receiver_names(self, layer: int) -> List[str]:
        """Layer ``layer``'s attention receivers: its heads' q inputs, k inputs, v inputs (or the layer's attn)."""
        if self.granularity == "layers":
            return [f"layers.{layer}.attn"]
        base = f"layers.{layer}.attn.heads"
        return ([f"{base}.{h}.q" for h in range(self.n_heads)] + [f"{base}.{g}.k" for g in range(self.n_kv_heads)]
                + [f"{base}.{g}.v" for g in range(self.n_kv_heads)])

    @property
    def receivers(self) -> List[str]:
        """Every receiver name, in the order they run."""
        names: List[str] = []
        for layer in range(self.n_layers):
            names += self.attn_receiver_names(layer) + [f"layers.{layer}.mlp"]
        return names + ["logits"]

    @property
    def n_receivers(self) -> int:
        """The number of receivers: each layer's attention receivers and its MLP, then the logits."""
        return self.n_layers * (self.attn_receivers + 1) + 1

    def layer_receivers(self, layer: int) -> Tuple[range, int]:
        """Indices of layer ``layer``'s attention receivers and of its MLP receiver."""
        start = layer * (self.attn_receivers + 1)
        return range(start, start + self.attn_receivers), start + self.attn_receivers

    @property
    def logits_receiver(self) -> int:
        """The index of the ``logits`` receiver (the last one)."""
        return self.n_receivers - 1

    # -- edges -------------------------------------------------------------------------------------
    def reads(self) -> np.ndarray:
        """``(n_receivers,)`` int64 numpy: receiver ``r`` reads senders ``0 .. reads()[r] - 1`` (those that run
        before it)."""
        out = np.empty(self.n_receivers, dtype=np.int64)
        for layer in range(self.n_layers):
            attn, mlp = self.layer_receivers(layer)
            before = 1 + layer * (self.n_heads + 1)
            out[attn.start:attn.stop] = before
            out[mlp] = before + self.n_heads
        out[-1] = self.n_senders
        return out

    def valid(self) -> np.ndarray:
        """``(n_receivers, n_senders)`` bool numpy array, read-only: which edges exist."""
        return _valid(self)

    @property
    def n_edges(self) -> int:
        """The number of edges: each receiver joined to every sender that runs before it."""
        return int(self.reads().sum())

    def position(self, name: str, receiver: bool = False) -> Tuple[float, float]:
        """Where node ``name`` sits in a drawing of the graph: x by head (the MLP right of the heads), y by layer
        (a layer's attention receivers just below its heads, its MLP half a layer above them, the MLP's input
        (``receiver=True``) below its output; the embedding bottom left, the logits top left, out of the heads'
        columns so that no edge to them runs along one)."""
        if name == "embed":
            return -1.0, -1.0
        if name == "logits":
            return -1.0, float(self.n_layers)
        parts = name.split(".")
        layer = int(parts[1])
        if parts[2] == "mlp":
            return float(self.n_heads + 1), layer + (0.2 if receiver else 0.5)
        if len(parts) == 3:  # a layer's whole attention (receivers="layers")
            return self.n_heads / 2, layer - 0.3
        head = int(parts[4])
        if len(parts) == 5:  # a head's output
            return float(head), float(layer)
        if parts[5] == "q":
            return head - 0.25, layer - 0.3
        # keys and values per key-value head: under the query heads that read them
        group = self.n_heads // max(1, self.n_kv_heads)
        return head * group + (group - 1) / 2 + (0.0 if parts[5] == "k" else 0.25), layer - 0.3

    def edge_index(self, edges: Iterable[Sequence[str]], arg: str = "edges") -> Tuple[np.ndarray, np.ndarray]:
        """Receiver and sender indices of ``(sender, receiver)`` name pairs, two int64 numpy arrays
        ``(len(edges),)``; a ValueError naming the first bad one (unknown name, a sender used as a receiver or
        the reverse, a sender that runs after its receiver)."""

        senders, receivers = self._lookup(self.senders), self._lookup(self.receivers)
        reads = self.reads()
        rows, cols = [], []
        for i, edge in enumerate(edges):
            if isinstance(edge, (str, bytes)) or len(edge) != 2:
                raise ValueError(f"{arg}[{i}]: expected a (sender, receiver) pair of node names, got {edge!r}")
            u = self.sender_index(edge[0], senders, f"{arg}[{i}][0]")
            r = self.receiver_index(edge[1], receivers, f"{arg}[{i}][1]")
            if u >= reads[r]:
                raise ValueError(f"{arg}[{i}]: sender {edge[0]!r} runs after (or with) receiver {edge[1]!r}, so no edge "
                                 f"joins them; a receiver reads only senders that run before it (embed, earlier "
                                 f"layers' heads and MLPs, and for an MLP its own layer's heads)")
            rows.append(r)
            cols.append(u)
        return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)

    def sender_index(self, name: str, lookup: dict, arg: str) -> int:
        """The index of sender ``name`` in ``lookup`` (canonical name -> index); a ValueError naming ``arg``."""
        key = canonical(name)
        if key in lookup:
            return lookup[key]
        raise ValueError(f"{arg}: {name!r} is not a sender of this model; {self._why(key, 'sender')}")

    def receiver_index(self, name: str, lookup: dict, arg: str) -> int:
        """The index of receiver ``name`` in ``lookup`` (canonical name -> index); a ValueError naming ``arg``."""
        key = canonical(name)
        if key in lookup:
            return lookup[key]
        raise ValueError(f"{arg}: {name!r} is not a receiver of this model; {self._why(key, 'receiver')}")

    @staticmethod
    def _lookup(names: List[str]) -> dict:
        return {name: i for i, name in enumerate(names)}

    def _why(self, name: str, role: str) -> str:
        """The reason a name is not a node of ``role``, with the valid forms."""
        m = _HEAD_INPUT.match(name)
        if m and role == "receiver" and self.granularity == "heads":
            layer, index, kind = int(m.group(1)), int(m.group(2)), m.group(3)
            limit = self.n_heads if kind == "q" else self.n_kv_heads
            if layer < self.n_layers and index >= limit:
                grouped = (f" (grouped-query attention: keys and values belong to the {self.n_kv_heads} key-value "
                           f"heads; query head {index} reads key-value head "
                           f"{index // max(1, self.n_heads // self.n_kv_heads)})"
                           if kind != "q" and index < self.n_heads else "")
                return f"layer {layer} has {limit} {kind} inputs, heads.0.{kind} to heads.{limit - 1}.{kind}{grouped}"
        if role == "receiver" and (_HEAD.match(name) or name == "embed"):
            return ("it is a sender (an output); as a receiver name an input: a head's "
                    "'layers.L.attn.heads.H.q' / '.k' / '.v', 'layers.L.mlp' or 'logits'")
        if role == "sender" and (_HEAD_INPUT.match(name) or name == "logits" or _ATTN.match(name)):
            return "it is a receiver (an input); senders are 'embed', 'layers.L.attn.heads.H' and 'layers.L.mlp'"
        if role == "receiver" and _ATTN.match(name) and self.granularity == "heads":
            return ("with receivers='heads' an attention's inputs are its heads' q, k and v "
                    "('layers.L.attn.heads.H.q'); receivers='layers' makes 'layers.L.attn' one receiver")
        if role == "receiver" and _HEAD_INPUT.match(name) and self.granularity == "layers":
            return "with receivers='layers' a layer's attention is one receiver, 'layers.L.attn'"
        names = self.senders if role == "sender" else self.receivers
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"closest: {', '.join(close)}; " if close else ""
        return (f"{hint}the model has {self.n_layers} layers of {self.n_heads} heads ({self.n_kv_heads} key-value "
                f"heads); {role}s look like {', '.join(names[:2])}, ..., {names[-1]}")


@functools.lru_cache(maxsize=8)
def _valid(graph: CircuitGraph) -> np.ndarray:
    out = np.arange(graph.n_senders)[None, :] < graph.reads()[:, None]
    out.setflags(write=False)
    return out


def check_granularity(receivers: object) -> str:
    """``receivers`` if it is one of :data:`GRANULARITIES`, else a ValueError listing them."""
    if receivers not in GRANULARITIES:
        raise ValueError(f"receivers: expected one of {GRANULARITIES} (q/k/v inputs per head, or one input per "
                         f"layer's attention), got {receivers!r}")
    return receivers  # type: ignore[return-value]


def canonical(name: str) -> str:
    """A node name in its canonical short form (``model.layers.3.self_attn.heads.1`` -> ``layers.3.attn.heads.1``)."""
    if not isinstance(name, str):
        return repr(name)
    key = name.strip()
    for prefix in ("model.model.", "model."):
        if key.startswith(prefix + "layers."):
            key = key[len(prefix):]
    return re.sub(r"^(layers\.\d+)\.self_attn\b", r"\1.attn", key)
