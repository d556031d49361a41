"""The generation view: each row's prompt, then its generated tokens coloured by a per-step value (a saved
probe, a feature, the steering effect); hover shows the token and the value.

Step ``k`` of a generation chose new token ``k`` (step 0 is the prompt pass), so the value a save holds at
step ``k`` colours new token ``k``: for a read of ``[:, -1]`` that is the state the token was chosen from.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, List, Optional

import mlx.core as mx
import numpy as np

from .page import Page, origin_lines

if TYPE_CHECKING:
    from ..generation.result import GenerationResult

Values = List[List[Optional[float]]]


def generation_page(result: GenerationResult, *, values: Any = None, label: Optional[str] = None) -> Page:
    """The page of a generation.

    Args:
        result: the generation (``gen.result()``, or a loaded one).
        values: what colours the new tokens: the key of a save with one number per step and row (e.g.
            ``apply(probe, model.layers[8].output[:, -1]).save("probe")``: shape ``(steps, rows)`` or
            ``(steps, rows, 1)``), or one value per new token: an array ``(rows, n)`` (``(n,)`` for one
            prompt; ``n`` at least the longest row's new tokens, NaN for none) or lists of each row's values
            (None for none; e.g. :func:`token_probabilities`); None leaves the tokens plain.
        label: the value's name on the page (default: the save's key, or ``"value"``).

    Raises:
        ValueError: an unknown save key (the keys are listed), or values of the wrong shape.
    """
    per_token = None if values is None else token_values(result, values)
    label = label or (values if isinstance(values, str) else "value")
    rows = [{"prompt": result.prompt_labels[i], "tokens": result.new_labels[i], "ids": result.new_tokens[i],
             "reason": result.reasons[i], "values": None if per_token is None else per_token[i]}
            for i in range(len(result.new_tokens))]
    known = [v for row in per_token or [] for v in row if v is not None]
    header = origin_lines(result.provenance, ()) + [("Settings", _settings(result.provenance))]
    if values is not None:
        header.append(("Colour", f"{label}: the value at step k colours the token step k chose"))
    return Page("Generation", header, "generation",
                {"rows": rows, "label": label, "low": min(known, default=0.0), "high": max(known, default=0.0)},
                height=min(900, 220 + 90 * len(rows)))


def token_values(result: GenerationResult, values: Any) -> Values:
    """One value (or None) per new token of each row, from a save key or an array (see :func:`generation_page`).

    Args:
        result: the generation.
        values: a save key (one number per step and row: ``(steps, rows)`` or ``(steps, rows, 1)``), an array
            ``(rows, n)`` (``(n,)`` for one prompt; any real dtype, read as float64), or lists of each row's
            values.

    Returns:
        ``[[value or None per new token] per row]``: Python floats in the values' own units; non-finite ones
        are None.
    """

    lengths = [len(t) for t in result.new_tokens]
    if isinstance(values, str):
        return _from_save(result, values, lengths)
    if isinstance(values, list) and len(values) == len(lengths) and all(
            isinstance(row, list) and len(row) == n for row, n in zip(values, lengths)):
        return [[None if v is None else _number(v) for v in row] for row in values]  # already one per token
    array = _floats(values, "values")
    if array.ndim == 1 and len(lengths) == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] != len(lengths) or array.shape[1] < max(lengths, default=0):
        raise ValueError(f"values: expected one value per new token, shape ({len(lengths)}, n) with n >= "
                         f"{max(lengths, default=0)} (the longest row's new tokens), got shape {array.shape}")
    return [[_number(array[r, k]) for k in range(n)] for r, n in enumerate(lengths)]


def _from_save(result: GenerationResult, key: str, lengths: List[int]) -> Values:
    if key not in result.saved_values:
        raise ValueError(f"values: no save {key!r}; the saves are {sorted(result.saved_values)}")
    saved, steps = result.saved_values[key], result.saved_steps[key]
    if isinstance(saved, list):
        raise ValueError(f"values: save {key!r} has values of different shapes per step; save one number per row")
    array = _floats(saved, f"values (save {key!r})")
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.shape != (len(steps), len(lengths)):
        raise ValueError(f"values: save {key!r} has shape {tuple(array.shape)}; colouring tokens needs one number "
                         f"per step and row, ({len(steps)}, {len(lengths)}) (reduce it in the trace, e.g. "
                         "mlxterp.apply(fn, value).save(...))")
    at = {step: i for i, step in enumerate(steps)}
    return [[_number(array[at[k], r]) if k in at else None for k in range(n)] for r, n in enumerate(lengths)]


def _floats(values: Any, arg: str) -> np.ndarray:
    if isinstance(values, mx.array):
        values = values.astype(mx.float32)
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{arg}: expected numbers, got {type(values).__name__} ({exc})") from None


def _number(x: Any) -> Optional[float]:
    value = float(x)
    return value if math.isfinite(value) else None


def _settings(provenance: dict) -> str:
    arguments = provenance.get("arguments") or {}
    shown = {k: v for k, v in arguments.items() if v not in (None, [], False)}
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in shown.items()) or "(not recorded)"


def token_probabilities(result: GenerationResult, logits: str) -> Values:
    """The probability each new token had when it was chosen, from a save of each step's last-position logits
    (``model.output[:, -1].save(logits)`` inside the generation): ``softmax(logits at step k)[token k]``.

    Args:
        result: the generation (``gen.result()``, or a loaded one).
        logits: the key of the save: an ``mx.array`` ``(steps, rows, vocab)`` of logits (any float dtype; the
            softmax runs in float32).

    Returns:
        One value per new token of each row, a probability (a Python float in [0, 1], not percent; None
        where the save has no value for that step), for ``values=`` of :func:`generation_page`.

    Raises:
        ValueError: no such save, or not one ``(rows, vocab)`` array per step.
    """
    if logits not in result.saved_values:
        raise ValueError(f"logits: no save {logits!r}; the saves are {sorted(result.saved_values)}")
    saved, steps = result.saved_values[logits], result.saved_steps[logits]
    rows = len(result.new_tokens)
    if not isinstance(saved, mx.array) or saved.ndim != 3 or saved.shape[:2] != (len(steps), rows):
        raise ValueError(f"logits: save {logits!r} must hold each step's ({rows}, vocab) logits, stacked as "
                         f"({len(steps)}, {rows}, vocab); got {getattr(saved, 'shape', type(saved).__name__)}")
    probs = np.array(mx.softmax(saved.astype(mx.float32), axis=-1))
    at = {step: i for i, step in enumerate(steps)}
    return [[_number(probs[at[k], r, token]) if k in at else None for k, token in enumerate(tokens)]
            for r, tokens in enumerate(result.new_tokens)]
