"""Activation edits in traces: an edited model's trace equals the base model's trace with the same
interventions and the hand-written forward with the same hooks; edits apply first, compose in order,
replay with each trace's own positions and shapes, and reach programs as params."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import interventions as iv
from tests.reference import llama_forward

TOKENS = mx.array([[1, 5, 9, 13, 17, 21, 25]])
V = mx.random.normal((64,), key=mx.random.key(11))

EDITS = {
    "scale a layer": {"layers.1": iv.scale(0.5)},
    "zero two heads": {"layers.2.attn.heads": iv.zero_out_heads([0, 3])},
    "steer an mlp": {"layers.0.mlp": iv.add_vector(V)},
    "clamp resid_mid": {"layers.3.resid_mid": iv.clamp(-0.5, 0.5)},
    "a plain function": {"layers.2.attn.pattern": lambda p: p * 0.5},
}


def zero_heads(x: mx.array, heads: list) -> mx.array:
    keep = np.ones(x.shape[2], bool)
    keep[heads] = False
    return x * mx.array(keep.astype(np.float32))[:, None]


# The same edits as hooks of the hand-written forward: {edit key: (site, fn)}.
HOOKS = {"layers.1": (("layer", 1), lambda x: x * 0.5),
         "layers.2.attn.heads": (("heads", 2), lambda x: zero_heads(x, [0, 3])),
         "layers.0.mlp": (("mlp", 0), lambda x: x + V),
         "layers.3.resid_mid": (("resid_mid", 3), lambda x: mx.clip(x, -0.5, 0.5)),
         "layers.2.attn.pattern": (("pattern", 2), lambda x: x * 0.5)}


def hooks(edits: dict):
    table = dict(HOOKS[name] for name in edits)
    return lambda site, value: table[site](value) if site in table else value


def run(model, tokens=TOKENS, compile=False, **kwargs):
    with model.trace(tokens, compile=compile, capture="saved", **kwargs):
        out = model.output.save()
    return out


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("case", list(EDITS))
def test_an_edited_model_equals_the_same_interventions_and_the_hand_written_forward(model, compile, case):
    edited = model.edit(EDITS[case])
    got = run(edited, compile=compile)
    same = run(model, compile=compile, interventions=EDITS[case])
    assert mx.abs(got - same).max().item() <= 1e-6
    ref = llama_forward(model.model, TOKENS, hooks(EDITS[case]))
    np.testing.assert_allclose(np.array(got), np.array(ref), rtol=1e-4, atol=1e-4)
    assert not mx.allclose(got, run(model), atol=1e-3)  # the edit does something
    assert mx.array_equal(run(model), model.model(TOKENS))  # the base model is not edited


@pytest.mark.parametrize("compile", [False, True])
def test_a_recorded_edit_uses_each_traces_own_last_position(model, compile):
    with model.edit() as ed:
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + 3.0 * V
        model.layers[2].attn.heads[:, :, 1] = 0.0

    def hook(site, value):
        if site == ("layer", 1):
            value = mx.concatenate([value[:, :-1], value[:, -1:] + 3.0 * V], axis=1)
        if site == ("heads", 2):
            value = mx.concatenate([value[:, :, :1], mx.zeros_like(value[:, :, 1:2]), value[:, :, 2:]], axis=2)
        return value

    for tokens in (mx.array([[1, 5, 9]]), TOKENS, mx.array([[4, 8, 15, 16, 23, 42, 7, 3, 99, 2], [1] * 10])):
        got = run(ed.model, tokens, compile)
        ref = llama_forward(model.model, tokens, hook)
        np.testing.assert_allclose(np.array(got), np.array(ref), rtol=1e-4, atol=1e-4)


def test_a_recorded_edit_equals_the_same_writes_in_a_trace(model):
    with model.edit() as ed:
        h = model.layers[2].output
        model.layers[2].output = h * 0.5 + apply_tanh(model.layers[0].output)
        model.layers[3].mlp.output[:, 0] = 0.0  # a number written at one position
        model.layers[3].output = 1.5  # a number filling the whole output
    with model.trace(TOKENS, capture="saved"):
        h = model.layers[2].output
        model.layers[2].output = h * 0.5 + apply_tanh(model.layers[0].output)
        model.layers[3].mlp.output[:, 0] = 0.0
        model.layers[3].output = 1.5
        want = model.output.save()
    assert mx.abs(run(ed.model) - want).max().item() <= 1e-6


def apply_tanh(x):
    return mt.apply(mx.tanh, x)


@pytest.mark.parametrize("compile", [False, True])
def test_edits_apply_before_the_interventions_and_the_block(model, compile):
    edited = model.edit({"layers.1": iv.add_vector(V)})
    with edited.trace(TOKENS, compile=compile, capture="saved", interventions={"layers.1": iv.scale(2.0)}):
        seen = edited.layers[1].output.save()  # after the edit and the intervention
        out = edited.output.save()
    ref_seen = {}

    def hook(site, value):
        if site == ("layer", 1):
            value = (value + V) * 2.0
            ref_seen["h"] = value
        return value

    ref = llama_forward(model.model, TOKENS, hook)
    np.testing.assert_allclose(np.array(seen), np.array(ref_seen["h"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(out), np.array(ref), rtol=1e-4, atol=1e-4)


def test_a_write_in_the_block_replaces_the_edited_value(model):
    edited = model.edit({"layers.1": iv.add_vector(V)})
    with edited.trace(TOKENS, capture="saved"):
        edited.layers[1].output = 0.0
        out = edited.output.save()
    with model.trace(TOKENS, capture="saved"):
        model.layers[1].output = 0.0
        want = model.output.save()
    assert mx.array_equal(out, want)


def test_edits_compose_in_order(model):
    first = model.edit({"layers.1": iv.add_vector(V)})
    with first.edit() as ed:  # reads the first edit's value
        first.layers[1].output = first.layers[1].output * 3.0
    both = ed.model
    assert both.edits[0] is first.edits[0] and len(both.edits) == 2 and len(first.edits) == 1
    ref = llama_forward(model.model, TOKENS, lambda s, v: (v + V) * 3.0 if s == ("layer", 1) else v)
    np.testing.assert_allclose(np.array(run(both)), np.array(ref), rtol=1e-4, atol=1e-4)
    swapped = model.edit({"layers.1": iv.scale(3.0)}).edit({"layers.1": iv.add_vector(V)})
    ref = llama_forward(model.model, TOKENS, lambda s, v: v * 3.0 + V if s == ("layer", 1) else v)
    np.testing.assert_allclose(np.array(run(swapped)), np.array(ref), rtol=1e-4, atol=1e-4)


def test_an_edited_model_shares_the_module_tree_and_lists_its_edits(model):
    edited = model.edit({"layers.2.attn.heads": iv.zero_out_heads([2])})
    assert edited.model is model.model
    assert model.edits == () and len(edited.edits) == 1
    assert "layers.2.attn.heads" in repr(edited.edits[0]) and "zero_out_heads" in repr(edited.edits[0])
    assert "1 edit(s)" in repr(edited)


def test_programs_of_an_edited_model_include_the_edit(model):
    edited = model.edit({"layers.1": iv.add_vector(V)})
    with edited.trace(TOKENS, capture="saved") as tr:
        edited.output[:, -1].save("logits")
    prog = tr.program()
    assert "const_0" in prog.params  # the edit's vector is a param of the program
    want = run(edited)[:, -1]
    assert mx.abs(prog()["logits"] - want).max().item() <= 1e-5
    other = mx.random.normal((64,), key=mx.random.key(3))
    np.testing.assert_allclose(np.array(prog(const_0=other)["logits"]),
                               np.array(run(model.edit({"layers.1": iv.add_vector(other)}))[:, -1]), atol=1e-5)


def test_same_structure_new_edit_values_do_not_retrace(model):
    for k in range(4):
        edited = model.edit({"layers.1": iv.add_vector(V * k)})
        with edited.trace(TOKENS, compile=True, capture="saved"):
            out = edited.output.save()
        want = run(model, interventions={"layers.1": iv.add_vector(V * k)})
        np.testing.assert_allclose(np.array(out), np.array(want), atol=1e-5)
    # one compiled program served every edited model: they share the base's compile cache (and its counters)
    assert model.compile_stats()["traces"] == 1 and model.compile_stats()["compiled_runs"] == 4


def test_the_base_models_traces_are_never_served_an_edited_program(model):
    edited = model.edit({"layers.1": iv.scale(0.0)})
    for compile in (True, True, False):
        assert mx.array_equal(run(model, compile=compile), model.model(TOKENS))
        assert not mx.allclose(run(edited, compile=compile), model.model(TOKENS), atol=1e-3)


def test_a_param_in_an_edit_is_a_param_of_every_program(model):
    with model.edit() as ed:
        alpha = mt.param("alpha", 1.0)
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + alpha * V
    with ed.model.trace(TOKENS, capture="saved") as tr:
        ed.model.output.save("out")
    prog = tr.program()
    assert ed.model.edits[0].params == ("alpha",) and ed.edit is ed.model.edits[0]

    def steered(alpha):
        return llama_forward(model.model, TOKENS, lambda s, v: mx.concatenate([v[:, :-1], v[:, -1:] + alpha * V], 1)
                             if s == ("layer", 1) else v)

    np.testing.assert_allclose(np.array(prog(alpha=2.5)["out"]), np.array(steered(2.5)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(prog()["out"]), np.array(steered(1.0)), rtol=1e-4, atol=1e-4)


def test_inplace_edits_and_clear_edits(model):
    raw, clean, corrupted = model.model(TOKENS), [1, 5, 9, 13], [1, 5, 40, 13]
    before = model.activation_patching(clean, corrupted, component="mlp")
    want = model.edit({"layers.1": iv.scale(0.5)}).activation_patching(clean, corrupted, component="mlp")
    assert model.edit({"layers.1": iv.scale(0.5)}, inplace=True) is model
    assert len(model.edits) == 1
    np.testing.assert_allclose(np.array(run(model)), np.array(llama_forward(model.model, TOKENS, hooks(["layers.1"]))),
                               rtol=1e-4, atol=1e-4)
    # the sweep's programs cached before the edit were recorded without it: they must not be reused
    got = model.activation_patching(clean, corrupted, component="mlp")
    assert got == pytest.approx(want, abs=1e-4) and got != pytest.approx(before, abs=1e-2)
    with model.edit(inplace=True):
        model.layers[2].output[:, -1] = 0.0
    assert len(model.edits) == 2
    model.clear_edits()
    assert model.edits == () and mx.array_equal(run(model), raw)
    assert model.activation_patching([1, 5, 9, 13], [1, 5, 40, 13], component="mlp") == pytest.approx(before)


def test_an_edited_models_program_folds_vmaps_and_differentiates(model):
    edited = model.edit({"layers.2.attn.heads": iv.zero_out_heads([1])})
    with edited.trace(TOKENS, capture="saved") as tr:
        s = mt.param("s", mx.zeros(64))
        edited.layers[3].output[:, -1] = edited.layers[3].output[:, -1] + s
        edited.output[:, -1].save("logits")
    prog = tr.program()
    steers = mx.random.normal((3, 64), key=mx.random.key(4))

    def reference(steer):
        def hook(site, value):
            if site == ("heads", 2):
                return zero_heads(value, [1])
            if site == ("layer", 3):
                return mx.concatenate([value[:, :-1], value[:, -1:] + steer], axis=1)
            return value
        return llama_forward(model.model, TOKENS, hook)[:, -1]

    want = mx.stack([reference(steers[i]) for i in range(3)])
    np.testing.assert_allclose(np.array(prog.batched(s=steers)["logits"]), np.array(want), rtol=1e-4, atol=1e-4)
    vmapped = mx.vmap(lambda v: prog.fn(params={"s": v})["logits"])(steers)
    np.testing.assert_allclose(np.array(vmapped), np.array(want), rtol=1e-4, atol=1e-4)
    grad = mx.grad(lambda v: prog.fn(params={"s": v})["logits"].sum())(steers[0])
    ref_grad = mx.grad(lambda v: reference(v).sum())(steers[0])
    np.testing.assert_allclose(np.array(grad), np.array(ref_grad), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_a_recorded_edit_reading_attention_internals(model, compile):
    """The last position's heads scaled by its attention to the first key, and its key's first head shifted
    by its query's: recorded without a prompt, read at each trace's own positions."""
    with model.edit() as ed:
        w = model.layers[1].attn.pattern[:, :, -1, 0]
        model.layers[1].attn.heads[:, -1] = model.layers[1].attn.heads[:, -1] * w[:, :, None]
        model.layers[2].attn.k[:, -1, 0] = model.layers[2].attn.k[:, -1, 0] + model.layers[2].attn.q[:, -1, 0]
    seen = {}

    def hook(site, value):
        if site in (("pattern", 1), ("q", 2)):
            seen[site] = value
        if site == ("heads", 1):
            value = mx.array(value)
            value[:, -1] = value[:, -1] * seen[("pattern", 1)][:, :, -1, 0][:, :, None]
        if site == ("k", 2):
            value = mx.array(value)
            value[:, -1, 0] = value[:, -1, 0] + seen[("q", 2)][:, -1, 0]
        return value

    for tokens in (mx.array([[1, 5, 9]]), TOKENS):
        got = run(ed.model, tokens, compile)
        np.testing.assert_allclose(np.array(got), np.array(llama_forward(model.model, tokens, hook)), rtol=1e-4,
                                   atol=1e-4)
