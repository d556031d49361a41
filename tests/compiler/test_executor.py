"""Eager vs compiled execution, the structural cache, retrace counting, weight edits."""

import mlx.core as mx

from mlxterp import apply
from mlxterp import interventions as iv
from tests.models import reference_llama_forward


def steer(model, tokens, vector, compile="auto"):
    with model.trace(tokens, compile=compile, capture="saved") as tr:
        model.layers[1].output = model.layers[1].output + vector
        out = model.output.save()
    return tr, out


def test_auto_is_eager_first_then_compiled(model, tokens):
    modes = [steer(model, tokens, mx.full((64,), float(i)))[0].mode for i in range(3)]
    assert modes == ["eager", "compiled", "compiled"]


def test_same_structure_new_values_never_retraces(model, tokens):
    outs = []
    for i in range(20):
        _, out = steer(model, tokens, mx.full((64,), 0.1 * i), compile=True)
        outs.append(out)
    stats = model.compile_stats()
    assert stats["traces"] == 1 and stats["misses"] == 1 and stats["hits"] == 19
    expected = reference_llama_forward(model.model, tokens, {1: lambda h: h + 0.1 * 7})
    assert mx.allclose(outs[7], expected, atol=1e-5)


def test_python_numbers_are_parameters_not_constants(model, tokens):
    for factor in (0.5, 2.0, -1.0, 3.25):
        with model.trace(tokens, interventions={"layers.2": iv.scale(factor)}, compile=True, capture="saved"):
            out = model.output.save()
        expected = reference_llama_forward(model.model, tokens, {2: lambda h: h * factor})
        assert mx.allclose(out, expected, atol=1e-5)
    assert model.compile_stats()["traces"] == 1


def test_new_input_shape_is_a_new_entry(model, tokens):
    steer(model, tokens, mx.zeros((64,)), compile=True)
    steer(model, mx.array([[1, 2, 3]]), mx.zeros((64,)), compile=True)
    steer(model, tokens, mx.ones((64,)), compile=True)
    stats = model.compile_stats()
    assert stats["traces"] == 2 and stats["cache_size"] == 2 and stats["hits"] == 1


def test_different_structure_is_a_miss(model, tokens):
    steer(model, tokens, mx.zeros((64,)), compile=True)
    with model.trace(tokens, compile=True, capture="saved"):
        model.layers[2].output = model.layers[2].output * 2.0
    assert model.compile_stats()["misses"] == 2


def test_weight_edits_after_a_compiled_trace_are_seen(llama_module, tokens):
    from mlxterp import InterpretableModel

    model = InterpretableModel(llama_module)
    norm = llama_module.model.norm
    original = norm.weight
    try:
        _, before = steer(model, tokens, mx.zeros((64,)), compile=True)
        norm.weight = original * 2
        _, after = steer(model, tokens, mx.zeros((64,)), compile=True)
        assert model.compile_stats()["traces"] == 1
        assert mx.allclose(after, llama_module(tokens), atol=1e-5)
        assert not mx.allclose(after, before)
    finally:
        norm.weight = original


def test_clear_compile_cache(model, tokens):
    steer(model, tokens, mx.zeros((64,)), compile=True)
    model.clear_compile_cache()
    assert model.compile_stats()["cache_size"] == 0
    steer(model, tokens, mx.zeros((64,)), compile=True)
    assert model.compile_stats()["traces"] == 2


def test_eager_and_compiled_agree_with_capture_all(model, tokens):
    with model.trace(tokens, interventions={"layers.1": iv.clamp(-0.5, 0.5)}, compile=False) as eager:
        pass
    with model.trace(tokens, interventions={"layers.1": iv.clamp(-0.5, 0.5)}, compile=True) as compiled:
        pass
    assert eager.activations.keys() == compiled.activations.keys()
    for k in eager.activations:
        assert mx.allclose(eager.activations[k], compiled.activations[k], atol=1e-5), k


def test_graph_introspection_before_and_after_passes(model, tokens):
    with model.trace(tokens, compile=True, capture="saved") as tr:
        h = model.layers[1].output
        model.layers[1].output = apply(mx.tanh, h * 0.5 + 1.0) - 2.0
        unused = h * 3  # noqa: F841 (dead code)
        model.output.save()
    assert "binary[mul]" in tr.dump() and "constant(0.5)" in tr.dump()
    optimized = tr.dump(optimized=True)
    assert "param" in optimized and "constant(" not in optimized
    assert tr.dump().count("binary[mul]") == 2 and optimized.count("binary[mul]") == 1  # h * 3 was dead
    assert len(tr.optimized_graph) < len(tr.graph)
    assert '"op": "replace"' in tr.to_json() and "digraph" in tr.to_dot(optimized=True)


def test_stats_count_eager_and_compiled_runs(model, tokens):
    for i in range(3):
        steer(model, tokens, mx.zeros((64,)))
    stats = model.compile_stats()
    assert stats["eager_runs"] == 1 and stats["compiled_runs"] == 2


def test_cached_programs_keep_no_constant_of_the_trace_that_built_them(model, tokens):
    # A sweep's first trace lowers the program; the cache must not keep that trace's arrays (say, a large
    # patch) alive once the trace is gone.
    import gc
    import weakref

    model.clear_compile_cache()
    vector = mx.full((64,), 2.0)
    tr, out = steer(model, tokens, vector, compile=True)
    mx.eval(out)
    alive = weakref.ref(vector)
    del tr, out, vector
    gc.collect()
    assert alive() is None
    assert model.compile_stats()["cache_size"] == 1


def test_a_dead_constant_does_not_shift_the_params(model, tokens):
    # The unused `* 100.0` is dropped before lifting: params are bound by constant id, not by position.
    for compile in (False, True):
        with model.trace(tokens, compile=compile, capture="saved"):
            _unused = model.layers[0].output * 100.0
            model.layers[1].output = model.layers[1].output + 0.5
            out = model.output.save()
        expected = reference_llama_forward(model.model, tokens, {1: lambda h: h + 0.5})
        assert mx.allclose(out, expected, atol=1e-5)
