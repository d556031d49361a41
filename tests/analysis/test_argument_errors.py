"""Analysis arguments: clear errors raised before any forward (empty target/foil text, top_k above the
vocabulary), and numpy values accepted where MLX ones are (metric results, top_k)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.analysis.metrics import custom, distance
from tests.models import CharTokenizer

from .conftest import make_llama


@pytest.fixture(scope="module")
def text_model():
    return InterpretableModel(make_llama(seed=4), tokenizer=CharTokenizer())


@pytest.mark.parametrize("kwargs,arg", [(dict(metric="logprob", target=""), "target"),
                                        (dict(metric="prob", target=""), "target"),
                                        (dict(metric="logit_diff", target="e", foil=""), "foil")])
def test_text_of_no_token_but_specials_is_refused(text_model, kwargs, arg):
    """Before: '' encoded to the BOS token alone, which became the target (recoveries of +-1e6 %)."""
    with pytest.raises(ValueError, match=rf"{arg}: '' encodes to no token besides the tokenizer's special tokens; "
                                         r"give one token's text .* or its id"):
        text_model.activation_patching("abcd", "abxd", **kwargs)


def test_top_k_above_the_vocabulary_is_refused_before_the_lens_runs(text_model):
    """Before: logit_lens ran its trace, then refused top_k."""
    before = text_model.compile_stats()
    with pytest.raises(ValueError, match=r"top_k: 129 is more than the vocabulary size 128 \(the tokens the model "
                                         r"predicts\); give 1 to 128"):
        text_model.logit_lens("abc", top_k=129)
    assert text_model.compile_stats() == before


def test_get_token_predictions_names_the_vocabulary(text_model):
    with pytest.raises(ValueError, match="top_k: 200 is more than the vocabulary size 128"):
        text_model.get_token_predictions(mx.zeros((64,)), top_k=200)


def test_numpy_top_k_is_an_int(text_model):
    lens = text_model.logit_lens("abc", top_k=np.int64(3), layers=[1])
    assert all(len(position) == 3 for position in lens[1])
    assert len(text_model.get_token_predictions(mx.zeros((64,)), top_k=np.int32(4))) == 4


def test_a_metric_may_return_numpy(text_model):
    """Before: a numpy (1,) result was refused with "must map to shape (1,); it returned (1,)"."""
    by_mx = text_model.activation_patching("abcd", "abxd", metric=lambda logits: logits[:, 5] - logits[:, 9])
    by_np = text_model.activation_patching("abcd", "abxd",
                                           metric=lambda logits: np.asarray(logits[:, 5] - logits[:, 9]))
    assert by_np == pytest.approx(by_mx, rel=1e-6, abs=1e-6)


def test_a_metric_may_return_a_numpy_scalar_for_one_row():
    logits, clean = mx.array([0.0, 1.0, 3.0]), mx.array([0.0, 2.0, 1.0])
    gap = distance(logits, clean, custom(lambda x: np.float32(np.asarray(x)[1])))
    assert gap.shape == () and gap.item() == pytest.approx(1.0)


@pytest.mark.parametrize("fn,message", [
    (lambda x: [1.0], "must return an mx.array .or numpy array. of shape .1,., one number per row of the logits "
                      r"\(1, 3\); it returned a list"),
    (lambda x: x, r"must map logits of shape \(1, 3\) to one number per row, shape \(1,\); it returned an array of "
                  r"shape \(1, 3\)"),
    (lambda x: np.array(["a"]), "it returned a ndarray"),
])
def test_a_metric_returning_something_else_says_what_it_returned(fn, message):
    with pytest.raises(ValueError, match=message):
        distance(mx.zeros((1, 3)), mx.ones((1, 3)), custom(fn))
