"""An independent llama forward, written out by hand from the weights (no mlx-lm module is called), with
a callback at every site an intervention can touch. Tests compare the library against it: a bug shared by
the eager and compiled paths of the tracer cannot hide from a forward that does not use the tracer.

Sites, in the order a forward reaches them: ``("embed",)``, then per layer ``i``: ``("layer_in", i)``,
``("attn", i)`` (attention output after ``o_proj``), ``("resid_mid", i)`` (the residual after the attention
half), ``("mlp", i)``, ``("layer", i)`` (the block output);
then ``("output",)`` (the logits).
"""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

Site = tuple
Hook = Callable[[Site, mx.array], mx.array]


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: mx.array, base: float) -> mx.array:
    """Rotary embedding in the non-interleaved ("rotate half") layout, positions 0..seq-1; ``x`` is
    ``(batch, heads, seq, head_dim)``."""
    dims = x.shape[-1]
    half = dims // 2
    freqs = base ** (-mx.arange(0, half, dtype=mx.float32) * 2 / dims)
    angles = mx.arange(x.shape[2], dtype=mx.float32)[:, None] * freqs[None, :]
    cos, sin = mx.cos(angles), mx.sin(angles)
    x1, x2 = x[..., :half], x[..., half:]
    return mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def attention(attn: nn.Module, x: mx.array, base: float) -> mx.array:
    """Causal multi-head attention with grouped KV heads, softmax written out."""
    b, s, _ = x.shape
    heads, kv_heads = attn.n_heads, attn.n_kv_heads
    q = (x @ attn.q_proj.weight.T).reshape(b, s, heads, -1).transpose(0, 2, 1, 3)
    k = (x @ attn.k_proj.weight.T).reshape(b, s, kv_heads, -1).transpose(0, 2, 1, 3)
    v = (x @ attn.v_proj.weight.T).reshape(b, s, kv_heads, -1).transpose(0, 2, 1, 3)
    q, k = rope(q, base), rope(k, base)
    repeat = heads // kv_heads
    k, v = mx.repeat(k, repeat, axis=1), mx.repeat(v, repeat, axis=1)
    scores = (q @ k.transpose(0, 1, 3, 2)) * (q.shape[-1] ** -0.5)
    causal = mx.triu(mx.full((s, s), -mx.inf), k=1)
    weights = mx.softmax(scores + causal, axis=-1)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, s, -1)
    return out @ attn.o_proj.weight.T


def mlp(block: nn.Module, x: mx.array) -> mx.array:
    gate = x @ block.gate_proj.weight.T
    up = x @ block.up_proj.weight.T
    return (gate * mx.sigmoid(gate) * up) @ block.down_proj.weight.T


def llama_forward(model: nn.Module, tokens: mx.array, hook: Optional[Hook] = None) -> mx.array:
    """Logits of an mlx-lm llama (float weights, default RoPE), calling ``hook(site, value)`` at every site
    (its return value replaces the site's value)."""
    def at(site: Site, value: mx.array) -> mx.array:
        return value if hook is None else hook(site, value)

    args, inner = model.args, model.model
    h = at(("embed",), inner.embed_tokens.weight[tokens])
    for i, layer in enumerate(inner.layers):
        h = at(("layer_in", i), h)
        a = at(("attn", i), attention(layer.self_attn, rms_norm(h, layer.input_layernorm.weight, args.rms_norm_eps),
                                      args.rope_theta))
        r = at(("resid_mid", i), h + a)
        m = at(("mlp", i), mlp(layer.mlp, rms_norm(r, layer.post_attention_layernorm.weight, args.rms_norm_eps)))
        h = at(("layer", i), r + m)
    h = rms_norm(h, inner.norm.weight, args.rms_norm_eps)
    head = inner.embed_tokens.weight if args.tie_word_embeddings else model.lm_head.weight
    return at(("output",), h @ head.T)


def dequantized(model: nn.Module) -> nn.Module:
    """A float copy of a quantized mlx-lm llama (weights dequantized exactly), for float references."""
    from mlx.utils import tree_flatten

    copy = type(model)(model.args)
    weights = {}
    modules = dict(model.named_modules())
    for path, module in modules.items():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            weights[f"{path}.weight"] = mx.dequantize(module.weight, module.scales, module.biases,
                                                      module.group_size, module.bits)
    for key, value in tree_flatten(model.parameters()):
        if key.rsplit(".", 1)[-1] not in ("scales", "biases") and key not in weights:
            weights[key] = value
    copy.load_weights(list(weights.items()))
    mx.eval(copy.parameters())
    return copy
