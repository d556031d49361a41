"""Argument checks shared by the analysis helpers. Each error names the argument, what was expected,
and the valid choices."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import mlx.core as mx
import numpy as np

from ..inputs import is_int

OUTPUT = "output"  # the component name for a whole layer's output


def resolve_indices(values: Any, size: int, *, arg: str, unit: str, valid: str, sort: bool) -> List[int]:
    """De-duplicated indices into ``range(size)`` (negative ones count from the end).

    Args:
        values: ``None`` (every index), an int, or a list/tuple/range/array of ints.
        size: how many there are.
        arg: the argument's name, for messages.
        unit: what one index is ("layer", "position"), for messages.
        valid: the phrase describing the valid range, for messages.
        sort: sort the result (else keep the given order).

    Raises:
        ValueError: for a non-int, an out-of-range index or an empty selection, naming ``arg``.
    """
    if values is None:
        return list(range(size))
    items = [values] if is_int(values) else values
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple, range, np.ndarray)):
        raise ValueError(f"{arg}: expected None, an int or a list of {unit} indices; got {values!r}; {valid}")
    if len(items) == 0:
        raise ValueError(f"{arg}: expected at least one {unit} index (or None for all), got an empty list; {valid}")
    out: List[int] = []
    for x in items:
        if not is_int(x):
            raise ValueError(f"{arg}: {unit} {x!r} is not an int ({type(x).__name__}); {valid}")
        if not -size <= int(x) < size:
            raise ValueError(f"{arg}: {unit} index {int(x)} is out of range: {valid}")
        if int(x) % size not in out:
            out.append(int(x) % size)
    return sorted(out) if sort else out


def resolve_layers(layers: Any, n_layers: int, arg: str = "layers", sort: bool = True) -> List[int]:
    """Layer indices, de-duplicated, sorted unless ``sort=False`` (see :func:`resolve_indices`)."""
    valid = f"the model has {n_layers} layers (valid indices 0 to {n_layers - 1}, or -{n_layers} to -1 from the end)"
    return resolve_indices(layers, n_layers, arg=arg, unit="layer", valid=valid, sort=sort)


def resolve_positions(positions: Any, seq_len: int, arg: str = "positions") -> List[int]:
    """Position indices in the given order, de-duplicated (see :func:`resolve_indices`)."""
    valid = f"the prompts have {seq_len} tokens (valid positions 0 to {seq_len - 1}, or -{seq_len} to -1)"
    return resolve_indices(positions, seq_len, arg=arg, unit="position", valid=valid, sort=False)


def check_positive_int(value: Any, arg: str, allow_none: bool = False, upper: Optional[int] = None) -> Any:
    """``value`` if it is a positive int (or None when allowed), else a ValueError naming ``arg``."""
    if value is None and allow_none:
        return None
    if not is_int(value) or int(value) < 1 or (upper is not None and int(value) > upper):
        bound = f" at most {upper}" if upper is not None else ""
        none = " or None" if allow_none else ""
        raise ValueError(f"{arg}: expected a positive int{bound}{none}, got {value!r}")
    return int(value)


def single_prompt(model: Any, text: Any, arg: str) -> mx.array:
    """Token ids ``(1, seq)`` of one prompt (a str, a list of int or a token array)."""
    if isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text):
        raise ValueError(f"{arg}: expected a single prompt (a str, a list of token ids or a (1, seq) array), "
                         f"got a list of {len(text)} strings")
    try:
        batch = model._batch(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arg}: {e}") from None
    if batch.tokens.shape[0] != 1:
        raise ValueError(f"{arg}: expected a single prompt, got a batch of {batch.tokens.shape[0]} rows")
    return batch.tokens


def prompt_pair(model: Any, clean_text: Any, corrupted_text: Any) -> mx.array:
    """Tokens of the clean and corrupted prompts stacked as ``(2, seq)``; they must be equally long."""
    clean = single_prompt(model, clean_text, "clean_text")
    corrupted = single_prompt(model, corrupted_text, "corrupted_text")
    n_clean, n_corr = clean.shape[1], corrupted.shape[1]
    if n_clean != n_corr:
        raise ValueError(
            "clean_text and corrupted_text must encode to the same number of tokens for patching "
            f"(positions are matched one to one): clean_text has {n_clean} tokens "
            f"{_show(model, clean)}, corrupted_text has {n_corr} tokens {_show(model, corrupted)}"
        )
    return mx.concatenate([clean, corrupted], axis=0).astype(mx.int32)


def _show(model: Any, tokens: mx.array) -> str:
    ids = tokens[0].tolist()
    if model.tokenizer is None:
        return str(ids)
    return "[" + ", ".join(repr(model.token_to_str(t)) for t in ids) + "]"


def token_labels(model: Any, ids: Sequence[int]) -> List[str]:
    """Token strings for plot labels (the ids as text when the model has no tokenizer)."""
    if model.tokenizer is None:
        return [str(int(t)) for t in ids]
    return [model.token_to_str(int(t)) for t in ids]
