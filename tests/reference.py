"""An independent llama forward, written out by hand from the weights (no mlx-lm module is called), with
a callback at every site an intervention can touch. Tests compare the library against it: a bug shared by
the eager and compiled paths of the tracer cannot hide from a forward that does not use the tracer.

Sites, in the order a forward reaches them: ``("embed",)``, then per layer ``i``: ``("layer_in", i)``,
the attention internals ``("q", i)``, ``("k", i)``, ``("v", i)`` (after RoPE, ``(batch, seq, heads, head_dim)``,
keys and values with the key-value heads), ``("scores", i)`` (scaled, causal entries masked with the dtype's
lowest finite value, ``(batch, heads, query, key)``), ``("pattern", i)`` (their softmax), ``("heads", i)``
(each head's output before ``o_proj``, ``(batch, seq, heads, head_dim)``), then ``("attn", i)`` (attention
output after ``o_proj``), ``("resid_mid", i)`` (the residual after the attention half), ``("mlp_in", i)``
(the MLP's input, after its norm), ``("mlp", i)``,
``("layer", i)`` (the block output); then ``("output",)`` (the logits).

``offset`` runs the forward on a suffix of a sequence whose first ``offset`` positions are already in
``past`` (keys and values per layer): what a decode step computes, written without a KV cache object.
"""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

Site = tuple
Hook = Callable[[Site, mx.array], mx.array]


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: mx.array, base: float, offset: int = 0, traditional: bool = False) -> mx.array:
    """Rotary embedding in the non-interleaved ("rotate half") layout, or with ``traditional`` the interleaved
    one (pairs ``(x0, x1), (x2, x3), ...``; GGUF llamas such as SmolLM2), positions offset..offset+seq-1; ``x``
    is ``(batch, heads, seq, head_dim)``."""
    dims = x.shape[-1]
    half = dims // 2
    freqs = base ** (-mx.arange(0, half, dtype=mx.float32) * 2 / dims)
    angles = mx.arange(offset, offset + x.shape[2], dtype=mx.float32)[:, None] * freqs[None, :]
    cos, sin = mx.cos(angles), mx.sin(angles)
    if traditional:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return mx.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(x.shape)
    x1, x2 = x[..., :half], x[..., half:]
    return mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _identity(site: Site, value: mx.array) -> mx.array:
    return value


def attention(attn: nn.Module, x: mx.array, base: float, at: Callable[[str, mx.array], mx.array] = _identity,
              offset: int = 0, past: Optional[tuple] = None, traditional: bool = False) -> tuple[mx.array, tuple]:
    """Causal multi-head attention with grouped KV heads, softmax written out; ``at(name, value)`` is called
    at each internal point (``q``, ``k``, ``v``, ``scores``, ``pattern``, ``heads``, in the library's layouts).
    ``past``: keys and values of the ``offset`` earlier positions (``(batch, seq, kv_heads, head_dim)``, as
    the ``k``/``v`` points give them). Returns the output and this call's full keys and values."""
    b, s, _ = x.shape
    heads, kv_heads = attn.n_heads, attn.n_kv_heads
    q = (x @ attn.q_proj.weight.T).reshape(b, s, heads, -1).transpose(0, 2, 1, 3)
    k = (x @ attn.k_proj.weight.T).reshape(b, s, kv_heads, -1).transpose(0, 2, 1, 3)
    v = (x @ attn.v_proj.weight.T).reshape(b, s, kv_heads, -1).transpose(0, 2, 1, 3)
    q, k = rope(q, base, offset, traditional), rope(k, base, offset, traditional)
    q = at("q", q.transpose(0, 2, 1, 3))
    k = at("k", k.transpose(0, 2, 1, 3))
    v = at("v", v.transpose(0, 2, 1, 3))
    if past is not None:  # the cache: earlier positions' keys and values (as their k/v points left them)
        k, v = mx.concatenate([past[0], k], axis=1), mx.concatenate([past[1], v], axis=1)
    full = (k, v)
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    repeat = heads // kv_heads
    k, v = mx.repeat(k, repeat, axis=1), mx.repeat(v, repeat, axis=1)
    scores = (q @ k.transpose(0, 1, 3, 2)) * (q.shape[-1] ** -0.5)
    keys = k.shape[2]
    causal = mx.arange(keys - s, keys)[:, None] >= mx.arange(keys)[None]
    scores = at("scores", mx.where(causal, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype)))
    weights = at("pattern", mx.softmax(scores, axis=-1))
    out = at("heads", (weights @ v).transpose(0, 2, 1, 3))
    return out.reshape(b, s, -1) @ attn.o_proj.weight.T, full


def mlp(block: nn.Module, x: mx.array) -> mx.array:
    gate = x @ block.gate_proj.weight.T
    up = x @ block.up_proj.weight.T
    return (gate * mx.sigmoid(gate) * up) @ block.down_proj.weight.T


def llama_forward(model: nn.Module, tokens: mx.array, hook: Optional[Hook] = None, offset: int = 0,
                  past: Optional[list] = None, present: Optional[list] = None) -> mx.array:
    """Logits of an mlx-lm llama (float weights, RoPE as ``args.rope_traditional`` says), calling
    ``hook(site, value)`` at every site (its return value replaces the site's value).

    Args:
        offset, past: ``tokens`` are positions ``offset..`` of a sequence whose earlier keys and values are
            ``past[i]`` for layer ``i`` (a decode step; ``offset=0, past=None``: the whole sequence).
        present: if given, receives each layer's full keys and values (what a cache holds after the call).
    """
    def at(site: Site, value: mx.array) -> mx.array:
        return value if hook is None else hook(site, value)

    args, inner = model.args, model.model
    h = at(("embed",), inner.embed_tokens.weight[tokens])
    for i, layer in enumerate(inner.layers):
        h = at(("layer_in", i), h)
        attn_out, kv = attention(layer.self_attn, rms_norm(h, layer.input_layernorm.weight, args.rms_norm_eps),
                                 args.rope_theta, lambda name, value, i=i: at((name, i), value), offset,
                                 None if past is None else past[i], getattr(args, "rope_traditional", False))
        if present is not None:
            present.append(kv)
        a = at(("attn", i), attn_out)
        r = at(("resid_mid", i), h + a)
        m_in = at(("mlp_in", i), rms_norm(r, layer.post_attention_layernorm.weight, args.rms_norm_eps))
        m = at(("mlp", i), mlp(layer.mlp, m_in))
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
