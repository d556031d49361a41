"""Residual decomposition and direct logit attribution against the hand-written forward (tests/reference.py):
its layer inputs, heads and logits, and the final norm's scale frozen by hand."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.circuits.norms import freeze
from tests.circuits.conftest import CLEAN, FOIL, TARGET, assert_untouched, tokens, weights
from tests.models import CharTokenizer, tiny_llama_module, tiny_qwen2_module
from tests.reference import llama_forward


def _reference_sites(model: InterpretableModel, toks: mx.array) -> tuple:
    sites = {}

    def hook(site, value):
        sites[site] = value
        return value

    logits = llama_forward(model.model, toks, hook)
    return logits, sites


def _head_outputs(model: InterpretableModel, heads: mx.array, layer: int) -> mx.array:
    """By hand: head h's output is heads[:, :, h] times its columns of o_proj."""
    o = model.model.model.layers[layer].self_attn.o_proj.weight
    dim = heads.shape[-1]
    return mx.stack([heads[:, :, h] @ o[:, h * dim:(h + 1) * dim].T for h in range(heads.shape[2])])


def test_components_sum_to_every_layer_input_of_the_hand_written_forward(circuit_model):
    toks = tokens(circuit_model, CLEAN)
    res = circuit_model.decompose(CLEAN)
    _, sites = _reference_sites(circuit_model, toks)
    for layer in range(len(circuit_model.layers)):
        np.testing.assert_allclose(np.array(res.residual(layer)), np.array(sites[("layer_in", layer)]), atol=1e-5)
        np.testing.assert_allclose(np.array(res.residual(layer, "mid")), np.array(sites[("resid_mid", layer)]),
                                   atol=1e-5)
        np.testing.assert_allclose(np.array(res.heads(layer)),
                                   np.array(_head_outputs(circuit_model, sites[("heads", layer)], layer)), atol=1e-5)
        np.testing.assert_allclose(np.array(res.mlp(layer)), np.array(sites[("mlp", layer)]), atol=1e-5)
    np.testing.assert_allclose(np.array(res.residual()), np.array(sites[("layer", 3)]), atol=1e-5)
    assert float(mx.abs(res.error).max()) < 1e-5


def test_accumulated_residual_and_names(circuit_model):
    res = circuit_model.decompose(CLEAN[0])
    labels, acc = res.accumulated(incl_mid=True)
    assert labels[:3] == ["layers.0.resid_pre", "layers.0.resid_mid", "layers.1.resid_pre"] and labels[-1] == "final"
    np.testing.assert_allclose(np.array(acc[3]), np.array(res.residual(1, "mid")), atol=1e-6)
    np.testing.assert_allclose(np.array(res["layers.2.attn.heads.1"]), np.array(res.heads(2)[1]))
    names, parts = res.components(1)
    assert names == ["embed"] + [f"layers.0.attn.heads.{h}" for h in range(4)] + ["layers.0.mlp"]
    assert parts.shape == (6, 1, 12, 64)


def test_last_only_keeps_the_last_position(circuit_model):
    full, last = circuit_model.decompose(CLEAN), circuit_model.decompose(CLEAN, last_only=True)
    assert last.stack.shape[2] == 1
    np.testing.assert_allclose(np.array(last.stack[:, :, 0]), np.array(full.stack[:, :, -1]), atol=1e-6)


def _by_hand(model: InterpretableModel, toks: mx.array, target: int, foil: int) -> tuple:
    """Each component's contribution through the final norm with its scale frozen, and the logit difference."""
    logits, sites = _reference_sites(model, toks)
    inner, eps = model.model.model, model.model.args.rms_norm_eps
    final = sites[("layer", len(inner.layers) - 1)][:, -1]
    scale = mx.rsqrt(mx.mean(final * final, axis=-1, keepdims=True) + eps) * inner.norm.weight
    direction = (model.model.lm_head.weight[target] - model.model.lm_head.weight[foil])
    parts = [sites[("embed",)][:, -1]]
    for layer in range(len(inner.layers)):
        parts += list(_head_outputs(model, sites[("heads", layer)], layer)[:, :, -1]) + [sites[("mlp", layer)][:, -1]]
    values = np.array([float(((p * scale) @ direction).mean()) for p in parts])
    diff = float((logits[:, -1, target] - logits[:, -1, foil]).mean())
    return values, diff


