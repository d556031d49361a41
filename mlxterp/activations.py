"""Activation utilities: ``get_activations``, ``batch_get_activations`` and ``collect_activations``.

All three are written on the public trace API. ``get_activations`` and ``batch_get_activations`` gather
the requested token positions *inside* the traced graph (``mx.take_along_axis`` with an index array that
becomes a graph parameter), with ``capture="saved"``, so only the gathered rows are ever kept and one
compiled program serves every batch of the same padded shape.

Prompts in a batch are right-padded. With causal attention padding after a token cannot change it, so
every real position is exact; a negative position counts from each prompt's own last real token
(``-1`` is the last real token of *that* prompt, not the last column of the padded batch).
"""

from __future__ import annotations

import collections.abc
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from . import distributed as dist
from .activation_cache import ActivationCache
from .analysis.programs import run_program
from .core import WrappedModel
from .inputs import is_int
from .sites import Site, activation_sites, read_site, sequence_specs
from .tracing.proxy import apply

__all__ = ["get_activations", "batch_get_activations", "collect_activations", "cache_resolver", "bucket_length"]

Positions = Union[int, Sequence[int]]
PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------
def get_activations(model: WrappedModel, prompts: Any, layers: Optional[Sequence[int]] = None,
                    positions: Positions = -1) -> Dict[str, mx.array]:
    """Layer outputs at chosen token positions, from one traced forward (one per prompt length for an
    edited model whose edits may count positions from the end, e.g. a recorded ``[:, -1]`` write).

    Args:
        model: an :class:`~mlxterp.InterpretableModel`.
        prompts: a prompt, a list of prompts, token ids (list of int), a list of token-id lists, or an
            integer ``mx.array`` ``(batch, seq)``. Lists are right-padded.
        layers: layer indices (``None`` = every layer; negative indices count from the end and are keyed
            by their non-negative index) or names of anything a trace reads that has one row per token
            (``"layers.3.mlp"``, ``"layers.3.resid_mid"``, ``"layers.3.attn.q"``; keyed by their short name):
            see :mod:`mlxterp.sites`.
        positions: an int or a list of ints. Non-negative positions count from the start; negative ones
            from each prompt's last real token (``-1`` = last real token of that prompt).

    Returns:
        ``{"layer_{i}": array}`` (and ``{name: array}`` for named sites), ``mx.array`` values in the dtype the
        model computed them in: ``(batch, hidden)`` for an int position, ``(batch, n_positions, hidden)`` for a
        list (``hidden``: the site's trailing shape).

    Raises:
        ValueError: empty prompts, a layer index that is not an int or out of range, or a position outside
            some prompt (the message names the prompt, its length and the position).
    """
    _check_model(model)
    sites = position_sites(model, layers, "get_activations")
    pos_list, single = _check_positions(positions)
    _check_not_empty(prompts)
    batch = model._batch(prompts)
    index = position_index(batch.lengths, pos_list)
    if model._padding_safe() or not batch.padded:
        gathered = _gather(model, batch.tokens, index, sites)
    else:  # edits that may count positions from the end: one forward per prompt length (see padded_batches)
        data = np.array(batch.tokens)
        rows = [data[k, :n].tolist() for k, n in enumerate(batch.lengths)]
        gathered = gather_rows(model, rows, index, sites, False, len(rows))
    out = {key: (a[:, 0] if single else a) for key, a in gathered.items()}
    mx.eval(list(out.values()))
    return out


