"""Inputs longer than a model's positions: past learned absolute positions (GPT-2's ``wpe``) an error naming
the limit and the length, before any forward (MLX's gather would read out of bounds: garbage, a crash at
5,000 tokens); past a rotary model's configured context, one warning per model and exact results."""

import warnings

import mlx.core as mx
import pytest
from mlx_lm.models import llama

from mlxterp import InterpretableModel, batch_get_activations, get_activations
from mlxterp.positions import PositionGuard, PositionLimit, position_limit
from tests.models import CharTokenizer, tiny_gpt2_module, tiny_llama_module, tiny_qwen2_module

LIMIT = 64  # tiny_gpt2_module: n_positions=64, a 64-row wpe


@pytest.fixture(scope="module")
def gpt2():
    return InterpretableModel(tiny_gpt2_module(), tokenizer=CharTokenizer(), layer_attr="h")


def tokens(n: int) -> mx.array:
    return mx.array([[(7 * i) % 120 + 1 for i in range(n)]])


def test_limits_without_an_adapter_are_read_from_the_modules_and_args():
    assert position_limit(tiny_gpt2_module()) == PositionLimit("learned", 64, "model.wpe rows")
    assert position_limit(tiny_qwen2_module()) == PositionLimit("rotary", 32768, "args.max_position_embeddings")
    assert position_limit(tiny_llama_module()) == PositionLimit("none", None)  # max_position_embeddings=None


def test_a_family_adapter_supplies_the_limit(gpt2):
    assert gpt2._index.arch is not None and gpt2._positions.limit == PositionLimit("learned", 64, "model.wpe rows")
    qwen = InterpretableModel(tiny_qwen2_module())
    assert qwen._positions.limit == PositionLimit("rotary", 32768, "args.max_position_embeddings")


def test_trace_at_the_limit_is_the_raw_forward(gpt2):
    x = tokens(LIMIT)
    with gpt2.trace(x, capture="saved"):
        out = gpt2.output.save()
    assert mx.array_equal(out, gpt2.model(x))


@pytest.mark.parametrize("n", [LIMIT + 1, 5000])
def test_trace_past_learned_positions_names_the_limit_and_the_length(gpt2, n):
    with pytest.raises(ValueError, match=rf"the input has {n} tokens, but this model has learned position "
                                         rf"embeddings for {LIMIT} positions \(model.wpe rows\)"):
        gpt2.trace(tokens(n))


def test_batch_past_learned_positions_names_the_prompt(gpt2):
    with pytest.raises(ValueError, match=rf"prompt 1 has {LIMIT + 3} tokens.*for {LIMIT} positions"):
        gpt2.trace([[1, 2, 3], list(range(1, LIMIT + 4))])


def test_get_activations_past_learned_positions_is_an_error(gpt2):
    with pytest.raises(ValueError, match=rf"has {LIMIT + 1} tokens.*{LIMIT} positions"):
        get_activations(gpt2, tokens(LIMIT + 1), layers=[0])


def test_batch_get_activations_checks_every_prompt_before_any_forward(gpt2):
    prompts = [[1, 2, 3]] * 4 + [list(range(1, LIMIT + 2))]
    before = gpt2.compile_stats()
    with pytest.raises(ValueError, match=rf"prompt 4 has {LIMIT + 1} tokens.*{LIMIT} positions"):
        batch_get_activations(gpt2, prompts, layers=[0], batch_size=2, progress=False)
    assert gpt2.compile_stats() == before  # nothing ran


def test_batch_get_activations_at_the_limit_runs(gpt2):
    prompts = [[1, 2, 3], list(range(1, LIMIT + 1))]
    acts = batch_get_activations(gpt2, prompts, layers=[0], positions=-1, batch_size=2, progress=False)
    assert acts["layer_0"].shape == (2, 64)


def rotary_llama(context: int) -> InterpretableModel:
    module = tiny_llama_module(layers=2)
    module.args = llama.ModelArgs(**{**vars(module.args), "max_position_embeddings": context})
    return InterpretableModel(module)


def test_past_a_rotary_context_warns_once_and_runs_exactly():
    model = rotary_llama(8)
    x = tokens(9)
    with pytest.warns(UserWarning, match=r"the input has 9 tokens, more than the 8 positions this model was "
                                         r"configured for \(args.max_position_embeddings\)") as record:
        with model.trace(x, capture="saved"):
            out = model.output.save()
    assert record[0].filename == __file__  # the warning points at the user's line
    assert mx.array_equal(out, model.model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second long input: no second warning
        with model.trace(tokens(12), capture="saved"):
            model.output.save()
        get_activations(model, tokens(12), layers=[0])


def test_within_a_rotary_context_there_is_no_warning():
    model = rotary_llama(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with model.trace(tokens(8), capture="saved"):
            model.output.save()


def test_guard_of_an_adapter_supplied_limit():
    guard = PositionGuard(PositionLimit("learned", 4, "adapter"))
    guard.check(4)
    with pytest.raises(ValueError, match=r"the input has 5 tokens.*4 positions \(adapter\)"):
        guard.check(5)
    assert guard.max_positions == 4


def test_a_program_under_compile_or_vmap_checks_learned_positions(gpt2):
    """Inside mx.compile or mx.vmap a program's tokens are placeholders (their ids cannot be read), but their
    length is known: past the learned positions it is the same error as a direct call, not rows read out of
    bounds."""
    with gpt2.trace(tokens(3), capture="saved") as tr:
        gpt2.output.save("logits")
    prog = tr.program()
    long = tokens(LIMIT + 1)
    message = rf"the input has {LIMIT + 1} tokens, but this model has learned position embeddings for {LIMIT}"
    with pytest.raises(ValueError, match=message):
        mx.compile(lambda t: prog.fn(t)["logits"])(long)
    with pytest.raises(ValueError, match=message):
        mx.vmap(lambda t: prog.fn(t)["logits"])(long[None])
    at_limit = tokens(LIMIT)
    assert mx.array_equal(mx.compile(lambda t: prog.fn(t)["logits"])(at_limit), gpt2.model(at_limit))
