"""Every result class saves and loads bit for bit, with the model's fingerprint, the prompts and the call's
arguments; a result from another model or mlxterp version says so (a warning, or an error with strict=True);
files that are not a result, or whose arrays do not belong to them, are refused."""

from __future__ import annotations

import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest

import mlxterp
from mlxterp import InterpretableModel
from mlxterp.analysis.heads import HeadPatchingGrid
from mlxterp.analysis.lens import LogitLensResult
from mlxterp.analysis.patching import LayerPatchingResult, PatchingGrid
from mlxterp.analysis.patterns import AttentionPatterns, HeadScores
from mlxterp.circuits import (
    Circuit,
    DirectLogitAttribution,
    EdgePatching,
    EdgeScores,
    Faithfulness,
    FaithfulnessCurve,
    ResidualDecomposition,
)
from mlxterp.generation import Generation
from mlxterp.generation.result import GenerationResult
from mlxterp.store.manifest import model_identity
from mlxterp.views import ResultMismatchError, ResultMismatchWarning, load_result
from tests.models import CharTokenizer, tiny_llama_module
from tests.views.conftest import CLEAN, CORRUPTED
from tests.views.test_codec import same

CLASSES = {"logit_lens": LogitLensResult, "layer_patching": LayerPatchingResult, "patching_grid": PatchingGrid,
           "attribution": PatchingGrid, "head_patching": HeadPatchingGrid, "attention_patterns": AttentionPatterns,
           "head_scores": HeadScores, "generation": GenerationResult, "edge_scores": EdgeScores, "circuit": Circuit,
           "edge_patching": EdgePatching, "faithfulness": Faithfulness, "faithfulness_curve": FaithfulnessCurve,
           "dla": DirectLogitAttribution, "decomposition": ResidualDecomposition}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_result_round_trips_bit_for_bit(results, tiny, name, tmp_path):
    result = results[name]
    path = result.save(tmp_path / f"{name}.json")
    back = CLASSES[name].load(path, model=tiny, strict=True)  # same model, same version: no complaint
    assert type(back) is type(result)
    assert same(result.to_dict(), back.to_dict())  # every field, arrays with their dtype, library and bits
    assert back.provenance == result.provenance
    assert back.provenance["model"] == model_identity(tiny)


def test_arrays_keep_their_dtypes(results, tmp_path):
    lens = load_result(results["logit_lens"].save(tmp_path / "lens.json"))
    assert lens.ids.dtype == np.int64 and lens.probs.dtype == np.float32
    grid = load_result(results["patching_grid"].save(tmp_path / "grid.json"))
    assert grid.grid.dtype == np.float64 and np.array_equal(grid.grid, results["patching_grid"].grid)
    gen = load_result(results["generation"].save(tmp_path / "gen.json"))
    logits = results["generation"].saved_values["logits"]
    assert gen.saved_values["logits"].dtype == mx.bfloat16 == logits.dtype
    assert np.array_equal(np.array(gen.saved_values["logits"].view(mx.uint16)), np.array(logits.view(mx.uint16)))


def test_dict_results_load_as_the_dicts_they_were(results, tmp_path):
    lens, patching = results["logit_lens"], results["layer_patching"]
    lens_back = LogitLensResult.load(lens.save(tmp_path / "lens.json"))
    patching_back = LayerPatchingResult.load(patching.save(tmp_path / "patching.json"))
    assert lens_back == lens and isinstance(lens_back, dict)  # {layer: [[(id, prob, text), ...]]}, floats exact
    assert patching_back == patching and patching_back.metric == patching.metric == "l2"
    assert patching_back.component == "mlp"


def test_provenance_names_the_prompts_and_arguments(results):
    grid = results["patching_grid"].provenance
    assert grid["prompts"] == [CLEAN, CORRUPTED] and grid["mlxterp"] == mlxterp.__version__
    assert grid["arguments"]["positions"] == [2, 3, 4] and grid["arguments"]["metric"] == "l2"
    assert results["logit_lens"].provenance["arguments"] == {"top_k": 3, "layers": None, "lens": None}
    gen = results["generation"].provenance
    assert gen["prompts"] == ["hello", "ab"] and gen["arguments"]["max_new_tokens"] == 5


def test_generation_saves_through_its_result(results, tiny, tmp_path):
    with tiny.generate("hello", max_new_tokens=3) as gen:
        tiny.layers[1].output[:, -1].save("resid")
    back = Generation.load(gen.save(tmp_path / "gen.json"))
    assert isinstance(back, GenerationResult)
    assert back.tokens == gen.tokens and back.text == gen.text and back.finish_reason == gen.finish_reason
    assert same(back.saved_values["resid"], gen.saved_values["resid"]) and back.saved_steps == gen.saved_steps
    assert same(gen.to_dict(), back.to_dict())


def test_load_result_reads_any_kind_and_class_load_refuses_another(results, tmp_path):
    path = results["head_scores"].save(tmp_path / "scores.json")
    assert isinstance(load_result(path), HeadScores)
    with pytest.raises(ValueError, match="holds a 'head_scores' result, not 'patching_grid'.*HeadScores.load"):
        PatchingGrid.load(path)


def test_another_model_warns_and_strict_raises(results, tmp_path):
    other = InterpretableModel(tiny_llama_module(seed=3), tokenizer=CharTokenizer())
    path = results["attention_patterns"].save(tmp_path / "att.json")
    with pytest.warns(ResultMismatchWarning, match="was made by Model .* not by the given model"):
        loaded = AttentionPatterns.load(path, model=other)
    assert same(loaded.to_dict(), results["attention_patterns"].to_dict())
    with pytest.raises(ResultMismatchError, match="fingerprint"):
        AttentionPatterns.load(path, model=other, strict=True)


