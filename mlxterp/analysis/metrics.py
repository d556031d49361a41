"""Patching metrics: how far a run's last-position logits are from the clean run's behaviour.

A :class:`Metric` gives each row of logits a *gap* from the clean run, 0 for the clean run itself, and
recovery is ``(gap(corrupted) - gap(patched)) / gap(corrupted) * 100``. Two kinds:

- **distances** between the whole logit vectors (``"l2"``, ``"cosine"``, ``"mse"``): the gap is the distance
  from the clean logits. They first cast to float32 and rescale by the largest absolute entry, so float16
  or bfloat16 logits with large values over a 150k vocabulary never overflow.
- **scores**, one number per row (:func:`logit_diff` of a target and a foil token, the target's
  :func:`logprob` or :func:`prob`, or any function of the logits, :func:`custom`): the gap is
  ``score(clean) - score(row)``, so recovery is ``(score(patched) - score(corrupted)) / (score(clean) -
  score(corrupted)) * 100``, the normalised metric circuit papers report.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import mlx.core as mx
import numpy as np

METRICS = ("l2", "cosine", "mse")
SCORES = ("logit_diff", "logprob", "prob")


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


def _logit_diff(logits: mx.array, target: int, foil: int) -> mx.array:
    return logits[..., target] - logits[..., foil]


def _logprob(logits: mx.array, target: int) -> mx.array:
    return logits[..., target] - mx.logsumexp(logits, axis=-1)


def _prob(logits: mx.array, target: int) -> mx.array:
    return mx.exp(_logprob(logits, target))


@dataclasses.dataclass(frozen=True)
class Metric:
    """A patching metric (see the module docstring). Hashable: compiled sweep programs are cached by it.

    Attributes:
        name: ``"l2"``, ``"logit_diff"``, ... (a custom function's name).
        fn: a distance ``fn(logits, clean) -> (rows,)``, or a score ``fn(logits, *tokens) -> (rows,)``.
        kind: ``"distance"`` or ``"score"``.
        tokens: the token ids a score reads (target, foil).
        label: how the metric is shown (``"logit_diff(' Paris' - ' Rome')"``).
    """

    name: str
    fn: Callable[..., mx.array]
    kind: str = "distance"
    tokens: Tuple[int, ...] = ()
    label: str = dataclasses.field(default="", compare=False)

    def gap(self, logits: mx.array, clean: mx.array) -> mx.array:
        """Each row's gap from the clean behaviour (0 for the clean logits), float32, ``logits.shape[:-1]``."""
        if self.kind == "distance":
            return self.fn(logits, clean)
        return self.score(clean) - self.score(logits)

    def score(self, logits: mx.array) -> mx.array:
        """A score metric's value for each row, in float32 (a function may return an mx.array, a numpy array
        or a numpy scalar)."""
        value = self.fn(logits.astype(mx.float32), *self.tokens)
        if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biuf":
            value = mx.array(value)
        rows = tuple(logits.shape[:-1])
        if not isinstance(value, mx.array):
            raise ValueError(f"metric {self.name!r} must return an mx.array (or numpy array) of shape {rows}, one "
                             f"number per row of the logits {tuple(logits.shape)}; it returned a "
                             f"{type(value).__name__}")
        if tuple(value.shape) != rows:
            raise ValueError(f"metric {self.name!r} must map logits of shape {tuple(logits.shape)} to one number per "
                             f"row, shape {rows}; it returned an array of shape {tuple(value.shape)}")
        return value.astype(mx.float32)

    def __str__(self) -> str:
        return self.label or self.name


def logit_diff(target: int, foil: int) -> Metric:
    """``logits[target] - logits[foil]`` at the last position (e.g. " Paris" vs " Rome")."""
    return Metric("logit_diff", _logit_diff, "score", (int(target), int(foil)))


def logprob(target: int) -> Metric:
    """The target token's log-probability at the last position."""
    return Metric("logprob", _logprob, "score", (int(target),))


def prob(target: int) -> Metric:
    """The target token's probability at the last position."""
    return Metric("prob", _prob, "score", (int(target),))


def custom(fn: Callable[[mx.array], mx.array], name: Optional[str] = None) -> Metric:
    """A score computed by ``fn(logits) -> (rows,)`` from the last position's float32 ``(rows, vocab)``
    logits (MLX operations only: it runs inside compiled sweeps). Its direction does not matter: recovery
    divides by ``score(clean) - score(corrupted)``."""
    return Metric(name or getattr(fn, "__name__", "custom"), fn, "score")


DISTANCE_METRICS: Dict[str, Metric] = {name: Metric(name, fn) for name, fn in DISTANCES.items()}
CHOICES = (f"one of {', '.join(repr(m) for m in METRICS + SCORES)}, a Metric (mlxterp.analysis.metrics.logit_diff, "
           "logprob, prob, custom) or a function logits -> score per row")


def check_metric(metric: object) -> Metric:
    """A distance name, a :class:`Metric` or a function, as a Metric; a ValueError naming the argument and the
    valid choices otherwise. Score names (``"logit_diff"``, ...) need tokens: see :func:`resolve_metric`."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str) and metric in DISTANCE_METRICS:
        return DISTANCE_METRICS[metric]
    if callable(metric) and not isinstance(metric, (str, type)):
        return custom(metric)
    raise ValueError(f"metric: expected {CHOICES}, got {metric!r}")


def distance(a: mx.array, b: mx.array, metric: Any) -> mx.array:
    """Gap of each row of ``a`` from the clean logits ``b`` (broadcast) under ``metric``, float32,
    shape ``a.shape[:-1]``: the distance itself for a distance metric."""
    return check_metric(metric).gap(a, b)


def recovery(d_patched: mx.array, d_corrupted: mx.array) -> mx.array:
    """Recovery in percent: ``(d_corrupted - d_patched) / d_corrupted * 100``."""
    return (d_corrupted - d_patched) / d_corrupted * 100.0


def identical_logits_message(metric: Any) -> str:
    """The error for ``gap(corrupted) == 0``, where recovery would divide by zero."""
    metric = check_metric(metric)
    if metric.kind == "score":
        return (f"the clean and corrupted prompts give the same {metric} at the last position, so recovery "
                "(divided by their difference) is undefined; use prompts (or target and foil tokens) on which "
                "the metric differs")
    return (f"the clean and corrupted prompts give the same last-position logits (distance 0 under "
            f"metric={metric.name!r}), so recovery (divided by that distance) is undefined; use prompts whose "
            "predictions differ")
