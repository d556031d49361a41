"""DAS written by hand on the hand-written llama forward (``tests/reference.py``), for the tests to compare with.

The interchange here is pyvene's formulation, not the library's: complete the subspace's basis ``R`` to a
full orthogonal matrix ``Q = [R, R_perp]``, rotate base and source (``x @ Q``), take the first ``d``
rotated coordinates from the source and the rest from the base, rotate back (``@ Q.T``); in numpy, float64.
"""

from __future__ import annotations

from typing import Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from tests.reference import Hook, llama_forward

# DAS site name (layer i) -> the hand-written forward's site
SITES = {"resid_pre": "layer_in", "resid_mid": "resid_mid", "resid_post": "layer", "attn": "attn", "mlp": "mlp"}


def reference_site(name: str) -> tuple:
    """``("layer", 2)`` for ``"layers.2.resid_post"`` (and ``"layers.2"``); ``("embed",)`` for ``"embed"``."""
    if name == "embed":
        return ("embed",)
    parts = name.split(".")
    kind = parts[2] if len(parts) > 2 else "resid_post"
    return SITES[kind], int(parts[1])


def full_rotation(basis: np.ndarray, seed: int = 0) -> np.ndarray:
    """An orthogonal ``(n, n)`` matrix whose first ``d`` columns are ``basis`` ``(n, d)``."""
    n, d = basis.shape
    extra = np.random.default_rng(seed).normal(size=(n, n - d))
    q, _ = np.linalg.qr(np.concatenate([basis, extra], axis=1))
    q[:, :d] = basis  # QR may flip their signs; the other columns are orthogonal to the basis either way
    return q


def hand_interchange(base: np.ndarray, source: np.ndarray, basis: np.ndarray, positions: Sequence[int]) -> np.ndarray:
    """``base`` ``(batch, seq, n)`` with the first ``d`` rotated coordinates at ``positions`` from ``source``
    ``(batch, len(positions), n)`` (pyvene's rotate / swap / rotate back)."""
    q = full_rotation(basis.astype(np.float64))
    d = basis.shape[1]
    out = base.astype(np.float64).copy()
    for j, p in enumerate(positions):
        rotated_base, rotated_source = out[:, p] @ q, source[:, j].astype(np.float64) @ q
        rotated_base[:, :d] = rotated_source[:, :d]
        out[:, p] = rotated_base @ q.T
    return out


def reference_values(module: nn.Module, tokens: mx.array, site: str, positions: Sequence[int],
                     edit: Optional[Hook] = None) -> np.ndarray:
    """The site's values at ``positions`` on the hand-written forward (with the hook ``edit`` applied first,
    at every site), ``(batch, len(positions), n)``."""
    key, found = reference_site(site), {}

    def hook(where: tuple, value: mx.array) -> mx.array:
        value = value if edit is None else edit(where, value)
        if where == key:
            found["value"] = np.array(value)
        return value

    llama_forward(module, tokens, hook)
    return found["value"][:, list(positions)]


def reference_logits(module: nn.Module, base: mx.array, source: np.ndarray, site: str, positions: Sequence[int],
                     basis: np.ndarray, edit: Optional[Hook] = None) -> np.ndarray:
    """Last-position logits of the base run with the hand interchange at ``site`` (float32 forward), after
    the hook ``edit`` (applied first, at every site)."""
    key = reference_site(site)

    def hook(where: tuple, value: mx.array) -> mx.array:
        value = value if edit is None else edit(where, value)
        if where != key:
            return value
        return mx.array(hand_interchange(np.array(value), source, basis, positions).astype(np.float32))

    return np.array(llama_forward(module, base, hook)[:, -1])
