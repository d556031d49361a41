"""The DAS subspace and its interchange intervention, as plain MLX functions.

A DAS subspace of dimension ``d`` in an ``n``-wide activation is the span of ``d`` orthonormal columns
``R`` (``(n, d)``): the first ``d`` columns of a learned rotation of the activation space. It is
parametrised by ``d`` Householder vectors ``V`` (``(d, n)``): ``R = H_1 H_2 ... H_d E_d`` with
``H_i = I - 2 v_i v_i^T / |v_i|^2`` and ``E_d`` the first ``d`` columns of the identity. Every ``V`` (no
zero row) gives exactly orthonormal columns (a product of reflections is orthogonal), and every
orthonormal ``(n, d)`` frame is reached by some ``V`` (Householder QR), so gradient steps on ``V`` can
never leave the set of rotations: nothing is projected or re-orthogonalised after a step.

The interchange intervention of Geiger et al. (2023) (pyvene's ``RotatedSpaceIntervention`` with
``interchange_dim = d``; its ``LowRankRotatedSpaceIntervention`` is the same map): rotate the base and
source activations, take the first ``d`` rotated coordinates from the source and the rest from the base,
rotate back. With ``R`` the first ``d`` columns of the rotation this is

    base + ((source - base) @ R) @ R.T

applied at the DAS's token positions and nowhere else.
"""

from __future__ import annotations

from typing import Any, Sequence

import mlx.core as mx

from ..interventions import Intervention
from ..tracing.proxy import apply


def householder(vectors: mx.array) -> mx.array:
    """Orthonormal columns from Householder vectors.

    Args:
        vectors: ``(d, n)``, no zero row.

    Returns:
        ``(n, d)``: the first ``d`` columns of ``H_1 ... H_d`` (see the module docstring), in the vectors'
        dtype; ``R.T @ R`` is the identity to float rounding.
    """
    d, n = vectors.shape
    frame = mx.eye(n, d, dtype=vectors.dtype)
    for i in reversed(range(d)):  # H_1 (H_2 (... (H_d E))): each reflection applied to the frame
        v = vectors[i] * mx.rsqrt(mx.sum(vectors[i] * vectors[i]))
        frame = frame - 2.0 * v[:, None] * (v[None, :] @ frame)
    return frame


def initial_vectors(dim: int, width: int, seed: int) -> mx.array:
    """Householder vectors of a random rotation: ``(dim, width)`` standard normal draws from ``seed``."""
    return mx.random.normal((dim, width), key=mx.random.key(seed))


def position_selector(positions: Sequence[int], length: int, dtype: Any) -> mx.array:
    """``(len(positions), length)`` one-hot rows selecting ``positions`` (negative ones count from the end)
    of a token axis of ``length`` columns.

    Raises:
        IndexError: a position outside ``[-length, length)``.
    """
    bad = [p for p in positions if not -length <= p < length]
    if bad:
        raise IndexError(f"DAS position {bad[0]} is outside this activation's {length} token positions "
                         f"(valid: 0 to {length - 1}, or -{length} to -1)")
    wanted = mx.array([p % length for p in positions], dtype=mx.int32)
    return (wanted[:, None] == mx.arange(length)[None, :]).astype(dtype)


def interchange(base: mx.array, rotation: mx.array, source: mx.array, positions: tuple) -> mx.array:
    """The interchange intervention at ``positions`` (see the module docstring).

    Args:
        base: ``(batch, seq, n)``, the activation being run.
        rotation: ``(n, d)`` orthonormal columns.
        source: ``(batch or 1, len(positions), n)`` (or anything broadcasting to it): the source run's
            activation at the same positions.
        positions: token positions (ints; negative count from the end of ``base``'s token axis).

    Returns:
        ``base`` with ``((source - base_p) @ R) @ R.T`` added at each position ``p``, in ``base``'s dtype.
        Other positions are exactly unchanged.
    """
    select = position_selector(positions, base.shape[1], rotation.dtype)  # (P, seq)
    picked = select @ base.astype(rotation.dtype)  # (batch, P, n): exact (one-hot rows)
    delta = ((source.astype(rotation.dtype) - picked) @ rotation) @ rotation.T
    return (base + select.T @ delta).astype(base.dtype)


def take_positions(x: mx.array, positions: tuple) -> mx.array:
    """``x[:, positions]`` for ``(batch, seq, n)`` values: ``(batch, len(positions), n)``."""
    return mx.take(x, mx.array([p % x.shape[1] for p in positions], dtype=mx.int32), axis=1)


class DASIntervention(Intervention):
    """A trained DAS subspace as an ``interventions=`` entry: ``fn(activation) -> activation`` replacing the
    subspace's coordinates at the DAS's positions with the source's (see :func:`interchange`).

    Inside a trace (or a program, or each step of a generation) the rotation and the source activations
    are lifted to params like any array, so a program recorded with it replays with new source activations.

    Args:
        rotation: ``(width, dim)`` orthonormal columns (:attr:`mlxterp.DAS.rotation`, float32); the map is
            computed in its dtype and returned in the activation's.
        source: ``(n or 1, len(positions), width)`` source activations (:meth:`mlxterp.DAS.source_activations`).
        positions: the token positions replaced (ints; negative count from the end of each activation's token
            axis).
    """


    def __init__(self, rotation: mx.array, source: mx.array, positions: tuple):
        self.rotation = rotation
        self.source = source
        self.positions = positions

    def __call__(self, x: Any) -> Any:
        return apply(interchange, x, self.rotation, self.source, self.positions)

    def __repr__(self) -> str:
        n, d = self.rotation.shape
        return f"DASIntervention(dim {d} of {n}, positions {list(self.positions)}, source {tuple(self.source.shape)})"
