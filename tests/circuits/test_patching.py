"""Exact edge patching and circuit faithfulness against the hand-written forward in which each receiver
reads its input with the patched senders' outputs swapped by hand (tests/circuits/reference.py). The
library evaluates a circuit from its kept edges; the reference ablates every other edge, one by one."""

from __future__ import annotations

from typing import Dict, List

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.circuits import Circuit, CircuitGraph
from mlxterp.circuits.parts import find_parts
from tests.circuits import reference as ref
from tests.circuits.conftest import CLEAN, CORRUPTED, assert_untouched, metric, tokens, weights


# Prompt pairs: differing from the first token, and sharing their first 7 tokens (which then run once, on a KV
# cache, before the patched variants: see mlxterp/circuits/sources.py).
PAIRS = {"differ_at_once": (CLEAN, CORRUPTED), "shared_prefix": (["hello world", "hello there"],
                                                                 ["hello wxrld", "hello theme"])}


def _patched(model, edges: Dict[str, List[str]], granularity: str, mean: bool, pair=(CLEAN, CORRUPTED)) -> float:
    """The metric of the clean prompts with ``edges`` (receiver -> senders) carrying their corrupted (or mean)
    value, by hand."""
    clean, corrupted = pair
    _, ablated = ref.forward(model.model, tokens(model, corrupted), granularity=granularity)
    if mean:
        ablated = {k: v.mean(axis=0, keepdims=True) for k, v in ablated.items()}

    def receive(name, x, senders):
        for u in edges.get(name, ()):
            x = x + (ablated[u] - senders[u])
        return x

    logits, _ = ref.forward(model.model, tokens(model, clean), receive, granularity=granularity)
    return float(metric(logits[:, -1]).mean())


def _random_edges(graph, count: int, seed: int) -> list:
    valid = np.argwhere(graph.valid())
    chosen = valid[np.random.default_rng(seed).choice(len(valid), count, replace=False)]
    return [(graph.senders[u], graph.receivers[r]) for r, u in chosen]


def _by_receiver(edges) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for u, r in edges:
        out.setdefault(r, []).append(u)
    return out


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("granularity", ["heads", "layers"])
@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_edge_patching_equals_the_forward_with_the_contributions_swapped_by_hand(circuit_model, granularity,
                                                                                 ablation, seed, pair):
    clean, corrupted = PAIRS[pair]
    graph = find_parts(circuit_model).graph_for(granularity)
    edges = _random_edges(graph, 30, seed)
    out = circuit_model.edge_patching(clean, corrupted, edges, metric=metric, ablation=ablation, receivers=granularity)
    expected = _patched(circuit_model, _by_receiver(edges), granularity, ablation == "mean", PAIRS[pair])
    assert out.value == pytest.approx(expected, abs=1e-5)
    corrupted_logits, _ = ref.forward(circuit_model.model, tokens(circuit_model, corrupted))
    assert out.corrupted == pytest.approx(float(metric(corrupted_logits[:, -1]).mean()), abs=1e-5)
    assert out.logits.shape == (2, 128) and len(out.edges) == 30


def test_the_example_edge_from_a_head_to_a_later_heads_key(circuit_model):
    edge = ("layers.1.attn.heads.3", "layers.2.attn.heads.1.k")
    out = circuit_model.edge_patching(CLEAN, CORRUPTED, [edge], metric=metric)
    assert out.value == pytest.approx(_patched(circuit_model, _by_receiver([edge]), "heads", False), abs=1e-5)


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_a_circuit_equals_the_forward_with_every_other_edge_ablated_by_hand(circuit_model, ablation, pair):
    clean, corrupted = PAIRS[pair]
    mean = ablation == "mean"
    graph = find_parts(circuit_model).graph_for("heads")
    circuit = Circuit.from_edges(graph, _random_edges(graph, 60, 3))
    out = circuit_model.evaluate_circuit(circuit, clean, corrupted, metric=metric, ablation=ablation)
    outside = [(graph.senders[u], graph.receivers[r]) for r, u in np.argwhere(graph.valid() & ~circuit.mask)]
    assert out.value == pytest.approx(_patched(circuit_model, _by_receiver(outside), "heads", mean, PAIRS[pair]),
                                      abs=1e-5)
    every = [(graph.senders[u], graph.receivers[r]) for r, u in np.argwhere(graph.valid())]
    assert out.baseline == pytest.approx(_patched(circuit_model, _by_receiver(every), "heads", mean, PAIRS[pair]),
                                         abs=1e-5)
    assert out.clean == pytest.approx(_patched(circuit_model, {}, "heads", False, PAIRS[pair]), abs=1e-5)
    assert out.n_edges == 60 and out.ablation == ablation
    assert out.faithfulness == pytest.approx((out.value - out.baseline) / (out.clean - out.baseline))


