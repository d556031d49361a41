"""A norm with its scale frozen at one run's value: the linear map direct logit attribution applies to each
component (TransformerLens' convention).

An RMSNorm computes ``x * s(x) * w`` with ``s(x) = 1 / sqrt(mean(x^2) + eps)``; a LayerNorm
``(x - mean(x)) * s(x) * w + b`` with ``s(x) = 1 / sqrt(var(x) + eps)``. Frozen at the clean run's ``x``,
the map ``v -> v * s(x) * w`` (centred first for a LayerNorm) is linear, so the residual's components go
through it one by one and their images sum to the norm's output less its offset ``b``. The kind of norm is
recognised from what the module computes (its class is not trusted): each candidate is checked against the
module's own output at ``x``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn

from .ops import unhooked


@dataclasses.dataclass(frozen=True)
class FrozenNorm:
    """``v -> (v - mean(v) if centred) * scale`` and the offset the norm adds.

    Attributes:
        kind: ``"rms"`` or ``"layer"``.
        scale: ``s(x) * w``, shaped like ``x`` (per row and position).
        offset: what the norm adds whatever its input (a LayerNorm's bias; zero for an RMSNorm).
    """

    kind: str
    scale: mx.array
    offset: mx.array

    def linear(self, v: mx.array) -> mx.array:
        """The frozen norm of ``v`` (any leading axes before ``x``'s shape)."""
        v = v.astype(mx.float32)
        if self.kind == "layer":
            v = v - v.mean(axis=-1, keepdims=True)
        return v * self.scale


def freeze(norm: nn.Module, x: mx.array, tol: float = 1e-4) -> FrozenNorm:
    """``norm`` frozen at input ``x`` (``(..., hidden)``).

    Raises:
        ValueError: the module computes neither an RMSNorm nor a LayerNorm (of its weight, or ``1 + weight``).
    """
    target = unhooked(norm)(x).astype(mx.float32)
    size = max(float(mx.abs(target).max().item()), 1e-6)
    for frozen in _candidates(norm, x.astype(mx.float32)):
        err = float(mx.abs(frozen.linear(x) + frozen.offset - target).max().item()) / size
        if err <= tol:
            return frozen
    raise ValueError(f"direct logit attribution freezes the final norm's scale, which needs an RMSNorm or a LayerNorm; "
                     f"the final norm ({type(norm).__name__}) computes neither")


def _candidates(norm: nn.Module, x: mx.array) -> Iterator[FrozenNorm]:
    eps = float(getattr(norm, "eps", 1e-5))
    weight = norm.get("weight") if isinstance(norm, dict) else None
    weights = [mx.array(1.0)] if weight is None else [weight.astype(mx.float32), 1.0 + weight.astype(mx.float32)]
    rms = mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + eps)
    centred = x - x.mean(axis=-1, keepdims=True)
    std = mx.rsqrt(mx.mean(centred * centred, axis=-1, keepdims=True) + eps)
    bias = norm.get("bias") if isinstance(norm, dict) else None
    offset = mx.zeros_like(x) if bias is None else mx.broadcast_to(bias.astype(mx.float32), x.shape)
    for w in weights:
        yield FrozenNorm("rms", rms * w, mx.zeros_like(x))
        yield FrozenNorm("layer", std * w, offset)
