"""Where training batches come from: an activation store, or a model's forward on prompts.

A source yields *global batches* of ``batch_size`` rows in a fixed order decided by ``seed``; on several
processes each rank receives its contiguous share of every global batch (rank ``r`` of ``N`` gets rows
``r * B/N`` to ``(r + 1) * B/N``), so the ranks together see exactly the single-process batches. With each
batch comes a *cursor*: a small JSON-able record of where the stream stands after it, from which the
source restarts a resumed run at the next batch (:meth:`Source.batches`).

- :class:`StoreSource`: the rows of an :class:`~mlxterp.ActivationStore` (one per token, or one per prompt
  of a single-position store), epoch after epoch. Each epoch visits the shards in a seeded order and each
  shard's rows in a seeded order; memory holds the shards the current batch touches (one, two at a
  boundary).
- :class:`LiveSource`: activations computed as they are needed, by one traced forward (a program whose
  saves are the sites, which stops after the last site's module) that feeds every dictionary. Prompts are
  visited epoch after epoch in a seeded order; every kept token (padding never; BOS and other special
  tokens not by default) is one row. The stream is cut into windows of ``shuffle_batches`` batches, each
  window's rows are shuffled with a seed, and a prompt that straddles two windows is run in both.
"""

from __future__ import annotations

import abc
import collections
import hashlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from .. import distributed as dist
from ..activations import token_rows, padded_batches
from ..store.manifest import digest, model_identity, prompt_hashes
from . import sites as site_names
from .learner import Comm

Batch = Dict[str, mx.array]
CHECK_CHUNK = 4096  # prompts tokenized at a time by the up-front check
Cursor = Dict[str, Any]


class Source(abc.ABC):
    """A stream of training batches (see the module docstring).

    Attributes:
        widths: ``{batch key: row width}``.
    """

    widths: Dict[str, int]

    @abc.abstractmethod
    def identity(self) -> Dict[str, Any]:
        """What defines the stream (compared when a run resumes)."""

    @abc.abstractmethod
    def batches(self, batch_size: int, seed: int, comm: Comm, cursor: Optional[Cursor] = None,
                total: Optional[int] = None) -> Iterator[Tuple[Batch, Cursor]]:
        """This rank's share of every global batch from ``cursor`` on (the start when None), each with the
        cursor after it. ``total``: how many batches the run draws in all (a source may then avoid
        preparing rows it will never give)."""


def _rank_rows(batch_size: int, comm: Comm) -> slice:
    share = batch_size // comm.size
    return slice(comm.rank * share, (comm.rank + 1) * share)