def batch_get_activations(model: WrappedModel, prompts: Any, layers: Optional[Sequence[int]] = None,
                          positions: Positions = -1, batch_size: int = 8,
                          progress: bool = True, *, out: Optional[PathLike] = None, dtype: Any = None,
                          shard_size: Optional[int] = None, resume: bool = True,
                          metadata: Optional[dict] = None, distributed: Any = "auto"
                          ) -> Union[Dict[str, mx.array], Any]:
    """:func:`get_activations` over many prompts, ``batch_size`` at a time, in constant extra memory.

    Prompts are sorted by length into chunks (results come back in the original order), each chunk is
    right-padded to a bucketed length (:func:`bucket_length`) and a bucketed batch size, so a handful of
    compiled programs serve the whole run. Each chunk's gathered rows are evaluated before the next chunk
    is built; nothing else is kept.

    Args:
        model: an :class:`~mlxterp.InterpretableModel`.
        prompts: a list of prompts (or of token-id lists), a single prompt, or an integer ``mx.array``.
            With ``out=``: also any sequence of them (e.g. :class:`mlxterp.store.PromptFile`), or an
            iterator (a generator), which is read once into a list: the store hashes every prompt before
            any forward, so that a rerun can check it continues the same prompts.
        layers: layer indices (``None`` = every layer) or site names, as in :func:`get_activations`.
        positions: as in :func:`get_activations`.
        batch_size: prompts per forward (``>= 1``).
        progress: show a tqdm progress bar (rate and ETA).
        out: a folder: stream the rows to an activation store there instead of returning them, and
            return an :class:`~mlxterp.ActivationStore` of it. Memory then holds one shard at a time. The
            store is resumable: rerun the same call after an interruption (even ``kill -9``) and it
            continues, every prompt stored once; a rerun with another model, other layers, positions,
            dtype or prompts is refused (:class:`~mlxterp.store.StoreMismatchError` names what differs).
        dtype: stored (or returned) dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"`` (None keeps the
            model's).
        shard_size: with ``out=``: prompts per shard (None: about 64 MiB of activations per shard).
        resume: with ``out=``: continue a store already in ``out`` (False: an existing store is an error).
        metadata: with ``out=``: a JSON-serialisable dict kept in the manifest (not compared on resume).
        distributed: split the prompts over ``mx.distributed`` processes: ``"auto"`` (default) when the
            script was launched on several (``mlx.launch``), ``True`` to require that (an error
            otherwise), ``False`` for this process alone. In memory every rank returns every row; with
            ``out=`` each rank writes its own shards of the one store (a folder every rank can reach).
            Every rank must pass the same arguments (checked before any work: ``DistributedMismatchError``).

    Returns:
        ``{"layer_{i}": array}`` with ``len(prompts)`` rows, in the order of ``prompts``, shaped as in
        :func:`get_activations` (``(len(prompts), hidden)`` or ``(len(prompts), n_positions, hidden)``) and of
        ``dtype`` (else the model's); with ``out=``, an ``ActivationStore`` with the same keys and rows.
    """
    _check_model(model)
    group = dist.resolve_group(distributed)
    if out is not None:
        prompts = _prompt_list(prompts)
    dist.check_same_call(group, "batch_get_activations", prompts=prompts, layers=layers, positions=positions,
                         dtype=dtype, out=out is not None, shard_size=shard_size, resume=resume)
    batch_size = _check_batch_size(batch_size)
    sites = position_sites(model, layers, "batch_get_activations")
    pos_list, single = _check_positions(positions)
    _check_not_empty(prompts)
    if out is not None:
        from .store.collect import positions_collection

        collection = positions_collection(model, sites, pos_list, single, dtype, batch_size)
        return _write_store(collection, prompts, out, batch_size, shard_size, resume, progress, metadata, group)
    rows = token_rows(model, prompts)
    index = position_index([len(r) for r in rows], pos_list)  # validates every prompt before any forward runs
    model._check_length([len(r) for r in rows])
    if group is not None and len(rows) >= dist.size(group):
        acts = _gather_sharded(model, rows, index, sites, single, batch_size, progress, group)
    else:
        with tqdm(total=len(rows), disable=not progress, unit="prompt", desc="activations", leave=True) as bar:
            acts = gather_rows(model, rows, index, sites, single, batch_size, bar)
    if dtype is not None:
        from .store.collect import storage_dtype

        cast = storage_dtype(dtype, None)
        acts = {k: v.astype(cast) for k, v in acts.items()}
    return acts


