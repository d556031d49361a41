"""A llama forward written by hand in which every receiver reads its own copy of the residual stream: each
head's query, key and value projections, each MLP and the logits get their input from ``receive(name, x,
senders)`` (``x``: the residual stream there; ``senders``: every sender output computed so far in this
forward). Senders are computed by hand too: the embedding, each head's output through its columns of the
output projection, each MLP; ``send(name, z)`` may replace each as it is made, before anything reads it.
Built from ``tests/reference.py``'s norm, RoPE and MLP; shares no code with ``mlxterp.circuits``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from tests.reference import mlp, rms_norm, rope

Receive = Callable[[str, mx.array, Dict[str, mx.array]], mx.array]


Send = Callable[[str, mx.array], mx.array]


def _keep(name: str, x: mx.array, senders: Dict[str, mx.array]) -> mx.array:
    return x


def _sent(name: str, z: mx.array) -> mx.array:
    return z


def forward(model: nn.Module, tokens: mx.array, receive: Receive = _keep, embed: Optional[mx.array] = None,
            granularity: str = "heads", send: Send = _sent) -> Tuple[mx.array, Dict[str, mx.array]]:
    """Logits ``(batch, seq, vocab)`` and every sender's output ``(batch, seq, hidden)`` by name.

    ``embed`` replaces the token embedding; with ``granularity="layers"`` a layer's attention reads one input,
    ``receive("layers.L.attn", ...)``, instead of one per head projection; ``send(name, z)`` replaces sender
    ``name``'s output ``z``.
    """
    args, inner = model.args, model.model
    eps, traditional = args.rms_norm_eps, getattr(args, "rope_traditional", False)
    h = send("embed", inner.embed_tokens.weight[tokens] if embed is None else embed)
    senders = {"embed": h}
    for i, layer in enumerate(inner.layers):
        heads = _attention(layer.self_attn, lambda name: receive(name, h, senders), i, layer.input_layernorm.weight,
                           eps, args.rope_theta, traditional, granularity)
        o = layer.self_attn.o_proj.weight
        dim = heads.shape[-1]
        for j in range(heads.shape[2]):
            name = f"layers.{i}.attn.heads.{j}"
            senders[name] = send(name, heads[:, :, j] @ o[:, j * dim:(j + 1) * dim].T)
        r = h + sum(senders[f"layers.{i}.attn.heads.{j}"] for j in range(heads.shape[2]))
        x = receive(f"layers.{i}.mlp", r, senders)
        out = mlp(layer.mlp, rms_norm(x, layer.post_attention_layernorm.weight, eps))
        senders[f"layers.{i}.mlp"] = send(f"layers.{i}.mlp", out)
        h = r + senders[f"layers.{i}.mlp"]
    x = receive("logits", h, senders)
    unembed = inner.embed_tokens.weight if args.tie_word_embeddings else model.lm_head.weight
    return rms_norm(x, inner.norm.weight, eps) @ unembed.T, senders


def _attention(attn: nn.Module, inputs: Callable[[str], mx.array], i: int, norm: mx.array, eps: float, base: float,
               traditional: bool, granularity: str) -> mx.array:
    """Causal attention whose every head projection reads its own input; returns the heads ``(b, s, H, d)``."""
    n_q, n_kv = attn.n_heads, attn.n_kv_heads
    dim = attn.q_proj.weight.shape[0] // n_q

    def project(weight: mx.array, j: int, kind: str) -> mx.array:
        name = f"layers.{i}.attn" if granularity == "layers" else f"layers.{i}.attn.heads.{j}.{kind}"
        return rms_norm(inputs(name), norm, eps) @ weight[j * dim:(j + 1) * dim].T

    q = mx.stack([project(attn.q_proj.weight, j, "q") for j in range(n_q)], axis=1)  # (b, H, s, d)
    k = mx.stack([project(attn.k_proj.weight, j, "k") for j in range(n_kv)], axis=1)
    v = mx.stack([project(attn.v_proj.weight, j, "v") for j in range(n_kv)], axis=1)
    q, k = rope(q, base, 0, traditional), rope(k, base, 0, traditional)
    k, v = mx.repeat(k, n_q // n_kv, axis=1), mx.repeat(v, n_q // n_kv, axis=1)
    seq = q.shape[2]
    scores = (q @ k.transpose(0, 1, 3, 2)) * (dim ** -0.5)
    causal = mx.arange(seq)[:, None] >= mx.arange(seq)[None]
    scores = mx.where(causal, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
    return (mx.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3)


def receiver_gradients(model: nn.Module, tokens: mx.array, receivers: list, metric: Callable[[mx.array], mx.array],
                       embed: Optional[mx.array] = None, granularity: str = "heads",
                       send: Send = _sent) -> Dict[str, mx.array]:
    """The gradient of ``metric(last position's logits).mean()`` at each receiver's input, one receiver at a
    time: a zero delta added to that receiver's input alone, differentiated (``embed`` and ``send`` as in
    :func:`forward`)."""
    out = {}
    for name in receivers:
        def objective(delta: mx.array, name: str = name) -> mx.array:
            def receive(n: str, x: mx.array, s: dict) -> mx.array:
                return x + delta if n == name else x

            logits, _ = forward(model, tokens, receive, embed, granularity, send)
            return metric(logits[:, -1]).mean()

        out[name] = mx.grad(objective)(mx.zeros(model.model.embed_tokens.weight[tokens].shape))
    return out
