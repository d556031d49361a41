"""Vectorised patching sweeps: many patched variants of one forward, as a few batched compiled programs.

The batch is a *staircase*. Row 0 runs the clean prompt, row 1 the corrupted one, unpatched. A variant
that patches layer ``i`` computes exactly the corrupted run below layer ``i``, so instead of running it
from the start it is born at layer ``i``: the layer's input grows by copies of row 1
(``model.layers[i].input = apply(grow_rows, x, n)``), and the component's output in each new row takes
the clean row's value at the variant's positions (``apply(mx.where, mask, clean, out)``). Clean
activations come from row 0 of the same forward, and the last position's logits of rows 0 and 1 are the
clean and corrupted references, so one trace gives all of them. ``L`` variants then cost about ``L / 2``
single-row forwards of compute instead of ``2 + 2L`` forwards. Births later than that (``Birth``):

- **Whole layer** (``"output"``): a variant does not run its own layer; its rows are born at the *next*
  layer's input (or, after the last layer, at the final norm's input) as copies of the corrupted row with
  the clean row's values at the variant's positions (``apply(grow_patched, next.input, mask)``). That
  equals patching the layer's output as long as what runs between the two is the identity, which each
  trace checks (``array_equal`` of the layer's output and the next input).
- **Last addend of the residual stream** (the ``mlp`` of llama, qwen2 or GPT-2 layers, or a sub-module
  returning its output, such as ``mlp.down_proj``): such a layer computes ``out = (x + attn) + mlp``
  (``x`` its input, ``attn`` its attention's output), so the patched run's layer output is the corrupted
  ``x + attn`` plus the clean ``mlp`` at the variant's positions and the corrupted output elsewhere, and
  the variant's rows are born at the next input as that (``apply(grow_residual, ...)``: the layer's
  additions in its order, hence the same bits). Each trace checks the identity on the clean and corrupted
  rows (``array_equal`` of the layer's output with ``(x + attn) + mlp`` and with the next input). Only
  components after which nothing else of the layer returns are tried (not Gemma's MLP, followed by a
  norm). When the last layer's variants are born at the final norm, only the last position of that
  layer's output reaches the logits, so the component's input there is cut to the last position, as the
  final norm's is: this one assumes the component is position-wise, as an MLP is (it runs on one
  position at a time when a model decodes), and the identity check still holds (the layer broadcasts the
  one-position output over the sequence in its add). Neither cut is made where an edit of the model that
  counts positions (``[:, 0]``) reads or writes a value computed after it.

A layer whose identity check fails (evaluated with the distances) is run again the general way. Patching
any other sub-module (the attention, ``self_attn.o_proj``, ...) changes what the rest of its layer reads
(the MLP reads ``x + attn``), so the variant runs its own layer.

Cells at a position before the first token where the prompts differ are not run: in a causal model the
clean and corrupted activations there are identical, so patching them changes nothing (recovery exactly
0). The first chunk's trace checks that identity for the skipped layers (rows 0 and 1 of the component
output over that prefix, evaluated with the distances); cells of a layer where it fails are run.

Variants (cells) are ordered by layer and split into chunks: ``batch_size`` rows each when it is given;
otherwise chunks sized by time (:mod:`.chunks`), so that the progress bar moves and Ctrl-C, taken when a
chunk ends (:func:`mlxterp.interrupts.at_step_end`), lands within about a second where a forward is fast
otherwise chunks sized by time (:mod:`.chunks`), so that the progress bar moves and Ctrl-C, taken when a
chunk ends (:func:`mlxterp.interrupts.at_step_end`), lands within about a second where a forward is fast
enough. Each chunk's structure (``Plan``: layers, rows per layer, births) is one :class:`~mlxterp.Program`
of the tokens and the masks (named params), cached on the model (see :mod:`.programs`), so a repeated sweep
replays compiled programs and records nothing. When the model has a final norm, its input is cut to the
last position, so the vocabulary projection runs on one position.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..interrupts import at_step_end
from ..tracing.proxy import apply
from .chunks import Cell, Span, chunker
from .components import ComponentSite
from .metrics import distance
from .programs import run_program

if TYPE_CHECKING:
    from ..model import InterpretableModel

# Activation elements (rows x seq x width) one chunk may hold when batch_size is not given.
AUTO_BUDGET = 1 << 25



@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Distances of each patched variant, and of the corrupted run, from the clean run (float64)."""

    patched: np.ndarray
    corrupted: float
    forwards: int


