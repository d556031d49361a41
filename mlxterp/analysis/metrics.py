"""Distances between logit vectors for activation patching, computed stably in float32.

Every metric first casts to float32 and then rescales by the largest absolute entry, so float16 or
bfloat16 logits with large values over a 150k vocabulary never overflow (a float16 sum of squares
would; float32 of unscaled values would too for extreme inputs).
"""

from __future__ import annotations

from typing import Callable, Dict

import mlx.core as mx

METRICS = ("l2", "cosine", "mse")


def _scaled_diff(a: mx.array, b: mx.array) -> tuple[mx.array, mx.array]:
    """``(a - b) / s`` and ``s`` (per row), with ``s`` the largest absolute difference (1 if zero)."""
    diff = a.astype(mx.float32) - b.astype(mx.float32)
    scale = mx.max(mx.abs(diff), axis=-1, keepdims=True)
    scale = mx.where(scale > 0, scale, mx.ones_like(scale))
    return diff / scale, scale[..., 0]


def l2_distance(a: mx.array, b: mx.array) -> mx.array:
    """Euclidean distance ``||a - b||`` along the last axis."""
    unit, scale = _scaled_diff(a, b)
    return scale * mx.sqrt(mx.sum(unit * unit, axis=-1))


def mse_distance(a: mx.array, b: mx.array) -> mx.array:
    """Mean squared difference along the last axis."""
    unit, scale = _scaled_diff(a, b)
    return scale * scale * mx.mean(unit * unit, axis=-1)


def _unit(x: mx.array) -> mx.array:
    x = x.astype(mx.float32)
    m = mx.max(mx.abs(x), axis=-1, keepdims=True)
    x = x / mx.where(m > 0, m, mx.ones_like(m))
    norm = mx.sqrt(mx.sum(x * x, axis=-1, keepdims=True))
    return x / mx.where(norm > 0, norm, mx.ones_like(norm))


def cosine_distance(a: mx.array, b: mx.array) -> mx.array:
    """``1 - cos(a, b)`` along the last axis (0 for identical directions, 2 for opposite).

    Computed as ``||u_a - u_b||^2 / 2`` with unit vectors ``u``, which equals ``1 - cos`` without the
    cancellation of ``1 - sum(u_a * u_b)`` for nearly parallel vectors.
    """
    diff = _unit(a) - _unit(b)
    return 0.5 * mx.sum(diff * diff, axis=-1)


DISTANCES: Dict[str, Callable[[mx.array, mx.array], mx.array]] = {
    "l2": l2_distance,
    "cosine": cosine_distance,
    "mse": mse_distance,
}


def check_metric(metric: object) -> str:
    """The metric name, or a ValueError naming the argument and the valid choices."""
    if not isinstance(metric, str) or metric not in DISTANCES:
        raise ValueError(f"metric: expected one of {', '.join(repr(m) for m in METRICS)}, got {metric!r}")
    return metric


def distance(a: mx.array, b: mx.array, metric: str) -> mx.array:
    """Distance of each row of ``a`` from ``b`` (broadcast), float32, shape ``a.shape[:-1]``."""
    return DISTANCES[check_metric(metric)](a, b)


def recovery(d_patched: mx.array, d_corrupted: mx.array) -> mx.array:
    """Recovery in percent: ``(d_corrupted - d_patched) / d_corrupted * 100``."""
    return (d_corrupted - d_patched) / d_corrupted * 100.0


def identical_logits_message(metric: str) -> str:
    """The error for ``d(corrupted, clean) == 0``, where recovery would divide by zero."""
    return (f"the clean and corrupted prompts give the same last-position logits (distance 0 under "
            f"metric={metric!r}), so recovery (divided by that distance) is undefined; use prompts whose "
            "predictions differ")
