"""What the circuit methods need from a model, found and checked once per model.

Circuits decompose the residual stream into additive parts, so they need a family whose layer is
``h = x + attn(ln1(x)); out = h + mlp(ln2(h))`` with the token embedding as the first layer's input, the
final norm reading the last layer's output, and an attention with separate ``q_proj``, ``k_proj``,
``v_proj`` and ``o_proj`` (plain or quantized linears) whose internals the library exposes. The family's
adapter says so, and a small traced forward checks it (:func:`check_decomposition`): on a model where an
identity fails (an embedding scaled inside the model, a norm after the attention), every circuit method
refuses with the reason instead of returning numbers that do not add up.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple

import mlx.core as mx
import mlx.nn as nn

from ..analysis.programs import cached_program, keep_program
from . import ops
from .nodes import CircuitGraph

if TYPE_CHECKING:
    from ..model import InterpretableModel

_LINEARS = (nn.Linear, nn.QuantizedLinear)
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclasses.dataclass(frozen=True)
class LayerParts:
    """Canonical module paths of one layer's parts."""

    index: int
    path: str
    attn: str
    ln1: str
    ln2: str
    mlp: str
    q: str
    k: str
    v: str
    o: str


@dataclasses.dataclass(frozen=True, eq=False)
class Parts:
    """A model's circuit structure: its graph (with q/k/v receivers), layers' parts, sizes and modules.

    Attributes:
        graph: the :class:`~.nodes.CircuitGraph` with ``receivers="heads"``.
        layers: each layer's :class:`LayerParts`.
        embed: path of the token embedding.
        final_norm: path of the final norm.
        hidden: residual width.
        head_dim: width of one head.
        modules: path -> module.
    """

    graph: CircuitGraph
    layers: Tuple[LayerParts, ...]
    embed: str
    final_norm: str
    hidden: int
    head_dim: int
    modules: Dict[str, nn.Module]
    _bound: Dict[tuple, Callable] = dataclasses.field(default_factory=dict, repr=False)

    def module(self, path: str) -> nn.Module:
        return self.modules[path]

    def bind(self, fn: Callable, **modules: str) -> Callable:
        """``fn`` with keyword arguments bound to the modules at the given paths (the same object on every call).
        Modules are bound, never passed through a trace: a trace would lift their arrays into params."""
        key = (fn,) + tuple(sorted(modules.items()))
        return self._cached(key, lambda: functools.partial(fn, **{k: self.modules[p] for k, p in modules.items()}))

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        found = self._bound.get(key)
        if found is None:
            found = self._bound[key] = make()
        return found

    def graph_for(self, granularity: str) -> CircuitGraph:
        """The graph with ``receivers=granularity`` (``"heads"`` or ``"layers"``)."""
        return dataclasses.replace(self.graph, granularity=granularity)


def find_parts(model: InterpretableModel) -> Parts:
    """The model's :class:`~mlxterp.circuits.parts.Parts`, from its adapter and modules alone (no forward; cached).

    Raises:
        ValueError: the model's family is not one circuits can decompose (the reason is given).
    """
    found = cached_program(model, "circuits", "parts")
    if found is None:
        found = keep_program(model, "circuits", "parts", _find(model))
    return found


def circuit_parts(model: InterpretableModel) -> Parts:
    """:func:`find_parts`, checked once by a small forward (:func:`check_decomposition`): call it after the
    arguments are checked, right before the work."""
    found = find_parts(model)
    if cached_program(model, "circuits", "checked") is None:
        check_decomposition(model, found)
        keep_program(model, "circuits", "checked", True)
    return found


def _refuse(why: str) -> ValueError:
    return ValueError(f"circuit methods need a pre-norm transformer whose residual stream is a sum of the embedding, "
                      f"the attention heads and the MLPs; {why}")


