"""Contrastive steering vectors (ActAdd, difference of means) from two sets of prompts."""

from __future__ import annotations

from typing import Any, Sequence, Union

import mlx.core as mx

from ..core import WrappedModel
from ..analysis.validate import resolve_layers

POSITION_CHOICES = ("last", "all")


def steering_vector(model: WrappedModel, toward: Union[str, Sequence[str]], away: Union[str, Sequence[str]], layer: int,
                    positions: str = "last") -> mx.array:
    """The mean residual (layer ``layer``'s output) over ``toward`` minus that over ``away``.

    Args:
        model: an InterpretableModel.
        toward: a prompt or prompts to steer toward (``"Love"``, ...).
        away: a prompt or prompts to steer away from (``"Hate"``, ...).
        layer: the layer whose output is read (negative counts from the end).
        positions: ``"last"`` (each prompt's last token) or ``"all"`` (the mean over each prompt's tokens);
            either way every prompt weighs the same in its set's mean.

    Returns:
        A vector ``(hidden,)`` in the residual's dtype, ready to add to that layer's output.
    """
    if positions not in POSITION_CHOICES:
        raise ValueError(f"positions={positions!r}: choose 'last' (each prompt's last token) or 'all' "
                         "(the mean over every token)")
    index = resolve_layers([layer], len(model.layers), arg="layer")[0]
    plus, dtype = _mean_residual(model, toward, index, positions, "toward")
    minus, _ = _mean_residual(model, away, index, positions, "away")
    return (plus - minus).astype(dtype)


def _mean_residual(model: WrappedModel, prompts: Any, layer: int, positions: str, arg: str) -> tuple[mx.array, Any]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items or not all(isinstance(p, str) and p for p in items):
        raise ValueError(f"{arg}={prompts!r}: expected a non-empty prompt or a non-empty list of them")
    groups = [items]
    if not model._padding_safe():  # edits that may count positions from the end: no padded columns
        lengths = [len(model.encode(p)) for p in items]
        groups = [[p for p, n in zip(items, lengths) if n == length] for length in sorted(set(lengths))]
    parts = [_per_prompt(model, group, layer, positions) for group in groups]
    return mx.concatenate([p for p, _ in parts]).mean(axis=0), parts[0][1]


def _per_prompt(model: WrappedModel, items: list, layer: int, positions: str) -> tuple[mx.array, Any]:
    """Each prompt's residual (float32, ``(len(items), hidden)``) from one right-padded trace, and its dtype."""
    with model.trace(items, capture="saved") as tr:
        hidden = model.layers[layer].output.save()
    dtype = hidden.dtype
    hidden = mx.array(hidden).astype(mx.float32)
    lengths = mx.array(tr.lengths)
    if positions == "last":
        return hidden[mx.arange(len(items)), lengths - 1], dtype
    real = (mx.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(mx.float32)  # a row's real tokens
    return (hidden * real[..., None]).sum(axis=1) / lengths[:, None].astype(mx.float32), dtype
