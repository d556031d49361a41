"""The optimizers as pure functions of arrays (Adam; SGD with Nesterov momentum, the tuned lens's), global-norm
clipping, and the per-step schedules.

Everything the compiled step needs is an input or an output (parameters, Adam's moments, the step
number, the learning rate), so a step can be replayed from a checkpoint bit for bit and nothing is
captured by ``mx.compile``.
"""

from __future__ import annotations

from typing import Dict, Tuple

import mlx.core as mx
from mlx.utils import tree_map, tree_reduce

Tree = Dict[str, mx.array]


OPTIMIZERS = ("adam", "sgd")


def adam_init(params: Tree) -> Dict[str, Tree]:
    """Adam's state for ``params``: first and second moments at 0."""
    return {"m": tree_map(mx.zeros_like, params), "v": tree_map(mx.zeros_like, params)}


def optimizer_init(optimizer: str, params: Tree) -> Dict[str, Tree]:
    """The state of ``optimizer`` (``"adam"`` or ``"sgd"``) for ``params``: its moments at 0."""
    if optimizer == "sgd":
        return {"m": tree_map(mx.zeros_like, params), "v": {}}
    return adam_init(params)


def adam(params: Tree, grads: Tree, state: Dict[str, Tree], lr: mx.array, t: mx.array,
         betas: Tuple[float, float], eps: float) -> Tuple[Tree, Dict[str, Tree]]:
    """One Adam update with bias correction (Kingma & Ba 2015): ``t`` is the 1-based step number.

    ``p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, the form of ``mlx.optimizers.Adam``
    with ``bias_correction=True``.
    """
    b1, b2 = betas
    m = {k: b1 * state["m"][k] + (1 - b1) * g for k, g in grads.items()}
    v = {k: b2 * state["v"][k] + (1 - b2) * mx.square(g) for k, g in grads.items()}
    c1 = lr / (1 - b1 ** t)
    c2 = mx.rsqrt(1 - b2 ** t)
    new = {k: params[k] - (c1 * m[k]).astype(params[k].dtype) / (mx.sqrt(v[k]) * c2 + eps) for k in params}
    return new, {"m": m, "v": v}


def sgd_nesterov(params: Tree, grads: Tree, state: Dict[str, Tree], lr: mx.array, momentum: float,
                 weight_decay: float) -> Tuple[Tree, Dict[str, Tree]]:
    """One step of SGD with Nesterov momentum and coupled weight decay, momentum kept as an average:
    ``g = grad + wd * p``, ``m = mu * m + (1 - mu) * g``, ``p - lr * ((1 - mu) * g + mu * m)``.

    This is ``torch.optim.SGD(lr=lr * (1 - mu), momentum=mu, nesterov=True, weight_decay=wd)`` (PyTorch's
    buffer is ``m / (1 - mu)``), the form the tuned lens (Belrose et al. 2023) trains with at ``lr`` 1. The
    state's ``"v"`` stays empty (the checkpoint's groups are those of Adam).
    """
    g = {k: grads[k] + weight_decay * params[k] if weight_decay else grads[k] for k in grads}
    m = {k: momentum * state["m"][k] + (1 - momentum) * g[k] for k in g}
    new = {k: params[k] - (lr * ((1 - momentum) * g[k] + momentum * m[k])).astype(params[k].dtype) for k in params}
    return new, {"m": m, "v": {}}


def clip_by_global_norm(grads: Tree, max_norm: float) -> Tuple[Tree, mx.array]:
    """``grads * min(1, max_norm / (norm + 1e-6))`` (as ``mlx.optimizers.clip_grad_norm``) and the norm
    before clipping; ``max_norm <= 0`` leaves the gradients alone."""
    norm = mx.sqrt(tree_reduce(lambda acc, g: acc + g.astype(mx.float32).square().sum(), grads, mx.array(0.0)))
    if max_norm <= 0:
        return grads, norm
    scale = mx.minimum(max_norm / (norm + 1e-6), 1.0)
    return {k: (g * scale).astype(g.dtype) for k, g in grads.items()}, norm


def ramp(step: int, steps: int) -> float:
    """A linear ramp from ``1/steps`` at step 0 to 1 at step ``steps - 1`` (1 when ``steps`` is 0)."""
    return 1.0 if steps <= 0 else min(1.0, (step + 1) / steps)


def learning_rate(step: int, total: int, lr: float, warmup: float, decay: float) -> float:
    """The learning rate at ``step`` (0-based) of ``total``: a linear warm-up over the first ``warmup``
    fraction of the steps, then constant, then a linear decay towards 0 over the last ``decay`` fraction."""
    up = ramp(step, round(warmup * total))
    tail = round(decay * total)
    down = 1.0 if tail <= 0 else min(1.0, (total - step) / tail)
    return lr * up * down
