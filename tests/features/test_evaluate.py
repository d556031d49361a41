"""``mt.evaluate``: the metric formulas on fixtures computed by hand, and every metric of a batched evaluation
against separate hand-written forwards (tests/reference.py: clean, spliced, zero-ablated) with numpy losses."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel
from mlxterp.features.tally import Moments, Tally, fve, loss_metrics, recovered
from tests.features.helpers import dictionary, hand_decode, hand_encode, ref_site
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import llama_forward


# -- formulas on hand-computed fixtures ----------------------------------------------------------------
def test_fve_and_mse_of_two_tokens_by_hand():
    # x = [[2, 0], [0, 4]], x_hat = [[2, 1], [0, 3]]: mean (1, 2); total variance (1 + 4) + (1 + 4) = 10;
    # squared error 1 + 1 = 2 -> FVE 1 - 2/10 = 0.8, MSE (per token) 2 / 2 = 1.
    t = Tally(3)
    x = np.array([[2.0, 0.0], [0.0, 4.0]])
    t.add([2, 2.0, ((x - x.mean(0)) ** 2).sum(), 1.9, 2.1, 3], x.sum(0), [1, 2, 0])
    m = t.metrics(dense=0.5)
    assert m["fve"] == pytest.approx(0.8) and m["mse"] == pytest.approx(1.0)
    assert m["cosine"] == pytest.approx(0.95) and m["shrinkage"] == pytest.approx(1.05) and m["l0"] == 1.5
    assert m["dead"] == pytest.approx(1 / 3) and m["dense"] == pytest.approx(1 / 3)  # densities 0.5, 1, 0


def test_the_variance_is_about_the_mean_of_every_token_across_batches():
    # batch a: [0], [2] (mean 1, m2 2); batch b: [10] (mean 10, m2 0). All tokens: mean 4, variance
    # 16 + 4 + 36 = 56. Summing per-batch variances (2 + 0) or using the per-batch means would be wrong.
    m = Moments()
    m.add(2, np.array([2.0]), 2.0)
    m.add(1, np.array([10.0]), 0.0)
    assert m.n == 3 and m.mean[0] == pytest.approx(4.0) and m.m2 == pytest.approx(56.0)
    assert fve(14.0, m.m2) == pytest.approx(0.75)


def test_predicting_the_mean_explains_nothing_and_a_perfect_reconstruction_everything():
    x = np.array([[1.0, 5.0], [3.0, -1.0], [2.0, 2.0]])
    mean = x.mean(0)
    total = ((x - mean) ** 2).sum()
    assert fve(((x - mean) ** 2).sum(), total) == pytest.approx(0.0)
    assert fve(0.0, total) == 1.0
    assert math.isnan(fve(0.0, 0.0))


def test_loss_recovered_by_hand():
    # CE clean 2, spliced 2.5, zero 4 -> (4 - 2.5) / (4 - 2) = 0.75; KL spliced 0.2, zero 1 -> 0.8
    m = loss_metrics(np.array([20.0, 25.0, 40.0]), np.array([0.0, 2.0, 10.0]), 10)
    assert m["ce_recovered"] == pytest.approx(0.75) and m["kl_recovered"] == pytest.approx(0.8)
    assert m["ce_clean"] == 2.0 and m["kl_spliced"] == pytest.approx(0.2)
    assert recovered(3.0, 3.0, 3.0) != recovered(3.0, 3.0, 3.0)  # NaN when ablating changes nothing


# -- the batched evaluation against separate hand-written forwards --------------------------------------
@pytest.fixture(scope="module")
def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=2, layers=3, hidden=32), tokenizer=CharTokenizer())


PROMPTS = ["hello world", "the cat sat", "ab", "zyx wvu tsr q", "mat"]


def hand_evaluation(model, d, prompts, dense=0.1) -> dict:
    """Every metric of ``d`` from one clean, one spliced and one zero-ablated hand-written forward per prompt
    (unbatched), in numpy float64. BOS (id 1) is not evaluated, and keeps its clean value in the spliced and
    ablated forwards."""
    xs, recs, feats, ce, kl, n_pos = [], [], [], np.zeros(3), np.zeros(3), 0
    for p in prompts:
        ids = CharTokenizer().encode(p)
        tokens = mx.array([ids])
        keep = (np.array(ids) != 1)[None, :, None]
        site_in, site_out = ref_site(d.site), ref_site(d.site_out)
        seen = {}

        def clean(site, value):
            seen[site] = value
            return value

        logits = [llama_forward(model.model, tokens, clean)]
        x_in, y = seen[site_in], seen[site_out]
        f = hand_encode(d, x_in)
        r = hand_decode(d, f)
        for fill in (r, mx.zeros_like(r)):
            def hook(site, value, fill=fill):
                return mx.where(mx.array(keep), fill.astype(value.dtype), value) if site == site_out else value
            logits.append(llama_forward(model.model, tokens, hook))
        k = keep[0, :, 0]
        xs.append(np.array(y[0])[k].astype(np.float64))
        recs.append(np.array(r[0])[k].astype(np.float64))
        feats.append(np.array(f[0])[k])
        logp = [np.array(lg[0], dtype=np.float64) for lg in logits]
        logp = [lp - np.log(np.exp(lp - lp.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lp.max(-1, keepdims=True)
                for lp in logp]
        positions = [t for t in range(len(ids) - 1) if k[t]]
        n_pos += len(positions)
        for g in range(3):
            ce[g] += -sum(logp[g][t, ids[t + 1]] for t in positions)
            kl[g] += sum((np.exp(logp[0][t]) * (logp[0][t] - logp[g][t])).sum() for t in positions)
    x, rec, f = np.concatenate(xs), np.concatenate(recs), np.concatenate(feats)
    err = ((x - rec) ** 2).sum(-1)
    density = (f > 0).mean(0)
    cos = (x * rec).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(rec, axis=-1))
    return {"tokens": len(x), "l0": (f > 0).sum(-1).mean(), "mse": err.mean(),
            "fve": 1 - err.sum() / ((x - x.mean(0)) ** 2).sum(), "cosine": cos.mean(),
            "shrinkage": (np.linalg.norm(rec, axis=-1) / np.linalg.norm(x, axis=-1)).mean(),
            "dead": (density == 0).mean(), "dense": (density > dense).mean(), "density": density,
            "ce_clean": ce[0] / n_pos, "ce_spliced": ce[1] / n_pos, "ce_zero": ce[2] / n_pos,
            "ce_recovered": (ce[2] - ce[1]) / (ce[2] - ce[0]), "kl_spliced": kl[1] / n_pos, "kl_zero": kl[2] / n_pos,
            "kl_recovered": (kl[2] - kl[1]) / kl[2]}


def test_every_metric_equals_separate_hand_written_forwards(model):
    dictionaries = [dictionary("topk", "layers.1.resid_pre", 32, 48, seed=1),
                    dictionary("relu", "layers.2.mlp.input", 32, 48, seed=2, site_out="layers.2.mlp"),
                    dictionary("jumprelu", "layers.0.resid_post", 32, 40, seed=3, threshold=0.05),
                    dictionary("relu", "layers.1.resid_pre", 32, 48, seed=4)]  # a second one at a site
    report = mt.evaluate(model, dictionaries, PROMPTS, batch_size=2)  # 3 chunks, right-padded, growing rows
    assert [r["label"] for r in report.rows] == [d.label for d in dictionaries]
    for d, row, density in zip(dictionaries, report.rows, report.density):
        expected = hand_evaluation(model, d, PROMPTS)
        np.testing.assert_allclose(density, expected.pop("density"), atol=1e-6)
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=2e-4, abs=1e-5), (d.label, name)
    again = mt.evaluate(model, dictionaries, PROMPTS, batch_size=2)  # replayed compiled programs: same numbers
    for a, b in zip(report.rows, again.rows):
        assert a["label"] == b["label"]
        for name in set(a) - {"label"}:
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-6, nan_ok=True), name


def test_exclude_none_evaluates_every_real_token(model):
    d = dictionary("relu", "layers.1.resid_pre", 32, 48, seed=5)
    every = mt.evaluate(model, [d], PROMPTS, exclude=None)
    default = mt.evaluate(model, [d], PROMPTS)
    assert every[0]["tokens"] == sum(len(p) + 1 for p in PROMPTS)
    assert default[0]["tokens"] == sum(len(p) for p in PROMPTS)  # one BOS per prompt left out


def test_the_report_saves_loads_ranks_and_plots(model, tmp_path):
    ds = [dictionary("relu", "layers.1.resid_pre", 32, 48, seed=6), dictionary("topk", "layers.2.mlp", 32, 48, seed=7)]
    report = mt.evaluate(model, ds, PROMPTS[:2])
    path = report.save(tmp_path / "eval.json")
    again = mt.features.EvaluationReport.load(path, model=model)
    assert again.rows == report.rows and all((a == b).all() for a, b in zip(again.density, report.density))
    assert [label for label, _ in report.top("fve")] == sorted([r["label"] for r in report.rows],
                                                               key=lambda lb: -report[lb]["fve"])
    assert "ce_recovered" in repr(report)
    pytest.importorskip("matplotlib", reason="plots need the plot extra")
    report.plot(save_path=tmp_path / "eval.png")
    assert (tmp_path / "eval.png").stat().st_size > 1000


@pytest.mark.parametrize("args, error, match", [
    (dict(dictionaries="sae"), TypeError, "non-empty list"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(dense=2.0), ValueError, "dense"),
    (dict(prompts=[]), ValueError, "prompts is empty"),
])
def test_bad_arguments_are_refused_before_any_forward(model, args, error, match):
    d = dictionary("relu", "layers.1.resid_pre", 32, 48)
    call = dict(dictionaries=[d], prompts=PROMPTS, **{k: v for k, v in args.items() if k not in ("dictionaries",
                                                                                                   "prompts")})
    call.update({k: v for k, v in args.items() if k in ("dictionaries", "prompts")})
    with pytest.raises(error, match=match):
        mt.evaluate(model, call.pop("dictionaries"), call.pop("prompts"), **call)


def test_a_site_in_no_layer_and_a_splice_entry_are_refused(model):
    embed = dictionary("relu", "model.embed_tokens", 32, 48)
    with pytest.raises(ValueError, match="is in no layer"):
        mt.evaluate(model, [embed], PROMPTS)
    d = dictionary("relu", "layers.1.resid_pre", 32, 48)
    with pytest.raises(TypeError, match="takes SAEs and Transcoders"):
        mt.evaluate(model, [mt.splice(d)], PROMPTS)
