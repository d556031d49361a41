"""Every pre-built intervention against a hand-written reference forward, eager and compiled."""

import mlx.core as mx
import pytest

from mlxterp import interventions as iv
from tests.models import reference_llama_forward

STEER = mx.linspace(-1, 1, 64)

CASES = {
    "zero_out": (iv.zero_out, lambda h: mx.zeros_like(h)),
    "scale": (iv.scale(0.5), lambda h: h * 0.5),
    "scale_up": (iv.scale(2.0), lambda h: h * 2.0),
    "add_vector": (iv.add_vector(STEER), lambda h: h + STEER),
    "replace_scalar": (iv.replace_with(0.25), lambda h: mx.full(h.shape, 0.25)),
    "replace_array": (iv.replace_with(mx.ones((1, 7, 64))), lambda h: mx.ones(h.shape)),
    "clamp": (iv.clamp(-0.1, 0.2), lambda h: mx.clip(h, -0.1, 0.2)),
    "clamp_max": (iv.clamp(max_val=0.1), lambda h: mx.minimum(h, 0.1)),
    "clamp_min": (iv.clamp(min_val=-0.1), lambda h: mx.maximum(h, -0.1)),
    "custom": (lambda a: mx.tanh(a), mx.tanh),
    "compose": (iv.compose().add(iv.scale(0.8)).add(iv.clamp(-5.0, 5.0)).add(mx.tanh).build(),
                lambda h: mx.tanh(mx.clip(h * 0.8, -5.0, 5.0))),
}


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_intervention_matches_reference(model, tokens, name, compile):
    fn, ref = CASES[name]
    with model.trace(tokens, interventions={"layers.2": fn}, compile=compile, capture="saved"):
        out = model.output.save()
    expected = reference_llama_forward(model.model, tokens, {2: ref})
    assert mx.allclose(out, expected, atol=1e-5), f"{name}: max diff {mx.abs(out - expected).max()}"


def test_interventions_work_on_plain_arrays():
    x = mx.array([[-2.0, 0.5, 3.0]])
    assert mx.array_equal(iv.zero_out(x), mx.zeros_like(x))
    assert mx.array_equal(iv.scale(2.0)(x), x * 2)
    assert mx.array_equal(iv.clamp(-1.0, 1.0)(x), mx.clip(x, -1, 1))
    assert iv.noise(std=0.1)(x).shape == x.shape


def test_noise_has_the_requested_spread_and_changes_each_run(model, tokens):
    outs = []
    for _ in range(2):
        with model.trace(tokens, capture="saved"):
            base = model.layers[1].output.save()
            noisy = iv.noise(std=0.2)(model.layers[1].output).save()
        outs.append(noisy - base)
    assert abs(float(mx.std(outs[0])) - 0.2) < 0.05
    assert not mx.array_equal(outs[0], outs[1])


def test_noise_is_fresh_under_compile(model, tokens):
    outs = []
    for _ in range(3):
        with model.trace(tokens, interventions={"layers.1": iv.noise(0.3)}, compile=True, capture="saved"):
            out = model.output.save()
        outs.append(out)  # rebound to the array when the block exits
    assert not mx.array_equal(outs[1], outs[2])


def test_interventions_on_sub_modules_and_aliases(model, tokens):
    with model.trace(tokens, interventions={"layers.1.attn": iv.zero_out}, capture="saved"):
        a = model.output.save()
    with model.trace(tokens, interventions={"model.model.layers.1.self_attn": iv.zero_out}, capture="saved"):
        b = model.output.save()
    with model.trace(tokens, capture="saved"):
        model.layers[1].self_attn.output = mx.zeros((1, 7, 64))
        c = model.output.save()
    assert mx.array_equal(a, b) and mx.allclose(a, c)


def test_several_interventions_compose_in_forward_order(model, tokens):
    with model.trace(tokens, interventions={"layers.3": iv.scale(2.0), "layers.0": iv.scale(0.5)},
                     capture="saved"):
        out = model.output.save()
    ref = reference_llama_forward(model.model, tokens, {0: lambda h: h * 0.5, 3: lambda h: h * 2.0})
    assert mx.allclose(out, ref, atol=1e-5)


def test_setitem_writes_through_to_the_module_output(model, tokens):
    v = mx.arange(64, dtype=mx.float32) / 64

    def ref(h):
        h = mx.array(h)
        h[:, -1] = v
        return h

    with model.trace(tokens, capture="saved"):
        model.layers[2].output[:, -1] = v
        after = model.layers[2].output.save()
        out = model.output.save()
    assert mx.array_equal(after[:, -1], mx.broadcast_to(v, (1, 64)))
    assert mx.allclose(out, reference_llama_forward(model.model, tokens, {2: ref}), atol=1e-5)


def test_input_replacement(model, tokens):
    with model.trace(tokens, capture="saved"):
        model.layers[2].input = model.layers[2].input * 0
        out = model.output.save()
    seen = {}
    ref = reference_llama_forward(model.model, tokens, {1: lambda h: h * 0})
    assert mx.allclose(out, ref, atol=1e-5)
    assert not seen


def test_steering_from_a_saved_value_of_another_trace(model, tokens):
    with model.trace(tokens, capture="saved"):
        clean = model.layers[1].output.save()
    with model.trace(tokens, capture="saved"):
        model.layers[1].output = clean * 2
        out = model.output.save()
    ref = reference_llama_forward(model.model, tokens, {1: lambda h: h * 2})
    assert mx.allclose(out, ref, atol=1e-5)


def test_a_saved_handle_kept_in_a_container_is_data_in_the_next_trace(model, tokens):
    with model.trace(tokens, capture="saved"):
        saved = [model.layers[1].output.save()]
    with model.trace(tokens, capture="saved"):
        model.layers[1].output = saved[0] * 2
        out = model.output.save()
    assert mx.allclose(out, reference_llama_forward(model.model, tokens, {1: lambda h: h * 2}), atol=1e-5)


# A layer's residual values as intervention keys, against the hand-written forward's sites.
RESIDUAL_SITES = {"resid_pre": "layer_in", "resid_mid": "resid_mid", "resid_post": "layer"}


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("value", sorted(RESIDUAL_SITES))
def test_residual_values_are_intervention_keys(value, compile):
    from mlxterp import InterpretableModel
    from tests.models import tiny_llama_module
    from tests.reference import llama_forward

    model = InterpretableModel(tiny_llama_module(seed=3, layers=3))
    tokens = mx.array([[3, 1, 4, 1, 5, 9]])
    site = (RESIDUAL_SITES[value], 1)
    with model.trace(tokens, interventions={f"layers.1.{value}": iv.add_vector(STEER)}, compile=compile):
        out = model.output.save()
    want = llama_forward(model.model, tokens, lambda s, h: h + STEER if s == site else h)
    untouched = llama_forward(model.model, tokens)
    assert mx.max(mx.abs(want - untouched)).item() > 1e-3  # the write changes the logits
    assert mx.allclose(out, want, atol=1e-5), mx.max(mx.abs(out - want)).item()
