"""Bad splices are refused before anything runs, with errors naming the input, what was expected and the choices;
the model is never left modified."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel, InvokeError, ModuleNameError
from tests.features.helpers import dictionary
from tests.models import CharTokenizer, tiny_llama_module

TOKENS = mx.array([[1, 5, 9, 13, 17]])


@pytest.fixture(scope="module")
def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=2, layers=3, hidden=32), tokenizer=CharTokenizer())


def unchanged(model: InterpretableModel, raw: mx.array) -> None:
    assert all(type(m).__name__ in ("Model", "LlamaModel", "TransformerBlock", "Attention", "MLP", "RMSNorm",
                                    "Linear", "Embedding", "RoPE")
               for _, m in model.model.named_modules()), "a hooked class was left in place"
    np.testing.assert_array_equal(np.array(model.model(TOKENS)), np.array(raw))


def test_a_width_other_than_the_sites_is_refused(model):
    wide = dictionary("relu", "layers.1.resid_pre", 48, 64)
    with pytest.raises(ValueError, match=r"its d_in is 48, but its site 'layers.1.resid_pre' holds vectors of width 32"):
        model.trace(TOKENS, dictionaries=[wide])


def test_an_unknown_site_lists_the_closest_names(model):
    sae = dictionary("relu", "layers.1.mpl", 32, 48)
    with pytest.raises(ModuleNameError, match=r"layers.1.mpl.*did you mean 'mlp'"):
        model.trace(TOKENS, dictionaries=[sae])


def test_two_dictionaries_of_one_name_at_one_site(model):
    a, b = dictionary("relu", "layers.1.resid_pre", 32, 48), dictionary("topk", "layers.1.resid_pre", 32, 48)
    with pytest.raises(ValueError, match=r"two dictionaries are named 'sae' at site 'layers.1.resid_pre'.*name="):
        model.trace(TOKENS, dictionaries=[a, b])
    model.trace(TOKENS, dictionaries=[a, mt.splice(b, name="other")])  # named apart: fine
    tc = dictionary("relu", "layers.1.mlp.input", 32, 48, site_out="layers.1.mlp")
    sae = dictionary("relu", "layers.1.mlp", 32, 48)
    with pytest.raises(ValueError, match=r"named 'sae' at site 'layers.1.mlp'"):
        model.trace(TOKENS, dictionaries=[mt.splice(tc, name="sae"), sae])  # a transcoder is at both its sites


def test_nan_weights_are_refused_before_the_forward(model):
    sae = dictionary("relu", "layers.1.resid_pre", 32, 48)
    w = np.array(sae.W_dec)
    w[3, 4] = np.nan
    sae.W_dec = mx.array(w)
    with pytest.raises(ValueError, match=r"weights \['W_dec'\] hold NaN or infinite values"):
        model.trace(TOKENS, dictionaries=[sae])


@pytest.mark.parametrize("entry, error, match", [
    ("layers.1", TypeError, r"dictionaries\[0\] is a str; expected an mlxterp SAE or Transcoder"),
    (mt.SAE.create("relu", d_sae=16, site="layers.1"), ValueError, r"has no weights"),
])
def test_entries_that_are_not_spliceable(model, entry, error, match):
    with pytest.raises(error, match=match):
        model.trace(TOKENS, dictionaries=[entry])


def test_a_dictionary_without_a_site(model):
    sae = dictionary("relu", "layers.1.resid_pre", 32, 48)
    sae.config.site = sae.config.site_out = None
    with pytest.raises(ValueError, match="has no site"):
        model.trace(TOKENS, dictionaries=[sae])


@pytest.mark.parametrize("name, match", [("sum", "attribute of traced values"), ("1x", "not valid"),
                                         ("_x", "not valid"), ("class", "not valid")])
def test_names_a_trace_cannot_read(name, match):
    sae = dictionary("relu", "layers.1.resid_pre", 32, 48)
    with pytest.raises(ValueError, match=match):
        sae.name = name
    with pytest.raises(ValueError, match=match):
        mt.splice(sae, name=name)


def test_misuse_inside_the_block_raises_at_the_line_and_leaves_the_model_whole(model):
    raw = model.model(TOKENS)
    sae = dictionary("relu", "layers.1.resid_pre", 32, 48)
    with pytest.raises(ValueError, match="spliced without its error term"):
        with model.trace(TOKENS, dictionaries=[mt.splice(sae, error=False)]):
            model.layers[1].resid_pre.sae.error[:, -1] = 0.0
    with pytest.raises(AttributeError, match=r"no attribute 'sea'.*spliced in this trace are layers.1.resid_pre.sae"):
        with model.trace(TOKENS, dictionaries=[sae]):
            model.layers[1].resid_pre.sea.features.save()
    with pytest.raises(AttributeError, match=r"no attribute 'sae'"):  # another site: nothing spliced there
        with model.trace(TOKENS, dictionaries=[sae]):
            model.layers[2].resid_pre.sae.features.save()
    with pytest.raises(IndexError, match=r"index 48 is out of range for axis 2 of layers.1.resid_pre.sae.features"):
        with model.trace(TOKENS, dictionaries=[sae]):
            model.layers[1].resid_pre.sae.features[:, -1, 48] = 1.0
    with pytest.raises(AttributeError, match="no settable attribute 'feature'"):
        with model.trace(TOKENS, dictionaries=[sae]):
            model.layers[1].resid_pre.sae.feature = 1.0
    unchanged(model, raw)


def test_a_part_of_the_wrong_shape_is_refused_at_run_time_naming_it(model):
    sae = dictionary("relu", "layers.1.resid_pre", 32, 48)
    raw = model.model(TOKENS)
    with pytest.raises(Exception, match=r"layers.1.resid_pre.sae.features"):
        with model.trace(TOKENS, dictionaries=[sae]):
            model.layers[1].resid_pre.sae.features = mx.zeros((3, 48))
    unchanged(model, raw)


def test_parts_in_invokes_are_refused_but_the_splice_covers_every_invoke(model):
    sae = dictionary("relu", "layers.1.resid_pre", 32, 48)
    with pytest.raises(InvokeError, match="read inside an invoke"):
        with model.trace(dictionaries=[sae]) as tr:
            with tr.invoke("abc"):
                model.layers[1].resid_pre.sae.features.save()
    raw = model.model(mx.array([[1] + [ord(c) % 100 + 2 for c in "abc"]]))
    with model.trace(dictionaries=[sae]) as tr:
        with tr.invoke("abc"):
            out = model.output.save()
    np.testing.assert_allclose(np.array(out), np.array(raw), atol=1e-5)


def test_a_splice_with_invokes_after_an_intervention_that_is_not_position_wise_is_refused(model):
    # With invokes, a splice is recorded once on the batch, after the edits and interventions=; one of those
    # recorded per invoke (a plain function may mix positions) would come after it, so the trace refuses.
    sae = dictionary("relu", "layers.1.resid_pre", 32, 48)
    raw = model.model(mx.array([[1] + [ord(c) % 100 + 2 for c in "abc"]]))
    with pytest.raises(InvokeError, match="dictionaries= with invokes needs every model edit"):
        with model.trace(dictionaries=[sae], interventions={"layers.0": lambda x: x * 1.0}) as tr:
            with tr.invoke("abc"):
                model.output.save()
    with model.trace("abc") as tr:
        out = model.output.save()
    np.testing.assert_allclose(np.array(out), np.array(raw), atol=1e-5)  # the model is left as it was
