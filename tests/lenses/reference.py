"""The tuned lens's loss and its gradients written again in numpy (float64) from the paper's definition, for a
llama whose final norm is an RMSNorm and whose unembedding is ``lm_head`` (or the tied embedding)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np


def readout(t: np.ndarray, g: np.ndarray, head: np.ndarray, eps: float) -> Tuple[np.ndarray, np.ndarray]:
    """Logits of the RMSNorm-ed states ``t (rows, d)`` through ``head (vocab, d)``, and the norm's ``1/rms``."""
    inv = 1.0 / np.sqrt((t * t).mean(axis=-1, keepdims=True) + eps)
    return (t * inv * g) @ head.T, inv


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def loss_and_grads(hs: List[np.ndarray], h_final: np.ndarray, weight: np.ndarray, bias: np.ndarray, g: np.ndarray,
                   head: np.ndarray, eps: float, batch: int) -> Tuple[float, np.ndarray, Dict[str, np.ndarray]]:
    """``sum_l sum_rows KL(p || q_l) / batch`` with ``p = softmax(readout(h_final))`` and
    ``q_l = softmax(readout(h_l + h_l @ A_l + b_l))``; the per-layer KL sums; ``d loss / d A``, ``d loss / d b``.

    The backward by hand: ``dz = (q - p) / batch``; ``dn = dz @ head``; through ``n = g * t / r`` with
    ``r = sqrt(mean(t^2) + eps)``: ``dt = g dn / r - t sum(g dn t) / (d r^3)``; ``dA = h^T dt``, ``db = sum dt``.
    """
    d = h_final.shape[-1]
    z_final, _ = readout(h_final, g, head, eps)
    p = softmax(z_final)
    logp = np.log(p)
    total, per_layer = 0.0, []
    d_weight, d_bias = np.zeros_like(weight), np.zeros_like(bias)
    for i, h in enumerate(hs):
        t = h + h @ weight[i] + bias[i]
        z, inv = readout(t, g, head, eps)
        q = softmax(z)
        kl = (p * (logp - np.log(q))).sum()
        per_layer.append(kl)
        total += kl / batch
        dn = ((q - p) / batch) @ head
        dt = g * dn * inv - t * (g * dn * t).sum(axis=-1, keepdims=True) * inv ** 3 / d
        d_weight[i] = h.T @ dt
        d_bias[i] = dt.sum(axis=0)
    return total, np.array(per_layer), {"weight": d_weight, "bias": d_bias}
