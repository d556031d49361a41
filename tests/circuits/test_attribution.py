"""Edge attribution (EAP, EAP-IG) against a loop written by hand: one gradient per receiver through the
hand-written forward in which that receiver alone reads a perturbed copy of the residual stream
(tests/circuits/reference.py), times the hand-computed senders' output differences."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.analysis.metrics import logit_diff
from mlxterp.circuits import CircuitGraph
from tests.circuits import reference as ref
from tests.circuits.conftest import CLEAN, CORRUPTED, FOIL, TARGET, assert_untouched, metric, tokens, weights
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import dequantized


def _loop(model, graph: CircuitGraph, clean: mx.array, corrupted: mx.array, steps: int, module=None,
          score=metric) -> np.ndarray:
    """EAP-IG by hand: for each receiver, its gradient at ``steps`` points of the embedding path, averaged,
    dotted with each earlier sender's clean - corrupted output (``steps=1``: EAP)."""
    module = module if module is not None else model.model
    _, clean_senders = ref.forward(module, clean, granularity=graph.granularity)
    _, corrupted_senders = ref.forward(module, corrupted, granularity=graph.granularity)
    grads = {r: 0.0 for r in graph.receivers}
    for k in range(steps):
        a = k / steps
        embed = (1 - a) * corrupted_senders["embed"] + a * clean_senders["embed"]
        point = ref.receiver_gradients(module, corrupted, graph.receivers, score, embed, graph.granularity)
        for r in graph.receivers:
            grads[r] = grads[r] + point[r] / steps
    out = np.zeros((graph.n_receivers, graph.n_senders))
    for i, j in np.argwhere(graph.valid()):
        u, r = graph.senders[j], graph.receivers[i]
        out[i, j] = float(((clean_senders[u] - corrupted_senders[u]) * grads[r]).sum())
    return out


def _blocks(graph: CircuitGraph) -> list:
    """Senders that run side by side: the embedding, then per layer its heads and its MLP."""
    out = [["embed"]]
    for layer in range(graph.n_layers):
        out += [[f"layers.{layer}.attn.heads.{h}" for h in range(graph.n_heads)], [f"layers.{layer}.mlp"]]
    return out


def _activation_loop(model, graph: CircuitGraph, clean: mx.array, corrupted: mx.array, steps: int,
                     score=metric) -> np.ndarray:
    """EAP-IG on the activations by hand: for each block of senders and each point ``a = k / steps``, the corrupted
    run with that block's outputs moved ``a`` of the way to their clean values (the rest computed as the run goes);
    each receiver's gradient there, averaged over the points, dotted with the block's senders' clean - corrupted
    outputs."""
    module = model.model
    _, clean_senders = ref.forward(module, clean, granularity=graph.granularity)
    _, corrupted_senders = ref.forward(module, corrupted, granularity=graph.granularity)
    start = ref.receiver_gradients(module, corrupted, graph.receivers, score, granularity=graph.granularity)
    out = np.zeros((graph.n_receivers, graph.n_senders))
    for block in _blocks(graph):
        grads = {r: start[r] / steps for r in graph.receivers}
        for k in range(1, steps):
            def send(name: str, z: mx.array, a: float = k / steps, block: list = block) -> mx.array:
                return z + a * (clean_senders[name] - z) if name in block else z

            point = ref.receiver_gradients(module, corrupted, graph.receivers, score, granularity=graph.granularity,
                                           send=send)
            grads = {r: grads[r] + point[r] / steps for r in graph.receivers}
        for u in block:
            j = graph.senders.index(u)
            for i in np.flatnonzero(graph.valid()[:, j]):
                diff = clean_senders[u] - corrupted_senders[u]
                out[i, j] = float((diff * grads[graph.receivers[i]]).sum())
    return out


