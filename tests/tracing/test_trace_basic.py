"""Recording and binding: saves, outputs, activations, handles, shapes during tracing."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel, apply


def test_trace_without_interventions_returns_raw_forward_exactly(model, tokens):
    raw = model.model(tokens)
    with model.trace(tokens) as tr:
        out = model.output.save()
    assert mx.array_equal(tr.output, raw)
    assert mx.array_equal(out, raw)


@pytest.mark.parametrize("compile", [False, True])
def test_layer_save_matches_manual_forward(model, tokens, compile):
    from tests.models import reference_llama_forward

    seen = {}
    reference_llama_forward(model.model, tokens, {2: lambda h: seen.setdefault("h", h)})
    with model.trace(tokens, compile=compile, capture="saved"):
        h = model.layers[2].output.save()
    assert mx.array_equal(h, seen["h"])


def test_saved_handle_is_rebound_to_the_array_in_the_callers_frame(model, tokens):
    with model.trace(tokens):
        h = model.layers[1].output.save()
    assert type(h) is mx.array


def test_handle_in_a_container_behaves_like_the_array(model, tokens):
    handles = []
    with model.trace(tokens):
        handles.append(model.layers[1].output.save())
    h = handles[0]
    arr = mx.array(h)
    assert h.shape == arr.shape == (1, tokens.shape[1], 64)
    assert mx.array_equal(h[0, -1], arr[0, -1])
    assert np.allclose(np.array(h), np.array(arr))
    assert mx.array_equal(h * 2, arr * 2)
    assert h.dtype == arr.dtype


def test_shape_and_dtype_are_real_during_tracing(model, tokens):
    with model.trace(tokens):
        out = model.layers[0].output
        assert out.shape == (1, tokens.shape[1], 64)
        assert out[:, -1].shape == (1, 64)
        assert (out.sum(axis=-1) * 2).shape == (1, tokens.shape[1])
        assert model.layers[0].mlp.gate_proj.output.shape == (1, tokens.shape[1], 128)
        assert out.dtype == mx.float32


def test_activations_are_captured_with_seed_keys_and_aliases(model, tokens):
    with model.trace(tokens) as tr:
        pass
    assert "model.model.layers.2" in tr.activations
    layer2 = tr.activations["model.model.layers.2"]
    assert mx.array_equal(tr.activations["layers.2"], layer2)
    attn = tr.get_activation("layers.3.attn")
    assert attn is not None and mx.array_equal(attn, tr.activations["model.model.layers.3.self_attn"])
    assert tr.get_activation("model.layers.3.self_attn") is attn


def test_capture_saved_keeps_only_saves(model, tokens):
    with model.trace(tokens, capture="saved") as tr:
        model.layers[0].output.save()
    assert len(tr.activations) == 0 and list(tr.saved_values) == ["layers.0.output"]


def test_capture_list_keeps_named_modules(model, tokens):
    with model.trace(tokens, capture=["layers.1", "layers.2.attn"]) as tr:
        pass
    assert sorted(tr.activations) == ["model.model.layers.1", "model.model.layers.2.self_attn"]


def test_get_by_seed_key_and_other_name_forms(model, tokens):
    with model.trace(tokens) as t:
        model.layers[3].output.save()
        model.layers[1].self_attn.output.save()
    act = t.get("layers.3.output")
    assert act is not None and act.shape == (1, tokens.shape[1], 64)
    assert t.get("model.layers.3.output") is act
    assert t.get("layers.1.attn.output") is t.get("layers.1.self_attn.output")
    assert t.get("layers.0.output") is None


def test_save_keys_are_unique_and_named(model, tokens):
    with model.trace(tokens) as tr:
        a = model.layers[0].output.save()
        b = model.layers[0].output.save()
        c = (model.layers[0].output * 2).save("doubled")
    assert set(tr.saved_values) == {"layers.0.output", "layers.0.output_1", "doubled"}
    assert mx.array_equal(c, a * 2) and mx.array_equal(a, b)


def test_arithmetic_methods_and_apply(model, tokens):
    with model.trace(tokens, capture="saved"):
        h = model.layers[1].output
        combo = ((h * 2 + 1) / 4 - h).save()
        reduced = h.mean(axis=-1).save()
        reshaped = h.reshape(-1, 64).astype(mx.float16).save()
        tanh = apply(mx.tanh, h).save()
        neg = (-h).save()
        ref = h.save()
    assert mx.allclose(combo, (ref * 2 + 1) / 4 - ref)
    assert mx.allclose(reduced, ref.mean(axis=-1))
    assert reshaped.shape == (tokens.shape[1], 64) and reshaped.dtype == mx.float16
    assert mx.allclose(tanh, mx.tanh(ref))
    assert mx.array_equal(neg, -ref)


def test_reflected_operators_and_numbers_keep_dtype(llama_module, tokens):
    m = InterpretableModel(llama_module)
    with m.trace(tokens, capture="saved"):
        h = m.layers[0].output.astype(mx.bfloat16)
        r = (0.5 * h).save()
        s = (1 - h).save()
    assert r.dtype == mx.bfloat16 and s.dtype == mx.bfloat16


def test_apply_outside_a_trace_just_calls(model):
    x = mx.array([0.0, 1.0])
    assert mx.array_equal(apply(mx.tanh, x), mx.tanh(x))


def test_out_of_order_access_is_scheduled_by_execution_order(model, tokens):
    from tests.models import reference_llama_forward

    with model.trace(tokens, capture="saved"):
        late = model.layers[3].output.save()
        model.layers[1].output = model.layers[1].output * 0.5  # written after reading a later layer
        early = model.layers[0].output.save()
    expected = reference_llama_forward(model.model, tokens, {1: lambda h: h * 0.5})
    seen = {}
    reference_llama_forward(model.model, tokens, {1: lambda h: h * 0.5, 3: lambda h: seen.setdefault("3", h)})
    assert mx.allclose(late, seen["3"], atol=1e-6)
    assert early.shape == late.shape
    assert expected.shape[-1] == 128


def test_value_from_a_later_layer_can_be_combined_after_the_forward(model, tokens):
    with model.trace(tokens, capture="saved"):
        diff = (model.layers[3].output - model.layers[0].output).save()
        a, b = model.layers[3].output.save(), model.layers[0].output.save()
    assert mx.allclose(diff, a - b)


def test_module_call_index_selects_the_second_rope_call(model, tokens):
    with model.trace(tokens, capture="saved"):
        q_rope = model.layers[0].self_attn.rope.output.save()
        k_rope = model.layers[0].self_attn.rope.call(1).output.save()
    assert q_rope.shape[1] == 4 and k_rope.shape[1] == 2  # 4 query heads, 2 kv heads


def test_input_of_a_layer_is_the_previous_layers_output(model, tokens):
    with model.trace(tokens, capture="saved"):
        prev = model.layers[1].output.save()
        inp = model.layers[2].input.save()
    assert mx.array_equal(prev, inp)


def test_results_are_lazy_arrays_until_used(model, tokens):
    with model.trace(tokens, capture="saved") as tr:
        model.layers[0].output.save()
    assert isinstance(tr.saved_values["layers.0.output"], mx.array)


def test_activations_read_inside_the_block_become_arrays(model, tokens):
    # The seed's get_token_predictions example reads trace.activations inside the block.
    with model.trace(tokens) as trace:
        layer_2 = trace.activations["model.model.layers.2"]
        attn = trace.get_activation("layers.1.attn")
    assert type(layer_2) is mx.array and mx.array_equal(layer_2, trace.activations["model.model.layers.2"])
    assert mx.array_equal(attn, trace.activations["layers.1.self_attn"])
    last_token_hidden = layer_2[0, -1, :]
    assert last_token_hidden.shape == (64,)


def test_steering_program_keys_are_all_supplied_by_the_recorder():
    # A sweep's per-trace cost depends on the recorder knowing every node's key (no recomputation).
    from mlxterp.compiler import Graph, structure_key
    from tests.models import tiny_llama_module

    model = InterpretableModel(tiny_llama_module(seed=0))
    vector = mx.ones((model.model.args.hidden_size,))
    with model.trace(mx.array([[1, 2, 3]]), capture="saved") as tr:
        for i in range(len(model.layers)):
            model.layers[i].output.save()
            model.layers[i].output = model.layers[i].output * 0.5 + vector
    assert len(tr.graph.known_keys) == len(tr.graph)
    assert structure_key(tr.graph) == structure_key(Graph(tr.graph.nodes, captures=tr.graph.captures))
