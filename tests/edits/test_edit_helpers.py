"""Everything built on traces carries an edited model's edits: generation (every step, the prompt pass
included), activation patching sweeps, attribution patching, activation utilities. Checked against
hand-written forwards and loops, and an activation edit against the weight edit it equals."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import batch_get_activations, collect_activations, get_activations
from mlxterp import interventions as iv
from tests.generation.conftest import MODES
from tests.generation.reference import cached_loop_logits, full_forward_logits, mlx_lm_tokens
from tests.reference import llama_forward

PROMPT = "hello there"
CLEAN = [1, 5, 9, 13, 17, 21, 25, 3]
CORRUPTED = [1, 5, 9, 40, 17, 21, 25, 3]
V = mx.random.normal((64,), key=mx.random.key(11))


def steered(model):
    """The model with a recorded edit: layer 2's output at the last position moved by 2 V."""
    with model.edit() as ed:
        model.layers[2].output[:, -1] = model.layers[2].output[:, -1] + 2.0 * V
    return ed.model


@pytest.mark.parametrize("compile", MODES)
def test_generation_carries_a_recorded_edit_at_every_step(model, compile):
    edited = steered(model)
    with edited.generate(PROMPT, 8, ignore_eos=True, compile=compile) as gen:
        logits = edited.output[:, -1].save()
    expected = cached_loop_logits(model.model, model.encode(PROMPT), gen.tokens[:-1], 2, lambda h: h + 2.0 * V)
    for k in range(8):  # step 0 is the prompt pass
        assert mx.allclose(logits[k, 0], expected[k], atol=1e-4), f"step {k}"
    assert gen.tokens != mlx_lm_tokens(model.model, model.encode(PROMPT), 8)
    assert model.generate(PROMPT, 8, ignore_eos=True, compile=compile).tokens == \
        mlx_lm_tokens(model.model, model.encode(PROMPT), 8)  # the base generates as before


@pytest.mark.parametrize("compile", MODES)
def test_generation_composes_an_edit_with_the_blocks_writes(model, compile):
    edited = model.edit({"layers.2": lambda h: h * 1.5 + V})
    with edited.generate(PROMPT, 6, ignore_eos=True, compile=compile) as gen:
        edited.layers[0].output = edited.layers[0].output * 0.5
        logits = edited.output[:, -1].save()
    ids = model.encode(PROMPT)
    for k in range(6):
        want = full_forward_logits(model.model, ids + gen.tokens[:k], {0: lambda h: h * 0.5, 2: lambda h: h * 1.5 + V})
        assert mx.allclose(logits[k, 0], want, atol=1e-4), f"step {k}"


@pytest.mark.parametrize("compile", MODES)
def test_a_weight_edited_model_generates_as_mlx_lm_does_on_those_weights(model, compile):
    from tests.edits.test_weight_edits import rank_one, reference_with

    edited = model.edit_weights({"layers.2.mlp.down_proj.weight": lambda w: rank_one(w) * 3.0})
    reference = reference_with(0, **{"layers.2.mlp.down_proj.weight": lambda w: rank_one(w) * 3.0})
    tokens = edited.generate(PROMPT, 10, ignore_eos=True, compile=compile).tokens
    assert tokens == mlx_lm_tokens(reference, model.encode(PROMPT), 10)
    assert tokens != mlx_lm_tokens(model.model, model.encode(PROMPT), 10)


def hand_written_patching(module, hook, layers):
    """activation_patching (mlp, l2) of the hand-written forward with ``hook`` as the edit: a loop of forwards."""
    clean_mlp = {}

    def capture(site, value):
        value = hook(site, value)
        if site[0] == "mlp":
            clean_mlp[site] = value
        return value

    clean = llama_forward(module, mx.array([CLEAN]), capture)[0, -1]
    corrupted = llama_forward(module, mx.array([CORRUPTED]), hook)[0, -1]
    d0 = float(mx.linalg.norm(corrupted - clean))
    out = {}
    for i in layers:
        patch = lambda s, v, i=i: clean_mlp[s] if s == ("mlp", i) else hook(s, v)  # noqa: E731
        patched = llama_forward(module, mx.array([CORRUPTED]), patch)[0, -1]
        out[i] = (d0 - float(mx.linalg.norm(patched - clean))) / d0 * 100
    return out


@pytest.mark.parametrize("batch_size", [None, 2])
def test_activation_patching_of_an_edited_model_equals_a_loop_of_hand_written_forwards(model, batch_size):
    edited = steered(model.edit({"layers.1.attn.heads": iv.zero_out_heads([1])}))

    def hook(site, value):
        if site == ("heads", 1):
            value = mx.concatenate([value[:, :, :1], mx.zeros_like(value[:, :, 1:2]), value[:, :, 2:]], axis=2)
        if site == ("layer", 2):
            value = mx.concatenate([value[:, :-1], value[:, -1:] + 2.0 * V], axis=1)
        return value

    got = edited.activation_patching(CLEAN, CORRUPTED, component="mlp", batch_size=batch_size)
    want = hand_written_patching(model.model, hook, range(4))
    assert got == pytest.approx(want, abs=1e-3)
    assert model.activation_patching(CLEAN, CORRUPTED, component="mlp") != pytest.approx(want, abs=1e-1)


