"""Tests for mlxterp.activations: get_activations, batch_get_activations, collect_activations.

Every result is checked against a hand-written reference (a plain forward through the mlx_lm modules,
one prompt at a time, sliced by hand), with mixed-length right-padded batches compared exactly.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.llama import Model, ModelArgs

import mlxterp
from mlxterp import ActivationCache, InterpretableModel, ModuleNameError
from mlxterp.activations import (batch_get_activations, bucket_length, cache_resolver, collect_activations,
                                 get_activations)

HIDDEN, LAYERS, VOCAB = 64, 4, 128
STORIES = Path(mlxterp.__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K"


class FakeTokenizer:
    """Character-level tokenizer: BOS (1) then one id per character."""

    vocab_size = VOCAB
    pad_token_id = 0

    def encode(self, text):
        return [1] + [(ord(c) % (VOCAB - 2)) + 2 for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def _tiny_llama(seed: int = 0) -> Model:
    mx.random.seed(seed)
    m = Model(ModelArgs(model_type="llama", hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=128,
                        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=VOCAB))
    mx.eval(m.parameters())
    return m


@pytest.fixture(scope="module")
def llama():
    return _tiny_llama()


@pytest.fixture(scope="module")
def model(llama):
    return InterpretableModel(llama, tokenizer=FakeTokenizer())


PROMPTS = ["Hello world", "Hi", "A much longer prompt here", "x"]  # lengths 12, 3, 26, 2 with BOS


# -- hand-written reference -------------------------------------------------------------------------
def reference(llama: Model, ids: list[int]) -> dict:
    """Unpadded single-prompt forward: every layer's output and each layer's attn / mlp output."""
    inner = llama.model
    h = inner.embed_tokens(mx.array([ids]))
    mask = create_attention_mask(h, None)
    out = {}
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn(layer.input_layernorm(h), mask, None)
        mid = h + attn
        mlp = layer.mlp(layer.post_attention_layernorm(mid))
        h = mid + mlp
        out[f"layers.{i}"], out[f"layers.{i}.self_attn"], out[f"layers.{i}.mlp"] = h[0], attn[0], mlp[0]
    mx.eval(out)
    return out


def ref_positions(llama: Model, rows: list[list[int]], layer: int, positions) -> mx.array:
    """Stack of reference rows: ``(batch, hidden)`` for an int, ``(batch, P, hidden)`` for a list."""
    single = isinstance(positions, int)
    pos = [positions] if single else list(positions)
    picked = []
    for ids in rows:
        h = reference(llama, ids)[f"layers.{layer}"]
        picked.append(mx.stack([h[p] for p in pos]))  # Python indexing: negative counts from the row's end
    out = mx.stack(picked)
    return out[:, 0] if single else out


def exact(a: mx.array, b: mx.array) -> bool:
    return a.shape == b.shape and bool(mx.array_equal(a, b).item())


def encode_all(prompts):
    tok = FakeTokenizer()
    return [tok.encode(p) for p in prompts]


# -- get_activations -----------------------------------------------------------------------------------
def test_get_activations_matches_reference_mixed_lengths_exactly(model, llama):
    rows = encode_all(PROMPTS)
    assert len({len(r) for r in rows}) == len(rows)  # really mixed lengths
    for positions in (-1, 0, -2, [0, -1], [1, -2, 0]):
        acts = get_activations(model, PROMPTS, layers=[0, 2, 3], positions=positions)
        assert list(acts) == ["layer_0", "layer_2", "layer_3"]
        for i in (0, 2, 3):
            assert exact(acts[f"layer_{i}"], ref_positions(llama, rows, i, positions)), (positions, i)


def test_batched_row_equals_single_prompt_run(model):
    batched = get_activations(model, PROMPTS, positions=[0, -1])
    for k, prompt in enumerate(PROMPTS):
        alone = get_activations(model, prompt, positions=[0, -1])
        for key in batched:
            assert exact(batched[key][k:k + 1], alone[key])


def test_get_activations_seed_example_shapes(model):
    acts = get_activations(model, "Hello world", layers=[1, 3])
    assert set(acts) == {"layer_1", "layer_3"} and acts["layer_3"].shape == (1, HIDDEN)
    acts = get_activations(model, ["Hello", "World", "Test"], layers=[2], positions=-1)
    assert acts["layer_2"].shape == (3, HIDDEN)
    acts = get_activations(model, "Test prompt", layers=[3], positions=[0, -1])
    assert acts["layer_3"].shape == (1, 2, HIDDEN)
    acts = get_activations(model, "Test prompt")  # layers=None: every layer
    assert list(acts) == [f"layer_{i}" for i in range(LAYERS)]


def test_get_activations_token_inputs_and_negative_layer(model, llama):
    ids = [5, 9, 17, 33]
    for inputs in (ids, mx.array([ids]), [ids]):
        acts = get_activations(model, inputs, layers=[-1], positions=[0, 3, -1])
        assert list(acts) == [f"layer_{LAYERS - 1}"]
        assert exact(acts[f"layer_{LAYERS - 1}"], ref_positions(llama, [ids], LAYERS - 1, [0, 3, -1]))


# -- batch_get_activations -----------------------------------------------------------------------------
def _many_prompts(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    return [" ".join(rng.choice(words, int(rng.integers(1, 5)))) for _ in range(n)]


def test_batch_get_activations_matches_reference_in_original_order(model, llama):
    prompts = _many_prompts(11)
    rows = encode_all(prompts)
    for positions in (-1, [0, -2, -1]):
        acts = batch_get_activations(model, prompts, layers=[1, 3], positions=positions, batch_size=3,
                                     progress=False)
        for i in (1, 3):
            assert exact(acts[f"layer_{i}"], ref_positions(llama, rows, i, positions)), (positions, i)


def test_batch_equals_get_activations_and_handles_sizes(model):
    prompts = _many_prompts(9, seed=2) + ["a much longer prompt than the others, to force another bucket"]
    whole = get_activations(model, prompts, positions=[0, -1])
    for batch_size in (1, 4, 8, 64):
        acts = batch_get_activations(model, prompts, positions=[0, -1], batch_size=batch_size, progress=False)
        assert list(acts) == list(whole)
        for key in whole:
            assert exact(acts[key], whole[key]), (batch_size, key)


def test_batch_get_activations_seed_example_shape_and_token_lists(model):
    dataset = [f"Prompt {i}" for i in range(40)]
    acts = batch_get_activations(model, prompts=dataset, layers=[0, 2, 3], batch_size=32, progress=False)
    assert set(acts) == {"layer_0", "layer_2", "layer_3"} and acts["layer_3"].shape == (40, HIDDEN)
    ids = encode_all(dataset)
    from_ids = batch_get_activations(model, ids, layers=[0, 2, 3], batch_size=32, progress=False)
    for key in acts:
        assert exact(acts[key], from_ids[key])


def test_batch_get_activations_reuses_compiled_programs(model):
    prompts = _many_prompts(24, seed=3)
    for _ in range(2):  # each chunk shape's program: recorded (run eagerly) once, then compiled
        batch_get_activations(model, prompts, layers=[1], batch_size=8, progress=False)
    before = model.compile_stats()["traces"]
    # new values (other prompts, same length buckets): zero retraces
    batch_get_activations(model, _many_prompts(24, seed=3)[::-1], layers=[1], batch_size=8, progress=False)
    assert model.compile_stats()["traces"] == before


def test_batch_get_activations_memory_is_constant_in_prompt_count(model):
    """Beyond the returned arrays, memory does not grow with the number of prompts (cyclic GC off, so
    nothing is freed late by luck)."""
    import gc

    rng = np.random.default_rng(4)
    prompts = [rng.integers(2, VOCAB, 60).tolist() for _ in range(160)]
    batch_get_activations(model, prompts[:16], batch_size=8, progress=False)  # compile outside the measure
    growth = {}
    gc.collect()
    gc.disable()
    try:
        for n in (16, 160):
            before = mx.get_active_memory()
            mx.reset_peak_memory()
            out = batch_get_activations(model, prompts[:n], batch_size=8, progress=False)
            result_bytes = sum(a.nbytes for a in out.values())
            growth[n] = (mx.get_active_memory() - before, mx.get_peak_memory() - before, result_bytes)
            del out
    finally:
        gc.enable()
    for n, (held, _, result_bytes) in growth.items():
        assert held <= result_bytes + 32768, (n, held, result_bytes)  # only the results stay alive
    extra_peak = growth[160][1] - growth[16][1]
    assert extra_peak <= 3 * growth[160][2], growth  # peak grows only by (a few copies of) the results


def test_batch_get_activations_progress_bar(model, capsys):
    prompts = _many_prompts(5)
    batch_get_activations(model, prompts, layers=[0], batch_size=2, progress=False)
    assert capsys.readouterr().err == ""
    batch_get_activations(model, prompts, layers=[0], batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 5, 8, 9, 17, 20, 33, 100, 500)] == [8, 8, 8, 16, 24, 24, 40, 112, 512]
    assert bucket_length(100, limit=104) == 104 and bucket_length(100, limit=90) == 100
    assert all(bucket_length(n) >= n and bucket_length(n) <= max(8, 1.25 * n + 8) for n in range(1, 2000))


# -- collect_activations ---------------------------------------------------------------------------------
def test_collect_activations_matches_reference_and_resolves_names(model, llama):
    cache = collect_activations(model, PROMPTS, layers=["layers.3", "layers.1.attn", "model.model.layers.2.mlp"])
    assert isinstance(cache, ActivationCache)
    assert cache.keys() == ["layers.3", "layers.1.self_attn", "layers.2.mlp"]
    rows = encode_all(PROMPTS)
    width = max(len(r) for r in rows)
    for key in cache.keys():
        assert cache.get(key).shape == (len(PROMPTS), width, HIDDEN)
        for k, ids in enumerate(rows):
            assert exact(cache.get(key)[k, :len(ids)], reference(llama, ids)[key]), (key, k)
    for alias in ("layers.1.attn", "layers.1.self_attn", "model.layers.1.self_attn", "model.model.layers.1.attn"):
        assert alias in cache and cache.get(alias) is cache.get("layers.1.self_attn")
    assert cache.get("model.model.layers.3") is cache.get("layers.3")
    assert "layers.0" not in cache and cache.get("layers.0") is None and cache.get("nonsense") is None
    assert cache.metadata == {"model_class": "Model", "input_shape": [len(PROMPTS), width],
                              "lengths": [len(r) for r in rows],
                              "layers": ["layers.3", "layers.1.self_attn", "layers.2.mlp"]}


def test_collect_activations_seed_example_and_defaults(model, llama):
    cache = collect_activations(model, "Test input", layers=["layers.1", "layers.3"])
    assert len(cache) == 2 and cache.keys() == ["layers.1", "layers.3"]
    assert cache.get("layers.3").shape == (1, len(FakeTokenizer().encode("Test input")), HIDDEN)
    everything = collect_activations(model, [3, 4, 5])
    assert everything.keys() == [f"layers.{i}" for i in range(LAYERS)]
    assert exact(everything.get("layers.2")[0], reference(llama, [3, 4, 5])["layers.2"])
    by_index = collect_activations(model, [3, 4, 5], layers=[2, "layers.2"])  # ints allowed, duplicates merged
    assert by_index.keys() == ["layers.2"] and exact(by_index.get("layers.2"), everything.get("layers.2"))


def test_collect_activations_save_load_round_trip(model, tmp_path):
    cache = collect_activations(model, PROMPTS, layers=["layers.0", "layers.2.attn"])
    path = cache.save(tmp_path / "acts")
    loaded = ActivationCache.load(path, resolve=cache_resolver(model))
    # safetensors stores keys sorted; metadata["layers"] keeps the requested order
    assert sorted(loaded.keys()) == sorted(cache.keys()) and loaded.metadata == cache.metadata
    assert loaded.metadata["layers"] == ["layers.0", "layers.2.self_attn"]
    for key in cache.keys():
        assert exact(loaded.get(key), cache.get(key))
    assert exact(loaded.get("layers.2.attn"), cache.get("layers.2.self_attn"))


# -- validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [get_activations, batch_get_activations])
def test_layer_validation(model, fn):
    for bad in ([4], [-5], [0, 99]):
        with pytest.raises(ValueError, match=r"out of range.*4 layers \(valid indices 0 to 3"):
            fn(model, ["hi"], layers=bad)
    for bad in ([1.5], [True], [None]):
        with pytest.raises(ValueError, match=r"neither a layer index \(an int; the model has 4 layers, valid indices 0 to 3"):
            fn(model, ["hi"], layers=bad)
    with pytest.raises(ModuleNameError, match=r"unknown module name 'x'"):
        fn(model, ["hi"], layers="x")
    with pytest.raises(ValueError, match=r"layers: expected a layer index, a name .* or a non-empty list of them"):
        fn(model, ["hi"], layers=[])


@pytest.mark.parametrize("fn", [get_activations, batch_get_activations])
def test_prompt_and_position_validation(model, fn):
    with pytest.raises(ValueError, match=r"prompts is empty"):
        fn(model, [])
    # "Hi" has 3 tokens (BOS + 2), "x" has 2
    with pytest.raises(ValueError, match=r"position 2 is out of range for prompt 1, which has 2 tokens"):
        fn(model, ["Hi", "x"], positions=2)
    with pytest.raises(ValueError, match=r"position -3 is out of range for prompt 1, which has 2 tokens"):
        fn(model, ["Hi", "x"], positions=[0, -3])
    with pytest.raises(ValueError, match=r"position 1 is out of range for prompt 0, which has 1 token:"):
        fn(model, [[7], [8, 9]], positions=[1])
    for bad in ("last", 1.0, [0, "a"], []):
        with pytest.raises(ValueError, match=r"positions"):
            fn(model, ["Hi"], positions=bad)


def test_batch_size_validation(model):
    for bad in (0, -1, 1.5, "8", True):
        with pytest.raises(ValueError, match=r"batch_size must be an int >= 1"):
            batch_get_activations(model, ["hi"], batch_size=bad)


def test_collect_activations_validation(model):
    with pytest.raises(ModuleNameError, match=r"layers.3.mpl.*no component 'mpl'.*mlp"):
        collect_activations(model, "hi", layers=["layers.3.mpl"])
    with pytest.raises(ValueError, match=r"out of range.*0 to 3"):
        collect_activations(model, "hi", layers=["layers.7"])
    with pytest.raises(ValueError, match=r"layer index 9 is out of range.*0 to 3"):
        collect_activations(model, "hi", layers=[9])
    with pytest.raises(ValueError, match=r"non-empty list"):
        collect_activations(model, "hi", layers=[])
    with pytest.raises(ValueError, match=r"neither a layer index .* nor a site name"):
        collect_activations(model, "hi", layers=[1.5])
    with pytest.raises(ValueError, match=r"prompts is empty"):
        collect_activations(model, [])


def test_needs_an_interpretable_model(llama):
    for fn in (get_activations, batch_get_activations, collect_activations):
        with pytest.raises(TypeError, match=r"InterpretableModel"):
            fn(llama, "hi")


def test_text_without_tokenizer_is_a_clear_error(llama):
    bare = InterpretableModel(llama)
    for fn in (get_activations, batch_get_activations):
        with pytest.raises(ValueError, match=r"needs a tokenizer"):
            fn(bare, ["hello"])
    with pytest.raises(ValueError, match=r"token id 500 in prompt 1 is out of range.*\[0, 127\]"):
        batch_get_activations(bare, [[1, 2], [3, 500]])


# -- real model ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stories_pair():
    if not (STORIES / "model.safetensors").is_file():
        pytest.skip(f"real-model test: {STORIES} is absent (the shared stories260K checkpoint)")
    import mlx_lm

    llama, tokenizer = mlx_lm.load(str(STORIES))
    return llama, InterpretableModel(llama, tokenizer=tokenizer)


@pytest.mark.realmodel
def test_stories260k_padding_exact_and_consistent(stories_pair):
    llama, model = stories_pair
    prompts = ["Once upon a time", "The cat", "Once upon a time, there was a little dragon", "Lily"]
    rows = [model.encode(p) for p in prompts]
    assert rows[2] == [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 279, 420, 412, 428, 289]
    acts = get_activations(model, prompts, layers=[0, 4], positions=[0, -1])
    for i in (0, 4):
        assert exact(acts[f"layer_{i}"], ref_positions(llama, rows, i, [0, -1]))
    for k, p in enumerate(prompts):
        alone = get_activations(model, p, layers=[4])
        assert exact(alone["layer_4"][0], acts["layer_4"][k, 1])
    batched = batch_get_activations(model, prompts * 3, layers=[0, 4], positions=[0, -1], batch_size=4,
                                    progress=False)
    for key in acts:
        assert exact(batched[key], mx.concatenate([acts[key]] * 3))
    cache = collect_activations(model, prompts, layers=["layers.4.attn", "layers.2"])
    assert cache.keys() == ["layers.4.self_attn", "layers.2"]
    assert cache.get("layers.2").shape == (4, len(rows[2]), 64)
    assert exact(cache.get("model.model.layers.2")[1, :len(rows[1])], reference(llama, rows[1])["layers.2"])
