"""The circuit graph's nodes and edges, checked against the order in which a llama layer runs, written out
independently: embedding, then per layer attention inputs, heads, MLP input, MLP; the logits last."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxterp.circuits import CircuitGraph

GRAPHS = [CircuitGraph(4, 4, 2), CircuitGraph(3, 2, 2, "layers"), CircuitGraph(30, 9, 3)]


def _when_sent(name: str) -> tuple:
    if name == "embed":
        return (-1, 0)
    parts = name.split(".")
    return (int(parts[1]), 1 if parts[2] == "attn" else 3)


def _when_read(name: str) -> tuple:
    if name == "logits":
        return (10**6, 0)
    parts = name.split(".")
    return (int(parts[1]), 0 if parts[2] == "attn" else 2)


@pytest.mark.parametrize("graph", GRAPHS, ids=str)
def test_an_edge_exists_exactly_when_its_sender_runs_before_its_receiver(graph):
    expected = np.array([[_when_sent(u) < _when_read(r) for u in graph.senders] for r in graph.receivers])
    np.testing.assert_array_equal(graph.valid(), expected)
    assert graph.n_edges == expected.sum()


@pytest.mark.parametrize("graph", GRAPHS, ids=str)
def test_node_counts_and_order(graph):
    assert len(graph.senders) == graph.n_senders == 1 + graph.n_layers * (graph.n_heads + 1)
    assert len(graph.receivers) == graph.n_receivers
    assert graph.receivers[-1] == "logits" and graph.senders[0] == "embed"
    assert [_when_sent(s) for s in graph.senders] == sorted(_when_sent(s) for s in graph.senders)
    assert [_when_read(r) for r in graph.receivers] == sorted(_when_read(r) for r in graph.receivers)


def test_smollm2_sized_graph_has_the_documented_edge_count():
    g = CircuitGraph(30, 9, 3)  # 30 layers x (9 q + 3 k + 3 v + 1 mlp) receivers, 9 heads + 1 mlp senders
    assert (g.n_senders, g.n_receivers) == (301, 481)
    assert g.n_edges == sum(16 * (1 + 10 * layer) + 9 for layer in range(30)) + 301


def test_key_and_value_receivers_are_per_key_value_head():
    g = CircuitGraph(2, 4, 2)
    assert g.attn_receiver_names(1) == [f"layers.1.attn.heads.{h}.q" for h in range(4)] + [
        "layers.1.attn.heads.0.k", "layers.1.attn.heads.1.k", "layers.1.attn.heads.0.v", "layers.1.attn.heads.1.v"]


@pytest.mark.parametrize("edge, message", [
    (("layers.3.mlp", "layers.1.mlp"), "runs after"),
    (("layers.1.attn.heads.0", "layers.1.attn.heads.0.q"), "runs after"),
    (("layers.1.mlp", "layers.1.mlp"), "runs after"),
    (("layers.9.mlp", "logits"), "not a sender"),
    (("layers.1.mpl", "logits"), "closest: layers.1.mlp"),
    (("logits", "layers.2.mlp"), "it is a receiver"),
    (("embed", "layers.2.attn.heads.1"), "it is a sender"),
    (("embed", "layers.2.attn.heads.3.k"), "query head 3 reads key-value head 1"),
    (("embed", "layers.2.attn"), "receivers='layers'"),
    (("embed", "layers.2.attn.heads.0.x"), "not a receiver"),
])
def test_bad_edges_are_refused_naming_the_edge_and_the_valid_choices(edge, message):
    with pytest.raises(ValueError, match=message):
        CircuitGraph(4, 4, 2).edge_index([edge])


def test_layer_granularity_refuses_head_inputs():
    with pytest.raises(ValueError, match="one receiver, 'layers.L.attn'"):
        CircuitGraph(4, 4, 2, "layers").edge_index([("embed", "layers.1.attn.heads.0.q")])


def test_model_and_self_attn_prefixes_are_accepted():
    g = CircuitGraph(4, 4, 2)
    rows, cols = g.edge_index([("model.layers.0.self_attn.heads.1", "model.model.layers.2.self_attn.heads.3.q")])
    assert g.receivers[rows[0]] == "layers.2.attn.heads.3.q" and g.senders[cols[0]] == "layers.0.attn.heads.1"


def test_a_granularity_outside_the_choices_is_refused():
    with pytest.raises(ValueError, match="receivers: expected one of"):
        CircuitGraph(2, 2, 2, "neurons")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_edge_index_accepts_exactly_the_valid_pairs(data):
    g = GRAPHS[0]
    u = data.draw(st.integers(0, g.n_senders - 1))
    r = data.draw(st.integers(0, g.n_receivers - 1))
    edge = (g.senders[u], g.receivers[r])
    if g.valid()[r, u]:
        rows, cols = g.edge_index([edge])
        assert (rows[0], cols[0]) == (r, u)
    else:
        with pytest.raises(ValueError, match="runs after"):
            g.edge_index([edge])