def test_the_full_circuit_is_the_clean_run_and_the_empty_one_the_corrupted_run(circuit_model):
    graph = find_parts(circuit_model).graph_for("heads")
    full = circuit_model.evaluate_circuit(Circuit(graph, graph.valid()), CLEAN, CORRUPTED, metric=metric)
    empty = circuit_model.evaluate_circuit(Circuit(graph, np.zeros_like(graph.valid())), CLEAN, CORRUPTED,
                                           metric=metric)
    assert full.value == pytest.approx(full.clean, abs=1e-5) and full.faithfulness == pytest.approx(1.0, abs=1e-5)
    assert empty.value == pytest.approx(empty.baseline, abs=1e-5) and empty.faithfulness == pytest.approx(0, abs=1e-5)


def test_a_faithfulness_curve_equals_each_circuit_evaluated_alone(circuit_model, tmp_path):
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    sizes = [0, 5, 20, 80, scores.graph.n_edges]
    curve = circuit_model.faithfulness_curve(scores, CLEAN, CORRUPTED, sizes=sizes, metric=metric)
    alone = [circuit_model.evaluate_circuit(scores.circuit(n_edges=n), CLEAN, CORRUPTED, metric=metric) for n in sizes]
    np.testing.assert_allclose(curve.values, [f.value for f in alone], atol=1e-5)
    np.testing.assert_allclose(curve.faithfulness[[0, -1]], [0.0, 1.0], atol=1e-5)
    assert list(curve.as_dict()) == sizes
    pytest.importorskip("matplotlib")
    curve.plot(tmp_path / "curve.png")
    scores.plot(tmp_path / "edges.png", n_edges=20)
    assert (tmp_path / "curve.png").stat().st_size > 0 and (tmp_path / "edges.png").stat().st_size > 0


def test_circuits_by_count_and_by_threshold(circuit_model):
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    top = scores.top(10)
    circuit = scores.circuit(n_edges=10)
    assert sorted(circuit.edges) == sorted((u, r) for u, r, _ in top) and len(circuit) == 10
    assert (top[0][0], top[0][1]) in circuit
    by_threshold = scores.circuit(threshold=abs(top[9][2]))
    assert by_threshold.mask.sum() >= 10 and (by_threshold.mask | circuit.mask).sum() == by_threshold.mask.sum()
    assert set(circuit.nodes) >= {top[0][0], top[0][1]}


@pytest.mark.parametrize("call, message", [
    (lambda m: m.edge_patching(CLEAN, CORRUPTED, [("layers.3.mlp", "layers.1.mlp")], metric=metric), "runs after"),
    (lambda m: m.edge_patching(CLEAN, CORRUPTED, [("layers.1.mlpp", "logits")], metric=metric), "closest"),
    (lambda m: m.edge_patching(CLEAN, CORRUPTED, "embed", metric=metric), "list of \\(sender, receiver\\) pairs"),
    (lambda m: m.edge_patching(CLEAN, CORRUPTED, [], metric=metric, ablation="zero"), "ablation: expected one of"),
    (lambda m: m.edge_patching(CLEAN, "jelly", [], metric=metric), "clean has 12 tokens"),
    (lambda m: m.edge_patching(CLEAN, CORRUPTED, [], metric="cosine"), "is a distance"),
    (lambda m: m.evaluate_circuit(Circuit(CircuitGraph(3, 2, 2), np.zeros((22, 10), bool)), CLEAN, CORRUPTED,
                                  metric=metric), "another model's graph"),
    (lambda m: m.faithfulness_curve("edges", CLEAN, CORRUPTED, metric=metric), "expected the EdgeScores"),
])
def test_bad_arguments_are_refused_and_leave_the_model_untouched(circuit_model, call, message):
    before = weights(circuit_model.model)
    with pytest.raises(ValueError, match=message):
        call(circuit_model)
    assert_untouched(circuit_model, before)


