"""Input normalisation: text, batches of text, token lists and arrays become one right-padded token array.

Right padding keeps every real position exact under causal attention (padding after a token cannot
change it), and the true lengths are kept so "position -1" can mean each row's last real token.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Optional, Sequence

import mlx.core as mx
import numpy as np

INPUT_KINDS = ("str, list of str, list of int, list of lists of int, an integer mx.array of shape (seq,) "
               "or (batch, seq), or a Conversation (or a list of them)")


class PromptObject(abc.ABC):
    """An input that gives its own token ids (a :class:`mlxterp.conversation.Conversation`): traces,
    generation and the helpers built on them take it wherever they take a prompt."""

    @abc.abstractmethod
    def token_ids(self, tokenizer: Any) -> list[int]:
        """The prompt's token ids for ``tokenizer`` (the model's); raises if they are not its."""

    def for_generation(self, owner: Any) -> Optional[Any]:
        """Called before a generation of this prompt alone: checks it can be generated from, and returns a
        KV prefix cache to resume (see :class:`mlxterp.generation.Generation`) or ``None``."""
        return None


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    """Right-padded tokens ``(batch, seq)`` and each row's real length."""

    tokens: mx.array
    lengths: tuple[int, ...]

    @property
    def padded(self) -> bool:
        """Whether any row is shorter than the batch's sequence length."""
        return any(n != self.tokens.shape[1] for n in self.lengths)


def to_token_batch(inputs: Any, tokenizer: Any, vocab_rows: int | None, pad_id: int = 0) -> TokenBatch:
    """Normalise ``inputs`` (see :data:`INPUT_KINDS`) and check every id is below ``vocab_rows``."""
    if isinstance(inputs, str):
        rows = [_encode(tokenizer, inputs)]
    elif isinstance(inputs, PromptObject):
        rows = [inputs.token_ids(tokenizer)]
    elif isinstance(inputs, mx.array):
        return _check_array_range(inputs, array_batch(inputs), vocab_rows)
    elif isinstance(inputs, np.ndarray):
        return check_range(array_batch(mx.array(inputs)), vocab_rows)
    elif isinstance(inputs, (list, tuple)):
        rows = _rows_from_sequence(inputs, tokenizer)
    else:
        raise TypeError(f"inputs has type {type(inputs).__name__}; expected {INPUT_KINDS}")
    return check_range(pad_rows(rows, pad_id), vocab_rows)


def token_rows(inputs: Any, tokenizer: Any) -> list[list[int]]:
    """The unpadded token rows of ``inputs`` (see :data:`INPUT_KINDS`; an array's rows are taken whole)."""
    if isinstance(inputs, str):
        return [_encode(tokenizer, inputs)]
    if isinstance(inputs, PromptObject):
        return [inputs.token_ids(tokenizer)]
    if isinstance(inputs, (mx.array, np.ndarray)):
        return array_batch(mx.array(inputs)).tokens.tolist()
    if isinstance(inputs, (list, tuple)):
        return _rows_from_sequence(inputs, tokenizer)
    raise TypeError(f"inputs has type {type(inputs).__name__}; expected {INPUT_KINDS}")


def _rows_from_sequence(inputs: Sequence, tokenizer: Any) -> list[list[int]]:
    if len(inputs) == 0:
        raise ValueError(f"inputs is empty; expected {INPUT_KINDS}")
    if all(isinstance(x, str) for x in inputs):
        return [_encode(tokenizer, x) for x in inputs]
    if all(isinstance(x, PromptObject) for x in inputs):
        return [x.token_ids(tokenizer) for x in inputs]
    if all(is_int(x) for x in inputs):
        return [[int(x) for x in inputs]]
    if all(isinstance(x, (list, tuple)) and all(is_int(t) for t in x) for x in inputs):
        return [[int(t) for t in x] for x in inputs]
    kinds = sorted({type(x).__name__ for x in inputs})
    raise TypeError(f"inputs is a list mixing {', '.join(kinds)}; expected {INPUT_KINDS}")


