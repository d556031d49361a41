"""Live training data: one program forward per prompt chunk feeds every dictionary; its rows are the sites'
values (checked against the hand-written llama of tests/reference.py) at every kept token; BOS and other
special tokens are left out by default and padding always; the model is left as it was."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import SAE, InterpretableModel, Transcoder, train
from mlxterp.dictionaries import sites
from mlxterp.dictionaries.learner import Comm
from mlxterp.dictionaries.sources import LiveSource
from mlxterp.tracing.program import Program
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import llama_forward, rms_norm

# 12 prompts of 7 characters: 8 tokens each with BOS, 7 kept -> 84 rows per epoch = one window of 7 x 12
PROMPTS = [f"p{i:02d}:" + "abcdefgh"[i % 5: i % 5 + 3] for i in range(12)]
SITES = ["layers.1.resid_pre", "layers.1.attn.input", "layers.1.attn", "layers.2.resid_mid", "layers.2.mlp.input",
         "layers.2.mlp", "layers.3"]


@pytest.fixture(scope="module")
def module():
    return tiny_llama_module(seed=2)


@pytest.fixture()
def model(module):
    return InterpretableModel(module, tokenizer=CharTokenizer())


def reference_rows(module, prompts, keep_bos=False):
    """Each site's value at every kept token of every prompt, from the hand-written forward."""
    out = {s: [] for s in SITES}
    eps = module.args.rms_norm_eps
    for text in prompts:
        seen = {}
        llama_forward(module, mx.array([CharTokenizer().encode(text)]), lambda site, v: seen.setdefault(site, v))
        ln1 = module.model.layers[1].input_layernorm.weight
        ln2 = module.model.layers[2].post_attention_layernorm.weight
        values = {"layers.1.resid_pre": seen[("layer_in", 1)], "layers.2.resid_mid": seen[("resid_mid", 2)],
                  "layers.1.attn.input": rms_norm(seen[("layer_in", 1)], ln1, eps), "layers.1.attn": seen[("attn", 1)],
                  "layers.2.mlp.input": rms_norm(seen[("resid_mid", 2)], ln2, eps), "layers.2.mlp": seen[("mlp", 2)],
                  "layers.3": seen[("layer", 3)]}
        for s in SITES:
            out[s].append(np.array(values[s][0, 0 if keep_bos else 1:]))
    return {s: np.concatenate(v) for s, v in out.items()}


def by_first_column(rows):
    return rows[np.argsort(rows[:, 0])]


def test_one_epoch_of_rows_is_every_sites_value_at_every_kept_token(model, module):
    resolved = [sites.resolve(model, s) for s in SITES]
    source = LiveSource(model, PROMPTS, resolved, prompt_batch=5, shuffle_batches=7)
    batches = source.batches(12, 0, Comm(None))
    got = [next(batches)[0] for _ in range(7)]
    want = reference_rows(module, PROMPTS)
    for site in resolved:
        rows = np.concatenate([np.array(b[site.key]) for b in got])
        assert rows.shape == want[site.name].shape == (84, 64)
        np.testing.assert_allclose(by_first_column(rows), by_first_column(want[site.name]), atol=2e-5, rtol=1e-4)
    assert source.forwards == 3  # 12 prompts in forwards of 5: every site from the same three forwards


def test_bos_is_left_out_by_default_and_kept_on_request(model, module):
    site = sites.resolve(model, "layers.1.resid_pre")
    with_bos = LiveSource(model, PROMPTS, [site], exclude=None, shuffle_batches=8)
    batches = with_bos.batches(12, 0, Comm(None))
    rows = np.concatenate([np.array(next(batches)[0][site.key]) for _ in range(8)])  # 96 rows: one epoch
    want = reference_rows(module, PROMPTS, keep_bos=True)["layers.1.resid_pre"]
    np.testing.assert_allclose(by_first_column(rows), by_first_column(want), atol=2e-5, rtol=1e-4)
    custom = LiveSource(model, PROMPTS, [site], exclude=[1, ord("p") % 100 + 2])
    assert all(len(custom._kept(i)) == 6 for i in range(len(PROMPTS)))  # BOS and the leading 'p' dropped


def test_padding_never_becomes_a_row(model, module):
    prompts = ["a", "abcdefghijkl", "abc"]  # padded to a common width in one forward
    site = sites.resolve(model, "layers.3")
    source = LiveSource(model, prompts, [site], prompt_batch=4, shuffle_batches=1)
    rows = np.array(next(source.batches(16, 0, Comm(None)))[0][site.key])  # 1 + 12 + 3 kept tokens
    want = reference_rows(module, prompts)["layers.3"]
    np.testing.assert_allclose(by_first_column(rows), by_first_column(want), atol=2e-5, rtol=1e-4)


def test_k_dictionaries_share_one_forward_per_chunk(model, monkeypatch):
    calls = {"n": 0}
    real = Program.__call__

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Program, "__call__", counting)
    runs = {}
    for k in (1, 3):
        dicts = [SAE.create("topk", d_sae=64, k=4, site="layers.1.resid_pre"),
                 SAE.create("relu", d_sae=64, site="layers.2.resid_mid"),
                 Transcoder.create("jumprelu", d_sae=32, site="layers.2.mlp")][:k]
        calls["n"] = 0
        result = train(dicts, model=model, prompts=PROMPTS * 3, tokens=12 * 14, batch_size=12, prompt_batch=6,
                       shuffle_batches=7, progress=False)
        runs[k] = (calls["n"], result.forwards)
    assert runs[1] == runs[3] and runs[1][0] == runs[1][1] > 0


def test_training_leaves_the_model_unchanged(model, module):
    tokens = mx.array([CharTokenizer().encode("the model stays")])
    before = module(tokens)
    classes = {path: type(m) for path, m in module.named_modules()}
    train(SAE.create("topk", d_sae=64, k=4, site="layers.2.resid_mid"), model=model, prompts=PROMPTS,
          tokens=24, batch_size=12, progress=False)
    assert {path: type(m) for path, m in module.named_modules()} == classes
    assert mx.array_equal(module(tokens), before).item()


def test_the_last_window_holds_only_the_batches_the_run_draws(model):
    """3 batches of 12 rows with windows of 8 batches: 36 rows (6 prompts, one forward of 6), not 96."""
    dicts = [SAE.create("topk", d_sae=32, k=4, site="layers.1.resid_pre")]
    short = train(dicts, model=model, prompts=PROMPTS, tokens=36, batch_size=12, prompt_batch=6, shuffle_batches=8,
                  progress=False)
    assert short.forwards == 1
