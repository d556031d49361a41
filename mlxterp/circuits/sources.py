"""What a patched forward reads besides its own rows: the corrupted (source) prompts' run and the clean
prompts' logits, kept across calls on the same prompts.

Exact edge patching needs, at every receiver's site, the source run's input there (a circuit's ablated
input) and every sender's source output (an ablated edge's value); faithfulness needs the clean run's
metric (the full circuit) and the source run's (the empty one). None of it depends on the edges, so one
:class:`SourceRun` serves every patching call, circuit and curve on the same prompts, and the patched
forward runs only its variants' rows.

**Kept, and when not.** Runs are kept on the model (at most :data:`KEEP`, least recently used dropped
first), keyed by the clean and source token ids and the ablation, and used again only while the model's
weights are the arrays they were computed from (:class:`.weights.WeightSnapshot`: a weight replaced or
changed in place is seen) and its module tree is the same (a replaced module drops the model's program
caches, where runs are kept). A model with activation edits (``model.edit``) keeps nothing: an edit's
function may read any state. ``model.clear_compile_cache()`` drops the runs too.

**Shared prefix.** With corrupted ablation, every value at a position before ``p0``, the first position where
some clean prompt differs from its corrupted prompt, is the same in the clean run, the source run and every
patched variant (attention is causal, and there every edge carries ``z_u' - z_u = 0``). So the first ``p0``
tokens run once, on a KV cache (:mod:`.prefix`), patched forwards run only positions ``p0`` on, and the
source values are kept at those positions. Mean ablation (a mean over prompts is no prompt's prefix), a model
with edits, and a model whose cache is not mlx-lm's plain ``KVCache`` use ``p0 = 0``; each model checks once
that the clean prompts' logits from the cached prefix equal those of their whole forward.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import mlx.core as mx
import numpy as np

from ..analysis.programs import cached_program, keep_program, run_program
from ..generation.cache import static_eligible
from ..tracing.proxy import apply
from . import ops
from .parts import Parts
from .prefix import VariantCache
from .weights import WeightSnapshot

if TYPE_CHECKING:
    from ..model import InterpretableModel

KEEP = 4  # source runs kept per model
PREFIX_TOLERANCE = 1e-4  # relative: logits from the cached prefix against the whole forward's (float rounding)


@dataclasses.dataclass
class SourceRun:
    """The source and clean runs a patched forward reads (see the module docstring).

    Attributes:
        prefix_len: ``p0``: positions run once on the KV cache (0: none).
        prefix: per layer, the prefix's keys and values ``(batch, kv_heads, p0, head_dim)`` as a KV cache holds
            them (after RoPE; empty when ``prefix_len`` is 0).
        values: the source run at positions ``p0`` on (``S`` source rows, ``s`` positions, ``D`` the residual
            width): ``embed`` ``(S, s, D)``; per layer ``L``: ``attn_in_L`` and ``mlp_in_L`` (its attention's and
            its MLP's norm inputs), ``heads_L`` ``(S, s, heads, head_dim)``, ``mlp_L`` ``(S, s, D)``; ``final``
            ``(S, 1, D)`` (the final norm's input at the last position).
        source_logits: ``(S, vocab)``: the source run's last-position logits.
        clean_logits: ``(batch, vocab)``: the clean run's (``None`` until a call needs them).
    """

    prefix_len: int
    prefix: List[Tuple[mx.array, mx.array]]
    values: Dict[str, mx.array]
    source_logits: mx.array
    clean_logits: Optional[mx.array]


@dataclasses.dataclass
class _Kept:
    run: SourceRun
    weights: WeightSnapshot


def source_run(model: InterpretableModel, parts: Parts, clean: mx.array, source: mx.array, mean: bool,
               need_clean: bool = False) -> SourceRun:
    """The :class:`SourceRun` of these prompts: kept from an earlier call while still valid, else run now (the
    clean prompts as rows of the same forward when their logits are needed).

    Args:
        model: the InterpretableModel.
        parts: its circuit parts.
        clean: clean token ids ``(batch, seq)``.
        source: source token ids ``(S, seq)`` (``S = batch``, row ``i`` paired with clean row ``i``, unless
            ``mean``).
        mean: mean ablation (no shared prefix).
        need_clean: the run must hold the clean logits.
    """
    if model._edits:
        return _run(model, parts, clean, source, 0, need_clean)
    key = (_digest(clean), _digest(source), mean)
    runs = model._program_cache("circuits.sources")
    kept = runs.get(key)
    if kept is not None and kept.weights.current(model.model):
        runs.move_to_end(key)
        if need_clean and kept.run.clean_logits is None:
            kept.run.clean_logits = _saves(model, parts, clean, values=False, keys=False)["logits"]
        return kept.run
    runs.pop(key, None)  # stale: drop it (and the old weights it holds) before running again
    weights = WeightSnapshot(model.model)
    run = _run(model, parts, clean, source, 0 if mean else _prefix_len(model, parts, clean, source), need_clean)
    runs[key] = _Kept(run, weights)
    while len(runs) > KEEP:
        runs.popitem(last=False)
    return run


def _digest(tokens: mx.array) -> tuple:
    """A key of token ids: their shape and a hash of their values."""
    data = np.asarray(tokens.astype(mx.int32))
    return tuple(data.shape) + (hashlib.sha1(data.tobytes()).hexdigest(),)


def _prefix_len(model: InterpretableModel, parts: Parts, clean: mx.array, source: mx.array) -> int:
    """``p0`` for paired prompts: the first position where a row differs, at most ``seq - 1``; 0 where the
    model's cache cannot share it."""
    differs = np.flatnonzero((np.asarray(clean) != np.asarray(source)).any(axis=0))
    p0 = int(differs[0]) if differs.size else int(clean.shape[1]) - 1
    if p0 == 0 or not _prefix_works(model, parts):
        return 0
    return p0


def _run(model: InterpretableModel, parts: Parts, clean: mx.array, source: mx.array, p0: int,
         need_clean: bool) -> SourceRun:
    """One forward of the source rows (and the clean rows after them, if ``need_clean``)."""
    rows = int(source.shape[0])
    saves = _saves(model, parts, mx.concatenate([source, clean], axis=0) if need_clean else source, values=True,
                   keys=p0 > 0)
    values = {name: saves[name][:rows] if name == "final" else saves[name][:rows, p0:] for name in _values(parts)}
    prefix = [(_cached(saves[f"k_{lp.index}"][:rows, :p0]), _cached(saves[f"v_{lp.index}"][:rows, :p0]))
              for lp in parts.layers] if p0 else []
    logits = saves["logits"]
    run = SourceRun(p0, prefix, values, logits[:rows], logits[rows:] if need_clean else None)
    mx.eval(run.values, run.prefix, run.source_logits, run.clean_logits)
    return run


def _values(parts: Parts) -> List[str]:
    """The names of :attr:`SourceRun.values`."""
    per_layer = [f"{kind}_{lp.index}" for lp in parts.layers for kind in ("attn_in", "heads", "mlp_in", "mlp")]
    return ["embed"] + per_layer + ["final"]


def _cached(points: mx.array) -> mx.array:
    """An attention's ``k`` or ``v`` point ``(batch, seq, heads, head_dim)`` as a KV cache holds it
    ``(batch, heads, seq, head_dim)``."""
    return points.transpose(0, 2, 1, 3)


def _saves(model: InterpretableModel, parts: Parts, tokens: mx.array, values: bool, keys: bool) -> Dict[str, mx.array]:
    """The saves of a source run on ``tokens`` (see :func:`_record`), from a program cached per shape."""
    return run_program(model, "circuits", ("source", tuple(tokens.shape), values, keys), tokens, {},
                       lambda _: _record(model, parts, values, keys))


def _record(model: InterpretableModel, parts: Parts, values: bool, keys: bool) -> None:
    """Inside a trace: the saves of :attr:`SourceRun.values` (with ``values``), each attention's keys and
    values ``k_L``/``v_L`` (with ``keys``) and the last position's ``logits``."""
    for lp in parts.layers if values or keys else ():
        attn = model.module(lp.attn)
        if keys:
            attn.k.save(f"k_{lp.index}")
            attn.v.save(f"v_{lp.index}")
        if values:
            model.module(lp.ln1).input.save(f"attn_in_{lp.index}")
            attn.heads.save(f"heads_{lp.index}")
            model.module(lp.ln2).input.save(f"mlp_in_{lp.index}")
            model.module(lp.mlp).output.save(f"mlp_{lp.index}")
    if values:
        model.module(parts.embed).output.save("embed")
    final = model.module(parts.final_norm)
    last = apply(ops.take_last, final.input)
    if values:
        last.save("final")
    final.input = last
    model.output[:, -1].save("logits")


def _prefix_works(model: InterpretableModel, parts: Parts) -> bool:
    """Whether the variants' forward on a KV cache of a prefix's keys and values (as :func:`_run` keeps them)
    gives the whole forward's logits (checked once per model on a short prompt; a model whose cache is not
    mlx-lm's plain ``KVCache`` is not tried)."""
    found = cached_program(model, "circuits", "prefix")
    if found is None:
        found = keep_program(model, "circuits", "prefix", static_eligible(model.model) and _same_logits(model, parts))
    return found


def _same_logits(model: InterpretableModel, parts: Parts) -> bool:
    tokens = mx.array([[1, 2, 3, 4, 5, 6]], dtype=mx.int32)
    saves = _saves(model, parts, tokens, values=False, keys=True)
    caches = [VariantCache(_cached(saves[f"k_{lp.index}"][:, :3]), _cached(saves[f"v_{lp.index}"][:, :3]), 1)
              for lp in parts.layers]
    suffix = model.model(tokens[:, 3:], cache=caches)[:, -1].astype(mx.float32)
    whole = saves["logits"].astype(mx.float32)
    error = mx.max(mx.abs(suffix - whole)).item()
    scale = mx.max(mx.abs(whole)).item()
    if error <= PREFIX_TOLERANCE * (scale + 1.0):
        return True
    warnings.warn(f"edge patching: this model's KV cache does not reproduce the whole prompt's logits (max difference "
                  f"{error:.3g}); patched forwards run the whole prompts (slower, same numbers)", stacklevel=4)
    return False