@dataclasses.dataclass(frozen=True)
class Birth:
    """Where a layer's variants are born instead of running their layer: at the input of ``at``, the next
    layer or the final norm (see the module docstring). ``attn`` is None for whole-layer sites; for a
    component added last into the residual stream it is the layer's attention, whose output added to the
    layer's input is the residual before that add. ``cut``: the component's input is cut to the last
    position (the last layer's residual-stream component, born at the final norm)."""

    at: str
    attn: Optional[str] = None
    cut: bool = False


def grow_rows(x: mx.array, n: int) -> mx.array:
    """``x`` with ``n`` copies of its row 1 (the corrupted run) appended along the batch axis."""
    return mx.concatenate([x, mx.repeat(x[1:2], n, axis=0)], axis=0)


def patch_rows(out: mx.array, mask: mx.array) -> mx.array:
    """``out`` with the clean row's values (row 0) where ``mask`` is true."""
    return mx.where(mask, out[0:1], out)


def grow_patched(x: mx.array, mask: mx.array) -> mx.array:
    """``x`` with ``len(mask) - len(x)`` new rows appended: copies of row 1 (corrupted) taking row 0's
    (clean) values where ``mask`` (its last rows: the new ones) is true."""
    new = mask.shape[0] - x.shape[0]
    return mx.concatenate([x, mx.where(mask[-new:], x[0:1], x[1:2])], axis=0)


def grow_residual(nxt: mx.array, x: mx.array, attn: mx.array, component: mx.array, mask: mx.array) -> mx.array:
    """``nxt`` (the next module's input) with ``len(mask) - len(nxt)`` new rows appended: copies of row 1
    (the corrupted layer output) taking the corrupted ``x + attn`` plus the clean row's ``component``
    where ``mask`` (its last rows: the new ones) is true."""
    new = mask.shape[0] - nxt.shape[0]
    patched = (x[1:2] + attn[1:2]) + component[0:1]
    return mx.concatenate([nxt, mx.where(mask[-new:], patched, nxt[1:2])], axis=0)


def residual_identity(out: mx.array, nxt: mx.array, x: mx.array, attn: mx.array, component: mx.array) -> mx.array:
    """Whether the layer output equals the next input and, on the clean and corrupted rows,
    ``(x + attn) + component`` (a scalar bool array)."""
    summed = (x[0:2] + attn[0:2]) + component[0:2]  # the layer's additions, in its order
    return mx.logical_and(mx.array_equal(out, nxt), mx.array_equal(out[0:2], summed))


def same_values(a: mx.array, b: mx.array) -> mx.array:
    """Whether two arrays are equal (a scalar bool array)."""
    return mx.array_equal(a, b)


def same_prefix(out: mx.array, mask: mx.array) -> mx.array:
    """Whether rows 0 and 1 of ``out`` are equal where ``mask`` (``(1, seq, 1, ...)``) is true."""
    return mx.all(mx.where(mask, out[0:1] == out[1:2], True))


def shared_prefix(tokens: mx.array) -> int:
    """Number of leading positions where the two rows of ``tokens`` agree."""
    rows = np.array(tokens)
    differ = np.flatnonzero(rows[0] != rows[1])
    return int(differ[0]) if len(differ) else int(rows.shape[1])


def last_position(x: mx.array) -> mx.array:
    """The last position of a ``(batch, seq, ...)`` array, keeping the axis."""
    return x[:, -1:]


