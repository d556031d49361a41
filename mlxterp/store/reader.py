"""``ActivationStore``: a lazy, memory-mapped reader of an activation store folder.

Only the shards the manifest lists are read (a killed writer's leftovers never are), and each is checked
against the manifest when the store is opened (:func:`.integrity.verify_shard`: its window, size, tensors
and prompt hashes), so an exchanged, truncated or foreign shard, or a window listed twice, is an error
naming the file instead of wrong rows. Rows are numbered
across shards in prompt order: a row is one prompt for a ``"positions"`` store
(``batch_get_activations(..., out=)``) and one token for a ``"tokens"`` store
(``collect_activations(..., out=)``). Shards are memory-mapped on first use (one map per shard file, at
most :data:`OPEN_SHARDS` kept open); a batch reads only its own rows.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import mlx.core as mx
import numpy as np

from .collect import storage_dtype
from .files import DTYPES, to_mx
from .integrity import HASH_KEY, LENGTHS_KEY, StoreIntegrityError, check_listing, verify_shard
from .manifest import digest, read_manifest, windows

OPEN_SHARDS = 64  # memory maps kept open at once (one file descriptor each)
Layers = Union[None, int, str, Sequence[Union[int, str]]]


class ActivationStore:
    """Read an activation store written by ``batch_get_activations``/``collect_activations(..., out=)`` or
    ``mlxterp activations --out DIR``.

    Args:
        path: the store folder.
        layers: keep only these layers (ints for a positions store, module names or keys for a tokens
            store); ``None`` keeps all.
        allow_partial: open a store whose collection has not finished (only the finished shards' rows are
            seen); by default that is an error, so a half-collected dataset is never used by accident.

    Attributes:
        manifest: the parsed ``manifest.json``.
        keys: the stored activation names (``"layer_3"``, or module keys such as ``"layers.3.mlp"``).
        kind: ``"positions"`` (a row per prompt) or ``"tokens"`` (a row per token).
        dtype: the stored mlx dtype.

    Raises:
        FileNotFoundError: no store (no ``manifest.json``) in ``path``, or a listed shard is missing.
        StoreIntegrityError: a listed shard that is not what the manifest says (exchanged, truncated, of
            other prompts, listed twice); the file and the difference are named.
        ValueError: an unfinished store without ``allow_partial``, a damaged manifest, or an unknown layer.
    """

    def __init__(self, path: Union[str, Path], *, layers: Layers = None, allow_partial: bool = False):
        self.path = Path(path).expanduser()
        manifest = read_manifest(self.path)
        if manifest is None:
            raise FileNotFoundError(f"no activation store in {str(self.path)!r} (no manifest.json); write one with "
                                    "batch_get_activations(..., out=DIR) or 'mlxterp activations --out DIR'")
        self.manifest = manifest
        self.kind: str = manifest["kind"]
        self.dtype = storage_dtype(manifest["dtype"], None)
        self._np_dtype = np.uint16 if self.dtype == mx.bfloat16 else np.dtype(manifest["dtype"])
        self._shards = check_listing(self.path, manifest)
        self._check_complete(allow_partial)
        self._headers = [verify_shard(self.path, entry, manifest) for entry in self._shards]
        self._open: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
        if self.complete and digest(self.prompt_hashes()) != manifest["prompts_sha256"]:
            raise StoreIntegrityError(f"activation store {str(self.path)!r}: its shards' prompt hashes, in order, "
                                      "are not the prompt list its manifest describes")
        self._bounds = np.cumsum([0] + [e["rows"] for e in self._shards])
        self.keys: List[str] = self._select(layers) if layers is not None else list(manifest["keys"])

    # -- description -----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Whether every prompt's shard is written."""
        return len(self._shards) == len(windows(self.manifest))

    @property
    def n_prompts(self) -> int:
        """Prompts in the stored shards (all of the collection's when complete)."""
        return int(sum(e["stop"] - e["start"] for e in self._shards))

    @property
    def layers(self) -> List[Any]:
        """Layer indices (positions store) or module keys (tokens store) of :attr:`~mlxterp.ActivationStore.keys`."""
        by_key = dict(zip(self.manifest["keys"], self.manifest["layers"]))
        return [by_key[k] for k in self.keys]

    def __len__(self) -> int:
        """Rows: prompts for a positions store, tokens for a tokens store."""
        return int(self._bounds[-1])

    def row_shape(self, key: str) -> tuple:
        """Shape of one row of ``key``: ``(hidden,)`` for one position (or a tokens store's row),
        ``(n_positions, hidden)`` for several; ``hidden`` being the site's trailing shape."""
        return tuple(self.manifest["row_shapes"][self._key(key)])

    def __repr__(self) -> str:
        rows = "prompts" if self.kind == "positions" else "tokens"
        state = "" if self.complete else f", partial: {len(self._shards)}/{len(windows(self.manifest))} shards"
        return (f"ActivationStore({str(self.path)!r}, {len(self)} {rows}, keys {self.keys}, "
                f"{self.manifest['dtype']}{state})")

    def select(self, layers: Layers) -> "ActivationStore":
        """The same store restricted to ``layers`` (see the constructor)."""
        return ActivationStore(self.path, layers=layers, allow_partial=True)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, key: Union[int, str], rows: Any = None, dtype: Any = None) -> mx.array:
        """Rows of one key as an ``mx.array`` ``(n_rows, *row_shape(key))`` in the stored dtype (or ``dtype``):
        all of them, a ``slice``, or integer row numbers (negative ones count from the end; anything but
        integers is a TypeError)."""
        key = self._key(key)
        if isinstance(rows, slice):
            span = range(len(self))[rows]
            rows = np.arange(span.start, span.stop, span.step, dtype=np.int64)
        elif rows is not None:
            rows = _row_numbers(rows).reshape(-1)
            rows = np.where(rows < 0, rows + len(self), rows)  # negative rows count from the end
        return self._read(key, rows, dtype)

    def to_dict(self, dtype: Any = None) -> Dict[str, mx.array]:
        """Every selected key's rows in memory, ``{key: (len(store), *row_shape) mx.array}`` in the stored dtype
        (or ``dtype``), for stores that fit."""
        return {k: self._read(k, None, dtype) for k in self.keys}

    def batches(self, batch_size: int, *, layers: Layers = None, shuffle: bool = False, seed: Optional[int] = None,
                drop_last: bool = False, dtype: Any = None) -> Iterator[Dict[str, mx.array]]:
        """Iterate ``{key: (batch, *row_shape) mx.array}`` over the rows, e.g. to train a probe or an SAE.

        Args:
            batch_size: rows per batch (>= 1).
            layers: only these layers (default: the store's selection).
            shuffle: visit the rows in a random order (a new permutation per call).
            seed: seed of that order (reproducible epochs: pass a different seed per epoch).
            drop_last: skip a last batch smaller than ``batch_size``.
            dtype: cast to this dtype (default: the stored one).
        """
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        keys = self._select(layers) if layers is not None else self.keys
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            rows = order[start:start + batch_size] if shuffle else np.arange(start, min(start + batch_size, n))
            yield {k: self._read(k, rows, dtype) for k in keys}

    def prompt_hashes(self) -> np.ndarray:
        """``(n_prompts,)`` uint64 numpy hash of each stored prompt (see :mod:`.manifest`), in prompt order."""
        return np.concatenate([self._tensor(i, HASH_KEY) for i in range(len(self._shards))] or [np.zeros(0, np.uint64)])

    def lengths(self) -> np.ndarray:
        """Tokens store: ``(n_prompts,)`` int64 numpy token count of each stored prompt (its rows, in order)."""
        if self.kind != "tokens":
            raise ValueError(f"lengths() is for a tokens store; {str(self.path)!r} holds one row per prompt")
        return np.concatenate([self._tensor(i, LENGTHS_KEY) for i in range(len(self._shards))]
                              or [np.zeros(0, np.int32)]).astype(np.int64)

    def prompt_index(self) -> np.ndarray:
        """``(len(store),)`` int64 numpy index (into the collected prompt list) of the prompt each row comes
        from."""

        firsts = [np.arange(e["start"], e["stop"]) for e in self._shards]
        prompts = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
        return prompts if self.kind == "positions" else np.repeat(prompts, self.lengths())

    # -- internals -------------------------------------------------------------------------------
    def _check_complete(self, allow_partial: bool) -> None:
        total = len(windows(self.manifest))
        if len(self._shards) < total and not allow_partial:
            missing = self.manifest["n_prompts"] - sum(e["stop"] - e["start"] for e in self._shards)
            raise ValueError(f"activation store {str(self.path)!r} is unfinished: {len(self._shards)} of {total} "
                             f"shards written ({missing} of {self.manifest['n_prompts']} prompts missing); rerun "
                             "the same collection to finish it, or pass allow_partial=True to read what is there")

    def _key(self, key: Union[int, str]) -> str:
        keys = self._select([key])
        return keys[0]

    def _select(self, layers: Layers) -> List[str]:
        """Stored keys for ``layers`` (ints -> ``layer_{i}``; names matched to keys and module paths)."""
        items = [layers] if isinstance(layers, (int, str, np.integer)) else list(layers)
        stored, modules = self.manifest["keys"], self.manifest.get("modules", [])
        out = []
        for item in items:
            name = f"layer_{int(item)}" if isinstance(item, (int, np.integer)) and not isinstance(item, bool) else item
            if name not in stored and name in modules:
                name = stored[modules.index(name)]
            if name not in stored:
                raise ValueError(f"layer {item!r} is not in the activation store {str(self.path)!r}; it holds "
                                 f"{', '.join(map(repr, stored))}")
            if name not in out:
                out.append(name)
        return out

    def _map(self, i: int) -> tuple:
        """``(memory map of shard i, data offset, header)``, opened on first use (LRU of OPEN_SHARDS)."""
        name = self._shards[i]["file"]
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        offset, header = self._headers[i]
        opened = (np.memmap(self.path / name, dtype=np.uint8, mode="r"), offset, header)
        self._open[name] = opened
        while len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)
        return opened

    def _tensor(self, i: int, key: str) -> np.ndarray:
        """Shard ``i``'s tensor ``key`` as a read-only view of its memory map (bfloat16 as uint16)."""
        data, offset, header = self._map(i)
        entry = header[key]
        np_dtype = DTYPES[entry["dtype"]][0]
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        return np.ndarray(shape, dtype=np_dtype, buffer=data, offset=offset + begin) if end > begin else \
            np.zeros(shape, dtype=np_dtype)

    def _read(self, key: str, rows: Optional[np.ndarray], dtype: Any) -> mx.array:
        """Rows (None: all) of ``key`` across shards, as one mx.array."""
        cast = storage_dtype(dtype, None) if dtype is not None else None
        if rows is None:
            parts = [self._tensor(i, key) for i in range(len(self._shards))]
            values = parts[0] if len(parts) == 1 else np.concatenate(
                parts or [np.zeros((0, *self.row_shape(key)), dtype=self._np_dtype)])
        else:
            values = self._gather(key, np.asarray(rows, dtype=np.int64))
        return to_mx(values, "BF16" if self.dtype == mx.bfloat16 else "", cast)

    def _gather(self, key: str, rows: np.ndarray) -> np.ndarray:
        """The asked rows, in their order: a slice when they are consecutive in one shard, else each
        shard's rows read by one fancy index."""
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row numbers must be in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        shard = np.searchsorted(self._bounds, rows, side="right") - 1
        if len(rows) and shard[0] == shard[-1] and np.all(np.diff(rows) == 1):
            i = int(shard[0])
            first = int(rows[0] - self._bounds[i])
            return self._tensor(i, key)[first:first + len(rows)]
        out = np.empty((len(rows), *self.row_shape(key)), dtype=self._np_dtype)
        for i in np.unique(shard):
            sel = np.flatnonzero(shard == i)
            out[sel] = self._tensor(int(i), key)[rows[sel] - self._bounds[i]]
        return out


def _row_numbers(rows: Any) -> np.ndarray:
    """``rows`` as int64 row numbers; TypeError for anything but integers (a float or a boolean mask would
    otherwise be truncated or read as the rows 0 and 1)."""
    array = np.asarray(rows)
    if array.size and array.dtype.kind not in "iu":
        hint = " (for a boolean mask, pass np.flatnonzero(mask))" if array.dtype.kind == "b" else ""
        raise TypeError(f"rows must be integer row numbers (an int list or array, or a slice){hint}; got "
                        f"{array.dtype} values {array.reshape(-1)[:4].tolist()}")
    return array.astype(np.int64)
