"""Property tests over random intervention programs: eager == compiled, and the graph before the
passes computes what the graph after them does."""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxterp.compiler import Graph, PatchedForward, run_passes, structure_key
from mlxterp import InterpretableModel, apply
from mlxterp import interventions as iv
from tests.models import tiny_llama_module

MODULES = ["", ".mlp", ".self_attn", ".mlp.down_proj", ".self_attn.o_proj", ".input_layernorm"]
TOKENS = mx.array([[1, 7, 3, 9, 4, 2]])

step = st.tuples(
    st.integers(0, 3),  # layer
    st.sampled_from(MODULES),  # component
    st.sampled_from(["scale", "add", "setitem", "clamp", "tanh", "mix_earlier", "iv_scale", "save_slice", "save"]),
    st.floats(-2, 2, allow_nan=False, width=32),  # a value
    st.integers(0, 5),  # a position
)


@pytest.fixture(scope="module")
def pmodel():
    return InterpretableModel(tiny_llama_module(seed=3))


def build(model, steps):
    """Record a random program; returns nothing (saves carry the results)."""
    earlier = {}
    for n, (layer, comp, kind, value, pos) in enumerate(steps):
        proxy_module = model.module(f"layers.{layer}{comp}")
        out = proxy_module.output
        if kind == "scale":
            proxy_module.output = out * value
        elif kind == "add":
            proxy_module.output = out + mx.full((out.shape[-1],), value)
        elif kind == "setitem":
            out[:, pos] = value
        elif kind == "clamp":
            proxy_module.output = apply(mx.clip, out, -abs(value) - 0.1, abs(value) + 0.1)
        elif kind == "tanh":
            proxy_module.output = apply(mx.tanh, out * value) + out
        elif kind == "iv_scale":
            proxy_module.output = iv.compose().add(iv.scale(value)).add(iv.add_vector(mx.full((out.shape[-1],), 0.1))).build()(out)
        elif kind == "mix_earlier" and earlier.get(out.shape[-1]) and earlier[out.shape[-1]][0] <= layer:
            proxy_module.output = out + earlier[out.shape[-1]][1] * value
        elif kind == "save_slice":
            out[:, pos:].sum(axis=-1).save(f"slice_{n}")
        else:
            out.save(f"save_{n}")
        if comp == "":
            earlier[out.shape[-1]] = (layer + 1, model.layers[layer].output)
    model.output.save("logits")


def run(model, steps, compile):
    with model.trace(TOKENS, compile=compile, capture="saved") as tr:
        build(model, steps)
    return tr


def assert_close(a, b):
    a, b = np.array(a), np.array(b)
    scale = max(1.0, float(np.abs(b).max()))
    assert np.abs(a - b).max() <= 1e-5 * scale


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_eager_equals_compiled(pmodel, steps):
    eager = run(pmodel, steps, False)
    compiled = run(pmodel, steps, True)
    assert eager.saved_values.keys() == compiled.saved_values.keys()
    for key in eager.saved_values:
        assert_close(compiled.saved_values[key], eager.saved_values[key])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_graph_before_passes_equals_after(pmodel, steps):
    tr = run(pmodel, steps, False)
    probe = pmodel._probe(TOKENS)
    unoptimized = run_passes(tr.graph, probe.events, passes=())
    raw = PatchedForward(pmodel.model, unoptimized.after, unoptimized.schedule)
    _, saves, _ = raw(TOKENS, [])
    for key, value in tr.saved_values.items():
        assert_close(value, saves[key])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_recorded_keys_equal_recomputed_keys(pmodel, steps):
    # The recorder supplies structural keys for its hot paths (graph.known_keys) instead of recomputing
    # them per trace; each must be exactly what structure.node_key computes, or cache hits could be wrong.
    tr = run(pmodel, steps, False)
    assert tr.graph.known_keys, "the recorder supplied no keys"
    fresh = Graph(tr.graph.nodes, captures=tr.graph.captures)
    assert not fresh.known_keys
    assert structure_key(tr.graph) == structure_key(fresh)
