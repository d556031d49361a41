"""Exact edge patching: every chosen edge of a circuit in one forward, ``K`` circuits as ``K`` row blocks of
one batched forward.

Receiver ``r``'s input is the residual stream ``x_r = sum_u z_u (+ biases)`` of the senders before it. An
edge ``(u, r)`` *ablated* carries the sender's ablated value ``z_u'`` (its output in the corrupted run, or
its mean over the corrupted prompts) instead of ``z_u``, its output in the same run:

- patching edges ``P`` (:meth:`~InterpretableModel.edge_patching`): ``r`` reads
  ``x_r + sum_{u in P(r)} (z_u' - z_u)``;
- a circuit ``C`` (every other edge ablated; :meth:`~InterpretableModel.evaluate_circuit`): ``r`` reads
  ``x_r' + sum_{u in C(r)} (z_u - z_u')``, where ``x_r'`` is its ablated input (the same sum with every
  sender ablated). Both are the same rule; the second form costs work only for the circuit's edges.

``z_u`` is always the sender's output in the patched run itself, so an ablated edge upstream changes what
later senders send. Receivers without edges in any row read ``x_r`` (patching) or ``x_r'`` (circuits); a
layer's attention then runs as usual on that input. A head whose q, k or v input has edges gets its own input:
its slice of the projection is recomputed from ``ln1`` of that input (:func:`.patch_ops.splice_projection`),
the other heads keep the model's projection.

The forward runs the variants' rows only. What they read of the corrupted (source) prompts' run, its input at
every site and its senders' outputs, comes in as the program's params from a :class:`~.sources.SourceRun`,
kept across calls on the same prompts; so is the clean run's metric (the full circuit). Where the clean and
corrupted prompts agree on their first ``p0`` tokens, those run once on a KV cache and the variants run the
rest (see :mod:`.sources`). A program is recorded per structure (shape, layout, the variants' edges, ``p0``)
and kept, compiled, on the model: the same edges on new prompts of one shape replay it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

import mlx.core as mx
import numpy as np

from mlxterp.compiler import Op, PatchedForward, StateCompiled, run_passes
from mlxterp.compiler.fold import fold_tokens
from mlxterp.compiler.passes.lift import param_sources, param_values

from ..analysis.metrics import Metric
from ..analysis.programs import cached_program, keep_program
from ..generation.program import call_with_cache
from ..tracing.program import param
from ..tracing.proxy import apply
from . import ops, patch_ops
from .nodes import CircuitGraph
from .parts import Parts
from .prefix import VariantCache
from .sources import SourceRun, source_run

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
                 layout: patch_ops.Layout, sources: Dict[str, Any]) -> None:
    """Inside a trace on the variants' rows: rewrite every receiver's input (see the module docstring) and save
    the last position's logits (``logits``). ``sources``: the source run's values as traced params, named as
    :attr:`.sources.SourceRun.values` names them."""
    plans = {(s.kind, s.layer): _plan(graph, s, variants) for s in _sites(graph)}
    needed: Dict[int, set] = {}
    for plan in plans.values():
        for chosen in plan.picks:
            for b, i in chosen:
                needed.setdefault(b, set()).add(i)
    # A block holds only the senders some edge reads (a layer's heads: those heads alone).
    which = {b: tuple(sorted(indices)) for b, indices in needed.items()}
    plans = {key: _renumber(plan, which) for key, plan in plans.items()}
    blocks: Dict[int, Tuple[Any, Any]] = {}  # block -> (its senders in the variants' rows, in the source run)
    if 0 in needed:
        blocks[0] = (apply(_lead, model.module(parts.embed).output), apply(_lead, sources["embed"]))
    for lp in parts.layers:
        i = lp.index
        _attention_site(model, parts, graph, lp, plans[("attn", i)], blocks, layout, sources[f"attn_in_{i}"])
        if 1 + 2 * i in needed:
            heads = parts.bind(ops.head_outputs, o_proj=lp.o)
            blocks[1 + 2 * i] = (apply(heads, model.module(lp.attn).heads, which[1 + 2 * i]),
                                 apply(heads, sources[f"heads_{i}"], which[1 + 2 * i]))
        ln2 = model.module(lp.ln2)
        x = ln2.input
        new = _site_input(x, sources[f"mlp_in_{i}"], plans[("mlp", i)], blocks, layout, last=False)
        if new is not x:
            ln2.input = new
        if 2 + 2 * i in needed:
            blocks[2 + 2 * i] = (apply(_lead, model.module(lp.mlp).output), apply(_lead, sources[f"mlp_{i}"]))
    final = model.module(parts.final_norm)
    last = apply(ops.take_last, final.input)
    final.input = _site_input(last, sources["final"], plans[("logits", graph.n_layers)], blocks, layout, last=True)
    model.output[:, -1].save("logits")


def _renumber(plan: _SitePlan, which: Dict[int, Tuple[int, ...]]) -> _SitePlan:
    """``plan`` with each sender's index taken within its block's computed senders (``which``)."""
    picks = tuple(tuple((b, which[b].index(i)) for b, i in chosen) for chosen in plan.picks)
    return dataclasses.replace(plan, picks=picks)


def _lead(x: mx.array) -> mx.array:
    """``x[None]``: one sender as a block of one."""
    return x[None]


def _base(x: Any, source: Any, layout: patch_ops.Layout) -> Any:
    return apply(patch_ops.base_rows, x, source, layout=layout) if any(layout.kept) else x


def _packed(base: Any, plan: _SitePlan, blocks: Dict[int, Tuple[Any, Any]], layout: patch_ops.Layout,
            last: bool) -> Any:
    order = sorted({b for chosen in plan.picks for b, _ in chosen})
    picks = tuple(tuple((order.index(b), i) for b, i in chosen) for chosen in plan.picks)
    weights = tuple(mx.array(w) for w in plan.weights)
    own, source = [blocks[b][0] for b in order], [blocks[b][1] for b in order]
    return apply(patch_ops.packed_inputs, base, weights, *own, *source, layout=layout, picks=picks, last=last)


def _site_input(x: Any, source: Any, plan: _SitePlan, blocks: Dict[int, Tuple[Any, Any]],
                layout: patch_ops.Layout, last: bool) -> Any:
    """The input of a one-receiver site (an MLP, the logits, a layer's whole attention); ``source``: the
    source run's input there."""
    base = _base(x, source, layout)
    if plan.empty:
        return base
    where = tuple(off if rs else -1 for off, rs in zip(plan.offsets, plan.receivers))
    return apply(patch_ops.replace_rows, base, _packed(base, plan, blocks, layout, last), layout, where)


def _attention_site(model: InterpretableModel, parts: Parts, graph: CircuitGraph, lp: Any, plan: _SitePlan,
                    blocks: Dict[int, Tuple[Any, Any]], layout: patch_ops.Layout, source: Any) -> None:
    """Rewrite layer ``lp``'s attention input: every head reads the base input, and each head projection with
    edges its own input (``source``: the source run's attention input)."""
    ln1 = model.module(lp.ln1)
    if graph.granularity == "layers":
        x = ln1.input
        new = _site_input(x, source, plan, blocks, layout, last=False)
        if new is not x:
            ln1.input = new
        return
    x = ln1.input
    base = _base(x, source, layout)
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
                 variants: Sequence[Variant], metric: Metric, mean: bool,
                 need_clean: bool = False) -> Tuple[np.ndarray, float, float, mx.array]:
    """One forward of every variant's copy of the clean rows, reading the source run (kept across calls).

    Returns:
        The metric of each variant (mean over its rows), the metric of the source rows (NaN unless they are as
        many as the clean rows: a metric may read one target per clean prompt), the clean rows' metric (NaN
        unless ``need_clean``), and each variant's last-position logits ``(variants, batch, vocab)``.
    """
    run = source_run(model, parts, clean, source, mean, need_clean)
    layout = patch_ops.Layout(int(source.shape[0]), int(clean.shape[0]), tuple(v.kept for v in variants), mean)
    suffix = clean[:, run.prefix_len:]
    key = (tuple(suffix.shape), run.prefix_len, layout, graph, _digest(variants))
    program = cached_program(model, "circuits.patch", key)
    if program is None:
        program = keep_program(model, "circuits.patch", key,
                               PatchProgram(model, parts, graph, variants, layout, run, suffix))
    logits = program(suffix, run).reshape(len(variants), layout.batch, -1)
    values = np.array([float(metric.score(logits[k]).mean()) for k in range(len(variants))])
    same = layout.sources == layout.batch
    source_value = float(metric.score(run.source_logits).mean()) if same else float("nan")
    clean_value = float(metric.score(run.clean_logits).mean()) if need_clean else float("nan")
    return values, source_value, clean_value, logits


