"""The compiled trainer equals an uncompiled, step-by-step loop written here (the papers' losses in MLX,
``mlx.optimizers.Adam`` with bias correction, ``mlx.optimizers.clip_grad_norm``, the unit-norm decoder and
dead-latent bookkeeping) for 20 steps, for every architecture, SAE and transcoder."""

from __future__ import annotations

from typing import Dict, List

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from mlxterp.dictionaries.sources import Source
from mlxterp.dictionaries.trainer import FitSettings, fit
from tests.dictionaries.helpers import ARCHS, make, objective, random_weights

D_IN, D_OUT, D_SAE, B, STEPS = 12, 10, 32, 16, 20
LR, WARMUP, DECAY, CLIP, DEAD = 1e-2, 0.1, 0.3, 0.5, 48


class ListSource(Source):
    """Fixed batches, in order (an in-memory stand-in for a store)."""

    def __init__(self, batches: List[Dict[str, np.ndarray]]):
        self.items = batches
        self.widths = {k: v.shape[1] for k, v in batches[0].items()}

    def identity(self):
        return {"kind": "list", "n": len(self.items)}

    def batches(self, batch_size, seed, comm, cursor=None, total=None):
        start = cursor["batch"] if cursor else 0
        for i in range(start, len(self.items)):
            yield {k: mx.array(v) for k, v in self.items[i].items()}, {"batch": i + 1}


# -- the reference: the papers' losses, written again, in MLX for autodiff -------------------------------
@mx.custom_function
def jump(pre, theta, eps):
    return pre * (pre > theta)


@jump.vjp
def _jump_vjp(primals, cot, out):
    pre, theta, eps = primals
    kernel = (mx.abs((pre - theta) / eps) < 0.5).astype(pre.dtype)
    return cot * (pre > theta), (-(theta / eps) * kernel * cot).sum(axis=0), mx.zeros_like(eps)


@mx.custom_function
def heaviside(pre, theta, eps):
    return (pre > theta).astype(pre.dtype)


@heaviside.vjp
def _heaviside_vjp(primals, cot, out):
    pre, theta, eps = primals
    kernel = (mx.abs((pre - theta) / eps) < 0.5).astype(pre.dtype)
    return mx.zeros_like(pre), (-(1 / eps) * kernel * cot).sum(axis=0), mx.zeros_like(eps)


def top_mask(values, k):
    """1 where an entry is among its row's k largest (by rank, exactly k)."""
    ranks = mx.argsort(mx.argsort(-values, axis=-1), axis=-1)
    return ranks < k


def nmse(pred, target):
    return mx.square(pred - target).sum() / mx.square(target - target.mean(axis=0)).sum()


def reference_loss(arch, p, x, y, cfg, dead, threshold_state):
    pre = (x - p["b_dec"] if cfg.apply_b_dec_to_input else x) @ p["W_enc"] + p["b_enc"]
    if arch == "topk":
        f = mx.where(mx.stop_gradient(top_mask(pre, cfg.k)), mx.maximum(pre, 0), 0)
    elif arch == "batchtopk":
        flat = mx.maximum(pre, 0).reshape(1, -1)
        f = mx.where(mx.stop_gradient(top_mask(flat, round(cfg.k * B))), flat, 0).reshape(pre.shape)
    elif arch == "jumprelu":
        f = jump(pre, mx.exp(p["log_threshold"]), mx.array(cfg.bandwidth))
    else:
        f = mx.maximum(pre, 0)
    y_hat = f @ p["W_dec"] + p["b_dec"]
    if arch in ("topk", "batchtopk"):
        loss = nmse(y_hat, y)
        if dead.any():
            e = mx.stop_gradient(y - y_hat)
            masked = mx.where(mx.array(dead), pre, -mx.inf)
            aux = mx.where(mx.stop_gradient(top_mask(masked, cfg.effective_aux_k)) & mx.array(dead), mx.maximum(pre, 0), 0)
            loss = loss + cfg.aux_coefficient * nmse(aux @ p["W_dec"], e)
    else:
        loss = mx.square(y_hat - y).sum(axis=-1).mean()
    if arch == "relu":
        loss = loss + cfg.l1_coefficient * (f * mx.linalg.norm(p["W_dec"], axis=-1)).sum(axis=-1).mean()
    if arch == "jumprelu":
        loss = loss + cfg.l0_coefficient * heaviside(pre, mx.exp(p["log_threshold"]), mx.array(cfg.bandwidth)).sum(-1).mean()
    return loss, f