# -- arrays in memory ----------------------------------------------------------------------------------
class ArraySource(Source):
    """Rows of arrays in memory (``{batch key: (rows, width) array}``, equal row counts), reshuffled every
    epoch with the seed.

    Args:
        arrays: ``{batch key: (rows, width)}`` arrays (mx or numpy, or anything ``mx.array`` takes; kept as
            float32).

    Raises:
        ValueError: an array that is not 2-D, different row counts, or no rows.
    """

    def __init__(self, arrays: Dict[str, Any]):
        self.arrays = {k: mx.array(v).astype(mx.float32) for k, v in arrays.items()}
        counts = {k: v.shape[0] for k, v in self.arrays.items()}
        bad = [k for k, v in self.arrays.items() if v.ndim != 2]
        if bad:
            raise ValueError(f"data arrays must be (rows, width); {bad[0]!r} has shape {tuple(self.arrays[bad[0]].shape)}")
        if len(set(counts.values())) != 1:
            raise ValueError(f"data arrays must have the same number of rows, got {counts}")
        self.rows = next(iter(counts.values()))
        if self.rows == 0:
            raise ValueError("the data arrays have no rows")
        self.widths = {k: int(v.shape[1]) for k, v in self.arrays.items()}
        self._digest = digest(np.array([hash_array(v) for v in self.arrays.values()], dtype=np.uint64))

    def identity(self) -> Dict[str, Any]:
        """The row count, the widths and a digest of the arrays' shapes and bytes."""
        return {"kind": "arrays", "rows": self.rows, "widths": self.widths, "digest": self._digest}

    def batches(self, batch_size: int, seed: int, comm: Comm, cursor: Optional[Cursor] = None,
                total: Optional[int] = None) -> Iterator[Tuple[Batch, Cursor]]:
        """Endless batches (see :meth:`Source.batches`): ``{key: (batch_size / ranks, width)}`` float32, the
        rows of each epoch in an order drawn from ``seed`` and the epoch; the cursor counts batches."""
        b = int(cursor["batch"]) if cursor else 0
        mine = _rank_rows(batch_size, comm)
        orders: Dict[int, np.ndarray] = {}
        while True:
            positions = np.arange(b * batch_size + mine.start, b * batch_size + mine.stop)
            epochs, offsets = np.divmod(positions, self.rows)
            rows = np.empty(len(positions), dtype=np.int64)
            for e in np.unique(epochs).tolist():
                if e not in orders:
                    orders = {k: v for k, v in orders.items() if k >= e - 1}  # at most two epochs held
                    orders[e] = np.random.default_rng([seed, e]).permutation(self.rows)
                rows[epochs == e] = orders[e][offsets[epochs == e]]
            index = mx.array(rows.astype(np.int32))
            yield {k: mx.take(v, index, axis=0) for k, v in self.arrays.items()}, {"batch": b + 1}
            b += 1