def auto_batch_size(sites: Dict[int, ComponentSite], seq_len: int) -> int:
    """Rows per chunk keeping about :data:`AUTO_BUDGET` activation elements per tensor."""
    width = max(s.width for s in sites.values())
    return max(1, AUTO_BUDGET // max(1, seq_len * width))


def cell_mask(rows: int, shape: Sequence[int], new_cells: Sequence[Cell], axis: int = 1) -> mx.array:
    """Boolean mask for a component output of ``shape``: the last ``len(new_cells)`` rows at their cells'
    index along ``axis`` (1: positions, ``(rows, seq, 1, ...)``, a :class:`~.chunks.Span` marking its
    positions; 2: heads, ``(rows, 1, heads, 1)``), or whole for an index of None."""
    dims = [rows] + [1] * (len(shape) - 1)
    dims[axis] = shape[axis]
    mask = np.zeros(dims, dtype=np.bool_)
    first = rows - len(new_cells)
    for k, (_, index) in enumerate(new_cells):
        if index is None:
            mask[first + k] = True
        else:
            at = slice(*index) if isinstance(index, Span) else index
            mask[(first + k,) + (0,) * (axis - 1) + (at,)] = True
    return mx.array(mask)


def before(index: Any, prefix: int) -> bool:
    """Whether a cell's positions (a position or a :class:`~.chunks.Span`) all lie before ``prefix``."""
    return index.stop <= prefix if isinstance(index, Span) else index < prefix


def run_sweep(model: InterpretableModel, tokens: mx.array, sites: Dict[int, ComponentSite], cells: List[Cell], metric: Any, *,
              norm_path: Optional[str], batch_size: Optional[int] = None, progress: bool = False,
              desc: str = "patching") -> SweepResult:
    """Distance from the clean logits (last position) of every cell's patched run, and of the corrupted run.

    Args:
        model: the InterpretableModel.
        tokens: ``(2, seq)``: clean prompt in row 0, corrupted in row 1.
        sites: component site per layer.
        cells: ``(layer, index or None)`` variants, sorted by layer; the index selects along the site's
            ``cell_axis`` (a position, a :class:`~.chunks.Span` of positions, or a head), None patches the
            whole output.
        metric: a :class:`~.metrics.Metric` or distance name (see :mod:`.metrics`).
        norm_path: final norm whose input is cut to the last position (None: project every position).
        batch_size: patched rows per chunk (None: chunks sized by time, see :func:`.chunks.plan_chunks`).
        progress: show a tqdm bar over cells.
        desc: progress bar label.
    """
    prefix = shared_prefix(tokens)
    skipped = [c for c in cells if c[1] is not None and sites[c[0]].cell_axis == 1 and before(c[1], prefix)]
    skip = set(skipped)
    todo = [c for c in cells if c not in skip]
    rows = batch_size or auto_batch_size(sites, tokens.shape[1])
    chunk = chunker(model, tokens, rows, timed=not batch_size, norm_path=norm_path)
    queue = chunk(todo) or [[]]  # one chunk at least: d(corrupted)
    checked = sorted({layer for layer, _ in skipped})
    births = _births(model, tokens, sites, norm_path)
    found: Dict[Cell, float] = {}
    corrupted, forwards = None, 0
    with _progress(len(cells), progress, desc) as bar:
        while queue:
            cells_now = queue.pop(0)
            prefix_check = (checked, prefix) if corrupted is None and checked else None
            with at_step_end():  # Ctrl-C is taken here, between chunks, with the model whole
                values, births, prefix_ok = _run_chunk(model, tokens, sites, cells_now, metric, norm_path, births,
                                                       prefix_check)
            forwards += 1
            if corrupted is None:
                corrupted = values[1]
                failed = {layer for layer, ok in zip(checked, prefix_ok) if not ok}
                redo = [c for c in skipped if c[0] in failed]  # not causal after all: run those cells
                queue += chunk(redo)
                skipped = [c for c in skipped if c[0] not in failed]
                bar.update(len(skipped))
            found.update(zip(cells_now, values[2:]))
            bar.update(len(cells_now))
    found.update((c, corrupted) for c in skipped)  # patching an identical activation: d(patched) = d(corrupted)
    return SweepResult(np.array([found[c] for c in cells], dtype=np.float64), float(corrupted), forwards)


def _run_chunk(model: InterpretableModel, tokens: mx.array, sites: Dict[int, ComponentSite], chunk: List[Cell], metric: Any,
               norm_path: Optional[str], births: Dict[int, Birth], prefix_check: Optional[Tuple[List[int], int]],
               ) -> Tuple[np.ndarray, Dict[int, Birth], List[bool]]:
    """Distances of one chunk's rows (clean, corrupted, variants), the births to use from now on, and the
    prefix checks' results."""
    d, checks, prefix_ok = _chunk_distances(model, tokens, sites, chunk, metric, norm_path, births, prefix_check)
    mx.eval(d, list(checks.values()), prefix_ok)
    failed = {layer for layer, ok in checks.items() if not bool(ok.item())}
    if failed:  # the shortcut is not exact for these layers: run the chunk again, those layers the general way
        births = {layer: b for layer, b in births.items() if layer not in failed}
        d, _, _ = _chunk_distances(model, tokens, sites, chunk, metric, norm_path, births, None)
        mx.eval(d)
    return np.array(d, dtype=np.float64), births, [bool(ok.item()) for ok in prefix_ok]


def _births(model: InterpretableModel, tokens: mx.array, sites: Dict[int, ComponentSite],
            norm_path: Optional[str]) -> Dict[int, Birth]:
    """``{layer: Birth}`` for the sites whose variants may be born at the next module's input (the next
    layer, or the final norm after the last layer, called once and receiving the layer output's shape and
    dtype): whole-layer sites, and components that may be the last addend of the residual stream (see
    :func:`_residual_sibling`). The identities they rest on are checked in each trace."""
    probe = model._probe(tokens)
    counts = probe.call_counts()
    last = len(model._index) - 1
    out = {}
    for layer, site in sites.items():
        nxt = model._index.layer_path(layer + 1) if layer < last else norm_path
        if nxt is None or counts.get(nxt) != 1:
            continue
        spec_out, spec_in = probe.values.get((site.layer_path, 0, "output")), probe.values.get((nxt, 0, "input"))
        if not (isinstance(spec_out, tuple) and spec_out == spec_in):
            continue
        if site.path == site.layer_path:
            out[layer] = Birth(nxt)
            continue
        attn = _residual_sibling(model, probe, counts, site)
        if attn is not None:
            # the component then runs on the last position only, unless an edit counts positions there
            cut = layer == last and nxt == norm_path and not model._positional_edit_after(
                probe.events, (site.path, 0, "input"))
            out[layer] = Birth(nxt, attn, cut=cut)
    return out


def _residual_sibling(model: InterpretableModel, probe: Any, counts: Dict[str, int], site: ComponentSite) -> Optional[str]:
    """The layer's attention, if ``site``'s component may be added last into the residual stream after it
    (``out = (x + attn) + component``): the component, the attention and the layer's input all have the
    layer output's shape and dtype, the attention (``attn``/``self_attn``/``attention``, called once) is not
    the component or one of its ancestors or descendants, and nothing of the layer but the component's
    ancestors returns after the component does; with an adapter, its residual form adds the halves' outputs
    as they are (not parallel, no norm after a half, no multiplier). None otherwise."""
    base = site.layer_path
    arch = model._index.arch
    if arch is not None and not arch.residual.adds_outputs:  # the identity cannot hold: do not try it
        return None
    spec = probe.values.get((base, 0, "output"))
    attn = model._index.child(base, "attn")
    if attn is None or counts.get(attn) != 1 or attn == site.path:
        return None
    if site.path.startswith(attn + ".") or attn.startswith(site.path + "."):
        return None
    if not (probe.values.get((base, 0, "input")) == probe.values.get((site.path, 0, "output"))
            == probe.values.get((attn, 0, "output")) == spec):
        return None
    events = probe.events
    try:
        after = events.index((site.path, 0, "output"))
        end = events.index((base, 0, "output"))
    except ValueError:
        return None
    ancestors = {site.path.rsplit(".", k)[0] for k in range(1, site.path.count(".") + 1)}
    for path, _, phase in events[after + 1:end]:
        if phase == "output" and path.startswith(base + ".") and path not in ancestors:
            return None
    return attn


@dataclasses.dataclass(frozen=True)
class Plan:
    """The structure of one staircase trace (the cells' positions come in as masks): ``groups``, ``(layer,
    layer path, component path, new rows, birth or None)`` per layer in order; ``prefix``, ``(layer,
    component path)`` of the prefix checks."""

    groups: Tuple[Tuple[int, str, str, int, Optional[Birth]], ...]
    prefix: Tuple[Tuple[int, str], ...]
    norm_path: Optional[str]
    metric: Any


def _plan(sites: Dict[int, ComponentSite], chunk: List[Cell], metric: Any, norm_path: Optional[str],
          births: Dict[int, Birth], prefix_check: Optional[Tuple[List[int], int]]) -> Tuple[Plan, List[mx.array]]:
    """The chunk's trace structure and its masks (the prefix checks', then one per group)."""
    groups, masks, rows = [], [], 2
    prefix = tuple((layer, sites[layer].path) for layer in (prefix_check[0] if prefix_check else ()))
    for layer, _ in prefix:
        shape = sites[layer].shape
        mask = np.zeros((1, shape[1]) + (1,) * (len(shape) - 2), dtype=np.bool_)
        mask[:, :prefix_check[1]] = True
        masks.append(mx.array(mask))
    for layer, group in itertools.groupby(chunk, key=lambda c: c[0]):
        group = list(group)
        site = sites[layer]
        rows += len(group)
        masks.append(cell_mask(rows, site.shape, group, site.cell_axis))
        birth = births.get(layer)
        if birth is not None and birth.cut and layer in dict(prefix):  # the prefix check reads every position
            birth = dataclasses.replace(birth, cut=False)
        groups.append((layer, site.layer_path, site.path, len(group), birth))
    return Plan(tuple(groups), prefix, norm_path, metric), masks


def _chunk_distances(model: InterpretableModel, tokens: mx.array, sites: Dict[int, ComponentSite], chunk: List[Cell], metric: Any,
                     norm_path: Optional[str], births: Dict[int, Birth],
                     prefix_check: Optional[Tuple[List[int], int]],
                     ) -> Tuple[mx.array, Dict[int, mx.array], List[mx.array]]:
    """One staircase run (lazy): distances of its rows from row 0, ``{layer: identity check}`` of the
    layers born at a next module's input, and the prefix checks. The chunk's structure is one program,
    cached on the model (see :mod:`.programs`): a repeated sweep replays it with new tokens and masks."""
    plan, masks = _plan(sites, chunk, metric, norm_path, births, prefix_check)
    born = [layer for layer, _, _, _, birth in plan.groups if birth is not None]
    values = {f"mask_{i}": m for i, m in enumerate(masks)}
    out = run_program(model, "sweep", (plan, tuple(tokens.shape)), tokens, values,
                      lambda params: _staircase(model, plan, list(params.values())))
    logits = out["logits"]
    checks = [out[f"check_{j}"] for j in range(len(born))]
    prefix_ok = [out[f"prefix_{j}"] for j in range(len(plan.prefix))]
    return distance(logits, logits[0:1], plan.metric), dict(zip(born, checks)), prefix_ok


def _staircase(model: InterpretableModel, plan: Plan, masks: List[Any]) -> None:
    """Inside a trace: the staircase of ``plan`` (see the module docstring) with ``masks`` (the prefix
    checks', then one per group). Saves the last-position logits of every row (``logits``), the identity
    checks of the groups born at a next module's input (``check_j``) and the prefix checks (``prefix_j``)."""
    masks = iter(masks)
    checks = 0
    for j, (_, path) in enumerate(plan.prefix):
        apply(same_prefix, model.module(path).output, next(masks)).save(f"prefix_{j}")
    for _, layer_path, path, n, birth in plan.groups:
        mask = next(masks)
        block, component = model.module(layer_path), model.module(path)
        if birth is None:
            block.input = apply(grow_rows, block.input, n)
            component.output = apply(patch_rows, component.output, mask)
            continue
        nxt = model.module(birth.at)
        if birth.attn is None:
            apply(same_values, block.output, nxt.input).save(f"check_{checks}")
            nxt.input = apply(grow_patched, nxt.input, mask)
        else:
            if birth.cut:
                component.input = apply(last_position, component.input)
            parts = (block.input, model.module(birth.attn).output, component.output)
            apply(residual_identity, block.output, nxt.input, *parts).save(f"check_{checks}")
            nxt.input = apply(grow_residual, nxt.input, *parts, mask)
        checks += 1
    if plan.norm_path is not None:
        norm = model.module(plan.norm_path)
        norm.input = apply(last_position, norm.input)
    model.output[:, -1, :].save("logits")


def saved_value(handle: Any) -> mx.array:
    """The array behind a saved handle (a bound proxy, or the array itself once rebound)."""
    return handle if isinstance(handle, mx.array) else handle.value


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="variant", disable=not enabled)
