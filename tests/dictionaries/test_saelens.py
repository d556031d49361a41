"""SAELens's on-disk layout: folders written here by hand as SAELens documents them (cfg.json keys, weight
names and shapes W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc, b_dec, threshold), for each architecture
and both config formats, load with SAELens's numbers (the numpy reference of tests/dictionaries/reference.py);
our saved folders read back by plain numpy give the in-memory dictionary's numbers; what we cannot read is
refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mlxterp import SAE, Transcoder
from mlxterp.dictionaries import Dictionary
from tests.dictionaries import reference as ref
from tests.dictionaries.helpers import random_weights

D_IN, D_SAE, D_OUT = 12, 40, 9


def write(folder: Path, cfg: dict, weights: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def v6(architecture: str, **extra) -> dict:
    cfg = {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.5.1", "sae_lens_training_version": "6.5.1",
                        "hook_name": "blocks.3.hook_resid_pre", "model_name": "tiny"}}
    cfg.update(extra)
    return cfg


def weights(seed: int = 0, d_out: int = D_IN) -> dict:
    w = random_weights(np.random.default_rng(seed), D_IN, D_SAE, d_out)
    return {k: w[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, w["threshold"]


def inputs() -> np.ndarray:
    return np.random.default_rng(9).normal(size=(7, D_IN)) + 0.2


def check(d: Dictionary, w: dict, arch: str, *, k=None, apply_b_dec=True, rescale=False):
    x = inputs()
    f_want = ref.encode(arch, w, x, k=k, apply_b_dec=apply_b_dec, rescale=rescale)
    f_got = np.array(d.encode(mx.array(x.astype(np.float32))))
    np.testing.assert_allclose(f_got, f_want, atol=1e-5, rtol=1e-5)
    assert (f_want > 0).any()
    np.testing.assert_allclose(np.array(d.decode(mx.array(f_want.astype(np.float32)))),
                               ref.decode(w, f_want, rescale=rescale), atol=1e-5, rtol=1e-5)


def test_standard_v6(tmp_path):
    w, _ = weights()
    d = SAE.load(write(tmp_path / "s", v6("standard"), w))
    assert d.architecture == "relu" and d.site == "layers.3.resid_pre" and d.config.metadata["model_name"] == "tiny"
    check(d, w, "relu")


@pytest.mark.parametrize("rescale", [False, True])
def test_topk_v6(tmp_path, rescale):
    w, _ = weights(1)
    d = SAE.load(write(tmp_path / "t", v6("topk", k=5, rescale_acts_by_decoder_norm=rescale), w))
    assert d.architecture == "topk" and d.k == 5
    check(d, w, "topk", k=5, rescale=rescale)


def test_jumprelu_v6_gemma_scope_style(tmp_path):
    w, threshold = weights(2)
    w["threshold"] = threshold
    cfg = v6("jumprelu", apply_b_dec_to_input=False)
    cfg["metadata"]["hook_name"] = "blocks.2.hook_resid_post"
    d = SAE.load(write(tmp_path / "j", cfg, w))
    assert d.site == "layers.2.resid_post" and not d.config.apply_b_dec_to_input
    check(d, w, "jumprelu", apply_b_dec=False)


def test_batchtopk_training_checkpoint_reads_as_its_jumprelu(tmp_path):
    w, _ = weights(3)
    saved = dict(w, topk_threshold=np.array(0.35))
    d = SAE.load(write(tmp_path / "b", v6("batchtopk", k=4.0), saved))
    assert d.architecture == "batchtopk"
    check(d, dict(w, threshold=np.full(D_SAE, 0.35)), "jumprelu")


def test_jumprelu_training_checkpoint_log_threshold(tmp_path):
    w, threshold = weights(4)
    d = SAE.load(write(tmp_path / "l", v6("jumprelu"), dict(w, log_threshold=np.log(threshold))))
    check(d, dict(w, threshold=threshold), "jumprelu")


def test_pre_6_flat_config(tmp_path):
    w, _ = weights(5)
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "architecture": "topk",
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "hook_point": "blocks.1.hook_mlp_out",
           "hook_point_layer": 1, "normalize_activations": False, "model_name": "gpt2", "apply_b_dec_to_input": True}
    d = SAE.load(write(tmp_path / "old", cfg, w))
    assert d.k == 3 and d.site == "layers.1.mlp"
    check(d, w, "topk", k=3)
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "hook_point": "blocks.0.hook_resid_pre"}  # oldest
    check(SAE.load(write(tmp_path / "oldest", cfg, w)), w, "relu")


@pytest.mark.parametrize("name, arch", [("transcoder", "relu"), ("jumprelu_transcoder", "jumprelu")])
def test_transcoders(tmp_path, name, arch):
    w, threshold = weights(6, d_out=D_OUT)
    if arch == "jumprelu":
        w["threshold"] = threshold
    cfg = v6(name, d_out=D_OUT, hook_name_out="blocks.3.hook_mlp_out")
    cfg["metadata"]["hook_name"] = "blocks.3.ln2.hook_normalized"
    d = Transcoder.load(write(tmp_path / name, cfg, w))
    assert (d.site, d.site_out, d.d_out) == ("layers.3.mlp.input", "layers.3.mlp", D_OUT)
    check(d, w, arch, apply_b_dec=False)  # a transcoder never subtracts its output bias from its input
    with pytest.raises(ValueError, match="holds a Transcoder"):
        SAE.load(tmp_path / name)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("kind", ["sae", "transcoder"])
def test_saved_folders_give_the_same_numbers_to_plain_numpy(tmp_path, arch, kind):
    """What SAELens would compute from our files: the folded weights, read without mlxterp."""
    k = {"topk": 4, "batchtopk": 4.0}.get(arch)
    if kind == "sae":
        d = SAE.create(arch, d_in=D_IN, d_sae=D_SAE, k=k, site="layers.2.resid_pre", seed=3)
    else:
        d = Transcoder.create(arch, d_in=D_IN, d_out=D_OUT, d_sae=D_SAE, k=k, site="layers.2.mlp", seed=3)
    d.input_scale, d.output_scale = mx.array(2.5), mx.array(0.7 if kind == "transcoder" else 2.5)
    d.b_enc = mx.array(np.random.default_rng(1).normal(size=D_SAE).astype(np.float32) * 0.2)
    d.b_dec = d.b_dec + 0.3
    if arch in ("jumprelu", "batchtopk"):
        d.threshold = mx.full((D_SAE,), 0.05)
    folder = d.save(tmp_path / "ours")
    cfg = json.loads((folder / "cfg.json").read_text())
    w = {key: v.astype(np.float64) for key, v in load_file(str(folder / "sae_weights.safetensors")).items()}
    saved_arch = {"relu": "relu", "topk": "topk"}.get(arch, "jumprelu")
    assert cfg["normalize_activations"] == "none" and cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE
    assert cfg["architecture"] == {("sae", "relu"): "standard", ("transcoder", "relu"): "transcoder",
                                   ("sae", "topk"): "topk", ("transcoder", "topk"): "topk_transcoder"}.get(
        (kind, arch), "jumprelu" if kind == "sae" else "jumprelu_transcoder")
    assert cfg["metadata"]["hook_name"] == ("blocks.2.hook_resid_pre" if kind == "sae" else "blocks.2.ln2.hook_normalized")
    x = inputs()
    want = ref.decode(w, ref.encode(saved_arch, w, x, k=k, apply_b_dec=cfg["apply_b_dec_to_input"]))
    np.testing.assert_allclose(np.array(d(mx.array(x.astype(np.float32)))), want, atol=1e-4, rtol=1e-4)
    again = Dictionary.load(folder)
    assert type(again) is type(d) and again.architecture == arch and again.config.k == d.config.k
    np.testing.assert_allclose(np.array(again(mx.array(x.astype(np.float32)))), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("change, message", [
    ({"architecture": "gated"}, "architecture 'gated' is not supported"),
    ({"normalize_activations": "constant_norm_rescale"}, "per-token normalization"),
    ({"reshape_activations": "hook_z"}, "hook_z"),
    ({"dtype": "int8"}, "dtype 'int8' is not supported"),
])
def test_unsupported_configs_are_refused_with_the_reason(tmp_path, change, message):
    w, _ = weights()
    with pytest.raises(ValueError, match=message):
        SAE.load(write(tmp_path / "x", {**v6("standard"), **change}, w))


def test_foreign_or_corrupt_folders_are_refused(tmp_path):
    w, _ = weights()
    with pytest.raises(ValueError, match=r"unknown \['W_gate'\]"):
        SAE.load(write(tmp_path / "extra", v6("standard"), dict(w, W_gate=np.zeros((2, 2)))))
    with pytest.raises(ValueError, match=r"missing \['threshold'\]"):
        SAE.load(write(tmp_path / "missing", v6("jumprelu"), w))
    with pytest.raises(ValueError, match="weight 'W_enc' has shape"):
        SAE.load(write(tmp_path / "shape", {**v6("standard"), "d_in": D_IN + 1}, w))
    bad = write(tmp_path / "json", v6("standard"), w)
    (bad / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SAE.load(bad)
    broken = write(tmp_path / "bytes", v6("standard"), w)
    (broken / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        SAE.load(broken)
    with pytest.raises(FileNotFoundError, match="no cfg.json"):
        SAE.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="scaling_factor"):
        SAE.load(write(tmp_path / "scale", v6("standard"), dict(w, scaling_factor=np.full(D_SAE, 2.0))))


def test_site_override_on_load(tmp_path):
    w, _ = weights()
    cfg = v6("standard")
    cfg["metadata"]["hook_name"] = "blocks.0.attn.hook_z"  # no mlxterp site of that name: kept as written
    folder = write(tmp_path / "s", cfg, w)
    assert SAE.load(folder).site == "blocks.0.attn.hook_z"
    assert SAE.load(folder, site="layers.0.attn").site == "layers.0.attn"