def _gather_sharded(model: WrappedModel, rows: List[List[int]], index: np.ndarray, sites: List[Site], single: bool,
                    batch_size: int, progress: bool, group: Any) -> Dict[str, mx.array]:
    """:func:`gather_rows` over this rank's share of the prompts (every ``size``-th by length, so every rank
    gets a like mix of lengths), then every rank's rows gathered back into prompt order."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    mine = np.array(dist.my_items(order, group), dtype=np.int64)
    with tqdm(total=len(mine), disable=not (progress and dist.rank(group) == 0), unit="prompt",
              desc="activations (this rank)", leave=True) as bar:
        local = gather_rows(model, [rows[j] for j in mine], index[mine], sites, single, batch_size, bar)
    back = mx.array(np.argsort(order).astype(np.int32))  # each prompt's place in the length order
    return {k: mx.take(dist.gather_array_items(v, len(rows), group), back, axis=0) for k, v in local.items()}


def _write_store(collection: Any, prompts: Any, out: PathLike, batch_size: int, shard_size: Optional[int],
                 resume: bool, progress: bool, metadata: Optional[dict], group: Optional[Any]) -> Any:
    """Stream a collection into the store folder ``out``; returns an ActivationStore of it."""
    from .store.reader import ActivationStore
    from .store.writer import write_store

    if shard_size is not None:
        shard_size = _check_batch_size(shard_size, "shard_size")
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be True or False, got {resume!r}")
    folder = write_store(collection, prompts, out, batch_size=batch_size, shard_size=shard_size,
                         resume=resume, progress=progress, group=group, metadata=metadata)
    return ActivationStore(folder)


def _prompt_list(prompts: Any) -> Sequence[Any]:
    """Prompts as a sequence of single prompts (text or token-id lists) for the store. An iterator (a
    generator, a ``map``) is read once into a list: the store hashes every prompt before any forward (its
    manifest keeps the prompts' hashes so that a rerun can resume), and reads windows of prompts by index."""
    if isinstance(prompts, collections.abc.Iterator):
        prompts = list(prompts)
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (mx.array, np.ndarray)):
        data = np.array(prompts)
        return [data.tolist()] if data.ndim == 1 else data.tolist()
    if isinstance(prompts, (list, tuple)) and prompts and all(is_int(t) for t in prompts):
        return [list(prompts)]
    return prompts


def _check_batch_size(value: Any, name: str = "batch_size") -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def gather_rows(model: WrappedModel, rows: List[List[int]], index: np.ndarray, sites: List[Site], single: bool,
                batch_size: int, bar: Any = None) -> Dict[str, mx.array]:
    """The core of :func:`batch_get_activations` on checked token rows: ``{site key: array}`` with
    ``len(rows)`` rows in their order, ``index[row]`` the positions gathered from each (``bar`` is updated by
    the prompts done)."""
    n = len(rows)
    keys = [site.key for site in sites]
    chunks: Dict[str, List[mx.array]] = {k: [] for k in keys}
    done = []
    for ids, tokens, chunk_index in padded_batches(model, rows, batch_size, index):
        done.append(ids)
        gathered = _gather(model, mx.array(tokens), chunk_index, sites)
        real = len(ids)
        kept = [gathered[k][:real] if tokens.shape[0] != real else gathered[k] for k in keys]
        mx.eval(kept)
        for k, a in zip(keys, kept):
            chunks[k].append(a)
        del gathered, kept
        if bar is not None:
            bar.update(real)

    order = np.concatenate(done)
    inverse = np.empty(n, dtype=np.int32)
    inverse[order] = np.arange(n, dtype=np.int32)
    inverse_mx = mx.array(inverse)
    identity = bool(np.all(order == np.arange(n)))
    out: Dict[str, mx.array] = {}
    for k in keys:
        parts = chunks.pop(k)
        stacked = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)
        del parts
        result = stacked if identity else mx.take(stacked, inverse_mx, axis=0)
        if single:
            result = result[:, 0]
        mx.eval(result)
        out[k] = result
        del stacked
    return out


