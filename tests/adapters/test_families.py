"""One runner over every mlx-lm family the adapters cover, each at a tiny random config built in memory:
plain trace == raw forward, writes, canonical names, the residual stream's values, logit lens, activation
patching of ``mlp`` and ``attn``. References are the raw model run with plain wrapper modules (no tracer)
and residual halves written by hand from mlx-lm's source (see ``reference.py``)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.names import ModuleNameError
from mlxterp.adapters import PARALLEL, SSM
from tests.families import FAMILIES, build

from .reference import OUT_PROJ, attention_added, forward_with, head_recovery_loop, mlp_half, recovery_loop

TOKENS = mx.array([[1, 5, 9, 13, 17, 21, 25, 3]])
CLEAN = [1, 5, 9, 13, 17, 21, 25, 3]
CORRUPTED = [1, 5, 9, 40, 17, 21, 25, 3]
NO_ATTENTION = {"mamba"}
PARALLEL_FAMILIES = {"phi", "cohere", "cohere2", "gptj", "gpt_neox"}


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request):
    return request.param, InterpretableModel(build(request.param))


def test_every_family_has_an_adapter(fam):
    family, model = fam
    assert model.architecture is not None and model.architecture.family == family


@pytest.mark.parametrize("compile", [False, True])
def test_plain_trace_equals_raw_forward(fam, compile):
    _, model = fam
    with model.trace(TOKENS, compile=compile) as tr:
        pass
    assert mx.array_equal(tr.output, model.model(TOKENS))


def test_canonical_names_resolve_to_modules_called_once(fam):
    family, model = fam
    counts = model._probe(TOKENS).call_counts()
    names = ["embed", "final_norm", "layers.1"] + (["layers.1.ln1"] if family != "olmo2" else [])
    names += [] if family in NO_ATTENTION else ["layers.1.attn", "layers.1.mlp"]
    for name in names:
        assert counts.get(model._index.resolve(name)) == 1, name


def test_missing_parts_say_what_the_family_lacks(fam):
    family, model = fam
    if family not in NO_ATTENTION:
        pytest.skip("this family has attention and an MLP")
    for part in ("attn", "mlp"):
        with pytest.raises(ValueError, match="state-space model"):
            model.activation_patching(CLEAN, CORRUPTED, component=part)


def test_write_to_the_mlp_equals_a_wrapped_forward(fam):
    family, model = fam
    part = "layers.1.mixer" if family in NO_ATTENTION else "layers.1.mlp"
    path = model._index.resolve(part)
    with model.trace(TOKENS, capture="saved"):
        out = model.module(part).output
        model.module(part).output = out * 0.5 + 1.0
        patched = model.output.save()
    expected = forward_with(model.model, TOKENS, {path: lambda o: o * 0.5 + 1.0})
    assert mx.allclose(patched, expected, atol=1e-5)


def test_resid_pre_and_post_are_the_layer_input_and_output(fam):
    _, model = fam
    with model.trace(TOKENS, capture="saved"):
        pre, post = model.layers[1].resid_pre.save(), model.layers[1].resid_post.save()
        nxt = model.layers[2].resid_pre.save()
    assert mx.array_equal(post, nxt) and pre.shape == post.shape


def test_resid_mid_is_the_residual_between_the_halves(fam):
    family, model = fam
    if family in PARALLEL_FAMILIES or family in NO_ATTENTION:
        with model.trace(TOKENS), pytest.raises(AttributeError, match="resid_mid does not exist"):
            model.layers[1].resid_mid
        with pytest.raises(ModuleNameError, match=r"interventions\['layers.1.resid_mid'\]: .*resid_mid does not exist"):
            model.trace(TOKENS, interventions={"layers.1.resid_mid": lambda x: x})
        return
    layer = model.model.layers[1]
    with model.trace(TOKENS, capture="saved"):
        pre, mid, post = (model.layers[1].resid_pre.save(), model.layers[1].resid_mid.save(),
                          model.layers[1].resid_post.save())
        attn = model.layers[1].attn.output.save()
        mixer = model.layers[1].mamba.output.save() if family == "falcon_h1" else None
    assert mx.allclose(mid, pre + attention_added(family, layer, attn, mixer), atol=1e-5)
    assert mx.allclose(post, mid + mlp_half(family, layer, mid), atol=1e-5)


def test_writing_resid_mid_feeds_both_the_mlp_and_the_residual(fam):
    family, model = fam
    if family in PARALLEL_FAMILIES or family in NO_ATTENTION:
        pytest.skip("no resid_mid in this residual form (checked above)")
    layer = model.model.layers[1]
    with model.trace(TOKENS, capture="saved"):
        mid = model.layers[1].resid_mid.save()
    new = mid * 0.5
    with model.trace(TOKENS, capture="saved"):
        model.layers[1].resid_mid[:, 2:] = model.layers[1].resid_mid[:, 2:] * 0.5
        post = model.layers[1].resid_post.save()
    expected = mx.concatenate([mid[:, :2], new[:, 2:]], axis=1)
    assert mx.allclose(post, expected + mlp_half(family, layer, expected), atol=1e-5)


def test_logit_lens_of_the_last_layer_is_the_models_prediction(fam):
    _, model = fam
    last = len(model.layers) - 1
    lens = model.logit_lens(TOKENS, layers=[last])[last]
    probs = np.array(mx.softmax(model.model(TOKENS)[0].astype(mx.float32), axis=-1))
    np.testing.assert_allclose([pos[0][1] for pos in lens], probs.max(axis=-1), atol=1e-5)
    assert [pos[0][0] for pos in lens] == probs.argmax(axis=-1).tolist()


@pytest.mark.parametrize("component", ["mlp", "attn"])
def test_activation_patching_equals_a_loop_of_wrapped_forwards(fam, component):
    family, model = fam
    if family in NO_ATTENTION:
        pytest.skip("no attention or MLP (checked by test_missing_parts_say_what_the_family_lacks)")
    got = model.activation_patching(CLEAN, CORRUPTED, component=component)
    paths = {i: model._index.resolve(f"layers.{i}.{component}") for i in range(len(model.layers))}
    want = recovery_loop(model.model, mx.array([CLEAN]), mx.array([CORRUPTED]), paths)
    np.testing.assert_allclose([got[i] for i in paths], [want[i] for i in paths], atol=1e-3)


def test_head_patching_equals_a_loop_of_wrapped_forwards(fam):
    family, model = fam
    if family in NO_ATTENTION:
        with pytest.raises(ValueError, match="head patching needs attention; .*state-space model"):
            model.head_patching(CLEAN, CORRUPTED)
        return
    got = model.head_patching(CLEAN, CORRUPTED)
    heads = got.grid.shape[1]
    out_proj = {i: f"{model._index.resolve(f'layers.{i}.attn')}.{OUT_PROJ.get(family, 'o_proj')}"
                for i in range(len(model.layers))}
    want = head_recovery_loop(model.model, mx.array([CLEAN]), mx.array([CORRUPTED]), out_proj, heads)
    np.testing.assert_allclose(got.grid, want, atol=1e-3)


def test_position_limit(fam):
    family, model = fam
    limit = model.architecture.position_limit(model.model)
    expected = {"gpt2": ("learned", 64), "gpt_bigcode": ("learned", 64), "gptj": ("rotary", 64),
                "mamba": ("none", None)}
    # the tiny configs set max_position_embeddings=128 where the family's ModelArgs has the field
    rotary = ("rotary", 128 if hasattr(model.model.args, "max_position_embeddings") else None)
    assert (limit.kind, limit.limit) == expected.get(family, rotary)


def test_residual_forms():
    forms = {f: InterpretableModel(build(f)).architecture.residual.form for f in ("gptj", "phi", "mamba", "llama")}
    assert forms == {"gptj": PARALLEL, "phi": PARALLEL, "mamba": SSM, "llama": "sequential"}
