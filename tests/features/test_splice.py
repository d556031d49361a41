"""Splicing dictionaries into traces, against the hand-written forward (tests/reference.py) with each dictionary
applied by hand (tests/features/helpers.py): with the error term the forward is the model's own; a write to
the features, the reconstruction or the error equals the hand-written forward with that edit; without the
error term the site is the reconstruction; transcoders read the MLP's input and replace its output."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel
from tests.features.helpers import dictionary, hand_decode, hand_encode, spliced_reference
from tests.models import CharTokenizer, tiny_llama_module

TOKENS = mx.array([[1, 5, 9, 13, 17, 21, 25], [1, 30, 31, 2, 60, 7, 8]])
SITES = ("layers.1.resid_pre", "layers.1.resid_mid", "layers.1.resid_post", "layers.1.mlp", "layers.1.attn")
ARCHS = ("relu", "topk", "jumprelu", "batchtopk")


@pytest.fixture(scope="module")
def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=2, layers=3, hidden=32), tokenizer=CharTokenizer())


def close(got, expected, atol=1e-5):
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=atol)


def part_proxy(model, site: str):
    """The traced value of ``site`` (``layers.1.mlp`` -> ``model.layers[1].mlp.output``)."""
    _, layer, rest = site.split(".", 2)
    layer = model.layers[int(layer)]
    if rest in ("resid_pre", "resid_mid", "resid_post"):
        return getattr(layer, rest)
    return getattr(layer, rest).output


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("site", SITES)
def test_splice_with_error_term_keeps_the_forward(model, site, compile):
    sae = dictionary("topk", site, 32, 48)
    raw = model.model(TOKENS)
    with model.trace(TOKENS, dictionaries=[sae], compile=compile) as tr:
        out = model.output.save()
    assert tr.mode == ("compiled" if compile else "eager")
    np.testing.assert_array_equal(np.array(out), np.array(raw))  # bit for bit: nothing was edited


def test_a_spliced_transcoder_and_two_saes_keep_the_forward_bit_for_bit(model):
    dictionaries = [dictionary("topk", "layers.1.mlp.input", 32, 48, site_out="layers.1.mlp"),
                    dictionary("relu", "layers.0.resid_mid", 32, 48), dictionary("jumprelu", "layers.2.resid_post", 32, 48)]
    for compile in (False, True):
        with model.trace(TOKENS, dictionaries=dictionaries, compile=compile):
            out = model.output.save()
        np.testing.assert_array_equal(np.array(out), np.array(model.model(TOKENS)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", SITES)
def test_parts_and_a_feature_write_equal_the_hand_written_forward(model, site, arch):
    sae = dictionary(arch, site, 32, 48, seed=1)
    with model.trace(TOKENS, compile=False):
        x = part_proxy(model, site).save()
    active = int(mx.argmax(hand_encode(sae, x)[0, -1]).item())  # a feature on at the last token

    def edit(parts):
        f = mx.array(parts["features"])
        f[:, -1, active] = 8.0
        f[:, 2, :] = 0.0
        parts["features"] = f

    saves = {}
    expected = spliced_reference(model.model, TOKENS, [(sae, True, edit)], saves)
    with model.trace(TOKENS, dictionaries=[sae], compile=False):
        spliced = part_proxy(model, site).sae
        before = spliced.features.save("before")
        spliced.features[:, -1, active] = 8.0
        spliced.features[:, 2, :] = 0.0
        parts = {k: getattr(spliced, k).save(k) for k in ("features", "reconstruction", "error")}
        out = model.output.save()
    close(before, hand_encode(sae, x))
    for name in parts:
        close(parts[name], saves[(0, name)])
    close(out, expected, atol=1e-4)


@pytest.mark.parametrize("site", ["layers.1.resid_pre", "layers.1.mlp", "layers.1.resid_mid"])
def test_without_the_error_term_the_site_is_the_reconstruction(model, site):
    sae = dictionary("relu", site, 32, 48, seed=2)
    expected = spliced_reference(model.model, TOKENS, [(sae, False, None)])
    for compile in (False, True):
        with model.trace(TOKENS, dictionaries=[mt.splice(sae, error=False)], compile=compile):
            out = model.output.save()
        close(out, expected, atol=1e-4)
    assert np.abs(np.array(expected) - np.array(model.model(TOKENS))).max() > 1e-2  # the test can fail


def test_error_and_reconstruction_writes(model):
    sae = dictionary("jumprelu", "layers.1.resid_post", 32, 48, seed=3)

    def edit(parts):
        parts["error"] = parts["error"] * 0.5
        r = mx.array(parts["reconstruction"])
        r[:, -1] = r[:, -1] * 2.0
        parts["reconstruction"] = r

    expected = spliced_reference(model.model, TOKENS, [(sae, True, edit)])
    with model.trace(TOKENS, dictionaries=[sae], compile=True):
        h = model.layers[1].output
        h.sae.error = h.sae.error * 0.5
        h.sae.reconstruction[:, -1] = h.sae.reconstruction[:, -1] * 2.0
        out = model.output.save()
    close(out, expected, atol=1e-4)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_transcoder_reads_the_mlp_input_and_replaces_its_output(model, arch):
    tc = dictionary(arch, "layers.1.mlp.input", 32, 48, seed=4, site_out="layers.1.mlp")
    assert tc.name == "transcoder"

    def edit(parts):
        f = mx.array(parts["features"])
        f[:, -1] = f[:, -1] * 3.0
        parts["features"] = f

    saves = {}
    expected = spliced_reference(model.model, TOKENS, [(tc, True, edit)], saves)
    with model.trace(TOKENS, dictionaries=[tc], compile=False):
        # the features live at the MLP's input, the reconstruction and error at its output; both reach all three
        tc_in, tc_out = model.layers[1].mlp.input.transcoder, model.layers[1].mlp.output.transcoder
        tc_in.features[:, -1] = tc_in.features[:, -1] * 3.0
        f, r, e = tc_out.features.save(), tc_out.reconstruction.save(), tc_out.error.save()
        out = model.output.save()
    close(f, saves[(0, "features")])
    close(r, saves[(0, "reconstruction")])
    close(e, saves[(0, "error")])
    close(out, expected, atol=1e-4)
    with model.trace(TOKENS, dictionaries=[mt.splice(tc, error=False)], compile=True):
        out = model.output.save()
    close(out, spliced_reference(model.model, TOKENS, [(tc, False, None)]), atol=1e-4)


def test_two_dictionaries_at_one_site_and_the_default_save_keys(model):
    a = dictionary("relu", "layers.1.resid_pre", 32, 48, seed=5)
    b = dictionary("topk", "layers.1.resid_pre", 32, 40, seed=6)
    b.name = "wide"

    def zero(parts):
        parts["features"] = parts["features"] * 0.0

    expected = spliced_reference(model.model, TOKENS, [(a, True, None), (b, False, zero)])
    with model.trace(TOKENS, dictionaries=[a, mt.splice(b, error=False)]) as tr:
        h = model.layers[1].resid_pre
        h.wide.features = 0.0  # a number fills the part
        h.sae.features.save()
        out = model.output.save()
    close(out, expected, atol=1e-4)
    assert tr.saved_values["layers.1.resid_pre.sae.features"].shape == (2, 7, 48)


def test_the_site_keeps_its_last_write_whether_a_part_or_the_site_itself(model):
    sae = dictionary("relu", "layers.1.resid_post", 32, 48, seed=7)
    with model.trace(TOKENS, compile=False):
        x = model.layers[1].output.save()
    f = hand_encode(sae, x)
    f2 = mx.array(f)
    f2[:, -1, 0] = 5.0
    expected_site = hand_decode(sae, f2) + (x - hand_decode(sae, f))
    with model.trace(TOKENS, dictionaries=[sae], compile=False):
        h = model.layers[1].output
        h.sae.features[:, -1, 0] = 1.0
        model.layers[1].output = model.layers[1].output * 0.0  # the site's own write replaces the spliced value
        zeroed = model.layers[2].input.save()
    assert float(mx.abs(zeroed).max()) == 0.0
    with model.trace(TOKENS, dictionaries=[sae], compile=False):
        h = model.layers[1].output
        model.layers[1].output = model.layers[1].output * 0.0
        h.sae.features[:, -1, 0] = 5.0  # a part written after the site: reconstruction + error again
        site = model.layers[2].input.save("site")
    close(site, expected_site, atol=1e-4)


def test_steering_a_feature_in_generation_equals_the_hand_written_greedy_loop(model):
    sae = dictionary("relu", "layers.1.resid_post", 32, 48, seed=8)
    prompt = [1, 5, 9, 13]

    def steer(parts):
        f = mx.array(parts["features"])
        f[:, len(prompt) - 1:, 3] = 6.0  # the last prompt token and every generated one
        parts["features"] = f

    ids = list(prompt)
    for _ in range(5):
        logits = spliced_reference(model.model, mx.array([ids]), [(sae, True, steer)])
        ids.append(int(mx.argmax(logits[0, -1]).item()))
    for compile in ("auto", False):
        with model.generate(mx.array([prompt]), max_new_tokens=5, dictionaries=[sae], compile=compile) as gen:
            model.layers[1].output.sae.features[:, -1, 3] = 6.0
        assert gen.tokens[0] == ids[len(prompt):], compile


def test_a_program_replays_other_weights_batches_feature_values_and_takes_gradients(model):
    sae = dictionary("relu", "layers.1.resid_pre", 32, 48, seed=9)
    other = dictionary("relu", "layers.1.resid_pre", 32, 48, seed=10)
    with model.trace(TOKENS, dictionaries=[sae], capture="saved") as tr:
        h = model.layers[1].resid_pre
        h.sae.features[:, -1, 7] = mt.param("value", 0.0)
        model.output[:, -1, 5].save("score")
    prog = tr.program()
    weights = {n: s for n, s in prog.params.items() if n != "value"}
    assert len(weights) == 6  # W_enc, b_enc, W_dec, b_dec and the two scalars: params, not baked in

    def expected(d, value):
        def edit(parts):
            f = mx.array(parts["features"])
            f[:, -1, 7] = value
            parts["features"] = f
        return spliced_reference(model.model, TOKENS, [(d, True, edit)])[:, -1, 5]

    close(prog(value=2.0)["score"], expected(sae, 2.0), atol=1e-4)
    swapped = {name: other.inference_weights()[k] for name, k in zip(weights, other.inference_weights())}
    close(prog(value=2.0, **swapped)["score"], expected(other, 2.0), atol=1e-4)
    batched = prog.batched(value=mx.array([0.0, 1.0, 3.0]))["score"]
    for j, v in enumerate([0.0, 1.0, 3.0]):
        close(batched[j], expected(sae, v), atol=1e-4)
    grad = mx.grad(lambda v: prog.fn(params={"value": v})["score"].sum())(mx.array(1.0))
    step = 1e-2
    numeric = (expected(sae, 1.0 + step).sum() - expected(sae, 1.0 - step).sum()) / (2 * step)
    close(grad, numeric, atol=1e-2)


def test_an_edited_model_splices_in_every_trace_and_the_base_is_unchanged(model):
    sae = dictionary("relu", "layers.1.mlp", 32, 48, seed=11)
    raw = model.model(TOKENS)
    edited = model.edit(dictionaries=[mt.splice(sae, error=False)])
    with edited.trace(TOKENS):
        f = edited.layers[1].mlp.output.sae.features.save()
        out = edited.output.save()
    close(out, spliced_reference(model.model, TOKENS, [(sae, False, None)]), atol=1e-4)
    assert f.shape == (2, 7, 48)
    with model.trace(TOKENS):
        base = model.output.save()
    close(base, raw)
    assert "Splice('sae'" in repr(edited.edits[0])
    from mlxterp.store.manifest import model_identity

    assert model_identity(edited)["fingerprint"] != model_identity(model)["fingerprint"]
    with pytest.raises(ValueError, match="two dictionaries are named 'sae'"):
        edited.trace(TOKENS, dictionaries=[sae])