def is_int(x: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _encode(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise ValueError(
            f"text input {text[:40]!r} needs a tokenizer, and this model has none: pass "
            "InterpretableModel(model, tokenizer=...) or give token ids (a list of int or an mx.array)"
        )
    ids = list(tokenizer.encode(text))
    if not ids:
        raise ValueError(f"text input {text!r} encodes to no tokens; give a non-empty prompt")
    return ids


def array_batch(tokens: mx.array) -> TokenBatch:
    """A token array as a batch, checking what its dtype and shape say (not its ids: see :func:`check_range`).
    This is all that can be checked of placeholder tokens inside ``mx.compile`` or ``mx.vmap``."""
    if not mx.issubdtype(tokens.dtype, mx.integer):
        raise TypeError(f"token array has dtype {tokens.dtype}; expected an integer dtype such as mx.int32")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.size == 0:
        raise ValueError(f"token array has shape {tuple(tokens.shape)}; expected (seq,) or (batch, seq) with "
                         "batch > 0 and seq > 0")
    return TokenBatch(tokens, (tokens.shape[1],) * tokens.shape[0])


def pad_rows(rows: list[list[int]], pad_id: int) -> TokenBatch:
    """Right-pad token rows with ``pad_id`` into one int32 array."""
    if any(len(r) == 0 for r in rows):
        raise ValueError("an input row has no tokens; every prompt needs at least one token")
    width = max(len(r) for r in rows)
    data = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, r in enumerate(rows):
        data[i, : len(r)] = r
    return TokenBatch(mx.array(data), tuple(len(r) for r in rows))


# The token arrays checked last, each with a copy of its bytes and its smallest and largest id. A sweep passes
# one array again and again; comparing its bytes with the copy (a memcmp) costs far less than a min/max
# reduction right after a forward (~40 us against ~100 us measured), and a write into the array in place
# (`tokens[0, 1] = 10**6`) changes the bytes, so it is checked again. The memo keeps the ids' bounds, not a
# verdict: an array checked for a 100,000-row embedding is checked again for a 128-row one. An out-of-range
# id would make MLX's gather read out of bounds (garbage or a crash).
_CHECKED: tuple[tuple[mx.array, bytes, int, int], ...] = ()


def _check_array_range(inputs: mx.array, batch: TokenBatch, vocab_rows: int | None) -> TokenBatch:
    """:func:`check_range` for a user's token array, skipping arrays checked before and unchanged since."""
    global _CHECKED
    if vocab_rows is None:
        return batch
    data = memoryview(inputs).tobytes()  # evaluates the array if a write left it lazy
    for seen, snapshot, lo, hi in _CHECKED:  # a tuple: other threads replace it, never change it
        if seen is inputs and snapshot == data:
            return batch if 0 <= lo and hi < vocab_rows else check_range(batch, vocab_rows)
    lo, hi = _id_bounds(np.asarray(batch.tokens))
    _CHECKED = ((inputs, data, lo, hi),) + tuple(entry for entry in _CHECKED if entry[0] is not inputs)[:7]
    return check_range(batch, vocab_rows, (lo, hi))


def _id_bounds(ids: np.ndarray) -> tuple[int, int]:
    return int(ids.min()), int(ids.max())


def check_range(batch: TokenBatch, vocab_rows: int | None, bounds: tuple[int, int] | None = None) -> TokenBatch:
    if vocab_rows is None:
        return batch
    ids = np.asarray(batch.tokens)
    lo, hi = bounds if bounds is not None else _id_bounds(ids)
    if lo < 0 or hi >= vocab_rows:
        bad = hi if hi >= vocab_rows else lo
        where = np.argwhere(ids == bad)[0].tolist()
        raise ValueError(
            f"token id {bad} at position {tuple(where)} is out of range: the model's embedding has "
            f"{vocab_rows} rows, so ids must be in [0, {vocab_rows - 1}]"
        )
    return batch
