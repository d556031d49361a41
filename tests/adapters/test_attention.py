"""Attention internals (q, k, v, scores, pattern, heads) on every family with attention, at tiny random
configs: an explicit layer equals the fused forward, and its internals equal an attention written by hand
in float64 numpy from mlx-lm's source (scale, grouped-query heads, causal and sliding-window masks, Gemma 2's
soft-capping); writes reach what follows; head ablation equals zeroing the output projection's columns."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.adapters import attention
from tests.families import FAMILIES, build

from .reference import OUT_PROJ

TOKENS = mx.array([[1, 5, 9, 13, 17, 21, 25, 3]])
ATTENTION_FAMILIES = [f for f in FAMILIES if f != "mamba"]
# Sliding-window families at the test config: window 4; layer i is global iff i % 2 == 1 (mlx-lm's rule).
WINDOWED = {"gemma3_text", "cohere2"}


@pytest.fixture(scope="module", params=ATTENTION_FAMILIES)
def fam(request):
    return request.param, InterpretableModel(build(request.param))


def reference(q, k, v, scale, softcap=None, window=None):
    """pattern (B, H, L, S) and heads (B, L, H, Dv) in float64 from q (B, L, H, D), k, v (B, S, Hkv, D)."""
    q, k, v = (np.array(a, dtype=np.float64) for a in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("blhd,bshd->bhls", q, k) * scale
    if softcap is not None:
        scores = np.tanh(scores / softcap) * softcap
    qi, ki = np.arange(q.shape[1])[:, None], np.arange(k.shape[1])[None]
    allowed = (ki <= qi) & ((qi - ki < window) if window else True)
    scores = np.where(allowed, scores, -np.inf)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    return pattern, np.einsum("bhls,bshd->blhd", pattern, v)


def _attention_module(model, layer):
    return model._index.modules[model._index.resolve(f"layers.{layer}.attn")]


def _scale(module, head_dim):
    return getattr(module, "scale", getattr(module, "scale_attn", head_dim ** -0.5))


@pytest.mark.parametrize("compile", [False, True])
def test_explicit_layers_equal_the_fused_forward(fam, compile):
    _, model = fam
    with model.trace(TOKENS, compile=compile, capture="saved"):
        patterns = [layer.attn.pattern.save() for layer in model.layers]
        out = model.output.save()
    assert mx.allclose(out, model.model(TOKENS), atol=1e-5)
    for p in patterns:
        assert p.shape[0] == 1 and p.shape[2:] == (8, 8)
        assert mx.allclose(p.sum(-1), mx.ones(p.shape[:-1]), atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_internals_equal_a_hand_written_attention(fam, layer):
    family, model = fam
    with model.trace(TOKENS, capture="saved"):
        attn = model.layers[layer].attn
        q, k, v, scores, pattern, heads = (getattr(attn, n).save() for n in attention.POINTS)
    module = _attention_module(model, layer)
    window = 4 if family in WINDOWED and layer % 2 == 0 else None
    softcap = module.attn_logit_softcapping if family == "gemma2" else None
    want_pattern, want_heads = reference(q, k, v, _scale(module, q.shape[-1]), softcap, window)
    np.testing.assert_allclose(np.array(pattern), want_pattern, atol=1e-5)
    np.testing.assert_allclose(np.array(heads), want_heads, atol=1e-5)
    assert float(mx.max(scores)) == float(mx.max(mx.where(mx.array(want_pattern) > 0, scores, -1e30)))


def test_heads_are_what_the_output_projection_reads(fam):
    family, model = fam
    with model.trace(TOKENS, capture="saved"):
        heads = model.layers[1].attn.heads.save()
        out = model.layers[1].attn.output.save()
    proj = getattr(_attention_module(model, 1), OUT_PROJ.get(family, "o_proj"))
    assert mx.allclose(proj(heads.reshape(1, 8, -1)), out, atol=1e-5)


@pytest.mark.parametrize("compile", [False, True])
def test_head_ablation_equals_zeroed_output_columns(fam, compile):
    family, model = fam
    with model.trace(TOKENS, compile=compile, capture="saved"):
        width = model.layers[1].attn.heads.shape[-1]
        model.layers[1].attn.heads[:, :, 1] = 0.0
        ablated = model.output.save()
    proj = getattr(_attention_module(model, 1), OUT_PROJ.get(family, "o_proj"))
    weight = proj.weight
    try:
        proj.weight = weight * mx.concatenate([mx.ones(width), mx.zeros(width), mx.ones(weight.shape[1] - 2 * width)])
        expected = model.model(TOKENS)
    finally:
        proj.weight = weight
    assert mx.allclose(ablated, expected, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gptj", "deepseek_v2"])
@pytest.mark.parametrize("compile", [False, True])
def test_a_written_pattern_is_what_the_heads_use(family, compile):
    model = InterpretableModel(build(family))
    causal = np.tril(np.ones((8, 8)))
    uniform = mx.array(causal / causal.sum(-1, keepdims=True), dtype=mx.float32)
    with model.trace(TOKENS, compile=compile, capture="saved"):
        model.layers[1].attn.pattern = model.layers[1].attn.pattern * 0.0 + uniform
        v = model.layers[1].attn.v.save()
        heads = model.layers[1].attn.heads.save()
    groups = heads.shape[2] // v.shape[2]
    want = np.einsum("ls,bshd->blhd", np.array(uniform, np.float64), np.repeat(np.array(v, np.float64), groups, 2))
    np.testing.assert_allclose(np.array(heads), want, atol=1e-5)


def test_queries_are_after_rope():
    model = InterpretableModel(build("llama"))
    with model.trace(TOKENS, capture="saved"):
        x = model.layers[1].attn.input.save()
        q = model.layers[1].attn.q.save()
    module = _attention_module(model, 1)
    want = module.rope(module.q_proj(x).reshape(1, 8, module.n_heads, -1).transpose(0, 2, 1, 3))
    assert mx.allclose(q, want.transpose(0, 2, 1, 3), atol=1e-6)


def test_only_the_asked_layer_runs_explicitly(monkeypatch):
    model = InterpretableModel(build("llama"))
    calls = []
    original = attention.explicit_attention
    monkeypatch.setattr(attention, "explicit_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    model._probe(TOKENS)  # the probe (one lazy forward per input shape) builds every layer's internals
    calls.clear()
    with model.trace(TOKENS, compile=False, capture="saved"):
        model.layers[2].attn.pattern.save()
    assert len(calls) == 1


def test_padded_rows_attend_like_any_row_and_real_rows_never_see_padding():
    model = InterpretableModel(build("llama"))
    short, long = [1, 5, 9], [1, 5, 9, 13, 17, 21]
    with model.trace(mx.array([short + [0, 0, 0], long]), capture="saved"):
        batched = model.layers[1].attn.pattern.save()
    with model.trace(mx.array([short]), capture="saved"):
        alone = model.layers[1].attn.pattern.save()
    assert mx.allclose(batched[0, :, :3, :3], alone[0], atol=1e-6)
    assert float(mx.abs(batched[0, :, :3, 3:]).max()) == 0.0
    assert float(batched[0, :, 5, 3:6].sum()) > 0  # a padded row attends to the padding before it


def test_internals_by_name_in_captures_interventions_and_module():
    model = InterpretableModel(build("llama"))
    with model.trace(TOKENS, capture=["layers.1.attn.pattern"]) as tr:
        head = model.module("layers.1.attn.heads").output.save()
    assert tr.activations["model.model.layers.1.self_attn.pattern"].shape == (1, 4, 8, 8)
    assert tr.get("layers.1.attn.heads").shape == head.shape == (1, 8, 4, 8)
    with model.trace(TOKENS, interventions={"layers.1.attn.pattern": lambda p: p * 0.0}, capture="saved"):
        zero = model.layers[1].attn.heads.save()
    assert float(mx.abs(zero).max()) == 0.0


class _HandAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def __call__(self, x, mask=None, cache=None):
        return self.proj(x)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = _HandAttention()

    def __call__(self, x):
        return x + self.self_attn(x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.layers = [_Block()]

    def __call__(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return x


def test_an_attention_that_does_not_call_sdpa_says_so():
    model = InterpretableModel(_Net())
    with model.trace(mx.array([[1, 2]])), pytest.raises(AttributeError, match="exposes no internals"):
        model.layers[0].self_attn.pattern


def test_unknown_internal_lists_the_valid_ones():
    model = InterpretableModel(build("llama"))
    with pytest.raises(Exception, match="attention internals are: q, k, v, scores, pattern, heads"):
        model._index.resolve("layers.1.attn.patern")