def test_contributions_equal_a_hand_computation_and_sum_to_the_logit_difference(circuit_model):
    dla = circuit_model.direct_logit_attribution(CLEAN, target=TARGET, foil=FOIL)
    values, diff = _by_hand(circuit_model, tokens(circuit_model, CLEAN), TARGET, FOIL)
    np.testing.assert_allclose(dla.values, values, atol=1e-5)
    assert dla.logit_diff == pytest.approx(diff, abs=1e-5)
    assert dla.total == pytest.approx(diff, abs=1e-4) and abs(dla.error) < 1e-4
    assert dla.heads.shape == (4, 4) and dla.mlps.shape == (4,) and dla.embed == pytest.approx(values[0], abs=1e-6)
    assert dla.per_prompt.shape == (21, 2)
    assert dla.label == f"logit({circuit_model.token_to_str(TARGET)!r}) - logit({circuit_model.token_to_str(FOIL)!r})"


def test_top_lists_the_largest_contributions_first(circuit_model):
    dla = circuit_model.direct_logit_attribution(CLEAN[0], target=TARGET, foil=FOIL)
    top = dla.top(5)
    assert [abs(v) for _, v in top] == sorted((abs(v) for v in dla.values), reverse=True)[:5]
    assert dla.as_dict()[top[0][0]] == top[0][1]


def test_without_a_foil_the_target_logit_is_attributed_and_the_default_target_is_the_prediction(circuit_model):
    toks = tokens(circuit_model, CLEAN[:1])
    top = int(mx.argmax(circuit_model.model(toks)[0, -1]).item())
    dla = circuit_model.direct_logit_attribution(CLEAN[0])
    assert dla.label == f"logit({circuit_model.token_to_str(top)!r})"
    assert dla.total == pytest.approx(float(circuit_model.model(toks)[0, -1, top]), abs=1e-4)


def test_tied_embeddings_and_biases_go_through_the_same_rule():
    qwen = InterpretableModel(tiny_qwen2_module(seed=2), tokenizer=CharTokenizer())  # tied head, q/k/v biases
    dla = qwen.direct_logit_attribution("hello", target=3, foil=9)
    assert abs(dla.error) < 1e-4, dla.error


@pytest.mark.parametrize("tied", [False, True])
def test_a_quantized_model_is_attributed_with_its_dequantized_rows(tied):
    module = tiny_llama_module(seed=6, tied=tied)
    nn.quantize(module, group_size=32, bits=4)
    mx.eval(module.parameters())
    model = InterpretableModel(module, tokenizer=CharTokenizer())
    dla = model.direct_logit_attribution(CLEAN, target=TARGET, foil=FOIL)
    assert abs(dla.error) < 1e-3 * max(1.0, abs(dla.logit_diff)), (dla.error, dla.logit_diff)


@pytest.mark.parametrize("target, foil, message", [(5, 5, "same token"), (10**6, None, "out of range"),
                                                   ("ab", None, "2 tokens")])
def test_bad_targets_are_refused_and_leave_the_model_untouched(circuit_model, target, foil, message):
    before = weights(circuit_model.model)
    with pytest.raises(ValueError, match=message):
        circuit_model.direct_logit_attribution(CLEAN, target=target, foil=foil)
    assert_untouched(circuit_model, before)


def test_prompts_of_different_lengths_are_refused(circuit_model):
    with pytest.raises(ValueError, match="different numbers of tokens"):
        circuit_model.decompose(["hello", "hello world"])


def test_plot_writes_a_heatmap(circuit_model, tmp_path):
    pytest.importorskip("matplotlib")
    dla = circuit_model.direct_logit_attribution(CLEAN, target=TARGET, foil=FOIL, save_path=tmp_path / "dla.png")
    assert (tmp_path / "dla.png").stat().st_size > 0
    assert dla.plot() is not None


@pytest.mark.parametrize("norm", [nn.RMSNorm(8), nn.LayerNorm(8), nn.LayerNorm(8, affine=False)])
def test_freezing_recognises_rms_and_layer_norms(norm):
    x = mx.random.normal((2, 3, 8), key=mx.random.key(1)) * 3 + 1
    if "weight" in norm:
        norm.weight = mx.random.normal((8,), key=mx.random.key(2))
    frozen = freeze(norm, x)
    np.testing.assert_allclose(np.array(frozen.linear(x) + frozen.offset), np.array(norm(x)), atol=1e-5)
    # linear: the images of parts sum to the image of their sum
    a = mx.random.normal(x.shape, key=mx.random.key(3))
    np.testing.assert_allclose(np.array(frozen.linear(a) + frozen.linear(x - a)), np.array(frozen.linear(x)), atol=1e-5)


def test_freezing_refuses_a_module_that_is_no_norm():
    with pytest.raises(ValueError, match="neither"):
        freeze(nn.Linear(8, 8), mx.ones((1, 8)))