def test_another_mlxterp_version_warns_and_strict_raises(results, tmp_path):
    path = results["layer_patching"].save(tmp_path / "p.json")
    record = json.loads(path.read_text())
    record["mlxterp"] = "0.0.1"
    path.write_text(json.dumps(record))
    with pytest.warns(ResultMismatchWarning, match="saved by mlxterp 0.0.1, this is mlxterp"):
        LayerPatchingResult.load(path)
    with pytest.raises(ResultMismatchError):
        LayerPatchingResult.load(path, strict=True)


def test_a_hand_made_result_saves_without_provenance(tmp_path):
    grid = PatchingGrid(np.arange(6, dtype=np.float32).reshape(2, 3), [0, 1], [0, 1, 2], ["a", "b", "c*"], "l2",
                        "output", "activation patching", 2.0)
    back = PatchingGrid.load(grid.save(tmp_path / "g.json"))
    assert same(back.to_dict(), grid.to_dict()) and back.provenance["model"] is None
    with pytest.raises(ResultMismatchError, match="an unrecorded model"):
        PatchingGrid.load(tmp_path / "g.json", model={"fingerprint": "abc"}, strict=True)


def test_newer_formats_are_refused(results, tmp_path):
    path = results["head_scores"].save(tmp_path / "s.json")
    record = json.loads(path.read_text())
    for field, message in (("version", "result format version 99"), ("kind_version", "version 99")):
        changed = dict(record, **{field: 99})
        path.write_text(json.dumps(changed))
        with pytest.raises(ValueError, match=message):
            HeadScores.load(path)


def test_side_file_of_another_save_is_refused(results, tmp_path):
    a = results["attention_patterns"].save(tmp_path / "a.json")
    results["head_scores"].save(tmp_path / "b.json")
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="does not belong to"):
        load_result(a)
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(ValueError, match="is missing"):
        load_result(a)


@pytest.mark.parametrize("content,message", [("{}", "not a saved mlxterp result"), ("[1", "cannot read"),
                                             ('{"format": "mlxterp-result", "version": 1, "kind": "nope"}',
                                              "unknown result kind 'nope'")])
def test_files_that_are_not_results(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_result(path)


def test_save_wants_a_json_path_in_an_existing_folder(results, tmp_path):
    with pytest.raises(ValueError, match="ending in .json"):
        results["head_scores"].save(tmp_path / "scores.npz")
    with pytest.raises(ValueError, match="does not exist"):
        results["head_scores"].save(tmp_path / "missing" / "scores.json")


def test_a_result_without_arrays_writes_no_side_file(tmp_path):
    result = LayerPatchingResult({0: 1.5, 3: float("nan")}, "mlp", "l2", 0.5)
    path = result.save(tmp_path / "p.json")
    assert not (tmp_path / "p.safetensors").exists()
    back = LayerPatchingResult.load(path)
    assert back[0] == 1.5 and np.isnan(back[3]) and json.loads(path.read_text())["data"]["recovery"]


def test_from_dict_inverts_to_dict(results):
    for name, cls in CLASSES.items():
        record = results[name].to_dict()
        assert same(cls.from_dict(record).to_dict(), record)


def test_dataclass_results_compare_field_by_field(results, tmp_path):
    scores = results["head_scores"]
    back = HeadScores.load(scores.save(tmp_path / "s.json"))
    for field in dataclasses.fields(HeadScores):
        assert same(getattr(back, field.name), getattr(scores, field.name)), field.name


def test_an_edited_lens_dict_is_not_saved_as_its_stale_arrays(results, tmp_path):
    lens = LogitLensResult.from_dict(results["logit_lens"].to_dict())
    del lens[lens.layers[0]]
    with pytest.raises(ValueError, match="dict was changed after it was made"):
        lens.save(tmp_path / "lens.json")


def test_load_result_imports_the_module_a_record_names_only_if_it_is_mlxterps(results, tmp_path, monkeypatch):
    import subprocess
    import sys

    path = results["head_scores"].save(tmp_path / "scores.json")
    code = ("import sys; from mlxterp.views import load_result; assert 'mlxterp.analysis.patterns' not in sys.modules;"
            f" print(type(load_result({str(path)!r})).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "HeadScores", done.stderr
    (tmp_path / "planted_module.py").write_text("import builtins\nbuiltins.PLANTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    record = json.loads(path.read_text())
    path.write_text(json.dumps(dict(record, kind="planted", module="planted_module")))
    with pytest.raises(ValueError, match="unknown result kind 'planted'"):
        load_result(path)
    import builtins

    assert not hasattr(builtins, "PLANTED")


def test_the_fingerprint_is_taken_when_saved_not_on_every_call(tiny, tmp_path, monkeypatch):
    # Hashing every weight byte costs about a second on a 135M model: analysis calls must not pay it.
    import mlxterp.store.manifest as manifest

    calls = []
    real = manifest.weights_fingerprint
    monkeypatch.setattr(manifest, "weights_fingerprint", lambda params: calls.append(1) or real(params))
    lens = tiny.logit_lens(CLEAN, layers=[0])
    assert calls == []
    back = LogitLensResult.load(lens.save(tmp_path / "lens.json"), model=tiny, strict=True)
    assert back.provenance["model"] == model_identity(tiny)
    assert len(calls) == 3  # the save, the comparison with `model` on load, and this test's own