def test_attribution_patching_of_an_activation_edit_equals_that_of_the_same_weight_edit(model):
    # scaling down_proj's output by 0.5 is scaling its weight by 0.5 (it has no bias)
    by_activation = model.edit({"layers.1.mlp.down_proj": iv.scale(0.5)})
    by_weight = model.edit_weights({"layers.1.mlp.down_proj.weight": lambda w: w * 0.5})
    got = by_activation.attribution_patching(CLEAN, CORRUPTED)
    want = by_weight.attribution_patching(CLEAN, CORRUPTED)
    np.testing.assert_allclose(np.array(got.grid), np.array(want.grid), rtol=1e-3, atol=1e-3)
    assert not np.allclose(np.array(model.attribution_patching(CLEAN, CORRUPTED).grid), np.array(want.grid),
                           atol=1e-1)
    swept = by_activation.activation_patching(CLEAN, CORRUPTED, component="mlp")
    assert swept == pytest.approx(by_weight.activation_patching(CLEAN, CORRUPTED, component="mlp"), abs=1e-3)


def test_activation_utilities_read_the_edited_values(model):
    edited = steered(model)
    prompts = ["hello", "hi there you"]
    got = get_activations(edited, prompts, layers=[2, 3], positions=-1)
    for row, prompt in enumerate(prompts):
        with model.trace(prompt, capture="saved"):
            model.layers[2].output[:, -1] = model.layers[2].output[:, -1] + 2.0 * V
            h2, h3 = model.layers[2].output[:, -1].save(), model.layers[3].output[:, -1].save()
        np.testing.assert_allclose(np.array(got["layer_2"][row]), np.array(h2[0]), atol=1e-5)
        np.testing.assert_allclose(np.array(got["layer_3"][row]), np.array(h3[0]), atol=1e-5)


def test_batched_helpers_give_each_prompt_what_it_gets_alone(model):
    # a recorded [:, -1] write counts from the end: right padding would move it onto padding, so prompts of
    # different lengths are not padded together for such a model
    edited = steered(model)
    prompts = ["hello", "hi there you", "hey", "hello again"]
    alone = [get_activations(edited, p, layers=[3], positions=[-1, 0])["layer_3"][0] for p in prompts]
    batched = batch_get_activations(edited, prompts, layers=[3], positions=[-1, 0], batch_size=4, progress=False)
    np.testing.assert_allclose(np.array(batched["layer_3"]), np.array(mx.stack(alone)), atol=1e-5)
    toward, away = ["I love you", "so good"], ["hate", "bad things here"]
    vector = edited.steering_vector(toward, away, layer=3)
    by_hand = (mx.stack([get_activations(edited, p, layers=[3])["layer_3"][0] for p in toward]).mean(0)
               - mx.stack([get_activations(edited, p, layers=[3])["layer_3"][0] for p in away]).mean(0))
    np.testing.assert_allclose(np.array(vector), np.array(by_hand), atol=1e-5)
    with pytest.raises(ValueError, match="count positions from the end.*lengths \\[6, 13\\]"):
        collect_activations(edited, ["hello", "hi there you"], layers=["layers.3"], progress=False)
    assert collect_activations(edited, ["hello", "jello"], layers=["layers.3"], progress=False)
    # a positionwise edit keeps the padded batches (and gives the same rows)
    scaled = model.edit({"layers.1": iv.scale(0.5)})
    assert scaled._padding_safe() and not edited._padding_safe()
    rows = batch_get_activations(scaled, prompts, layers=[3], batch_size=4, progress=False)["layer_3"]
    single = mx.stack([get_activations(scaled, p, layers=[3])["layer_3"][0] for p in prompts])
    np.testing.assert_allclose(np.array(rows), np.array(single), atol=1e-5)


@pytest.mark.parametrize("site, fn, safe", [
    ("layers.1", iv.scale(mx.full((64,), 0.5)), True),  # per feature: the last axis is the hidden one
    ("layers.1.attn.pattern", iv.scale(0.5), True),
    ("layers.1.attn.pattern", iv.scale(mx.full((7,), 0.5)), False),  # per key position: padding moves it
    ("layers.1.attn.scores", iv.add_vector(mx.zeros((7,))), False),
    ("layers.1.attn.heads", iv.compose().add(iv.scale(mx.ones(16))).add(iv.clamp(-1.0, 1.0)).build(), True),
    ("layers.1", iv.add_vector(mx.zeros((7, 64))), False),  # an array with a token axis
])
def test_position_wise_edits_know_the_key_axis_of_attention_scores(model, site, fn, safe):
    assert model.edit({site: fn})._padding_safe() is safe


def first_position_tanh(model, where):
    """A recorded edit of ``where``'s output at position 0 (the logits, or the last layer's MLP), which the
    last position's logits never see."""
    with model.edit() as ed:
        module = model if where == "logits" else model.layers[3].mlp
        module.output[:, 0] = mt.apply(mx.tanh, module.output[:, 0] * 5.0)
    return ed.model


@pytest.mark.parametrize("where", ["logits", "last mlp"])
def test_sweeps_keep_an_edit_of_a_position_after_their_last_position_cuts(model, where):
    """Patching sweeps cut the final norm's input, and the last layer's MLP input where its variants are born
    at the norm, to the last position: an edit of position 0 there then landed on the last position (the
    sweep's metric). It cannot change the last position's logits, so the edited model's sweeps equal the
    base model's."""
    from mlxterp.analysis.patching import sliceable_norm

    edited = first_position_tanh(model, where)
    tokens = mx.array([CLEAN, CORRUPTED])
    assert (sliceable_norm(edited, tokens) is None) == (where == "logits")
    assert sliceable_norm(steered(model), tokens) is not None  # an edit before the norm keeps its cut
    for component in ("mlp", "output"):
        want = model.activation_patching(CLEAN, CORRUPTED, component=component)
        assert edited.activation_patching(CLEAN, CORRUPTED, component=component) == pytest.approx(want, abs=1e-4)
    heads = edited.head_patching(CLEAN, CORRUPTED, layers=[1, 3]).grid
    np.testing.assert_allclose(np.asarray(heads), np.asarray(model.head_patching(CLEAN, CORRUPTED, layers=[1, 3]).grid),
                               atol=1e-4)
