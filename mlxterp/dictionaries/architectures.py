"""The four activation functions of a dictionary, for inference and for training, from their papers.

Every function works on pre-activations ``pre = x_in @ W_enc + b_enc`` of shape ``(..., d_sae)``.

- ``relu`` (Bricken et al. 2023; Anthropic's April 2024 update): ``f = ReLU(pre)``, trained with an L1
  penalty weighted by each latent's decoder norm, ``l1 * sum_i f_i ||W_dec[i]||`` (the decoder is free).
- ``topk`` (Gao et al. 2024): the ``k`` largest pre-activations of each row, through ReLU; every other
  latent is 0. Trained with the AuxK loss for dead latents (:func:`auxk_acts`).
- ``batchtopk`` (Bussmann et al. 2024): while training, the ``k * batch`` largest ReLU'd pre-activations of
  the whole batch; at inference a JumpReLU whose threshold (one value for all latents) is a running
  average of the smallest selected activation, as SAELens keeps it (and saves it as a JumpReLU).
- ``jumprelu`` (Rajamanoharan et al. 2024): ``f = pre * H(pre - theta)``, one threshold per latent,
  trained through ``log theta`` with the paper's straight-through pseudo-derivatives (a rectangle kernel
  of width ``bandwidth``) and an L0 penalty ``l0 * sum_i H(pre_i - theta_i)``.

Selections are made by comparing with a threshold (the row's ``k``-th largest value, the batch's
``k * batch``-th largest): with ties at the threshold every tied value is kept (continuous activations
have none in practice). Gradients flow through the selected values only, as through a scatter of them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Tuple

import mlx.core as mx

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What differs between the architectures.

    Attributes:
        name: one of :data:`ARCHITECTURES`.
        unit_norm: decoder rows are kept at unit norm while training (the gradient's component along each
            row is projected out before the update and the rows renormalized after it).
        has_threshold: inference is a JumpReLU with a ``threshold`` parameter of shape ``(d_sae,)``.
        dead_latents: trained with the AuxK loss on dead latents.
    """

    name: str
    unit_norm: bool
    has_threshold: bool
    dead_latents: bool


REGISTRY = {
    "relu": Architecture("relu", unit_norm=False, has_threshold=False, dead_latents=False),
    "topk": Architecture("topk", unit_norm=True, has_threshold=False, dead_latents=True),
    "batchtopk": Architecture("batchtopk", unit_norm=True, has_threshold=True, dead_latents=True),
    "jumprelu": Architecture("jumprelu", unit_norm=True, has_threshold=True, dead_latents=False),
}


def architecture(name: str) -> Architecture:
    """The :class:`~mlxterp.dictionaries.architectures.Architecture` called ``name``; ValueError listing the
    valid names otherwise."""
    found = REGISTRY.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"unknown dictionary architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return found


# -- selection ---------------------------------------------------------------------------------------
def kth_largest(values: mx.array, k: int) -> mx.array:
    """The ``k``-th largest value along the last axis, ``(..., 1)``: exactly ``topk(values, k).min()``, found
    in about half the time (a partial sort of every value is the costliest part of a TopK step).

    The row is cut into chunks of ``c``; the ``k`` chunks with the largest maxima hold every value larger than
    the ``k``-th largest chunk maximum ``L`` (fewer than ``k`` chunks have a maximum above ``L``) and at
    least ``k`` values ``>= L``, so the ``k``-th largest of their ``k * c`` values is the row's (ties
    included). Rows whose length has no suitable chunk size take the plain top-k.
    """
    return _kth_and_candidates(values, k)[0]


