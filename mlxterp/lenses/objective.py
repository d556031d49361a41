"""The tuned lens's training objective (Belrose et al. 2023), for the generic trainer.

For each trained layer ``l`` with residual output ``h_l`` (a row of the batch) the translator gives
``t_l = h_l + h_l @ A_l + b_l`` (``A_l`` and ``b_l`` start at 0: the identity, i.e. the logit lens), read
out by the model's own final norm and unembedding. The target is the model's final distribution at the
same token, ``p = softmax(unembed(h_last))`` (the last layer's output through the same readout: the model's
logits). The loss is summed over the layers and averaged over the global batch's rows::

    loss = sum_l sum_rows KL(p || softmax(unembed(t_l))) / B,   KL(p || q) = sum_v p_v (log p_v - log q_v)

which is the tuned-lens code's loss (a mean over tokens per layer, gradients of the layers added). No gradient
reaches the model: its weights are constants of the compiled step.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import mlx.core as mx

from ..dictionaries.learner import Comm, Objective
from ..dictionaries.optim import Tree


def translate(h: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
    """``h + (h @ weight + bias)``: one layer's affine translator, identity when both are 0 (exactly: the
    added term is then 0)."""
    return h + (h @ weight + bias)


def log_probs(unembed: Any, h: mx.array) -> mx.array:
    """Float32 log-softmax of the model's readout (final norm, unembedding) of ``h``."""
    logits = unembed.logits(h).astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


@mx.custom_function
def lse_softmax(z: mx.array) -> Tuple[mx.array, mx.array]:
    """``(logsumexp(z), softmax(z))`` over the last axis from one pass of ``exp``; the gradient of the first
    is the second. (MLX's own logsumexp recomputes the exponentials in its backward; on the CPU ``exp`` over a
    vocabulary costs about as much as the unembedding matmul, so once instead of twice matters.)"""
    top = mx.stop_gradient(z.max(axis=-1, keepdims=True))
    e = mx.exp(z - top)
    total = e.sum(axis=-1, keepdims=True)
    return (top + mx.log(total))[..., 0], e / total


@lse_softmax.vjp
def _lse_softmax_vjp(primals: Any, cotangents: Any, outputs: Any) -> Tuple[mx.array]:
    d_lse = cotangents[0]
    return (d_lse[..., None] * outputs[1],)  # the softmax output carries no gradient of its own: never used so


class Target(NamedTuple):
    """The model's final distribution over a batch's rows: ``p (rows, vocab)``, and ``sum_v p_v log p_v`` per
    row."""

    p: mx.array
    neg_entropy: mx.array

    @classmethod
    def of(cls, unembed: Any, h_final: mx.array) -> "Target":
        """The target of the last layer's outputs ``h_final (rows, d_model)``: the model's own prediction."""
        z = unembed.logits(h_final).astype(mx.float32)
        lse, p = lse_softmax(z)
        return cls(p, (p * z).sum(axis=-1) - lse)  # sum p (z - lse), as sum p = 1

    def kl(self, logits: mx.array, lse: Optional[mx.array] = None) -> mx.array:
        """``KL(p || softmax(logits))`` per row: ``sum p log p - p . z + logsumexp(z)`` (``sum p = 1``);
        ``lse``: ``logsumexp(z)`` when already computed."""
        z = logits.astype(mx.float32)
        lse = lse_softmax(z)[0] if lse is None else lse
        return self.neg_entropy - (self.p * z).sum(axis=-1) + lse


class TunedLensObjective(Objective):
    """Trains a :class:`~mlxterp.lenses.TunedLens`'s translators together on one batch.

    Args:
        lens: the lens (its arrays are the starting point; trained in place).
        keys: the batch key of each translator's layer output, in ``lens.layers`` order.
        final_key: the batch key of the last layer's output (the target's source).
        unembed: the model's readout (:func:`mlxterp.analysis.unembed.find_unembedding`).
        batch_size: the global batch size ``B``.
    """

    name = "tuned lens"

    def __init__(self, lens: Any, keys: Sequence[str], final_key: str, unembed: Any, batch_size: int):
        self.lens, self.layer_keys, self.final_key = lens, list(keys), final_key
        self.unembed, self.batch = unembed, int(batch_size)
        self.keys = tuple(dict.fromkeys([*self.layer_keys, final_key]))

    def init_params(self) -> Tree:
        return {"weight": self.lens.weight.astype(mx.float32), "bias": self.lens.bias.astype(mx.float32)}

    def loss(self, params: Tree, state: Tree, batch: Dict[str, mx.array], hyper: Dict[str, mx.array],
             comm: Comm, variant: Any) -> Tuple[mx.array, Dict[str, mx.array]]:
        target = Target.of(self.unembed, mx.stop_gradient(batch[self.final_key]))
        sums: List[mx.array] = []
        for i, key in enumerate(self.layer_keys):
            t = translate(batch[key], params["weight"][i], params["bias"][i])
            sums.append(target.kl(self.unembed.logits(t)).sum())
        kl = mx.stack(sums)
        finite = mx.array(True)
        for key in self.keys:
            finite = finite & mx.isfinite(batch[key]).all()
        return kl.sum() / self.batch, {"kl": mx.stop_gradient(kl), "finite": finite}

    def metrics(self, params: Tree, state: Tree, aux: Dict[str, mx.array], comm: Comm) -> Dict[str, mx.array]:
        per_layer = comm.sum(aux["kl"]) / self.batch
        out = {"kl": per_layer.mean(), "finite": comm.min(aux["finite"].astype(mx.float32))}
        out.update({f"kl.{layer}": per_layer[i] for i, layer in enumerate(self.lens.layers)})
        return out

    def postfix(self, history: Dict[str, List[float]]) -> Optional[str]:
        values = history.get("kl")
        return f"KL {values[-1]:.3f} nats (mean over {len(self.layer_keys)} layers)" if values else None

    def write_back(self, params: Tree, state: Tree) -> None:
        self.lens.weight, self.lens.bias = params["weight"], params["bias"]
