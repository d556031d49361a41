"""Bad input gets a clear error before any work, naming the input, what was expected and the choices; the
model is never left modified; NaN activations stop training with the last good weights kept."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import SAE, InterpretableModel, ModuleNameError, Transcoder, train
from mlxterp.dictionaries.checkpoint import RunMismatchError
from tests.models import CharTokenizer, tiny_llama_module

PROMPTS = [f"prompt {i} abc" for i in range(10)]
DATA = {"x": np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)}


@pytest.fixture(scope="module")
def module():
    return tiny_llama_module(seed=6)


@pytest.fixture()
def model(module):
    return InterpretableModel(module, tokenizer=CharTokenizer())


@pytest.fixture()
def untouched(module):
    """The model's modules and logits after the test equal those before."""
    tokens = mx.array([CharTokenizer().encode("check")])
    before, classes = module(tokens), [type(m) for _, m in module.named_modules()]
    yield
    assert [type(m) for _, m in module.named_modules()] == classes
    assert mx.array_equal(module(tokens), before).item()


def sae(**kw):
    kw.setdefault("site", "x")
    return SAE.create("topk", d_sae=16, k=2, **kw)


@pytest.mark.parametrize("kwargs, message", [
    ({"tokens": 0}, "tokens must be an int >= 1, got 0"),
    ({"tokens": -5}, "tokens must be an int >= 1"),
    ({"tokens": 10.5}, "tokens must be an int"),
    ({"tokens": 10}, "tokens=10 is less than one batch"),
    ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ({"lr": 0}, "lr must be a finite number > 0"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"warmup": 0.6, "decay": 0.6}, "warmup \\+ decay must be at most 1"),
    ({"decay": 2}, "decay is a fraction of the steps"),
    ({"checkpoint_every": 0}, "checkpoint_every must be an int >= 1 or None"),
    ({"betas": (0.9,)}, "betas must be two numbers"),
])
def test_bad_arguments(kwargs, message):
    args = {"tokens": 64, "batch_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        train(sae(), DATA, progress=False, **args)


def test_bad_dictionaries_and_data():
    with pytest.raises(ValueError, match="non-empty list"):
        train([], DATA, tokens=64, batch_size=16)
    with pytest.raises(TypeError, match=r"dictionaries\[1\] is a str"):
        train([sae(), "sae"], DATA, tokens=64, batch_size=16)
    with pytest.raises(ValueError, match="has no site"):
        train(SAE.create("topk", d_sae=16, k=2), DATA, tokens=64, batch_size=16)
    one = sae()
    with pytest.raises(ValueError, match="listed twice"):
        train([one, one], DATA, tokens=64, batch_size=16)
    with pytest.raises(ValueError, match="either as data="):
        train(sae(), tokens=64, batch_size=16)
    with pytest.raises(ValueError, match=r"its site 'y' is not in data=, which holds 'x'"):
        train(sae(site="y"), DATA, tokens=64, batch_size=16)


def test_config_errors_name_the_field_and_choices():
    with pytest.raises(ValueError, match="unknown dictionary architecture 'gated'; choose one of relu, topk"):
        SAE.create("gated", d_sae=16)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        SAE.create("topk", d_sae=16)
    with pytest.raises(ValueError, match="k=20 is larger than d_sae=16"):
        SAE.create("topk", d_sae=16, k=20)
    with pytest.raises(ValueError, match="a 'relu' dictionary has no k"):
        SAE.create("relu", d_sae=16, k=3)
    with pytest.raises(ValueError, match="normalize must be one of 'expected_average', 'none'"):
        SAE.create("relu", d_sae=16, normalize="layer")
    with pytest.raises(TypeError, match="unexpected keyword argument 'l2_coefficient'"):
        SAE.create("relu", d_sae=16, l2_coefficient=1.0)
    with pytest.raises(ValueError, match="either site= .* or site_in= and site_out="):
        Transcoder.create("relu", d_sae=16, site="layers.1.mlp", site_out="layers.2.mlp")


def test_a_width_that_differs_from_the_site(model, untouched):
    with pytest.raises(ValueError, match=r"its d_in is 32, but its site 'layers.1.resid_pre' holds vectors of width 64"):
        train(SAE.create("topk", d_in=32, d_sae=16, k=2, site="layers.1.resid_pre"), model=model, prompts=PROMPTS,
              tokens=64, batch_size=16)
    with pytest.raises(ValueError, match=r"its d_in is 8, but its site 'x' holds vectors of width 8|d_out is 5"):
        train(Transcoder.create("relu", d_in=8, d_out=5, d_sae=16, site_in="x", site_out="x"), DATA, tokens=64,
              batch_size=16)


def test_a_site_that_does_not_exist(model, untouched):
    with pytest.raises(ModuleNameError, match=r"site 'layers.1.mlpp': module 'layers.1' has no component 'mlpp'; its "
                                              "components are: input_layernorm, mlp"):
        train(sae(site="layers.1.mlpp"), model=model, prompts=PROMPTS, tokens=64, batch_size=16)
    with pytest.raises(ModuleNameError, match=r"site 'encoder.3': unknown module name 'encoder.3'"):
        train(sae(site="encoder.3"), model=model, prompts=PROMPTS, tokens=64, batch_size=16)
    with pytest.raises(ModuleNameError, match="layer index 9 is out of range"):
        train(sae(site="layers.9.resid_pre"), model=model, prompts=PROMPTS, tokens=64, batch_size=16)
    with pytest.raises(ModuleNameError, match=r"site 'layers.1.self_attn.pattern' holds shape \(1, 4, 8, 8\)"):
        train(sae(site="layers.1.self_attn.pattern"), model=model, prompts=PROMPTS, tokens=64, batch_size=16)


def test_an_unbound_dictionary_says_how_to_get_weights():
    tc = Transcoder.create("topk", d_sae=16, k=2, site="layers.1.mlp")
    with pytest.raises(ValueError, match=r"has no weights yet.*d_in=/d_out= to create\(\), call .bind"):
        tc.encode(mx.zeros((2, 8)))


def test_nan_in_the_first_batch_stops_before_training():
    data = {"x": DATA["x"].copy()}
    data["x"][3, 2] = np.nan
    s = sae(d_in=8)
    before = np.array(s.W_enc)
    with pytest.raises(ValueError, match=r"activations at 'x' of the batch of step 0 hold NaN"):
        train(s, data, tokens=256, batch_size=256, progress=False)
    np.testing.assert_array_equal(np.array(s.W_enc), before)


def test_nan_later_keeps_the_last_good_weights():
    """A non-finite row in the batch of step 2: training stops there with the weights after step 1, those
    of a run of 2 steps on the same data."""
    rows = np.random.default_rng([0, 0]).permutation(256)  # the first epoch's row order (seed 0)
    data = {"x": DATA["x"].copy()}
    data["x"][rows[40], 0] = np.inf  # row 40 of the epoch: in the batch of step 2 (rows 32-47)
    good, bad = sae(d_in=8), sae(d_in=8)
    options = dict(batch_size=16, seed=0, warmup=0.0, decay=0.0, progress=False)
    with pytest.raises(ValueError, match="the batch of step 2 holds NaN or infinite activations at x"):
        train(bad, data, tokens=256, **options)
    train(good, data, tokens=32, **options)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_array_equal(np.array(bad[name]), np.array(good[name]))


def test_run_folders_of_other_runs_and_corrupt_checkpoints(tmp_path):
    out = tmp_path / "run"
    train(sae(d_in=8), DATA, tokens=32, batch_size=16, out=out, progress=False)
    with pytest.raises(RunMismatchError, match=r"settings: the folder has .*\"lr\": 0.0004.*this run .*\"lr\": 0.001"):
        train(sae(d_in=8), DATA, tokens=32, batch_size=16, lr=1e-3, out=out, progress=False)
    with pytest.raises(RunMismatchError, match="pass resume=True"):
        train(sae(d_in=8), DATA, tokens=32, batch_size=16, out=out, resume=False, progress=False)
    (out / "checkpoint.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        train(sae(d_in=8), DATA, tokens=32, batch_size=16, out=out, progress=False)
    (out / "run.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="is not an mlxterp training run"):
        train(sae(d_in=8), DATA, tokens=32, batch_size=16, out=out, progress=False)


def test_a_bad_prompt_is_found_before_training(model, untouched):
    prompts = [[1, 5, 9]] * 40 + [[1, 999]]
    with pytest.raises(ValueError, match="token id 999 in prompt 40 is out of range"):
        train(sae(site="layers.1.resid_pre"), model=model, prompts=prompts, tokens=32, batch_size=16)
    with pytest.raises(ValueError, match="prompts is empty"):
        train(sae(site="layers.1.resid_pre"), model=model, prompts=[], tokens=32, batch_size=16)