def _kth_and_candidates(values: mx.array, k: int) -> Tuple[mx.array, mx.array]:
    """:func:`kth_largest` and the values it was read from (every value larger than it is among them)."""
    n = values.shape[-1]
    c = _chunk(n, k)
    if c is None:
        return mx.topk(values, k, axis=-1).min(axis=-1, keepdims=True), values
    lead = values.shape[:-1]
    blocks = values.reshape(*lead, n // c, c)
    best = mx.argpartition(-blocks.max(axis=-1), k - 1, axis=-1)[..., :k]
    chosen = mx.take_along_axis(blocks, best[..., None], axis=-2).reshape(*lead, k * c)
    return mx.topk(chosen, k, axis=-1).min(axis=-1, keepdims=True), chosen


def _chunk(n: int, k: int) -> Optional[int]:
    """The smallest divisor ``c >= max(8, sqrt(n / k))`` of ``n`` leaving at least ``2k`` chunks, or None."""
    low = max(8, math.ceil(math.sqrt(n / max(k, 1))))
    for c in range(low, n // (2 * k) + 1):
        if n % c == 0:
            return c
    return None


# -- inference ---------------------------------------------------------------------------------------
def relu(pre: mx.array) -> mx.array:
    """``ReLU(pre)``: ``relu``'s features, at inference and in training; the same shape."""
    return mx.maximum(pre, 0)


def topk(pre: mx.array, k: int) -> mx.array:
    """ReLU of the ``k`` largest values of each row (last axis), 0 elsewhere. Differentiable in ``pre``: the
    threshold only selects (its gradient is 0), and it is held constant, since the chunked search's gather has
    no gradient with respect to its indices (a gradient through a spliced TopK dictionary would raise)."""
    kth = mx.stop_gradient(kth_largest(pre, k))
    return mx.where(pre >= kth, mx.maximum(pre, 0), 0)


def threshold_relu(pre: mx.array, threshold: mx.array) -> mx.array:
    """JumpReLU at inference, as SAELens computes it: ``ReLU(pre) * (pre > threshold)``."""
    return mx.where(pre > threshold, mx.maximum(pre, 0), 0)


# -- training ----------------------------------------------------------------------------------------
@mx.custom_function
def jumprelu(pre: mx.array, threshold: mx.array, bandwidth: mx.array) -> mx.array:
    """``pre * H(pre - threshold)`` with the pseudo-derivative of Rajamanoharan et al. (2024) for the
    threshold: ``d/dtheta = -(theta / eps) K((pre - theta) / eps)``, ``K`` the rectangle on (-1/2, 1/2)."""
    return mx.where(pre > threshold, pre, 0)


@jumprelu.vjp
def _jumprelu_vjp(primals: tuple, cotangent: mx.array, output: mx.array) -> tuple:
    pre, threshold, bandwidth = primals
    d_pre = mx.where(pre > threshold, cotangent, 0)
    kernel = _rectangle((pre - threshold) / bandwidth)
    d_threshold = _sum_leading(-(threshold / bandwidth) * kernel * cotangent, threshold)
    return d_pre, d_threshold, mx.zeros_like(bandwidth)


@mx.custom_function
def step(pre: mx.array, threshold: mx.array, bandwidth: mx.array) -> mx.array:
    """``H(pre - threshold)`` with the pseudo-derivative ``d/dtheta = -(1 / eps) K((pre - theta) / eps)``
    (and 0 with respect to ``pre``), Rajamanoharan et al. (2024)."""
    return (pre > threshold).astype(pre.dtype)


@step.vjp
def _step_vjp(primals: tuple, cotangent: mx.array, output: mx.array) -> tuple:
    pre, threshold, bandwidth = primals
    kernel = _rectangle((pre - threshold) / bandwidth)
    d_threshold = _sum_leading(-(1.0 / bandwidth) * kernel * cotangent, threshold)
    return mx.zeros_like(pre), d_threshold, mx.zeros_like(bandwidth)


def _rectangle(u: mx.array) -> mx.array:
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _sum_leading(value: mx.array, like: mx.array) -> mx.array:
    """``value`` summed over its leading axes down to ``like``'s shape (the threshold's ``(d_sae,)``)."""
    return value.reshape(-1, like.shape[-1]).sum(axis=0).reshape(like.shape)


@mx.custom_function
def select(pre: mx.array, threshold: mx.array) -> mx.array:
    """``pre`` where ``pre >= threshold`` and ``pre > 0``, else 0; its gradient passes where the output is
    not 0 (one elementwise pass each way, and no gradient to the threshold)."""
    return mx.where((pre >= threshold) & (pre > 0), pre, 0)


@select.vjp
def _select_vjp(primals: tuple, cotangent: mx.array, output: mx.array) -> tuple:
    pre, threshold = primals
    return mx.where(output > 0, cotangent, 0), mx.zeros_like(threshold)


def topk_train(pre: mx.array, k: int) -> mx.array:
    """:func:`topk` whose gradient reaches only the selected values (the selection is a constant)."""
    return select(pre, mx.stop_gradient(kth_largest(pre, k)))


def batch_threshold(pre: mx.array, count: int, gather: Optional[Callable[[mx.array], mx.array]] = None,
                    ) -> Tuple[mx.array, mx.array]:
    """BatchTopK's selection over the whole batch (every rank's, when ``gather`` is an ``all_gather`` of this
    rank's candidates): ``(tau, smallest)`` where the selected values are those ``>= tau`` and ``> 0``, and
    ``smallest`` is the least of them on this rank (``inf`` when it selected none).

    ``tau = max(t, 0)`` for ``t`` the ``count``-th largest pre-activation: the ``count``-th largest of
    ``ReLU(pre)`` (fewer positive values than ``count`` make both 0). Every selected value is among the
    candidates the threshold was found from (this rank's ``count`` largest, or the chunks of
    :func:`kth_largest`), so ``smallest`` is read from them rather than from the whole batch."""
    flat = mx.stop_gradient(pre).reshape(1, -1)
    if gather is None:
        t, candidates = _kth_and_candidates(flat, count)
        t = t.reshape(())
    else:
        candidates = mx.topk(flat[0], min(count, flat.size))
        t = mx.topk(gather(candidates), count).min()
    tau = mx.maximum(t, 0)
    smallest = mx.where((candidates >= tau) & (candidates > 0), candidates, mx.inf).min()
    return tau, smallest


def batchtopk_train(pre: mx.array, k_batch: int, gather: Optional[Callable] = None) -> Tuple[mx.array, mx.array]:
    """The ``k_batch`` largest ReLU'd pre-activations of the whole batch, and the smallest of them on this
    rank (see :func:`batch_threshold`)."""
    tau, smallest = batch_threshold(pre, k_batch, gather)
    return select(pre, tau), smallest


def auxk_acts(pre: mx.array, dead: mx.array, k_aux: int) -> mx.array:
    """AuxK's latents (Gao et al. 2024): the ``k_aux`` largest pre-activations among the dead latents of
    each row, through ReLU (live latents never selected; fewer dead than ``k_aux`` selects all of them)."""
    masked = mx.where(dead, pre, -mx.inf)
    kth = mx.stop_gradient(kth_largest(masked, k_aux))
    return mx.where(dead & (masked >= kth), mx.maximum(pre, 0), 0)