def hash_array(value: mx.array) -> int:
    """A 64-bit hash of an array's shape and bytes."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(tuple(value.shape)).encode())
    h.update(np.array(value).tobytes())
    return int.from_bytes(h.digest(), "little")


# -- activation stores ---------------------------------------------------------------------------------
class StoreSource(Source):
    """Rows of an activation store for the batch keys of ``keys`` (``{batch key: store key}``), and of the
    arrays of ``extra`` (``{batch key: (rows,) or (rows, width) array}``, one row per store row, in the
    store's row order: labels, weights), served beside the store's rows.

    Args:
        store: the :class:`~mlxterp.ActivationStore`.
        keys: ``{batch key: store key}``; each store key must hold one vector per row.
        extra: ``{batch key: array}`` served beside the store's rows (labels, weights), one row per store row.
        use: a boolean mask over the store's rows, the rows to serve (None: all).

    Raises:
        ValueError: a store key whose rows are not vectors, or a store without rows.
    """

    def __init__(self, store: Any, keys: Dict[str, str], extra: Optional[Dict[str, Any]] = None,
                 use: Optional[np.ndarray] = None):
        self.store = store
        self.keys = dict(keys)
        self.widths = {}
        for key, stored in self.keys.items():
            shape = store.row_shape(stored)
            if len(shape) != 1:
                raise ValueError(f"the activation store {str(store.path)!r} holds rows of shape {shape} at "
                                 f"{stored!r}; a dictionary trains on one vector per row: collect a single position "
                                 "(positions=-1) or every token (collect_activations)")
            self.widths[key] = int(shape[0])
        shards = sorted(store.manifest["shards"], key=lambda e: e["window"])
        self._windows = [int(e["window"]) for e in shards]
        stored = np.cumsum([0] + [int(e["rows"]) for e in shards])
        self.extra = {k: _row_array(k, v, int(stored[-1]), str(store.path)) for k, v in (extra or {}).items()}
        self.use = None if use is None else _row_array("use", use, int(stored[-1]), str(store.path))[:, 0] > 0
        # each shard's rows (global store row numbers) that are served, and the served rows' bounds
        self._served = [np.arange(stored[i], stored[i + 1]) if self.use is None else
                        np.flatnonzero(self.use[stored[i]:stored[i + 1]]) + stored[i] for i in range(len(shards))]
        self._bounds = np.cumsum([0] + [len(r) for r in self._served])
        self.rows = int(self._bounds[-1])
        if self.rows == 0:
            raise ValueError(f"the activation store {str(store.path)!r} has no rows"
                             + (" left to use" if self.use is not None else ""))
        self.widths.update({k: int(v.shape[1]) for k, v in self.extra.items()})
        self._cache: "collections.OrderedDict[tuple, Dict[str, mx.array]]" = collections.OrderedDict()

    def identity(self) -> Dict[str, Any]:
        """The store's model fingerprint, prompts digest, row count and dtype, and the keys read."""
        m = self.store.manifest
        out = {"kind": "store", "model": (m.get("model") or {}).get("fingerprint"), "prompts": m.get("prompts_sha256"),
               "rows": self.rows, "keys": self.keys, "dtype": m.get("dtype")}
        if self.extra:
            out["extra"] = {k: hash_array(mx.array(v)) for k, v in sorted(self.extra.items())}
        if self.use is not None:
            out["use"] = hash_array(mx.array(self.use.astype(np.uint8)))
        return out

    def batches(self, batch_size: int, seed: int, comm: Comm, cursor: Optional[Cursor] = None,
                total: Optional[int] = None) -> Iterator[Tuple[Batch, Cursor]]:
        """Endless batches (see :meth:`Source.batches`): ``{key: (batch_size / ranks, width)}`` float32, each
        epoch visiting the shards in an order drawn from ``seed`` and each shard's rows in its own seeded
        order; the cursor counts batches."""
        b = int(cursor["batch"]) if cursor else 0
        mine = _rank_rows(batch_size, comm)
        while True:
            start = b * batch_size
            rows = self._stream_rows(start + mine.start, start + mine.stop, seed)
            yield rows, {"batch": b + 1}
            b += 1

    def _stream_rows(self, begin: int, end: int, seed: int) -> Batch:
        """Stream positions ``[begin, end)`` (epochs follow one another) as one batch."""
        parts: Dict[str, List[mx.array]] = {k: [] for k in self.widths}
        pos = begin
        while pos < end:
            epoch, offset = divmod(pos, self.rows)
            order = np.random.default_rng([seed, epoch]).permutation(len(self._windows))
            position = int(np.searchsorted(self._permuted_bounds(order), offset, side="right") - 1)
            shard = int(order[position])
            first = int(self._permuted_bounds(order)[position])
            rows = self._shard(seed, epoch, shard)
            take = min(end - pos, int(self._bounds[shard + 1] - self._bounds[shard]) - (offset - first))
            for key in self.widths:
                parts[key].append(rows[key][offset - first: offset - first + take])
            pos += take
        return {k: v[0] if len(v) == 1 else mx.concatenate(v) for k, v in parts.items()}

    def _permuted_bounds(self, order: np.ndarray) -> np.ndarray:
        sizes = np.diff(self._bounds)[order]
        return np.concatenate([[0], np.cumsum(sizes)])

    def _shard(self, seed: int, epoch: int, shard: int) -> Dict[str, mx.array]:
        """Shard ``shard``'s rows in epoch ``epoch``'s order, every key, float32 (the last two kept)."""
        found = self._cache.get((epoch, shard))
        if found is not None:
            return found
        served = self._served[shard]
        picked = served[np.random.default_rng([seed, epoch, self._windows[shard]]).permutation(len(served))]
        rows = {k: self.store.get(stored, rows=picked, dtype="float32") for k, stored in self.keys.items()}
        rows.update({k: mx.array(v[picked]) for k, v in self.extra.items()})
        mx.eval(list(rows.values()))
        self._cache[(epoch, shard)] = rows
        while len(self._cache) > 2:
            self._cache.popitem(last=False)
        return rows


def _row_array(key: str, value: Any, rows: int, where: str) -> np.ndarray:
    """``value`` as a float32 ``(rows, width)`` array, one row per store row."""
    array = np.asarray(value, dtype=np.float32)
    array = array[:, None] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[0] != rows:
        raise ValueError(f"extra array {key!r} has shape {np.shape(value)}; expected one row per row of the activation "
                         f"store {where!r}: ({rows},) or ({rows}, width)")
    return array


# -- live forwards -------------------------------------------------------------------------------------
class LiveSource(Source):
    """Rows computed by the model's forward on ``prompts`` at ``sites`` (resolved :class:`.sites.Site` s).

    Args:
        model: the InterpretableModel.
        prompts: texts or token-id lists (any sequence, e.g. a :class:`~mlxterp.PromptFile`).
        sites: the sites every batch holds (each dictionary's input and target).
        exclude: token ids never used as rows: ``"special"`` (the tokenizer's BOS, EOS, padding and other
            special ids), a list of ids, or None (every real token).
        context: keep at most this many tokens of each prompt (None: all).
        skip: leave out each prompt's first ``skip`` tokens (the forward still sees them).
        prompt_batch: prompts per forward.
        shuffle_batches: batches per shuffled window.
    """

    def __init__(self, model: Any, prompts: Sequence[Any], sites: Sequence[Any], *, exclude: Any = "special",
                 context: Optional[int] = None, prompt_batch: int = 8, shuffle_batches: int = 8, skip: int = 0):
        if len(prompts) == 0:
            raise ValueError("prompts is empty; give a non-empty list of prompts (or a PromptFile)")
        self.model, self.prompts = model, prompts
        self.sites = list({s.key: s for s in sites}.values())
        self.widths = {s.key: s.width for s in self.sites}
        self.excluded = excluded_ids(model, exclude)
        self.context, self.prompt_batch, self.shuffle_batches, self.skip = context, prompt_batch, shuffle_batches, skip
        self.forwards = 0  # forwards run (each feeds every dictionary)
        self._program: Any = None
        self._prompts_cache: Dict[int, Tuple[List[int], np.ndarray]] = {}
        self._orders: Dict[int, np.ndarray] = {}
        self._seed = 0
        self._check_prompts()

    def _check_prompts(self) -> None:
        """Tokenize every prompt once now (ids in the vocabulary, lengths within the model's positions once
        cut to ``context``), so that a bad prompt is an error before training, naming it."""
        longest, which = 0, 0
        for first in range(0, len(self.prompts), CHECK_CHUNK):
            rows = token_rows(self.model, self.prompts[first:first + CHECK_CHUNK], offset=first)
            lengths = [min(len(r), self.context or len(r)) for r in rows]
            top = int(np.argmax(lengths))
            if lengths[top] > longest:
                longest, which = lengths[top], first + top
        self.model._positions.check(longest, f"prompt {which}")

    def identity(self) -> Dict[str, Any]:
        """The model's fingerprint, a digest of the prompts and their number, the sites, the excluded ids and
        the other arguments (``context``, ``prompt_batch``, ``shuffle_batches``)."""
        out = {"kind": "live", "model": model_identity(self.model)["fingerprint"],
               "prompts": digest(prompt_hashes(self.prompts)), "n_prompts": len(self.prompts),
               "sites": sorted(self.widths), "exclude": sorted(self.excluded), "context": self.context,
               "prompt_batch": self.prompt_batch, "shuffle_batches": self.shuffle_batches}
        if self.skip:  # recorded only when set, so that runs begun before it keep their identity
            out["skip"] = self.skip
        return out

    def batches(self, batch_size: int, seed: int, comm: Comm, cursor: Optional[Cursor] = None,
                total: Optional[int] = None) -> Iterator[Tuple[Batch, Cursor]]:
        """Endless batches (see :meth:`Source.batches`): ``{site key: (batch_size / ranks, width)}`` float32,
        computed a window of ``shuffle_batches`` batches at a time (the forwards of a window split over the
        ranks); the cursor holds the window, the epoch, the prompt and row within it, and the batch within
        the window. With ``total``, the run's last window computes only the batches the run still draws."""
        if seed != self._seed:
            self._seed, self._orders = seed, {}
        window = dict(cursor) if cursor else {"window": 0, "epoch": 0, "prompt": 0, "offset": 0, "batch": 0}
        mine = _rank_rows(batch_size, comm)
        while True:
            count = self.shuffle_batches  # the run's last window holds only the batches it still draws
            if total is not None:
                count = max(1, min(count, total - window["window"] * self.shuffle_batches))
            rows, following = self._window(window, batch_size * count, seed, comm)
            for i in range(window["batch"], count):
                batch = {k: v[i * batch_size + mine.start: i * batch_size + mine.stop] for k, v in rows.items()}
                last = i + 1 == count
                yield batch, ({**following, "batch": 0} if last else {**window, "batch": i + 1})
            window = {**following, "batch": 0}

    # -- one window ---------------------------------------------------------------------------------
    def _window(self, start: Cursor, size: int, seed: int, comm: Comm) -> Tuple[Batch, Cursor]:
        """The ``size`` stream rows from ``start`` (shuffled), and the cursor of the next window."""
        pieces, following = self._plan(start, size)
        chunks = self._chunks([p for p, _, _ in pieces])
        mine = dist.my_items(range(len(chunks)), comm.group)
        local = {k: [] for k in self.widths}
        for c in mine:
            for key, rows in self._run_chunk(chunks[c]).items():
                local[key].append(rows)
        by_prompt = self._assemble(local, chunks, mine, comm)
        order = np.random.default_rng([seed, 1, start["window"]]).permutation(size)
        take = mx.array(order.astype(np.int32))
        rows = {}
        for key in self.widths:
            stream = mx.concatenate([by_prompt[key][p][lo:hi] for p, lo, hi in pieces])
            rows[key] = mx.take(stream, take, axis=0)
        mx.eval(list(rows.values()))
        return rows, {**following, "window": start["window"] + 1}

    def _plan(self, start: Cursor, size: int) -> Tuple[List[Tuple[int, int, int]], Cursor]:
        """``[(prompt, first kept row, end kept row)]`` covering ``size`` rows from ``start``, and where the
        next window starts."""
        epoch, index, offset = start["epoch"], start["prompt"], start["offset"]
        pieces, need, barren = [], size, 0
        while need > 0:
            if index == len(self.prompts):
                epoch, index = epoch + 1, 0
            prompt = int(self._order(epoch)[index])
            kept = len(self._kept(prompt))
            take = min(kept - offset, need)
            barren = 0 if take > 0 else barren + 1
            if barren > len(self.prompts):
                raise ValueError("no prompt has a token to train on: every token is excluded (exclude="
                                 f"{sorted(self.excluded)}) or the prompts are empty")
            if take > 0:
                pieces.append((prompt, offset, offset + take))
                need -= take
            offset += take
            if offset >= kept:
                index, offset = index + 1, 0
        return pieces, {"epoch": epoch, "prompt": index, "offset": offset}

    def _order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s order of the prompts (the current and the previous epoch's are kept)."""
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = np.random.default_rng([self._seed, epoch]).permutation(len(self.prompts))
        return self._orders[epoch]

    def _kept(self, prompt: int) -> np.ndarray:
        """Token positions of ``prompt`` that become rows (truncated to ``context``, exclusions dropped)."""
        return self._prompt(prompt)[1]

    def _tokens(self, prompt: int) -> List[int]:
        return self._prompt(prompt)[0]

    def _prompt(self, prompt: int) -> Tuple[List[int], np.ndarray]:
        """``(token ids, kept positions)`` of a prompt, tokenized once (the last 65536 prompts are kept)."""
        found = self._prompts_cache.get(prompt)
        if found is None:
            ids = token_rows(self.model, [self.prompts[prompt]], offset=prompt)[0]
            ids = ids[: self.context] if self.context else ids
            found = (ids, np.flatnonzero(~np.isin(np.array(ids), list(self.excluded)) & (np.arange(len(ids)) >= self.skip)))
            self._prompts_cache[prompt] = found
            if len(self._prompts_cache) > 1 << 16:
                self._prompts_cache.pop(next(iter(self._prompts_cache)))
        return found

    def _chunks(self, prompts: List[int]) -> List[Tuple[List[int], np.ndarray]]:
        """The distinct prompts of a window in forwards of ``prompt_batch``: ``[(prompts, tokens)]``."""
        distinct = list(dict.fromkeys(prompts))
        rows = [self._tokens(p) for p in distinct]
        return [([distinct[i] for i in ids], tokens) for ids, tokens, _ in
                padded_batches(self.model, rows, self.prompt_batch)]

    def _run_chunk(self, chunk: Tuple[List[int], np.ndarray]) -> Dict[str, mx.array]:
        """One forward: every kept row of the chunk's prompts at every site, prompts in chunk order."""
        prompts, tokens = chunk
        out = self._program_for()(tokens=mx.array(tokens))
        self.forwards += 1
        width = tokens.shape[1]
        flat = np.concatenate([r * width + self._kept(p) for r, p in enumerate(prompts)]).astype(np.int32)
        index = mx.array(flat)
        return {key: mx.take(out[key].reshape(-1, out[key].shape[-1]), index, axis=0).astype(mx.float32)
                for key in self.widths}

    def _program_for(self) -> Any:
        """The program saving every site (recorded once on a short probe; it replays at any shape)."""
        if self._program is None:
            probe = mx.zeros((1, site_names.PROBE_TOKENS), dtype=mx.int32)
            with self.model.trace(probe, capture="saved", compile=False) as tr:
                for site in self.sites:
                    site_names.read(self.model, site).save(site.key)
            self._program = tr.program()
        return self._program

    def _assemble(self, local: Dict[str, List[mx.array]], chunks: list, mine: List[int], comm: Comm,
                  ) -> Dict[str, Dict[int, mx.array]]:
        """``{key: {prompt: its kept rows}}`` for every prompt of the window, on every rank."""
        counts = {c: [len(self._kept(p)) for p in chunks[c][0]] for c in range(len(chunks))}
        out: Dict[str, Dict[int, mx.array]] = {k: {} for k in self.widths}
        for key in self.widths:
            mine_rows = mx.concatenate(local[key]) if local[key] else mx.zeros((0, self.widths[key]))
            parts = [mine_rows] if not comm.distributed else \
                [mx.array(a) for a in dist.gather(np.array(mine_rows), comm.group)]
            for r, part in enumerate(parts):
                owned = mine if not comm.distributed else list(range(len(chunks)))[r::comm.size]
                pos = 0
                for c in owned:
                    for p, n in zip(chunks[c][0], counts[c]):
                        out[key][p] = part[pos: pos + n]
                        pos += n
        return out


def excluded_ids(model: Any, exclude: Any) -> frozenset:
    """Token ids that never become rows (see :class:`LiveSource`)."""
    if exclude is None:
        return frozenset()
    if isinstance(exclude, str):
        if exclude != "special":
            raise ValueError(f"exclude must be 'special', a list of token ids or None, got {exclude!r}")
        tok = model.tokenizer
        ids = set()
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tok, attr, None) if tok is not None else None
            if isinstance(value, int):
                ids.add(value)
        special = getattr(tok, "all_special_ids", None) if tok is not None else None
        ids.update(int(i) for i in (special or ()))
        return frozenset(ids)
    if isinstance(exclude, (list, tuple, set, frozenset)) and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in exclude):
        return frozenset(int(i) for i in exclude)
    raise ValueError(f"exclude must be 'special', a list of token ids or None, got {exclude!r}")
