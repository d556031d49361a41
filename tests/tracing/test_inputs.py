"""Input forms, right padding with exact real positions, token-range checks."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from tests.models import tiny_llama_module


@pytest.mark.parametrize("inputs", ["abc", ["abc"], [1, 99, 100, 101], mx.array([1, 99, 100, 101]),
                                    mx.array([[1, 99, 100, 101]]), [[1, 99, 100, 101]]])
def test_input_forms(model, inputs):
    with model.trace(inputs) as tr:
        pass
    assert tr.tokens.shape == (1, 4) and tr.lengths == (4,)
    assert tr.tokens.tolist() == [[1, 99, 100, 101]]


def test_batch_of_prompts_of_different_lengths_is_right_padded(model):
    prompts = ["a", "hello there", "abcd"]
    with model.trace(prompts) as tr:
        pass
    assert tr.lengths == (2, 12, 5)
    assert tr.tokens.shape == (3, 12)
    assert tr.tokens[0, 2:].tolist() == [0] * 10


@pytest.mark.parametrize("compile", [False, True])
def test_padding_keeps_every_real_position_exact(model, compile):
    prompts = ["a", "hello there", "abcd"]
    with model.trace(prompts, compile=compile, capture="saved") as tr:
        batched = model.layers[3].output.save()
        logits = model.output.save()
    for i, p in enumerate(prompts):
        with model.trace(p, compile=compile, capture="saved"):
            single = model.layers[3].output.save()
            single_logits = model.output.save()
        n = tr.lengths[i]
        assert np.allclose(np.array(batched[i, :n]), np.array(single[0]), atol=1e-5, rtol=1e-5)
        assert np.allclose(np.array(logits[i, :n]), np.array(single_logits[0]), atol=1e-5, rtol=1e-5)


def test_text_without_tokenizer_is_a_value_error(llama_module):
    m = InterpretableModel(llama_module)
    with pytest.raises(ValueError, match="needs a tokenizer, and this model has none"):
        with m.trace("text input"):
            pass


def test_out_of_range_token_id_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"token id 500 at position \(0, 1\) is out of range.*\[0, 127\]"):
        model.trace([1, 500, 2])


def test_token_array_written_in_place_after_a_trace_is_checked_again(model):
    # A sweep reuses one token array; an in-place write between traces must not slip past the range check
    # (MLX's gather reads out of bounds on such an id: a crash, not an error).
    tokens = mx.array([[1, 2, 3]])
    with model.trace(tokens, compile=True, capture="saved"):
        model.output.save()
    tokens[0, 1] = 500
    with pytest.raises(ValueError, match=r"token id 500 at position \(0, 1\) is out of range"):
        model.trace(tokens, compile=True)


def test_negative_token_id_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"token id -3 .* out of range"):
        model.trace(mx.array([[1, -3]]))


@pytest.mark.parametrize("bad,msg", [(3.5, "inputs has type float"), ([], "inputs is empty"),
                                     (["a", 3], "mixing"), (mx.array([[0.5, 1.0]]), "integer dtype"),
                                     (mx.zeros((1, 2, 3), dtype=mx.int32), "expected \\(seq,\\) or \\(batch, seq\\)")])
def test_bad_inputs_are_named(model, bad, msg):
    with pytest.raises((TypeError, ValueError), match=msg):
        model.trace(bad)


def test_encode_decode_and_token_strings(model):
    ids = model.encode("hi")
    assert ids == [1, ord("h") % 100 + 2, ord("i") % 100 + 2]
    assert model.encode_batch(["hi", "a"]) == [ids, [1, ord("a") % 100 + 2]]
    assert model.decode(mx.array(ids[1:])) == model.decode(ids[1:])
    assert isinstance(model.token_to_str(ids[1]), str)
    assert model.vocab_size == 128


def test_tokenizer_methods_without_tokenizer_raise_value_error(llama_module):
    m = InterpretableModel(llama_module)
    for call in (lambda: m.encode("x"), lambda: m.decode([1]), lambda: m.encode_batch(["x"]),
                 lambda: m.token_to_str(1)):
        with pytest.raises(ValueError, match="needs a tokenizer"):
            call()
    assert m.vocab_size is None


def test_array_checked_by_a_large_vocabulary_is_checked_again_for_a_small_one(llama_module):
    # The range-check memo skips an unchanged array seen before; it must not skip it for a model whose
    # embedding has fewer rows (MLX's gather would read out of bounds: garbage or a crash).
    large = InterpretableModel(tiny_llama_module(vocab=1024, layers=1))
    small = InterpretableModel(llama_module)  # 128 rows
    tokens = mx.array([[1, 700, 2]])
    with large.trace(tokens, capture="saved"):
        large.output.save()
    with pytest.raises(ValueError, match=r"token id 700 at position \(0, 1\) is out of range.*128 rows"):
        small.trace(tokens)
    with large.trace(tokens, capture="saved"):  # still valid for the large model
        large.output.save()