def _find(model: InterpretableModel) -> Parts:
    index, arch = model._index, model._index.arch
    if arch is None:
        raise _refuse("this model's family has no adapter (mlxterp.adapters.registered()), so where its norms, "
                      "attention and MLP are is unknown")
    if not arch.residual.adds_outputs or None in (arch.attn, arch.mlp, arch.ln1, arch.ln2, arch.final_norm):
        raise _refuse(f"a {arch.family} layer is not h = x + attn(ln1(x)); out = h + mlp(ln2(h)) "
                      f"(residual {arch.residual}){': ' + arch.lacks if arch.lacks else ''}")
    layers = tuple(_layer(model, i) for i in range(len(index)))
    first = index.modules[layers[0].attn]
    heads, kv_heads = getattr(first, "n_heads", None), getattr(first, "n_kv_heads", None)
    if not isinstance(heads, int) or not isinstance(kv_heads, int):
        raise _refuse(f"its attention ({type(first).__name__}) does not say its head counts (n_heads, n_kv_heads)")
    out_dim = _out_features(index.modules[layers[0].q])
    hidden = _out_features(index.modules[layers[0].o])
    graph = CircuitGraph(len(layers), heads, kv_heads)
    return Parts(graph, layers, arch.embed, arch.final_norm, hidden, out_dim // heads, index.modules)


def _layer(model: InterpretableModel, i: int) -> LayerParts:
    index, arch = model._index, model._index.arch
    path = index.layer_path(i)
    attn = f"{path}.{arch.attn}"
    if attn not in index.attention:
        raise _refuse(f"layer {i}'s attention exposes no internals (attn.heads)")
    found = {}
    for name in _PROJECTIONS:
        module = index.modules.get(f"{attn}.{name}")
        if not isinstance(module, _LINEARS):
            raise _refuse(f"layer {i}'s attention ({type(index.modules[attn]).__name__}) has no separate {name} "
                          f"linear layer (its parts: {', '.join(index.children(attn))})")
        found[name] = f"{attn}.{name}"
    return LayerParts(i, path, attn, f"{path}.{arch.ln1}", f"{path}.{arch.ln2}", f"{path}.{arch.mlp}",
                      found["q_proj"], found["k_proj"], found["v_proj"], found["o_proj"])


def _out_features(linear: nn.Module) -> int:
    return int(linear.weight.shape[0])


def check_decomposition(model: InterpretableModel, parts: Parts, tol: float = 1e-3) -> None:
    """Check on a 3-token forward that the first and last layers add up as circuits assume: the embedding is
    layer 0's input, each attention norm reads the layer input, the MLP norm reads input + attention output,
    the layer output is that plus the MLP output, the heads' outputs sum to the attention output (with the
    output projection's bias), and the final norm reads the last layer's output.

    Raises:
        ValueError: naming the identity that failed and by how much.
    """
    ends = sorted({0, len(parts.layers) - 1})
    with model.trace(mx.array([[1, 2, 3]], dtype=mx.int32), capture="saved", compile=False) as tr:
        model.module(parts.embed).output.save("embed")
        for i in ends:
            lp = parts.layers[i]
            for name, path, phase in (("x", lp.path, "input"), ("ln1", lp.ln1, "input"), ("mid", lp.ln2, "input"),
                                      ("attn", lp.attn, "output"), ("mlp", lp.mlp, "output"),
                                      ("out", lp.path, "output")):
                getattr(model.module(path), phase).save(f"{name}{i}")
            model.module(lp.attn).heads.save(f"heads{i}")
        model.module(parts.final_norm).input.save("final")
    v = tr.saved_values
    _compare("the embedding output", "layer 0's input", v["embed"], v["x0"], tol)
    for i in ends:
        o_proj = parts.module(parts.layers[i].o)
        summed = ops.head_outputs(v[f"heads{i}"], o_proj=o_proj).sum(axis=0) + (o_proj.bias if "bias" in o_proj else 0)
        x, mid, where = v[f"x{i}"], v[f"mid{i}"], f"layer {i}"
        _compare(f"{where}'s attention norm input", f"{where}'s input", v[f"ln1{i}"], x, tol)
        _compare(f"{where}'s MLP norm input", f"{where}'s input + attention output", mid, x + v[f"attn{i}"], tol)
        _compare(f"{where}'s output", "its MLP norm input + MLP output", v[f"out{i}"], mid + v[f"mlp{i}"], tol)
        _compare(f"{where}'s attention output", "the sum of its heads' outputs (+ o_proj bias)", v[f"attn{i}"],
                 summed, tol)
    _compare("the final norm's input", "the last layer's output", v["final"], v[f"out{ends[-1]}"], tol)


def _compare(what: str, expected: str, a: mx.array, b: mx.array, tol: float) -> None:
    a, b = a.astype(mx.float32), b.astype(mx.float32)
    scale = max(float(mx.abs(b).max().item()), 1e-6)
    err = float(mx.abs(a - b).max().item()) / scale
    if err > tol:
        raise _refuse(f"on this model {what} is not {expected} (relative difference {err:.2g}), so contributions "
                      "would not add up")