def schedule(step):
    warm, tail = round(WARMUP * STEPS), round(DECAY * STEPS)
    up = min(1.0, (step + 1) / warm) if warm else 1.0
    down = min(1.0, (STEPS - step) / tail) if tail else 1.0
    return LR * up * down


def reference_run(arch, d, batches):
    cfg = d.config
    params = {n: d[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if arch == "jumprelu":
        params["log_threshold"] = mx.log(d.threshold)
    opt = optim.Adam(learning_rate=LR, betas=[0.9, 0.999], eps=1e-8, bias_correction=True)
    since = np.zeros(cfg.d_sae, dtype=np.int64)
    threshold = float(d.threshold[0].item()) if arch == "batchtopk" else None
    unit = arch != "relu"
    for step, batch in enumerate(batches):
        x = mx.array(batch["x"])
        y = mx.array(batch["y"]) if "y" in batch else x
        dead = since >= DEAD
        (_, f), grads = mx.value_and_grad(lambda p: reference_loss(arch, p, x, y, cfg, dead, threshold))(params)
        if unit:
            w = params["W_dec"]
            grads["W_dec"] = grads["W_dec"] - (w * grads["W_dec"]).sum(-1, keepdims=True) * w
        grads, _ = optim.clip_grad_norm(grads, CLIP)
        opt.learning_rate = schedule(step)
        params = opt.apply_gradients(grads, params)
        if unit:
            params["W_dec"] = params["W_dec"] / mx.linalg.norm(params["W_dec"], axis=-1, keepdims=True)
        f = np.array(f)
        since = np.where((f > 0).any(axis=0), 0, since + B)
        if arch == "batchtopk" and (f > 0).any():
            threshold = 0.99 * threshold + 0.01 * float(f[f > 0].min())
        mx.eval(params)
    if arch == "batchtopk":
        params["threshold"] = mx.array(threshold)
    return params


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_trainer_equals_a_step_by_step_loop(arch, kind):
    rng = np.random.default_rng(0)
    d_out = D_OUT if kind == "transcoder" else D_IN
    w = random_weights(rng, D_IN, D_SAE, d_out)
    if arch != "relu":
        w["W_dec"] /= np.linalg.norm(w["W_dec"], axis=-1, keepdims=True)
    options = dict(dead_tokens=DEAD, bandwidth=0.5)
    batches = [{"x": rng.normal(size=(B, D_IN)).astype(np.float32) + 0.2} for _ in range(STEPS)]
    if kind == "transcoder":
        for b in batches:
            b["y"] = (np.tanh(b["x"] @ rng.normal(size=(D_IN, D_OUT))) * 0.5).astype(np.float32)
    trained = make(arch, w, kind=kind, **options)
    settings = FitSettings(steps=STEPS, batch_size=B, lr=LR, warmup=WARMUP, decay=DECAY, max_grad_norm=CLIP)
    outcome = fit([objective(trained, B)], ListSource(batches), settings, progress=False)
    want = reference_run(arch, make(arch, w, kind=kind, **options), batches)
    got = dict(outcome.states[0].params)
    if arch == "batchtopk":
        got["threshold"] = outcome.states[0].state["threshold"]
    for name in want:
        np.testing.assert_allclose(np.array(got[name]), np.array(want[name]), atol=1e-5, rtol=1e-5, err_msg=name)
    if arch in ("topk", "batchtopk"):
        assert max(outcome.states[0].history["auxk"]) > 0  # dead latents appeared and AuxK trained them
