"""Exact edge patching: every chosen edge of a circuit in one forward, ``K`` circuits as ``K`` row blocks of
one batched forward.

Receiver ``r``'s input is the residual stream ``x_r = sum_u z_u (+ biases)`` of the senders before it. An
edge ``(u, r)`` *ablated* carries the sender's ablated value ``z_u'`` (its output in the corrupted run, or
its mean over the corrupted prompts) instead of ``z_u``, its output in the same run:

- patching edges ``P`` (:func:`edge_patching`): ``r`` reads ``x_r + sum_{u in P(r)} (z_u' - z_u)``;
- a circuit ``C`` (every other edge ablated; :func:`evaluate_circuit`): ``r`` reads
  ``x_r' + sum_{u in C(r)} (z_u - z_u')``, where ``x_r'`` is its ablated input (the same sum with every
  sender ablated). Both are the same rule; the second form costs work only for the circuit's edges.

``z_u`` is always the sender's output in the patched run itself, so an ablated edge upstream changes what
later senders send. Receivers without edges in any row read ``x_r`` (patching) or ``x_r'`` (circuits); a
layer's attention then runs as usual on that input. A head whose q, k or v input has edges gets its own input:
its slice of the projection is recomputed from ``ln1`` of that input (:func:`.patch_ops.splice_projection`),
the other heads keep the model's projection. The corrupted (source) prompts run as the first rows of the same
forward, so their senders' outputs and residuals are at hand, layer by layer, when the variants' receivers
need them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..analysis.metrics import Metric
from ..analysis.programs import run_program
from ..tracing.proxy import apply
from . import ops, patch_ops
from .nodes import CircuitGraph
from .parts import Parts

if TYPE_CHECKING:
    from ..model import InterpretableModel


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row block of a patched forward: ``mask`` ``(n_receivers, n_senders)`` bool edges, kept (a circuit)
    or patched."""

    mask: np.ndarray
    kept: bool


@dataclasses.dataclass(frozen=True)
class _Site:
    kind: str  # "attn", "mlp" or "logits"
    layer: int
    receivers: range


@dataclasses.dataclass(frozen=True)
class _SitePlan:
    """A site's edges, per variant: the receivers (local indices) with edges, the senders they read and the
    weights between them; ``offsets[k]`` is where variant ``k``'s receivers start in the packed inputs."""

    receivers: Tuple[Tuple[int, ...], ...]
    picks: Tuple[Tuple[Tuple[int, int], ...], ...]
    weights: Tuple[np.ndarray, ...]
    offsets: Tuple[int, ...]

    @property
    def empty(self) -> bool:
        return not any(self.receivers)


def _sites(graph: CircuitGraph) -> List[_Site]:
    out = []
    for layer in range(graph.n_layers):
        attn, mlp = graph.layer_receivers(layer)
        out += [_Site("attn", layer, attn), _Site("mlp", layer, range(mlp, mlp + 1))]
    return out + [_Site("logits", graph.n_layers, range(graph.logits_receiver, graph.logits_receiver + 1))]


def _block(graph: CircuitGraph, sender: int) -> Tuple[int, int]:
    """``(block, index)`` of a sender: block 0 the embedding, ``1 + 2L`` layer L's heads, ``2 + 2L`` its MLP."""
    if sender == 0:
        return 0, 0
    layer, local = divmod(sender - 1, graph.n_heads + 1)
    return (1 + 2 * layer, local) if local < graph.n_heads else (2 + 2 * layer, 0)


def _plan(graph: CircuitGraph, site: _Site, variants: Sequence[Variant]) -> _SitePlan:
    receivers, picks, weights, offsets, at = [], [], [], [], 0
    for v in variants:
        mask = v.mask[site.receivers.start:site.receivers.stop]
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        receivers.append(tuple(int(r) for r in rows))
        picks.append(tuple(_block(graph, int(u)) for u in cols))
        weights.append(mask[rows][:, cols].astype(np.float32) * (1.0 if v.kept else -1.0))
        offsets.append(at)
        at += len(rows)
    return _SitePlan(tuple(receivers), tuple(picks), tuple(weights), tuple(offsets))


def record_patch(model: InterpretableModel, parts: Parts, graph: CircuitGraph, variants: Sequence[Variant],
                 layout: patch_ops.Layout) -> None:
    """Inside a trace on the layout's rows: rewrite every receiver's input (see the module docstring) and save
    the last position's logits (``logits``)."""
    plans = {(s.kind, s.layer): _plan(graph, s, variants) for s in _sites(graph)}
    needed: Dict[int, set] = {}
    for plan in plans.values():
        for chosen in plan.picks:
            for b, i in chosen:
                needed.setdefault(b, set()).add(i)
    # A block holds only the senders some edge reads (a layer's heads: those heads alone).
    which = {b: tuple(sorted(indices)) for b, indices in needed.items()}
    plans = {key: _renumber(plan, which) for key, plan in plans.items()}
    blocks: Dict[int, Any] = {}
    if 0 in needed:
        blocks[0] = apply(_lead, model.module(parts.embed).output)
    for lp in parts.layers:
        _attention_site(model, parts, graph, lp, plans[("attn", lp.index)], blocks, layout)
        if 1 + 2 * lp.index in needed:
            blocks[1 + 2 * lp.index] = apply(parts.bind(ops.head_outputs, o_proj=lp.o), model.module(lp.attn).heads,
                                             which[1 + 2 * lp.index])
        ln2 = model.module(lp.ln2)
        x = ln2.input
        new = _site_input(x, plans[("mlp", lp.index)], blocks, layout, last=False)
        if new is not x:
            ln2.input = new
        if 2 + 2 * lp.index in needed:
            blocks[2 + 2 * lp.index] = apply(_lead, model.module(lp.mlp).output)
    final = model.module(parts.final_norm)
    last = apply(ops.take_last, final.input)
    final.input = _site_input(last, plans[("logits", graph.n_layers)], blocks, layout, last=True)
    model.output[:, -1].save("logits")