def test_a_circuit_mask_must_be_edges_of_its_graph():
    graph = CircuitGraph(2, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        Circuit(graph, np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="no edge"):
        Circuit(graph, np.ones((graph.n_receivers, graph.n_senders), bool))


def test_bad_sizes_and_circuit_choices_are_refused(circuit_model):
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    with pytest.raises(ValueError, match="sizes"):
        circuit_model.faithfulness_curve(scores, CLEAN, CORRUPTED, sizes=[10, 10**6], metric=metric)
    with pytest.raises(ValueError, match="exactly one of"):
        scores.circuit()
    with pytest.raises(ValueError, match="n_edges"):
        scores.circuit(n_edges=-1)


def test_a_metric_with_one_target_per_prompt(circuit_model):
    targets = mx.array([3, 9])

    def per_prompt(logits: mx.array) -> mx.array:
        return mx.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]

    graph = find_parts(circuit_model).graph_for("heads")
    edges = _random_edges(graph, 40, 9)
    out = circuit_model.evaluate_circuit(edges, CLEAN, CORRUPTED, metric=per_prompt)
    outside = [(graph.senders[u], graph.receivers[r]) for r, u in np.argwhere(graph.valid() & ~Circuit.from_edges(
        graph, edges).mask)]
    _, ablated = ref.forward(circuit_model.model, tokens(circuit_model, CORRUPTED))

    def receive(name, x, senders):
        for u in _by_receiver(outside).get(name, ()):
            x = x + (ablated[u] - senders[u])
        return x

    logits, _ = ref.forward(circuit_model.model, tokens(circuit_model, CLEAN), receive)
    assert out.value == pytest.approx(float(per_prompt(logits[:, -1]).mean()), abs=1e-5)


def test_mean_ablation_takes_any_number_of_reference_prompts(circuit_model):
    graph = find_parts(circuit_model).graph_for("heads")
    edges = _random_edges(graph, 10, 5)
    three = circuit_model.edge_patching(CLEAN, CORRUPTED + ["jolly wards"], edges, metric=metric, ablation="mean")
    assert np.isfinite(three.value) and np.isnan(three.corrupted)  # 3 reference prompts for 2 clean ones
    assert three.value != pytest.approx(circuit_model.edge_patching(CLEAN, CORRUPTED, edges, metric=metric,
                                                                    ablation="mean").value, abs=1e-6)


def test_the_same_edges_on_new_prompts_replay_the_recorded_program(circuit_model):
    graph = find_parts(circuit_model).graph_for("heads")
    edges = _random_edges(graph, 10, 7)
    circuit_model.edge_patching(CLEAN, CORRUPTED, edges, metric=metric)
    stats = circuit_model.compile_stats()
    replayed = [circuit_model.edge_patching(CORRUPTED, CLEAN, edges, metric=metric).value for _ in range(2)]
    after = circuit_model.compile_stats()
    assert after["misses"] == stats["misses"] and after["eager_runs"] == stats["eager_runs"]
    assert after["traces"] <= stats["traces"] + 1  # the program compiles once for these shapes
    fresh = InterpretableModel(circuit_model.model, tokenizer=circuit_model.tokenizer)  # records anew
    expected = fresh.edge_patching(CORRUPTED, CLEAN, edges, metric=metric).value
    assert replayed == pytest.approx([expected] * 2, abs=1e-5)


def test_projection_biases_and_tied_heads_keep_the_full_and_empty_circuit_identities():
    from tests.models import CharTokenizer, tiny_qwen2_module

    qwen = InterpretableModel(tiny_qwen2_module(seed=3), tokenizer=CharTokenizer())  # q/k/v biases, tied head
    graph = find_parts(qwen).graph_for("heads")
    full = qwen.evaluate_circuit(Circuit(graph, graph.valid().copy()), CLEAN, CORRUPTED, metric=metric)
    empty = qwen.evaluate_circuit(Circuit(graph, np.zeros_like(graph.valid())), CLEAN, CORRUPTED, metric=metric)
    assert full.value == pytest.approx(full.clean, abs=1e-4)
    assert empty.value == pytest.approx(empty.baseline, abs=1e-4)
