"""Dictionaries written from their papers' definitions in numpy (float64), sharing no code with the library.

- ReLU SAE with decoder-norm-weighted L1 (Anthropic, "Circuits Updates - April 2024"):
  ``f = ReLU(W_enc^T (x - b_dec) + b_enc)``, ``x_hat = W_dec^T f + b_dec``,
  ``L = mean_rows ||x - x_hat||^2 + l1 * mean_rows sum_i f_i ||W_dec,i||``.
- TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): ``f = ReLU(TopK(pre))``; loss the
  normalized MSE ``sum ||x - x_hat||^2 / sum ||x - mean x||^2``; AuxK: ``e = x - x_hat``,
  ``e_hat = W_dec^T ReLU(TopK_aux(pre restricted to dead latents))``, ``L_aux = NMSE(e_hat, e)``,
  weighted by alpha.
- BatchTopK (Bussmann et al. 2024): keep the ``k * B`` largest ``ReLU(pre)`` of the whole batch.
- JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"): ``f = pre * H(pre - theta)``,
  ``L = mean_rows ||x - x_hat||^2 + l0 * mean_rows sum_i H(pre_i - theta_i)``; pseudo-derivatives
  ``d f/d theta = -(theta/eps) K((pre - theta)/eps)``, ``d H/d theta = -(1/eps) K((pre - theta)/eps)``,
  ``K`` the rectangle function on (-1/2, 1/2), applied through ``theta = exp(log_theta)``.

Selections use ``argsort`` (exactly ``k``), not the library's threshold comparisons.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

Params = Dict[str, np.ndarray]


def pre_activations(p: Params, x: np.ndarray, apply_b_dec: bool) -> np.ndarray:
    x_in = x - p["b_dec"] if apply_b_dec else x
    return x_in @ p["W_enc"] + p["b_enc"]


def topk(pre: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[..., :k]
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, axis=-1), 0), axis=-1)
    return out


def batchtopk(pre: np.ndarray, k_batch: int) -> np.ndarray:
    acts = np.maximum(pre, 0).reshape(-1)
    out = np.zeros_like(acts)
    idx = np.argsort(-acts)[:k_batch]
    out[idx] = acts[idx]
    return out.reshape(pre.shape)


def jumprelu(pre: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return pre * (pre > theta)


def threshold_relu(pre: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """SAELens's JumpReLU inference: ``ReLU(pre) * (pre > threshold)``."""
    return np.maximum(pre, 0) * (pre > theta)


def encode(arch: str, p: Params, x: np.ndarray, *, k: Optional[float] = None, apply_b_dec: bool = True,
           rescale: bool = False) -> np.ndarray:
    """Inference features of an SAE (``rescale``: SAELens's rescale_acts_by_decoder_norm for TopK)."""
    pre = pre_activations(p, x, apply_b_dec)
    if rescale:
        pre = pre * np.linalg.norm(p["W_dec"], axis=-1)
    if arch == "topk":
        return topk(pre, int(k))
    if arch in ("jumprelu", "batchtopk"):
        return threshold_relu(pre, p["threshold"])
    return np.maximum(pre, 0)


def decode(p: Params, f: np.ndarray, rescale: bool = False) -> np.ndarray:
    if rescale:
        f = f / np.linalg.norm(p["W_dec"], axis=-1)
    return f @ p["W_dec"] + p["b_dec"]


def nmse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(((pred - target) ** 2).sum() / ((target - target.mean(axis=0)) ** 2).sum())


def train_loss(arch: str, p: Params, x: np.ndarray, y: np.ndarray, *, k: float = 0, apply_b_dec: bool = True,
               l1: float = 0.0, l0: float = 0.0, dead: Optional[np.ndarray] = None, k_aux: int = 0,
               alpha: float = 1 / 32, error: Optional[np.ndarray] = None) -> float:
    """The training loss of one batch (see the module docstring); ``p["log_threshold"]`` for JumpReLU.
    ``error``: AuxK's target ``e`` held fixed (it carries no gradient in Gao et al.), else ``y - y_hat``."""
    pre = pre_activations(p, x, apply_b_dec)
    batch = x.shape[0]
    if arch == "topk":
        f = topk(pre, int(k))
    elif arch == "batchtopk":
        f = batchtopk(pre, max(1, round(k * batch)))
    elif arch == "jumprelu":
        f = jumprelu(pre, np.exp(p["log_threshold"]))
    else:
        f = np.maximum(pre, 0)
    y_hat = f @ p["W_dec"] + p["b_dec"]
    if arch in ("topk", "batchtopk"):
        loss = nmse(y_hat, y)
        if dead is not None and dead.any():
            e = y - y_hat if error is None else error
            e_hat = topk(np.where(dead, pre, -np.inf), k_aux) @ p["W_dec"]
            e_hat = np.nan_to_num(e_hat)
            loss += alpha * nmse(e_hat, e)
        return loss
    loss = float(((y_hat - y) ** 2).sum(axis=-1).mean())
    if arch == "relu":
        loss += l1 * float((f * np.linalg.norm(p["W_dec"], axis=-1)).sum(axis=-1).mean())
    if arch == "jumprelu":
        loss += l0 * float((pre > np.exp(p["log_threshold"])).sum(axis=-1).mean())
    return loss


def reconstruction_error(arch: str, p: Params, x: np.ndarray, y: np.ndarray, k: float) -> np.ndarray:
    """``y - y_hat`` of a TopK/BatchTopK dictionary (AuxK's target)."""
    pre = pre_activations(p, x, True)
    f = topk(pre, int(k)) if arch == "topk" else batchtopk(pre, max(1, round(k * x.shape[0])))
    return y - (f @ p["W_dec"] + p["b_dec"])


def jumprelu_threshold_grad(p: Params, x: np.ndarray, y: np.ndarray, *, l0: float, bandwidth: float,
                            apply_b_dec: bool = True) -> np.ndarray:
    """``d L / d log_theta`` by the paper's pseudo-derivatives (the chain rule through ``theta = e^log_theta``)."""
    pre = pre_activations(p, x, apply_b_dec)
    theta = np.exp(p["log_threshold"])
    f = jumprelu(pre, theta)
    y_hat = f @ p["W_dec"] + p["b_dec"]
    batch = x.shape[0]
    d_f = 2 * (y_hat - y) @ p["W_dec"].T / batch  # dL/df of the reconstruction term
    kernel = (np.abs((pre - theta) / bandwidth) < 0.5).astype(np.float64)
    d_theta = (d_f * -(theta / bandwidth) * kernel).sum(axis=0) + l0 * (-(1 / bandwidth) * kernel).sum(axis=0) / batch
    return d_theta * theta


def auxk_latents(pre: np.ndarray, dead: np.ndarray, k_aux: int) -> np.ndarray:
    """``ReLU`` of the ``k_aux`` largest dead pre-activations of each row (Gao et al.)."""
    masked = np.where(dead, pre, -np.inf)
    out = topk(masked, k_aux)
    return np.where(dead, np.nan_to_num(out), 0)
