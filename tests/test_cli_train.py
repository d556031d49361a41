"""``mlxterp train-sae``, ``train-lens`` and ``features``: argument errors found before the model loads, and each
subcommand end to end on a tiny llama (resumable runs, the dictionary's top contexts against a direct count)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import SAE
from mlxterp.cli_features import top_contexts
from mlxterp.cli_train import token_count
from tests.test_cli import assert_only_error, no_load, run, tiny_model  # noqa: F401 (fixtures)

TEXTS = [f"the {w} sat on mat {i}" for i, w in enumerate(["cat", "dog", "bird", "fox"] * 6)]


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def sae_args(prompts, out, *extra):
    return ["train-sae", "--prompts", str(prompts), "--site", "layers.1.resid_pre", "--latents", "96", "--k", "4",
            "--tokens", "256", "--batch-size", "64", "--out", str(out), *extra]


@pytest.mark.parametrize("text, value", [("2M", 2_000_000), ("500k", 500_000), ("2_000", 2000), ("1.5k", 1500)])
def test_token_counts(text, value):
    assert token_count(text) == value


@pytest.mark.parametrize("extra, says", [
    (["--tokens", "2X"], "argument --tokens: expected a token count such as 2000000, 500k or 2M, got '2X'"),
    (["--arch", "relu"], "argument --k: only topk and batchtopk take --k, not relu"),
    (["--k", "2.5"], "argument --k: topk keeps a whole number of latents per token, got 2.5"),
    (["--batch-size", "512"], "argument --tokens: 256 is less than one batch (--batch-size 512)"),
    (["--lr", "-1"], "argument --lr: expected a positive number, got '-1'"),
])
def test_train_sae_argument_errors_come_before_loading(capsys, no_load, prompts, tmp_path, extra, says):  # noqa: F811
    code, _, err = run(capsys, *sae_args(prompts, tmp_path / "run"), *extra)
    assert code == 2
    assert_only_error(err, says)


def test_train_lens_and_features_argument_errors_come_before_loading(capsys, no_load, prompts, tmp_path):  # noqa: F811
    code, _, err = run(capsys, "train-lens", "--prompts", str(prompts), "--tokens", "1k", "--out", str(tmp_path / "l"),
                       "--plot", str(tmp_path / "p.png"))
    assert code == 2
    assert_only_error(err, "--plot: draws the evaluation, so it needs --eval FILE")
    code, _, err = run(capsys, "train-lens", "--prompts", str(tmp_path / "nope.txt"), "--tokens", "1k", "--out", "x")
    assert code == 2
    assert_only_error(err, "--prompts", "does not exist")
    code, _, err = run(capsys, "features", str(tmp_path), "--prompts", str(prompts))
    assert code == 2
    assert_only_error(err, "holds no dictionary")
    SAE.create("topk", d_in=64, d_sae=32, k=2, site="layers.1.resid_pre").save(tmp_path / "sae")
    code, _, err = run(capsys, "features", str(tmp_path / "sae"), "--prompts", str(prompts), "--features", "3,40")
    assert code == 2
    assert_only_error(err, "--features: 40 is not a feature")


def test_train_sae_then_features_end_to_end(capsys, tiny_model, prompts, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *sae_args(prompts, out))
    assert code == 0, err
    assert "trained topk@layers.1.resid_pre (96 latents) on 256 tokens" in stdout and "FVE" in stdout
    saved = out / "00-layers.1.resid_pre-topk"
    assert (saved / "cfg.json").is_file() and str(saved) in stdout
    code, stdout, err = run(capsys, *sae_args(prompts, out))  # a finished run: resumed at its end, nothing trained
    assert code == 0 and "resumed at step 4" in stdout
    code, stdout, err = run(capsys, "features", str(out), "--prompts", str(prompts), "--top", "3", "--contexts", "2",
                            "--plot", str(tmp_path / "density.png"))
    assert code == 0, err
    assert stdout.count("\nfeature ") == 3 and "[[" in stdout and (tmp_path / "density.png").stat().st_size > 0


def test_train_lens_end_to_end(capsys, tiny_model, prompts, tmp_path):  # noqa: F811
    code, stdout, err = run(capsys, "train-lens", "--prompts", str(prompts), "--tokens", "256", "--batch-size", "64",
                            "--out", str(tmp_path / "lens"), "--eval", str(prompts), "--plot", str(tmp_path / "l.png"))
    assert code == 0, err
    assert "training KL" in stdout and "KL logit" in stdout and (tmp_path / "lens" / "lens" / "params.safetensors").exists()
    assert (tmp_path / "l.png").stat().st_size > 0


def test_top_contexts_are_the_largest_activations(tiny_model):  # noqa: F811
    sae = SAE.create("topk", d_in=64, d_sae=48, k=3, site="layers.2.resid_pre")
    found = top_contexts(tiny_model, sae, TEXTS, contexts=3, batch_size=5, progress=False)
    every = []
    for i, text in enumerate(TEXTS):
        with tiny_model.trace(text):
            h = tiny_model.layers[2].resid_pre.save()
        f = np.array(sae.encode(h[0]))
        every += [(f[t], i, t) for t in range(f.shape[0])]
    acts = np.stack([a for a, _, _ in every])
    assert found.tokens == len(every) and np.array_equal(found.counts, (acts > 0).sum(axis=0))
    for feature in range(48):
        order = np.argsort(-acts[:, feature], kind="stable")[:3]
        np.testing.assert_allclose(found.values[:, feature], acts[order, feature], rtol=1e-5, atol=1e-6)
        if acts[order[0], feature] > 0:
            best = {(every[j][1], every[j][2]) for j in np.flatnonzero(acts[:, feature] == acts[order[0], feature])}
            assert tuple(found.where[0, feature]) in best
    assert mx.array_equal(mx.array(found.density), mx.array(found.counts / found.tokens)).item()


def test_logit_lens_through_a_tuned_lens(capsys, tiny_model, prompts, tmp_path):  # noqa: F811
    code, _, err = run(capsys, "train-lens", "--prompts", str(prompts), "--tokens", "128", "--batch-size", "64",
                       "--out", str(tmp_path / "run"))
    assert code == 0, err
    code, stdout, err = run(capsys, "logit-lens", "the cat", "--lens", str(tmp_path / "run"), "--top-k", "2",
                            "--html", str(tmp_path / "both.html"))
    assert code == 0, err
    assert stdout.startswith("tuned lens of 'the cat'") and (tmp_path / "both.html").stat().st_size > 0
    assert "Logit lens vs Tuned lens" in (tmp_path / "both.html").read_text()


def test_logit_lens_with_a_missing_lens_fails_before_loading(capsys, no_load, tmp_path):  # noqa: F811
    code, _, err = run(capsys, "logit-lens", "the cat", "--lens", str(tmp_path))
    assert code == 2
    assert_only_error(err, "--lens", "holds no tuned lens")
