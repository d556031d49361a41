"""Argument checks shared by the analysis helpers. Each error names the argument, what was expected,
and the valid choices."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import mlx.core as mx
import numpy as np

from ..inputs import is_int
from .metrics import SCORES, Metric, check_metric, logit_diff, logprob, prob

if TYPE_CHECKING:
    from ..model import InterpretableModel

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


def single_prompt(model: InterpretableModel, text: Any, arg: str) -> mx.array:
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


def prompt_pair(model: InterpretableModel, clean_text: Any, corrupted_text: Any) -> mx.array:
    """Tokens of the clean and corrupted prompts stacked as ``(2, seq)``; they must be equally long."""
    clean = single_prompt(model, clean_text, "clean_text")
    corrupted = single_prompt(model, corrupted_text, "corrupted_text")
    n_clean, n_corr = clean.shape[1], corrupted.shape[1]
    if n_clean != n_corr:
        raise ValueError(
            "clean_text and corrupted_text must encode to the same number of tokens for patching "
            f"(positions are matched one to one): clean_text has {n_clean} tokens "
            f"{show_tokens(model, clean)}, corrupted_text has {n_corr} tokens {show_tokens(model, corrupted)}"
        )
    return mx.concatenate([clean, corrupted], axis=0).astype(mx.int32)


def show_tokens(model: InterpretableModel, tokens: mx.array) -> str:
    ids = tokens[0].tolist()
    if model.tokenizer is None:
        return str(ids)
    return "[" + ", ".join(repr(model.token_to_str(t)) for t in ids) + "]"


def token_labels(model: InterpretableModel, ids: Sequence[int]) -> List[str]:
    """Token strings for plot labels (the ids as text when the model has no tokenizer)."""
    if model.tokenizer is None:
        return [str(int(t)) for t in ids]
    return [model.token_to_str(int(t)) for t in ids]


def token_id(model: InterpretableModel, token: Any, arg: str) -> int:
    """The id of one token given as an id or as its text (``" Paris"``: mind the leading space)."""
    vocab = model._embedding_rows
    if is_int(token):
        if vocab is not None and not 0 <= int(token) < vocab:
            raise ValueError(f"{arg}: token id {int(token)} is out of range: the vocabulary has {vocab} ids")
        return int(token)
    if not isinstance(token, str):
        raise ValueError(f"{arg}: expected a token id (int) or a token's text (str), got {token!r}")
    ids = model.encode(token)
    bos = getattr(model.tokenizer, "bos_token_id", None)
    if ids and ids[0] == bos:
        ids = ids[1:]
    specials = special_ids(model.tokenizer)
    if all(i in specials for i in ids):  # "" is the BOS alone: a score of it would be meaningless
        shown = f" (only special tokens: {[model.token_to_str(i) for i in ids]})" if ids else ""
        raise ValueError(f"{arg}: {token!r} encodes to no token besides the tokenizer's special tokens{shown}; give "
                         "one token's text (often with its leading space, e.g. ' Paris') or its id")
    if len(ids) != 1:
        raise ValueError(f"{arg}: {token!r} is {len(ids)} tokens ({[model.token_to_str(i) for i in ids]}); give one "
                         "token's text (often with its leading space, e.g. ' Paris') or its id")
    return ids[0]


def special_ids(tokenizer: Any) -> set:
    """The ids of a tokenizer's special tokens (BOS, EOS, pad, and Hugging Face's ``all_special_ids``)."""
    found = set(getattr(tokenizer, "all_special_ids", None) or ())
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if is_int(value):
            found.add(int(value))
    return found


def check_top_k(top_k: Any, vocab: int) -> int:
    """``top_k`` as an int from 1 to the vocabulary size ``vocab`` (a numpy integer is accepted), else a
    ValueError naming the vocabulary size."""
    if is_int(top_k) and int(top_k) > vocab:
        raise ValueError(f"top_k: {int(top_k)} is more than the vocabulary size {vocab} (the tokens the model "
                         f"predicts); give 1 to {vocab}")
    return check_positive_int(top_k, "top_k")


def resolve_metric(model: InterpretableModel, metric: Any, tokens: mx.array, target: Any = None, foil: Any = None) -> Metric:
    """The patching :class:`~mlxterp.analysis.metrics.Metric` for a prompt pair ``tokens`` (clean row 0,
    corrupted row 1): a distance name, a Metric, a function of the logits, or a score name (``"logit_diff"``,
    ``"logprob"``, ``"prob"``) whose ``target`` (and ``foil``) tokens are given as text or ids, by default the
    clean run's top prediction (and the corrupted run's)."""
    if not (isinstance(metric, str) and metric in SCORES):
        if target is not None or foil is not None:
            raise ValueError(f"target/foil: only used with metric='logit_diff', 'logprob' or 'prob'; "
                             f"metric is {metric!r}")
        return check_metric(metric)
    if foil is not None and metric != "logit_diff":
        raise ValueError(f"foil: only used with metric='logit_diff', not {metric!r}")
    if target is None or (metric == "logit_diff" and foil is None):
        top = _predictions(model, tokens)
        target = top[0] if target is None else target
        foil = top[1] if foil is None else foil
    t = token_id(model, target, "target")
    if metric != "logit_diff":
        made = logprob(t) if metric == "logprob" else prob(t)
        return dataclasses.replace(made, label=f"{metric}({show_token(model, t)})")
    f = token_id(model, foil, "foil")
    if f == t:
        raise ValueError(f"target and foil are the same token {show_token(model, t)}: logit_diff would be 0 on "
                         "every run; give target= and foil= (by default the clean and the corrupted prompt's "
                         "top predictions, which coincide here)")
    return dataclasses.replace(logit_diff(t, f), label=f"logit_diff({show_token(model, t)} - {show_token(model, f)})")


def _predictions(model: InterpretableModel, tokens: mx.array) -> List[int]:
    """The top-1 next-token prediction of each prompt row."""
    with model.trace(tokens, capture="saved"):
        last = model.output[:, -1, :].save()
    value = last if isinstance(last, mx.array) else last.value
    return [int(i) for i in mx.argmax(value, axis=-1).tolist()]


def show_token(model: InterpretableModel, token: int) -> str:
    return repr(model.token_to_str(token)) if model.tokenizer is not None else str(token)


def require_attention(model: InterpretableModel, what: str) -> None:
    """A ValueError, saying why, when ``model`` has no attention whose internals can be read."""
    if not model._index.attention:
        arch = model._index.arch
        why = arch.lacks if arch is not None and arch.lacks else "no attention module was found in its layers"
        raise ValueError(f"{what} needs attention; this model has none: {why}")
