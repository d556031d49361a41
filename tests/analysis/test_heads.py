"""Head-level analysis on tiny in-memory models: attention_patterns, head scores on repeated random tokens
(against scores computed from the saved patterns with plain loops), head patching (against a loop of
traces, with every metric), their plots and errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.analysis.patterns import repeated_random_tokens
from tests.families import build
from tests.models import CharTokenizer

from .conftest import CLEAN, CORRUPTED, make_llama, value


@pytest.fixture(scope="module")
def llama():
    return InterpretableModel(make_llama(seed=2), tokenizer=CharTokenizer())


def test_attention_patterns_are_the_traced_patterns(llama):
    got = llama.attention_patterns("abcdef", layers=[1, 3])
    with llama.trace("abcdef", capture="saved"):
        want = llama.layers[3].attn.pattern.save()
    assert got.layers == [1, 3] and got[3].shape == (4, 7, 7)
    np.testing.assert_allclose(got[3], np.array(value(want)[0]), atol=1e-6)
    assert got.tokens == [llama.token_to_str(t) for t in llama.encode("abcdef")]


def test_pattern_plots(llama, tmp_path):
    patterns = llama.attention_patterns("abcdef")
    one = patterns.plot(2, heads=1, save_path=tmp_path / "one.png")
    grid = patterns.plot(2, save_path=tmp_path / "grid.png")
    assert len([a for a in one.axes if a.get_visible()]) == 2  # the head and its colorbar
    assert len([a for a in grid.axes if a.get_visible()]) == 5  # four heads and a colorbar
    assert (tmp_path / "one.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="heads: head index 7 is out of range"):
        patterns.plot(2, heads=7)


def test_repeated_random_tokens_follow_the_tokenizers_bos(llama):
    tokens, start = repeated_random_tokens(llama, 6, 3, seed=1)
    ids = np.array(tokens)
    assert start == 1 and ids.shape == (3, 13) and (ids[:, 0] == 1).all()
    assert (ids[:, 1:7] == ids[:, 7:]).all()
    no_tokenizer = InterpretableModel(make_llama(seed=2))
    assert repeated_random_tokens(no_tokenizer, 6, 3)[1] == 0


def _loop_scores(patterns, start, n):
    """(3, heads) scores from (batch, heads, T, T) patterns with explicit loops over query positions."""
    induction = np.mean([patterns[:, :, q, q - n + 1] for q in range(start + n, start + 2 * n)], axis=(0, 1))
    previous = np.mean([patterns[:, :, q, q - 1] for q in range(start + 1, start + 2 * n)], axis=(0, 1))
    duplicate = np.mean([patterns[:, :, q, q - n] for q in range(start + n, start + 2 * n)], axis=(0, 1))
    return np.stack([induction, previous, duplicate])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_head_scores_equal_loops_over_the_patterns(family):
    model = InterpretableModel(build(family), tokenizer=CharTokenizer())
    scores = model.head_scores(seq_len=5, batch=3, seed=4)
    with model.trace(mx.array(scores.tokens), capture="saved"):
        patterns = [model.layers[i].attn.pattern.save() for i in range(len(model.layers))]
    for i, p in enumerate(patterns):
        want = _loop_scores(np.array(value(p)), 1, 5)
        got = np.stack([scores.induction[i], scores.previous_token[i], scores.duplicate_token[i]])
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_planted_induction_head_scores_one():
    # A pattern that attends from every query in the repeated half to the token after the previous copy.
    from mlxterp.analysis.patterns import diagonal_scores

    n, start, T = 4, 1, 9
    pattern = np.zeros((2, 3, T, T), np.float32)
    for q in range(T):
        pattern[:, :, q, max(0, q - 1)] = 1.0  # head 0 and 2: previous token
    for q in range(start + n, T):
        pattern[:, 1, q] = 0.0
        pattern[:, 1, q, q - n + 1] = 1.0  # head 1: induction
    scores = np.array(diagonal_scores(mx.array(pattern), start, n))
    np.testing.assert_allclose(scores[0], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(scores[1, [0, 2]], [1.0, 1.0])
    assert scores[1, 1] == pytest.approx(3 / 7)  # queries 2-4 of 2-8: its previous-token half


def test_head_scores_top_and_plot(llama, tmp_path):
    scores = llama.head_scores(seq_len=6, batch=2)
    top = scores.top("previous_token", 3)
    assert [s for _, _, s in top] == sorted((s for _, _, s in top), reverse=True)
    assert top[0][2] == pytest.approx(scores.previous_token.max())
    fig = scores.plot(tmp_path / "scores.png", kinds=("induction", "duplicate_token"))
    assert (tmp_path / "scores.png").stat().st_size > 0 and len(fig.axes) == 3
    with pytest.raises(ValueError, match="kind: expected one of"):
        scores.top("copying")


def _loop_heads(model, layers, heads, score):
    """Head patching as one trace per cell writing the clean head into the corrupted run."""
    def last(tokens, cell=None, clean=None):
        with model.trace(tokens, compile=False, capture="saved"):
            if cell is not None:
                model.layers[cell[0]].attn.heads[:, :, cell[1]] = clean[cell[0]][:, :, cell[1]]
            saved = {i: model.layers[i].attn.heads.save() for i in layers}
            out = model.output[:, -1, :].save()
        return np.array(value(out)[0], np.float64), {i: value(v) for i, v in saved.items()}
    clean, acts = last(CLEAN)
    m_clean, m_corr = score(clean), score(last(CORRUPTED)[0])
    return np.array([[(score(last(CORRUPTED, (i, h), acts)[0]) - m_corr) / (m_clean - m_corr) * 100
                      for h in heads] for i in layers])


@pytest.mark.parametrize("metric", ["logit_diff", "logprob"])
def test_head_patching_with_a_score_metric_equals_a_loop(metric):
    model = InterpretableModel(make_llama(seed=6))
    target, foil = 5, 9
    if metric == "logit_diff":
        got = model.head_patching(CLEAN, CORRUPTED, layers=[1, 3], heads=[0, 2, 3], metric=metric, target=target,
                                  foil=foil, batch_size=4)
        score = lambda x: x[target] - x[foil]  # noqa: E731
    else:
        got = model.head_patching(CLEAN, CORRUPTED, layers=[1, 3], heads=[0, 2, 3], metric=metric, target=target)
        score = lambda x: x[target] - np.log(np.exp(x).sum())  # noqa: E731
    assert got.layers == [1, 3] and got.heads == [0, 2, 3] and got.grid.shape == (2, 3)
    np.testing.assert_allclose(got.grid, _loop_heads(model, [1, 3], [0, 2, 3], score), atol=1e-3)


def test_head_patching_result(tmp_path):
    model = InterpretableModel(make_llama(seed=6))
    got = model.head_patching(CLEAN, CORRUPTED, save_path=tmp_path / "heads.png")
    assert got.grid.shape == (4, 4) and (tmp_path / "heads.png").stat().st_size > 0
    best = got.top(2)
    assert abs(best[0][2]) >= abs(best[1][2]) and got.as_dict()[best[0][0]][best[0][1]] == best[0][2]


@pytest.mark.parametrize("kwargs,match", [
    (dict(heads=[4]), "heads: head index 4 is out of range"),
    (dict(layers=[9]), "layers: layer index 9 is out of range"),
    (dict(batch_size=0), "batch_size: expected a positive int"),
])
def test_head_patching_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InterpretableModel(make_llama(seed=6)).head_patching(CLEAN, CORRUPTED, **kwargs)


def test_a_model_without_attention_says_so():
    model = InterpretableModel(build("mamba"))
    for call in (lambda: model.attention_patterns([1, 2, 3]), lambda: model.head_scores(seq_len=4)):
        with pytest.raises(ValueError, match="needs attention; this model has none: mamba is a state-space model"):
            call()