@pytest.mark.parametrize("receivers, steps", [("heads", 3), ("layers", 2)])
def test_eap_ig_on_the_activations_equals_the_hand_written_loop(circuit_model, receivers, steps):
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap-ig-activations", steps=steps,
                                            receivers=receivers)
    expected = _activation_loop(circuit_model, scores.graph, tokens(circuit_model, CLEAN),
                                tokens(circuit_model, CORRUPTED), steps)
    np.testing.assert_allclose(scores.scores, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert scores.method == "eap-ig-activations" and scores.steps == steps
    assert scores.clean == pytest.approx(float(metric(ref.forward(circuit_model.model, tokens(circuit_model, CLEAN))
                                                      [0][:, -1]).mean()), abs=1e-5)


def test_eap_ig_on_the_activations_with_one_step_is_eap(circuit_model):
    eap = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    one = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap-ig-activations", steps=1)
    np.testing.assert_array_equal(eap.scores, one.scores)


@pytest.mark.parametrize("receivers, steps", [("heads", 1), ("heads", 3), ("layers", 2)])
def test_scores_equal_the_hand_written_loop(circuit_model, receivers, steps):
    method = "eap" if steps == 1 else "eap-ig"
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method=method, steps=steps,
                                            receivers=receivers)
    expected = _loop(circuit_model, scores.graph, tokens(circuit_model, CLEAN), tokens(circuit_model, CORRUPTED), steps)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(scores.scores, expected, atol=1e-5 * max(1.0, scale))
    assert scores.method == method and scores.steps == steps


def test_a_metric_with_one_target_per_prompt(circuit_model):
    targets = mx.array([TARGET, FOIL])

    def per_prompt(logits: mx.array) -> mx.array:  # (prompts, vocab): the second prompt scores another token
        return mx.take_along_axis(logits, targets[:, None], axis=-1)[:, 0] - logits.mean(axis=-1)

    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=per_prompt, steps=2)
    expected = _loop(circuit_model, scores.graph, tokens(circuit_model, CLEAN), tokens(circuit_model, CORRUPTED), 2,
                     score=per_prompt)
    np.testing.assert_allclose(scores.scores, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_the_metric_of_the_clean_and_corrupted_runs_is_reported(circuit_model):
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    clean_logits, _ = ref.forward(circuit_model.model, tokens(circuit_model, CLEAN))
    corrupted_logits, _ = ref.forward(circuit_model.model, tokens(circuit_model, CORRUPTED))
    assert scores.clean == pytest.approx(float(metric(clean_logits[:, -1]).mean()), abs=1e-5)
    assert scores.corrupted == pytest.approx(float(metric(corrupted_logits[:, -1]).mean()), abs=1e-5)


def test_eap_is_eap_ig_with_one_step(circuit_model):
    eap = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    one = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap-ig", steps=1)
    np.testing.assert_array_equal(eap.scores, one.scores)


def test_named_metrics_and_a_single_corrupted_prompt_for_every_clean_one(circuit_model):
    named = circuit_model.edge_attribution(CLEAN, CORRUPTED[0], metric="logit_diff", target=TARGET, foil=FOIL,
                                           method="eap")
    by_function = circuit_model.edge_attribution(CLEAN, [CORRUPTED[0]] * 2, metric=logit_diff(TARGET, FOIL),
                                                 method="eap")
    np.testing.assert_allclose(named.scores, by_function.scores, atol=1e-6)


def test_node_scores_sum_each_senders_edges(circuit_model):
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    nodes = scores.node_scores()
    assert nodes["layers.1.mlp"] == pytest.approx(scores.scores[:, scores.graph.senders.index("layers.1.mlp")].sum())
    assert scores.head_scores().shape == (4, 4)
    assert scores.head_scores()[2, 3] == pytest.approx(nodes["layers.2.attn.heads.3"])


def test_a_repeated_call_retraces_nothing(circuit_model):
    circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, steps=3)
    before = circuit_model.compile_stats()["traces"]
    circuit_model.edge_attribution(CORRUPTED, CLEAN, metric=metric, steps=3)
    assert circuit_model.compile_stats()["traces"] == before


