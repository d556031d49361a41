"""Circuit results save and load as every result does (mlxterp/views/saving.py; the bit-for-bit round trip of
each class is in tests/views/test_saving.py): loaded results work as the originals do, and their provenance
names the call that made them."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.circuits import (
    Circuit,
    DirectLogitAttribution,
    EdgePatching,
    EdgeScores,
    FaithfulnessCurve,
    ResidualDecomposition,
)
from tests.circuits.conftest import CLEAN, CORRUPTED, metric


def test_loaded_edge_scores_rank_and_choose_circuits_as_the_originals(circuit_model, tmp_path):
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    back = EdgeScores.load(scores.save(tmp_path / "edges.json"), model=circuit_model, strict=True)
    assert back.top(10) == scores.top(10) and back.node_scores() == scores.node_scores()
    circuit = back.circuit(n_edges=15)
    assert np.array_equal(circuit.mask, scores.circuit(n_edges=15).mask)
    loaded = Circuit.load(circuit.save(tmp_path / "circuit.json"), model=circuit_model, strict=True)
    assert loaded == circuit  # a loaded circuit evaluates on the model that made it
    assert circuit_model.evaluate_circuit(loaded, CLEAN, CORRUPTED, metric=metric).value == pytest.approx(
        circuit_model.evaluate_circuit(circuit, CLEAN, CORRUPTED, metric=metric).value, abs=1e-6)


def test_provenance_names_each_call(circuit_model):
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap-ig", steps=2)
    assert scores.provenance["prompts"] == [CLEAN, CORRUPTED]
    assert scores.provenance["arguments"] == {"metric": "metric", "method": "eap-ig", "steps": 2,
                                              "receivers": "heads", "target": None, "foil": None}
    circuit = scores.circuit(threshold=0.01)
    assert circuit.provenance["arguments"]["threshold"] == 0.01 and circuit.provenance["prompts"] == [CLEAN, CORRUPTED]
    patched = circuit_model.edge_patching(CLEAN, CORRUPTED, circuit, metric=metric)
    assert patched.provenance["arguments"]["edges"] == dict(circuit.provenance["arguments"], n_edges=len(circuit))
    by_hand = circuit_model.edge_patching(CLEAN, CORRUPTED, [("embed", "logits")], metric=metric, ablation="mean")
    assert by_hand.provenance["arguments"]["edges"] == [["embed", "logits"]]
    assert by_hand.provenance["arguments"]["ablation"] == "mean"
    curve = circuit_model.faithfulness_curve(scores, CLEAN, CORRUPTED, sizes=[1, 5], metric=metric)
    arguments = curve.provenance["arguments"]
    assert arguments["edges"]["method"] == "eap-ig" and arguments["sizes"] == [1, 5]
    dla = circuit_model.direct_logit_attribution(CLEAN, target=5, foil=7)
    assert dla.provenance["arguments"] == {"target": 5, "foil": 7} and dla.provenance["prompts"] == [CLEAN]
    assert circuit_model.decompose(CLEAN[0], last_only=True).provenance["arguments"] == {"last_only": True}


def test_a_loaded_decomposition_keeps_its_arrays_bit_for_bit(circuit_model, tmp_path):
    res = circuit_model.decompose(CLEAN)
    back = ResidualDecomposition.load(res.save(tmp_path / "decomposition.json"))
    for name in ("stack", "error", "tokens"):
        a, b = getattr(res, name), getattr(back, name)
        assert isinstance(b, mx.array) and b.dtype == a.dtype and mx.array_equal(a, b).item(), name
    assert back.names == res.names and mx.array_equal(back["layers.1.mlp"], res["layers.1.mlp"]).item()


def test_a_metric_that_is_not_a_number_saves_as_one(circuit_model, tmp_path):
    out = circuit_model.edge_patching(CLEAN, CORRUPTED + ["jolly wards"], [("embed", "logits")], metric=metric,
                                      ablation="mean")
    back = EdgePatching.load(out.save(tmp_path / "patched.json"))
    assert np.isnan(out.corrupted) and np.isnan(back.corrupted) and back.value == out.value
    assert back.edges == out.edges and mx.array_equal(back.logits, out.logits).item()


def test_the_plain_dicts_are_as_dict_and_to_dict_is_the_record(circuit_model):
    dla = circuit_model.direct_logit_attribution(CLEAN, target=5, foil=7)
    assert dla.as_dict() == dict(zip(dla.graph.senders, map(float, dla.values)))
    assert dla.to_dict()["kind"] == DirectLogitAttribution.kind
    scores = circuit_model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    curve = circuit_model.faithfulness_curve(scores, CLEAN, CORRUPTED, sizes=[0, 3], metric=metric)
    assert list(curve.as_dict()) == [0, 3] and curve.to_dict()["kind"] == FaithfulnessCurve.kind
