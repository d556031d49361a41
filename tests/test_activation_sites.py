"""Every site a trace reads is a site the activation utilities collect: a layer's ``resid_pre``,
``resid_mid`` and ``resid_post``, attention internals and modules, in memory and into stores, checked
against the forward written by hand (``tests/reference.py``) on right-padded prompts."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import (InterpretableModel, ModuleNameError, batch_get_activations, collect_activations,
                     get_activations)
from tests.families import build
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import llama_forward

PROMPTS = ["Hello there", "abc", "a longer prompt here"]
SITES = {  # name -> the reference forward's site it reads
    "layers.1.resid_mid": ("resid_mid", 1),
    "layers.2.resid_pre": ("layer_in", 2),
    "layers.0.resid_post": ("layer", 0),
    "layers.3.attn.q": ("q", 3),
    "layers.2.mlp": ("mlp", 2),
}
KEYS = {"layers.1.resid_mid": "layers.1.resid_mid", "layers.2.resid_pre": "layers.2.resid_pre",
        "layers.0.resid_post": "layers.0", "layers.3.attn.q": "layers.3.self_attn.q", "layers.2.mlp": "layers.2.mlp"}


@pytest.fixture(scope="module")
def model():
    return InterpretableModel(tiny_llama_module(seed=7), tokenizer=CharTokenizer())


def reference(model, prompt: str) -> dict:
    """Each site of :data:`SITES` for one unpadded prompt, from the hand-written forward: ``(seq, ...)``."""
    wanted = {site: name for name, site in SITES.items()}
    got = {}

    def hook(site, value):
        if site in wanted:
            got[wanted[site]] = value[0]
        return value

    llama_forward(model.model, mx.array([CharTokenizer().encode(prompt)]), hook)
    mx.eval(got)
    return got


def close(a, b) -> None:
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-5)


def test_collect_activations_reads_every_site_a_trace_reads(model):
    cache = collect_activations(model, PROMPTS, layers=list(SITES))
    assert cache.metadata["layers"] == list(KEYS.values())
    for j, prompt in enumerate(PROMPTS):
        ref, n = reference(model, prompt), cache.metadata["lengths"][j]
        for name, key in KEYS.items():
            close(cache[key][j, :n], ref[name])
            close(cache[name][j, :n], ref[name])  # the cache resolves the name it was asked by


@pytest.mark.parametrize("positions", [-1, [0, -1, 1]])
def test_batch_get_activations_gathers_positions_of_every_site(model, positions):
    acts = batch_get_activations(model, PROMPTS, layers=[2, *SITES], positions=positions, batch_size=2,
                                 progress=False)
    assert list(acts) == ["layer_2", *[k for k in KEYS.values() if k != "layers.2"]]
    pos = [positions] if isinstance(positions, int) else positions
    for j, prompt in enumerate(PROMPTS):
        ref = reference(model, prompt)
        for name, key in KEYS.items():
            want = ref[name][mx.array(pos)]
            got = acts[key][j]
            close(got.reshape(want.shape), want)
    single = get_activations(model, PROMPTS[0], layers=["layers.1.resid_mid"], positions=-1)
    close(single["layers.1.resid_mid"][0], reference(model, PROMPTS[0])["layers.1.resid_mid"][-1])


@pytest.mark.parametrize("kind", ["positions", "tokens"])
def test_stores_hold_every_site_as_in_memory(tmp_path, model, kind):
    names = ["layers.1.resid_mid", "layers.3.attn.q", "layers.2.resid_pre"]
    if kind == "positions":
        store = batch_get_activations(model, PROMPTS, layers=names, positions=[0, -1], out=tmp_path / "s",
                                      shard_size=2, progress=False)
        memory = batch_get_activations(model, PROMPTS, layers=names, positions=[0, -1], progress=False)
        assert store.layers == ["layers.1.resid_mid", "layers.3.self_attn.q", "layers.2.resid_pre"]
        for key, value in memory.items():
            assert mx.array_equal(store.get(key), value).item(), key
        assert store.row_shape("layers.3.self_attn.q") == (2, 4, 16)
        return
    store = collect_activations(model, PROMPTS, layers=names, out=tmp_path / "t", shard_size=2, progress=False)
    starts = np.concatenate([[0], np.cumsum(store.lengths())])
    for j, prompt in enumerate(PROMPTS):
        ref = reference(model, prompt)
        rows = slice(int(starts[j]), int(starts[j + 1]))
        for name in names:
            close(store.get(KEYS[name], rows), ref[name])


def test_a_family_without_resid_mid_says_why(model):
    neox = InterpretableModel(build("gpt_neox"))  # parallel residual: attention and MLP read the same residual
    for call in (lambda: collect_activations(neox, [[1, 2, 3]], layers=["layers.1.resid_mid"]),
                 lambda: batch_get_activations(neox, [[1, 2, 3]], layers=["layers.1.resid_mid"], progress=False)):
        with pytest.raises(ModuleNameError, match=r"layers: \w+.1.resid_mid does not exist: a gpt_neox layer has a "
                                                  r"parallel residual .* resid_pre .* and resid_post"):
            call()
    cache = collect_activations(neox, [[1, 2, 3]], layers=["layers.1.resid_pre"])
    assert cache["layers.1.resid_pre"].shape == (1, 3, 32)


def test_a_site_without_one_row_per_token_is_refused_before_any_forward(model, tmp_path):
    for call in (lambda: batch_get_activations(model, PROMPTS, layers=["layers.1.attn.pattern"], progress=False),
                 lambda: collect_activations(model, PROMPTS, layers=["layers.1.attn.scores"], out=tmp_path / "s",
                                             progress=False)):
        with pytest.raises(ValueError, match=r"needs values laid out \(batch, seq, ...\).*'layers.1.self_attn.\w+' "
                                             r"gives shape \(1, 4, 8, 8\) for 8 tokens"):
            call()
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())
    assert collect_activations(model, PROMPTS[:1], layers=["layers.1.attn.pattern"])["layers.1.self_attn.pattern"].shape \
        == (1, 4, 12, 12)  # in memory, whole: fine


def test_a_generator_of_prompts_is_read_once_into_the_store(tmp_path, model):
    store = batch_get_activations(model, (p for p in PROMPTS), layers=[1], out=tmp_path / "g", progress=False)
    listed = batch_get_activations(model, PROMPTS, layers=[1], out=tmp_path / "l", progress=False)
    assert mx.array_equal(store.get(1), listed.get(1)).item()
    np.testing.assert_array_equal(store.prompt_hashes(), listed.prompt_hashes())
    tokens = collect_activations(model, iter(PROMPTS), layers=["layers.1.resid_mid"], out=tmp_path / "t",
                                 progress=False)
    assert len(tokens.lengths()) == len(PROMPTS)