def _near_linear() -> InterpretableModel:
    """A tiny llama whose embeddings share a large common vector: every norm's scale is then almost the same
    whatever the tokens, and the model is nearly linear in the tokens' differences."""
    module = tiny_llama_module(seed=1)
    w = module.model.embed_tokens.weight
    module.model.embed_tokens.weight = w + 10.0 * mx.abs(w).mean() * mx.random.normal((w.shape[1],), key=mx.random.key(5))
    mx.eval(module.parameters())
    return InterpretableModel(module, tokenizer=CharTokenizer())


def test_eap_ig_with_many_steps_converges_to_exact_edge_patching_on_linear_enough_edges():
    model = _near_linear()
    clean, corrupted = CLEAN[0], CORRUPTED[0]
    ig = model.edge_attribution(clean, corrupted, metric=metric, steps=64)
    eap = model.edge_attribution(clean, corrupted, metric=metric, method="eap")
    top = ig.top(30)
    # Exact: the corrupted run with that one edge carrying its clean value (patching into the corrupted prompt).
    base = model.edge_patching(corrupted, clean, [], metric=metric).value
    exact = np.array([model.edge_patching(corrupted, clean, [(u, r)], metric=metric).value - base for u, r, _ in top])
    g = ig.graph
    where = [(g.receivers.index(r), g.senders.index(u)) for u, r, _ in top]
    estimates = {name: np.array([s.scores[i, j] for i, j in where]) for name, s in (("ig", ig), ("eap", eap))}
    error = {name: np.abs(v - exact).max() / np.abs(exact).max() for name, v in estimates.items()}
    assert error["ig"] < 0.02, error
    assert error["ig"] < error["eap"] / 5, error


def test_a_quantized_model_gives_the_dequantized_loops_scores():
    import mlx.nn as nn

    module = tiny_llama_module(seed=4)
    nn.quantize(module, group_size=32, bits=4)
    mx.eval(module.parameters())
    model = InterpretableModel(module, tokenizer=CharTokenizer())
    scores = model.edge_attribution(CLEAN[0], CORRUPTED[0], metric=metric, method="eap")
    expected = _loop(model, scores.graph, tokens(model, CLEAN[:1]), tokens(model, CORRUPTED[:1]), 1,
                     module=dequantized(module))
    np.testing.assert_allclose(scores.scores, expected, atol=2e-4 * np.abs(expected).max())


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps: expected a positive int"),
    ({"steps": 2.5}, "steps: expected a positive int"),
    ({"method": "acdc"}, "method: expected one of"),
    ({"metric": "l2"}, "is a distance"),
    ({"metric": lambda logits: logits[:, 0] * 0.0}, "does not depend on the logits"),
    ({"metric": lambda logits: logits.sum()}, "one number per"),
    ({"receivers": "neurons"}, "receivers: expected one of"),
    ({"corrupted": "jelly"}, "clean has 12 tokens"),
    ({"corrupted": ["jelly words"] * 3}, "give one corrupted prompt per clean prompt"),
    ({"clean": ["hello world", "hi"]}, "different numbers of tokens"),
])
def test_bad_arguments_are_refused_before_any_forward_and_leave_the_model_untouched(kwargs, message):
    model = InterpretableModel(tiny_llama_module(seed=11), tokenizer=CharTokenizer())
    before = weights(model.model)
    args = {"clean": CLEAN, "corrupted": CORRUPTED, "metric": metric, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.edge_attribution(args.pop("clean"), args.pop("corrupted"), **args)
    assert_untouched(model, before)
    assert model.compile_stats()["eager_runs"] + model.compile_stats()["compiled_runs"] == 0


def test_a_family_circuits_cannot_decompose_is_refused_with_the_reason():
    from tests.models import tiny_gpt2_module

    gpt2 = InterpretableModel(tiny_gpt2_module(), layer_attr="h")
    with pytest.raises(ValueError, match="no separate q_proj"):
        gpt2.edge_attribution([1, 2, 3], [1, 2, 4], metric=metric)