def _renumber(plan: _SitePlan, which: Dict[int, Tuple[int, ...]]) -> _SitePlan:
    """``plan`` with each sender's index taken within its block's computed senders (``which``)."""
    picks = tuple(tuple((b, which[b].index(i)) for b, i in chosen) for chosen in plan.picks)
    return dataclasses.replace(plan, picks=picks)


def _lead(x: mx.array) -> mx.array:
    """``x[None]``: one sender as a block of one."""
    return x[None]


def _base(x: Any, layout: patch_ops.Layout) -> Any:
    return apply(patch_ops.base_rows, x, layout=layout) if any(layout.kept) else x


def _packed(base: Any, plan: _SitePlan, blocks: Dict[int, Any], layout: patch_ops.Layout, last: bool) -> Any:
    order = sorted({b for chosen in plan.picks for b, _ in chosen})
    picks = tuple(tuple((order.index(b), i) for b, i in chosen) for chosen in plan.picks)
    weights = tuple(mx.array(w) for w in plan.weights)
    return apply(patch_ops.packed_inputs, base, weights, *[blocks[b] for b in order], layout=layout, picks=picks,
                 last=last)


def _site_input(x: Any, plan: _SitePlan, blocks: Dict[int, Any], layout: patch_ops.Layout, last: bool) -> Any:
    """The input of a one-receiver site (an MLP, the logits, a layer's whole attention)."""
    base = _base(x, layout)
    if plan.empty:
        return base
    where = tuple(off if rs else -1 for off, rs in zip(plan.offsets, plan.receivers))
    return apply(patch_ops.replace_rows, base, _packed(base, plan, blocks, layout, last), layout, where)


def _attention_site(model: InterpretableModel, parts: Parts, graph: CircuitGraph, lp: Any, plan: _SitePlan,
                    blocks: Dict[int, Any], layout: patch_ops.Layout) -> None:
    """Rewrite layer ``lp``'s attention input: every head reads the base input, and each head projection with
    edges its own input."""
    ln1 = model.module(lp.ln1)
    if graph.granularity == "layers":
        x = ln1.input
        new = _site_input(x, plan, blocks, layout, last=False)
        if new is not x:
            ln1.input = new
        return
    x = ln1.input
    base = _base(x, layout)
    if base is not x:
        ln1.input = base
    if plan.empty:
        return
    packed = _packed(base, plan, blocks, layout, last=False)
    h, g = graph.n_heads, graph.n_kv_heads
    for path, lo, n in ((lp.q, 0, h), (lp.k, h, g), (lp.v, h + g, g)):
        entries = tuple(tuple((off + i, r - lo) for i, r in enumerate(rs) if lo <= r < lo + n)
                        for off, rs in zip(plan.offsets, plan.receivers))
        if any(entries):
            proj = model.module(path)
            fn = parts.bind(patch_ops.splice_projection, norm=lp.ln1, linear=path)
            proj.output = apply(fn, proj.output, packed, layout, entries, n)


def _digest(variants: Sequence[Variant]) -> str:
    """A key of the variants' edges (their masks and kinds)."""
    h = hashlib.sha1()
    for v in variants:
        h.update(np.packbits(v.mask).tobytes() + (b"k" if v.kept else b"p"))
    return h.hexdigest()


def run_variants(model: InterpretableModel, parts: Parts, graph: CircuitGraph, clean: mx.array, source: mx.array,
                 variants: Sequence[Variant], metric: Metric, mean: bool) -> Tuple[np.ndarray, float, mx.array]:
    """One forward of the source rows and every variant's copy of the clean rows.

    Returns:
        The metric of each variant (mean over its rows), the metric of the source rows (NaN unless they are as
        many as the clean rows: a metric may read one target per clean prompt), and each variant's last-position
        logits ``(variants, batch, vocab)``.
    """
    layout = patch_ops.Layout(int(source.shape[0]), int(clean.shape[0]), tuple(v.kept for v in variants), mean)
    tokens = mx.concatenate([source] + [clean] * len(variants), axis=0)
    # The same edges on new prompts of the same shape replay the recorded program (no recording).
    key = (tuple(tokens.shape), layout, graph, _digest(variants))
    logits = run_program(model, "circuits.patch", key, tokens, {},
                         lambda _: record_patch(model, parts, graph, variants, layout))["logits"]
    rest = logits[layout.sources:].reshape(len(variants), layout.batch, -1)
    values = np.array([float(metric.score(rest[k]).mean()) for k in range(len(variants))])
    same = layout.sources == layout.batch
    source = float(metric.score(logits[:layout.sources]).mean()) if same else float("nan")
    return values, source, rest
