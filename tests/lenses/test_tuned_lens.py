"""The tuned lens: an identity lens is the logit lens bit for bit; the loss and its gradients equal numpy written
from the paper; training lowers the KL, pauses and resumes to the same arrays, trains from a store; saving,
evaluation against a hand-written forward, and the errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel, collect_activations
from mlxterp.dictionaries.learner import Comm
from mlxterp.lenses.objective import TunedLensObjective
from mlxterp.analysis.unembed import find_unembedding
from tests.lenses.reference import loss_and_grads, readout, softmax
from tests.models import CharTokenizer, reference_llama_forward, tiny_llama_module

PROMPTS = [f"the cat {i} sat on {'the mat' if i % 2 else 'a rug'} and ran" for i in range(16)]
HELD_OUT = ["a dog sat on the mat", "the cat ran to 7 rugs", "on the mat sat 3 cats"]


@pytest.fixture(scope="module")
def module():
    return tiny_llama_module(seed=3)


@pytest.fixture()
def model(module):
    return InterpretableModel(module, tokenizer=CharTokenizer())


def test_an_identity_tuned_lens_equals_the_logit_lens_exactly(model):
    lens = mt.TunedLens.create(model)
    assert lens.layers == [0, 1, 2] and "identity" in repr(lens)
    plain = model.logit_lens(PROMPTS[0], top_k=5)
    tuned = model.logit_lens(PROMPTS[0], top_k=5, lens=lens)
    assert np.array_equal(plain.ids, tuned.ids) and np.array_equal(plain.probs, tuned.probs)
    assert dict(plain) == dict(tuned) and tuned.lens == "tuned lens" and plain.lens == "logit lens"


@pytest.mark.parametrize("tied", [False, True])
def test_the_loss_and_its_gradients_equal_numpy(tied):
    module = tiny_llama_module(seed=4, tied=tied)
    model = InterpretableModel(module, tokenizer=CharTokenizer())
    rng = np.random.default_rng(0)
    lens = mt.TunedLens.create(model, layers=[0, 2])
    lens.weight = mx.array(rng.normal(size=(2, 64, 64)).astype(np.float32) * 0.05)
    lens.bias = mx.array(rng.normal(size=(2, 64)).astype(np.float32) * 0.3)
    rows, batch = 6, 8  # this rank's rows, over a global batch of 8
    hs = [rng.normal(size=(rows, 64)).astype(np.float32) * 2 for _ in range(2)]
    final = rng.normal(size=(rows, 64)).astype(np.float32) * 2
    objective = TunedLensObjective(lens, ["a", "b"], "f", find_unembedding(model), batch)
    data = {"a": mx.array(hs[0]), "b": mx.array(hs[1]), "f": mx.array(final)}

    def loss(params):
        return objective.loss(params, {}, data, {}, Comm(None), None)

    (value, aux), grads = mx.value_and_grad(loss)(objective.init_params())
    head = module.model.embed_tokens.weight if tied else module.lm_head.weight
    ref, per_layer, ref_grads = loss_and_grads(
        [h.astype(np.float64) for h in hs], final.astype(np.float64), np.array(lens.weight, np.float64),
        np.array(lens.bias, np.float64), np.array(module.model.norm.weight, np.float64),
        np.array(head, np.float64), module.args.rms_norm_eps, batch)
    assert abs(value.item() - ref) <= 1e-5 * abs(ref) + 1e-7
    np.testing.assert_allclose(np.array(aux["kl"]), per_layer, rtol=1e-4, atol=1e-6)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(np.array(grads[name]), ref_grads[name], rtol=2e-3,
                                   atol=2e-4 * np.abs(ref_grads[name]).max())


def test_the_trained_lens_reads_its_training_text_closer_than_the_logit_lens(model):
    lens = mt.TunedLens.train(model, PROMPTS, tokens=1536, batch_size=64, progress=False)
    history = lens.history
    assert len(history["kl"]) == 24 and {"kl.0", "kl.1", "kl.2", "loss", "lr", "grad_norm"} <= set(history)
    assert history["kl"][-1] < 0.7 * history["kl"][0]
    assert history["lr"][0] == pytest.approx(1.0) and history["lr"][-1] == pytest.approx(1 / 24, rel=1e-6)
    evaluation = lens.evaluate(model, PROMPTS)
    assert evaluation.improved and evaluation.tokens == sum(len(p) for p in PROMPTS)  # BOS left out
    assert "trained" in repr(lens) and lens.info["tokens"] == 1536


def test_training_paused_and_resumed_ends_with_the_uninterrupted_lens(model, tmp_path):
    options = dict(tokens=640, batch_size=64, progress=False, checkpoint_every=3)
    whole = mt.TunedLens.train(model, PROMPTS, out=tmp_path / "whole", **options)
    first = mt.TunedLens.train(model, PROMPTS, out=tmp_path / "parts", until=256, **options)
    assert len(first.history["kl"]) == 4 and not (tmp_path / "parts" / "lens").exists()
    again = mt.TunedLens.train(model, PROMPTS, out=tmp_path / "parts", **options)
    assert mx.array_equal(again.weight, whole.weight).item() and mx.array_equal(again.bias, whole.bias).item()
    assert again.history == whole.history
    saved = mt.TunedLens.load(tmp_path / "parts" / "lens")
    assert mx.array_equal(saved.weight, whole.weight).item() and saved.history == whole.history


def test_save_and_load_keep_the_lens(model, tmp_path):
    lens = mt.TunedLens.train(model, PROMPTS, tokens=256, batch_size=64, progress=False, layers=[1, 2])
    loaded = mt.TunedLens.load(lens.save(tmp_path / "lens"))
    assert loaded.layers == [1, 2] and loaded.n_layers == 4 and loaded.info == lens.info
    a = model.logit_lens(HELD_OUT[0], top_k=3, lens=lens, layers=[1, 2, 3])
    b = model.logit_lens(HELD_OUT[0], top_k=3, lens=loaded, layers=[1, 2, 3])
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.probs, b.probs)
    with pytest.raises(FileNotFoundError, match="params.safetensors is missing"):
        (tmp_path / "lens" / "params.safetensors").unlink()
        mt.TunedLens.load(tmp_path / "lens")


def test_a_lens_evaluation_saves_and_loads_bit_for_bit(model, tmp_path):
    from mlxterp.lenses import LensEvaluation
    from mlxterp.views import load_result

    lens = mt.TunedLens.train(model, PROMPTS, tokens=256, batch_size=64, progress=False, layers=[1, 2])
    evaluation = lens.evaluate(model, HELD_OUT)
    path = evaluation.save(tmp_path / "lens_eval.json")
    for loaded in (LensEvaluation.load(path), load_result(path)):
        assert isinstance(loaded, LensEvaluation) and loaded.layers == [1, 2]
        for name in ("kl", "kl_logit", "ce", "ce_logit"):
            assert np.array_equal(getattr(loaded, name), getattr(evaluation, name))
        assert (loaded.ce_model, loaded.tokens, loaded.predicted) == (evaluation.ce_model, evaluation.tokens,
                                                                      evaluation.predicted)
        assert loaded.provenance["prompts"] == list(HELD_OUT)
        assert loaded.provenance["arguments"]["layers"] == [1, 2]


def test_a_store_of_every_layer_trains_the_lens(model, tmp_path):
    store = collect_activations(model, PROMPTS, out=tmp_path / "acts", progress=False)
    lens = mt.TunedLens.train(model, store, tokens=512, batch_size=64, progress=False)
    assert lens.history["kl"][-1] < lens.history["kl"][0] and lens.info["source"]["kind"] == "store"
    partial = collect_activations(model, PROMPTS, layers=[0, 3], out=tmp_path / "some", progress=False)
    with pytest.raises(ValueError, match="lacks 'layers.1.resid_post'"):
        mt.TunedLens.train(model, partial, tokens=512, batch_size=64, progress=False)
    other = InterpretableModel(tiny_llama_module(seed=9), tokenizer=CharTokenizer())
    with pytest.raises(ValueError, match="collected from another model"):
        mt.TunedLens.train(other, store, tokens=512, batch_size=64, progress=False)


def test_evaluation_equals_numpy_on_a_hand_written_forward(module, model):
    rng = np.random.default_rng(1)
    lens = mt.TunedLens.create(model, layers=[1, 2])
    lens.weight = mx.array(rng.normal(size=(2, 64, 64)).astype(np.float32) * 0.05)
    lens.bias = mx.array(rng.normal(size=(2, 64)).astype(np.float32) * 0.3)
    result = lens.evaluate(model, HELD_OUT, batch_size=2)
    eps, g = module.args.rms_norm_eps, np.array(module.model.norm.weight, np.float64)
    head = np.array(module.lm_head.weight, np.float64)
    sums, count, predicted = np.zeros((4, 2)), 0, 0
    for text in HELD_OUT:
        ids = CharTokenizer().encode(text)
        seen = {}
        reference_llama_forward(module, mx.array([ids]), {i: (lambda h, i=i: seen.setdefault(i, h)) for i in range(4)})
        final, _ = readout(np.array(seen[3][0, 1:], np.float64), g, head, eps)  # BOS (position 0) left out
        p = softmax(final)
        nxt = np.array(ids[2:])
        for j, layer in enumerate([1, 2]):
            h = np.array(seen[layer][0, 1:], np.float64)
            w, b = np.array(lens.weight[j], np.float64), np.array(lens.bias[j], np.float64)
            for k, state in enumerate((h, h + h @ w + b)):
                q = softmax(readout(state, g, head, eps)[0])
                sums[k, j] += (p * (np.log(p) - np.log(q))).sum()
                sums[2 + k, j] -= np.log(q[np.arange(len(nxt)), nxt]).sum()
        count += len(ids) - 1
        predicted += len(ids) - 2
    np.testing.assert_allclose(result.kl_logit, sums[0] / count, rtol=1e-4)
    np.testing.assert_allclose(result.kl, sums[1] / count, rtol=1e-4)
    np.testing.assert_allclose(result.ce_logit, sums[2] / predicted, rtol=1e-5)
    np.testing.assert_allclose(result.ce, sums[3] / predicted, rtol=1e-5)
    assert result.tokens == count and result.predicted == predicted and "layer" in result.table()


def test_bad_lenses_are_refused_before_any_forward(model):
    other = InterpretableModel(tiny_llama_module(layers=3), tokenizer=CharTokenizer())
    with pytest.raises(ValueError, match="made for a model of 3 layers"):
        model.logit_lens(PROMPTS[0], lens=mt.TunedLens.create(other))
    with pytest.raises(ValueError, match=r"no translator for layers \[0\]"):
        model.logit_lens(PROMPTS[0], lens=mt.TunedLens.create(model, layers=[1, 2]))
    with pytest.raises(ValueError, match="expected an mlxterp TunedLens"):
        model.logit_lens(PROMPTS[0], lens="tuned")
    with pytest.raises(ValueError, match="no translator for layer 0"):
        mt.TunedLens.create(model, layers=[2]).translate(mx.zeros((64,)), 0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        mt.TunedLens.train(model, PROMPTS, tokens=64, batch_size=64, optimizer="lbfgs")