def padded_batches(model: WrappedModel, rows: List[List[int]], batch_size: int, index: Optional[np.ndarray] = None
                   ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Prompts sorted by length in chunks of ``batch_size``: ``(row ids, right-padded int32 tokens,
    their rows of index)`` per chunk. Widths are bucketed (:func:`bucket_length`) and batch heights rounded
    up to a power of two (at most ``batch_size``), so a handful of compiled programs serve a whole run;
    the padding rows are not in ``row ids``. A model whose edits are not padding-safe (an edit may count
    positions from the end: ``model._padding_safe()``) gets chunks of prompts of one length, unpadded."""
    lengths = np.asarray([len(r) for r in rows])
    order = np.argsort(lengths, kind="stable")
    pad_id = model._pad_id()
    limit = model._positions.max_positions
    cols = 0 if index is None else index.shape[1]
    exact = not model._padding_safe()
    for ids in _chunks(order, lengths, batch_size, exact):
        width = int(lengths[ids].max()) if exact else bucket_length(int(lengths[ids].max()), limit)
        height = min(batch_size, _next_pow2(len(ids)))
        tokens = np.full((height, width), pad_id, dtype=np.int32)
        chunk_index = np.zeros((height, cols), dtype=np.int32)
        for r, j in enumerate(ids):
            tokens[r, :lengths[j]] = rows[j]
            if index is not None:
                chunk_index[r] = index[j]
        yield ids, tokens, chunk_index


def _chunks(order: np.ndarray, lengths: np.ndarray, size: int, exact: bool) -> Iterator[np.ndarray]:
    """``order`` (prompts sorted by length) in chunks of at most ``size``; with ``exact``, each chunk's
    prompts have one length."""
    runs = np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1) if exact else [order]
    for run in runs:
        for start in range(0, len(run), size):
            yield run[start:start + size]


def collect_activations(model: WrappedModel, inputs: Any, layers: Optional[Sequence[Union[str, int]]] = None, *,
                        out: Optional[PathLike] = None, batch_size: int = 8, dtype: Any = None,
                        shard_size: Optional[int] = None, resume: bool = True, progress: bool = True,
                        metadata: Optional[dict] = None, distributed: Any = "auto") -> Union[ActivationCache, Any]:
    """Full outputs of chosen modules for ``inputs``, in an :class:`~mlxterp.ActivationCache` or, with
    ``out=``, streamed to an activation store folder (every real token of every prompt).

    Args:
        model: an :class:`~mlxterp.InterpretableModel`.
        inputs: anything ``model.trace`` accepts (lists of prompts are right-padded; rows past
            ``metadata["lengths"]`` are padding). With ``out=``: a prompt, a list of prompts or of
            token-id lists, any sequence of them (e.g. :class:`mlxterp.store.PromptFile`), or an iterator
            of them (read once into a list, as in :func:`batch_get_activations`).
        layers: layer indices or names of anything a trace reads (:mod:`mlxterp.sites`): modules in any
            accepted form (``"layers.3"``, ``"layers.3.attn"``, ``"model.model.layers.3.mlp"``), attention
            internals (``"layers.3.attn.q"``, ``"layers.3.attn.pattern"``: into a store, only values with one
            row per token) and residual values (``"layers.3.resid_pre"``, ``"layers.3.resid_mid"``,
            ``"layers.3.resid_post"``, which is the layer's output); ``None`` = every layer's output.
        out: a folder: write the outputs there, shard by shard, one row per real token (padding dropped),
            and return an :class:`~mlxterp.ActivationStore` of it. A rerun with the same arguments
            continues an interrupted collection (see :func:`batch_get_activations`).
        batch_size: with ``out=``: prompts per forward.
        dtype: with ``out=``: stored dtype (``"float16"``, ``"bfloat16"``, ``"float32"``; None keeps the
            model's).
        shard_size: with ``out=``: prompts per shard (None: about 64 MiB of activations per shard).
        resume: with ``out=``: continue a store already in ``out`` (False: an existing store is an error).
        progress: with ``out=``: show a progress bar (rate and ETA).
        metadata: with ``out=``: a JSON-serialisable dict kept in the manifest (not compared on resume).
        distributed: split the prompts (rows) over ``mx.distributed`` processes: ``"auto"`` (default) when the
            script was launched on several (``mlx.launch``), ``True`` to require that (an error
            otherwise), ``False`` for this process alone. In memory every rank returns every row; with
            ``out=`` each rank writes its own shards of the one store (a folder every rank can reach).
            Every rank must pass the same arguments (checked before any work: ``DistributedMismatchError``).

    Returns:
        An ``ActivationCache`` keyed by short names (``"layers.3"``, ``"layers.3.self_attn"``) whose
        ``resolve`` also finds the other name forms, each value the whole ``mx.array`` the module gave
        (``(batch, seq, hidden)`` for a layer, right-padded, in the model's dtype), with ``metadata`` =
        ``{"model_class", "input_shape", "lengths", "layers"}``; with ``out=``, an ``ActivationStore`` with
        the same keys: one row per real token (``(n_tokens, hidden)`` for a layer; a row is the value's
        trailing shape, ``(heads, head_dim)`` for ``attn.q``) of ``dtype`` (else the model's).


    """
    _check_model(model)
    group = dist.resolve_group(distributed)
    if out is not None:
        inputs = _prompt_list(inputs)
    dist.check_same_call(group, "collect_activations", inputs=inputs, layers=layers, dtype=dtype,
                         out=out is not None, shard_size=shard_size, resume=resume)
    sites = activation_sites(model._index, layers)
    _check_not_empty(inputs)
    if out is not None:
        from .store.collect import tokens_collection

        batch_size = _check_batch_size(batch_size)
        return _write_store(tokens_collection(model, sites, dtype, batch_size), inputs, out, batch_size,
                            shard_size, resume, progress, metadata, group)
    batch = model._batch(inputs)
    n = len(batch.lengths)
    if batch.padded and not model._padding_safe():
        raise ValueError(f"collect_activations: this model's edits may count positions from the end (a recorded "
                         f"edit such as output[:, -1] = ...), which right padding would move onto padding; the "
                         f"prompts have lengths {sorted(set(batch.lengths))}. Collect prompts of one length per "
                         "call, or into a store (out=...), which batches them by length")
    if group is not None and n >= dist.size(group):  # each rank traces its rows, at the full padded width
        mine = mx.array(np.array(dist.my_items(range(n), group), dtype=np.int32))
        values = _site_values(model, batch.tokens[mine], sites)
        values = {k: dist.gather_array_items(v, n, group) for k, v in values.items()}
    else:
        values = _site_values(model, batch.tokens, sites)
    metadata = {
        "model_class": type(model.model).__name__,
        "input_shape": [int(s) for s in batch.tokens.shape],
        "lengths": [int(n) for n in batch.lengths],
        "layers": [site.key for site in sites],
    }
    return ActivationCache(values, metadata=metadata, resolve=cache_resolver(model))


def _site_values(model: WrappedModel, tokens: mx.array, sites: List[Site]) -> Dict[str, mx.array]:
    """One traced forward of ``tokens`` saving each site's value under its key (evaluated)."""
    with model.trace(tokens, compile="auto", capture="saved") as tr:
        for site in sites:
            read_site(model, site).save(site.key)
    values = {site.key: tr.saved_values[site.key] for site in sites}
    for site in sites:
        if not isinstance(values[site.key], mx.array):
            children = model._index.children(site.path) if site.phase == "output" else []
            raise ValueError(f"module {site.key!r} returns a {type(values[site.key]).__name__}, not an array; collect "
                             f"one of its sub-modules instead ({', '.join(children) or 'none'})")
    mx.eval(list(values.values()))
    return values


def cache_resolver(model: WrappedModel) -> Callable[[str], str]:
    """The name resolver ``collect_activations`` gives its cache: any accepted module name -> the stored
    short key. Pass it to ``ActivationCache.load(path, resolve=cache_resolver(model))``."""
    index = model._index

    def resolve(name: str) -> str:
        return activation_sites(index, [name])[0].key

    return resolve


def bucket_length(n: int, limit: Optional[int] = None) -> int:
    """Padded width for a chunk whose longest prompt has ``n`` tokens: the next multiple of
    ``max(8, 2**(floor(log2 n) - 2))`` (at most 4 widths per octave, at most ~25% padding), capped at
    ``limit`` (the model's maximum positions, when it has one) but never below ``n``."""
    n = int(n)
    step = max(8, 1 << max(n.bit_length() - 3, 0))
    width = -(-n // step) * step
    if limit is not None and width > limit:
        width = max(n, int(limit))
    return width


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _check_model(model: WrappedModel) -> None:
    from .model import InterpretableModel

    if not isinstance(model, InterpretableModel):
        raise TypeError(f"model must be an mlxterp.InterpretableModel, got {type(model).__name__}; "
                        "wrap it first: InterpretableModel(module, tokenizer=...)")


def position_sites(model: WrappedModel, layers: Any, what: str) -> List[Site]:
    """The sites of ``layers`` (ints keyed ``layer_{i}``), checked to have one row per token."""
    sites = activation_sites(model._index, layers, layer_key="index")
    sequence_specs(model, sites, what)
    return sites


def _check_positions(positions: Any) -> Tuple[List[int], bool]:
    if is_int(positions):
        return [int(positions)], True
    if isinstance(positions, (list, tuple, range)):
        if len(positions) == 0:
            raise ValueError("positions is empty; give an int (e.g. -1) or a non-empty list of ints")
        bad = [p for p in positions if not is_int(p)]
        if bad:
            raise ValueError(f"positions must be ints, got {bad[0]!r} ({type(bad[0]).__name__}) "
                             f"in positions={list(positions)!r}")
        return [int(p) for p in positions], False
    raise ValueError(f"positions must be an int (e.g. -1) or a list of ints (e.g. [0, -1]), got "
                     f"{type(positions).__name__} {positions!r}")


def _check_not_empty(prompts: Any) -> None:
    if isinstance(prompts, (list, tuple)) and len(prompts) == 0:
        raise ValueError("prompts is empty; give a prompt or a non-empty list of prompts (or token ids)")
    if isinstance(prompts, (mx.array, np.ndarray)) and prompts.size == 0:
        raise ValueError(f"prompts is an empty array of shape {tuple(prompts.shape)}; give at least one token")


def position_index(lengths: Sequence[int], positions: List[int], offset: int = 0) -> np.ndarray:
    """``(batch, n_positions)`` int32 column of each requested position in each row; negative positions
    count from the row's own length. Raises ValueError for the first position outside a row (numbered from
    ``offset``)."""
    lengths_np = np.asarray(lengths, dtype=np.int64)[:, None]
    pos = np.asarray(positions, dtype=np.int64)[None, :]
    index = np.where(pos < 0, lengths_np + pos, pos)
    bad = np.argwhere((index < 0) | (index >= lengths_np))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        n, p = int(lengths[row]), positions[col]
        raise ValueError(f"position {p} is out of range for prompt {row + offset}, which has {n} token"
                         f"{'s' if n != 1 else ''}: valid positions are 0 to {n - 1} or -{n} to -1")
    return index.astype(np.int32)


def _gather(model: WrappedModel, tokens: mx.array, index: np.ndarray, sites: List[Site]) -> Dict[str, mx.array]:
    """One forward that keeps only ``value[row, index[row]]`` of each site: ``{key: (B, P, *trailing)}``. The
    trace is a program cached on the model per (sites, token shape, positions): later chunks of the same
    shape replay it compiled with their tokens and index (see :mod:`.analysis.programs`)."""
    key = (tuple((s.key, s.path, s.phase) for s in sites), tuple(tokens.shape), index.shape[1])
    out = run_program(model, "activations", key, tokens, {"index": mx.array(index[:, :, None])},
                      lambda params: _record_gather(model, sites, params["index"]))
    return {s.key: out[s.key] for s in sites}


def _record_gather(model: WrappedModel, sites: List[Site], index: Any) -> None:
    """Inside a trace: save each site's value at the ``index`` positions (axis 1) under its key."""
    for site in sites:
        apply(take_positions, read_site(model, site), index).save(site.key)


def take_positions(value: mx.array, index: mx.array) -> mx.array:
    """``value[row, index[row]]``: ``(B, P, *trailing)`` from a ``(B, seq, *trailing)`` value and a
    ``(B, P, 1)`` index."""
    return mx.take_along_axis(value, index.reshape(index.shape[:2] + (1,) * (value.ndim - 2)), axis=1)


def token_rows(model: WrappedModel, prompts: Any, offset: int = 0) -> List[List[int]]:
    """Unpadded token ids of each prompt (text is encoded once, ids are range-checked); errors number the
    prompts from ``offset``."""
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, (str, list, tuple)) for p in prompts):
        rows = [_prompt_ids(model, p, k + offset) for k, p in enumerate(prompts)]  # text and id lists may mix
    else:  # one prompt, a list of ids, an array: the core normalises it
        batch = model._batch(prompts)
        data = np.array(batch.tokens)
        return [data[k, :n].tolist() for k, n in enumerate(batch.lengths)]
    vocab = model._vocab_rows()
    if vocab is not None:
        for k, r in enumerate(rows):
            lo, hi = min(r), max(r)
            if lo < 0 or hi >= vocab:
                bad = hi if hi >= vocab else lo
                raise ValueError(f"token id {bad} in prompt {k + offset} is out of range: the model's embedding has "
                                 f"{vocab} rows, so ids must be in [0, {vocab - 1}]")
    return rows


def _prompt_ids(model: WrappedModel, prompt: Any, k: int) -> List[int]:
    """Token ids of prompt number ``k`` (text or a list of ids); ValueError when it has none."""
    if not isinstance(prompt, str):
        if len(prompt) == 0:
            raise ValueError(f"prompt {k} has no tokens; every prompt needs at least one token")
        return [int(t) for t in prompt]
    if model.tokenizer is None:
        model._batch([prompt])  # raises the core's "needs a tokenizer" error
    ids = [int(t) for t in model.tokenizer.encode(prompt)]
    if not ids:
        raise ValueError(f"prompt {k} ({prompt[:40]!r}) encodes to no tokens; give a non-empty prompt")
    return ids


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()
