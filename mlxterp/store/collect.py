"""The two kinds of rows an activation store holds, as :class:`~.writer.Collection` s.

- ``"positions"`` (``batch_get_activations(..., out=)``): one row per prompt, the layers' outputs at
  chosen token positions, computed by the same batched, compiled gather as in memory.
- ``"tokens"`` (``collect_activations(..., out=)``): one row per real token of every prompt (padding
  dropped), for any sites' ``(batch, seq, ...)`` values (:mod:`mlxterp.sites`); the shard also keeps each
  prompt's length so every row maps back to its prompt and position.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import mlx.core as mx
import numpy as np

from ..activations import position_index, token_rows, gather_rows, padded_batches
from ..core import WrappedModel
from ..sites import Site, read_site, sequence_specs
from .manifest import model_identity
from .integrity import LENGTHS_KEY
from .writer import Collection

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def storage_dtype(dtype: Any, natural: Any) -> Any:
    """The mlx dtype rows are stored in: ``natural`` (the model's) for None, else one of :data:`DTYPES`."""
    if dtype is None:
        return natural
    for name, value in DTYPES.items():
        if dtype == value or dtype == name:
            return value
    raise ValueError(f"dtype must be None (the model's activation dtype) or one of {sorted(DTYPES)} (or the "
                     f"matching mx dtype), got {dtype!r}")


def dtype_name(dtype: Any) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def check_lengths(model: WrappedModel, prompts: Sequence[Any], first: int) -> np.ndarray:
    """Token counts of ``prompts`` (numbered from ``first``), each tokenized and range-checked, and the
    longest checked against the model's position limit."""
    lengths = np.array([len(r) for r in token_rows(model, prompts, offset=first)], dtype=np.int64)
    longest = int(np.argmax(lengths))
    model._positions.check(int(lengths[longest]), f"prompt {first + longest}")
    return lengths


def positions_collection(model: WrappedModel, sites: List[Site], positions: List[int], single: bool, dtype: Any,
                         batch_size: int) -> Collection:
    """Rows = prompts: each site (``layer_{i}``, or a named site) of shape ``(hidden,)`` (one position) or
    ``(positions, hidden)`` (``hidden``: the site's trailing shape)."""
    specs = sequence_specs(model, sites, "an activation store")
    store_dtype = storage_dtype(dtype, specs[0][1])
    keys = [site.key for site in sites]
    row_shapes = {k: ([] if single else [len(positions)]) + list(s[0]) for k, s in zip(keys, specs)}
    spec = {"kind": "positions", "model": model_identity(model), "layers": [site.label for site in sites],
            "keys": keys, "modules": [site.name for site in sites], "positions": list(positions),
            "single_position": single, "dtype": dtype_name(store_dtype), "row_shapes": row_shapes}

    def check(prompts: Sequence[Any], first: int) -> np.ndarray:
        lengths = check_lengths(model, prompts, first)
        position_index(lengths, positions, offset=first)
        return lengths

    def compute(prompts: Sequence[Any], first: int, bar: Any) -> Dict[str, mx.array]:
        rows = token_rows(model, prompts, offset=first)
        index = position_index([len(r) for r in rows], positions, offset=first)
        out = gather_rows(model, rows, index, sites, single, batch_size, bar)
        return {k: v.astype(store_dtype) for k, v in out.items()}

    per_prompt = sum(int(np.prod(s)) for s in row_shapes.values()) * store_dtype.size
    return Collection(spec, check, compute, bytes_per_prompt=per_prompt)


def tokens_collection(model: WrappedModel, sites: List[Site], dtype: Any, batch_size: int) -> Collection:
    """Rows = tokens: every real token's value of each site, ``(hidden,)`` per row (its trailing shape)."""
    specs = sequence_specs(model, sites, "an activation store")
    store_dtype = storage_dtype(dtype, specs[0][1])
    keys = [site.key for site in sites]
    row_shapes = {k: list(s[0]) for k, s in zip(keys, specs)}
    spec = {"kind": "tokens", "model": model_identity(model), "layers": list(keys), "keys": keys,
            "modules": [site.name for site in sites], "positions": "all", "single_position": False,
            "dtype": dtype_name(store_dtype), "row_shapes": row_shapes}

    def check(prompts: Sequence[Any], first: int) -> np.ndarray:
        return check_lengths(model, prompts, first)

    def compute(prompts: Sequence[Any], first: int, bar: Any) -> Dict[str, mx.array]:
        rows = token_rows(model, prompts, offset=first)
        out = token_outputs(model, rows, sites, batch_size, bar)
        out = {k: v.astype(store_dtype) for k, v in out.items()}
        out[LENGTHS_KEY] = mx.array([len(r) for r in rows], dtype=mx.int32)
        return out

    per_token = sum(int(np.prod(s)) for s in row_shapes.values()) * store_dtype.size
    return Collection(spec, check, compute, bytes_per_token=per_token)


def token_outputs(model: WrappedModel, rows: List[List[int]], sites: List[Site], batch_size: int,
                  bar: Any = None) -> Dict[str, mx.array]:
    """Each site's value at every real token of ``rows``, ``(total tokens, *trailing)``, prompts in order."""
    keys = [site.key for site in sites]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    pieces: Dict[str, List[mx.array]] = {k: [] for k in keys}
    starts = np.zeros(len(rows), dtype=np.int64)  # where each prompt's tokens begin in the batch-order rows
    done = 0
    for ids, tokens, _ in padded_batches(model, rows, batch_size):
        with model.trace(mx.array(tokens), compile=True, capture="saved") as tr:
            for site in sites:
                read_site(model, site).save(site.key)
        width = tokens.shape[1]
        flat = np.concatenate([r * width + np.arange(lengths[j]) for r, j in enumerate(ids)])
        take = mx.array(flat.astype(np.int32))
        for key in keys:
            value = tr.saved_values[key]
            pieces[key].append(mx.take(value.reshape(-1, *value.shape[2:]), take, axis=0))
        mx.eval([p[-1] for p in pieces.values()])
        starts[ids] = done + np.concatenate([[0], np.cumsum(lengths[ids])[:-1]])
        done += int(lengths[ids].sum())
        if bar is not None:
            bar.update(len(ids))
    order = mx.array(np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]).astype(np.int32))
    out = {}
    for key in keys:
        out[key] = mx.take(mx.concatenate(pieces.pop(key), axis=0), order, axis=0)
        mx.eval(out[key])
    return out