class PatchProgram:
    """The patched forward of one structure (see the module docstring): recorded once with a trace on the
    variants' rows, lowered to run on a KV cache of the shared prefix, compiled with the model's state as an
    input (weight edits are seen; shapes compile once each).

    Args:
        model, parts, graph: the model, its circuit parts and graph.
        variants: the row blocks' edges.
        layout: the rows' :class:`~.patch_ops.Layout`.
        run: the prompts' :class:`~.sources.SourceRun` (its values' shapes are the params').
        suffix: the clean rows' positions after the shared prefix ``(batch, seq - p0)``.
    """

    def __init__(self, model: InterpretableModel, parts: Parts, graph: CircuitGraph, variants: Sequence[Variant],
                 layout: patch_ops.Layout, run: SourceRun, suffix: mx.array):
        self.blocks = len(variants)
        tokens = fold_tokens(suffix, self.blocks)
        with model.trace(tokens, capture="saved") as tr:  # on the suffix alone: the same graph on a cache
            record_patch(model, parts, graph, variants, layout,
                         {name: param(name, value) for name, value in run.values.items()})
        passes = run_passes(tr.graph.with_captures(()), model._probe(tokens).events)
        self._forward = PatchedForward(model.model, passes.after, passes.schedule, call=call_with_cache,
                                       points=model._points)
        # Params in order: the source values by name (given at each call), the other constants as recorded.
        recorded = param_values(tr.graph, param_sources(passes.after))
        names = [n.meta.get("name") for n in sorted((n for n in passes.after if n.op is Op.PARAM),
                                                    key=lambda n: n.target)]
        self._params = [(name, None) if name in run.values else (None, value) for name, value in zip(names, recorded)]
        self._compiled = StateCompiled(self._logits, model.model, model._executor.stats)

    def __call__(self, suffix: mx.array, run: SourceRun) -> mx.array:
        """Every variant's last-position logits ``(variants * batch, vocab)``."""
        keys = [k for k, _ in run.prefix]
        values = [v for _, v in run.prefix]
        params = [value if name is None else run.values[name] for name, value in self._params]
        return self._compiled(fold_tokens(suffix, self.blocks), keys, values, params)

    def _logits(self, tokens: mx.array, keys: List[mx.array], values: List[mx.array],
                params: List[mx.array]) -> mx.array:
        caches = [VariantCache(k, v, self.blocks) for k, v in zip(keys, values)] if keys else None
        _, saves, _ = self._forward((tokens, caches), params)
        return saves["logits"]
