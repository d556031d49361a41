"""Encode, decode and training losses of every architecture against numpy written from the papers
(tests/dictionaries/reference.py); gradients against finite differences; AuxK and JumpReLU's
pseudo-derivatives as published."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.dictionaries import architectures as archs
from tests.dictionaries import reference as ref
from tests.dictionaries.helpers import ARCHS, K, as_numpy, library_loss, make, objective, random_weights

D_IN, D_SAE, B = 12, 32, 16


def setup(arch: str, seed: int = 0, kind: str = "sae", **options):
    rng = np.random.default_rng(seed)
    d_out = 10 if kind == "transcoder" else D_IN
    w = random_weights(rng, D_IN, D_SAE, d_out)
    x = rng.normal(size=(B, D_IN)) + 0.3
    y = rng.normal(size=(B, d_out)) if kind == "transcoder" else x
    return make(arch, w, kind=kind, **options), w, x, y


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_and_decode_equal_the_papers_definitions(arch):
    d, w, x, _ = setup(arch)
    want_f = ref.encode(arch, w, x, k=K.get(arch))
    got_f = np.array(d.encode(mx.array(x.astype(np.float32))))
    np.testing.assert_allclose(got_f, want_f, atol=1e-5, rtol=1e-5)
    assert (got_f > 0).sum() > 0
    f = np.abs(np.random.default_rng(1).normal(size=(B, D_SAE)))
    np.testing.assert_allclose(np.array(d.decode(mx.array(f.astype(np.float32)))), ref.decode(w, f), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_transcoder_encodes_without_b_dec_and_decodes_to_its_own_width(arch):
    d, w, x, y = setup(arch, kind="transcoder")
    got = np.array(d(mx.array(x.astype(np.float32))))
    want = ref.decode(w, ref.encode(arch, w, x, k=K.get(arch), apply_b_dec=False))
    assert got.shape == (B, 10)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    parts = d.parts(mx.array(x.astype(np.float32)), mx.array(y.astype(np.float32)))
    np.testing.assert_allclose(np.array(parts.error), y - want, atol=1e-5, rtol=1e-5)


def _reference_loss(arch, w_np, x, y, d, dead=None, apply_b_dec=True, error=None):
    c = d.config
    return ref.train_loss(arch, w_np, x, y, k=K.get(arch, 0), apply_b_dec=apply_b_dec, l1=c.l1_coefficient,
                          l0=c.l0_coefficient, dead=dead, k_aux=c.effective_aux_k, alpha=c.aux_coefficient, error=error)


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("arch", ARCHS)
def test_training_loss_equals_the_papers_definition(arch, kind):
    d, _, x, y = setup(arch, kind=kind)
    obj = objective(d, B)
    params = obj.init_params()
    loss, _ = library_loss(obj, params, x, None if kind == "sae" else y)
    want = _reference_loss(arch, as_numpy(params), x, y, d, apply_b_dec=kind == "sae")
    np.testing.assert_allclose(loss.item(), want, rtol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_loss_equals_gao_et_al(arch):
    d, _, x, _ = setup(arch)
    obj = objective(d, B)
    params = obj.init_params()
    dead = np.zeros(D_SAE, dtype=bool)
    dead[::3] = True  # 11 dead latents, more than k_aux = d_in // 2 = 6
    loss, aux = library_loss(obj, params, x, dead=dead)
    want = _reference_loss(arch, as_numpy(params), x, x, d, dead=dead)
    np.testing.assert_allclose(loss.item(), want, rtol=1e-5)
    assert aux["auxk"].item() > 0 and obj.config.effective_aux_k == D_IN // 2


def test_auxk_latents_are_the_top_dead_preactivations_through_relu():
    rng = np.random.default_rng(3)
    pre = rng.normal(size=(8, D_SAE))
    for n_dead in (3, 20):  # fewer dead latents than k_aux selects them all
        dead = np.zeros(D_SAE, dtype=bool)
        dead[rng.choice(D_SAE, n_dead, replace=False)] = True
        got = np.array(archs.auxk_acts(mx.array(pre.astype(np.float32)), mx.array(dead), 6))
        np.testing.assert_allclose(got, ref.auxk_latents(pre, dead, 6), atol=1e-6)
        assert not got[:, ~dead].any()


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_equal_finite_differences(arch):
    d, _, x, _ = setup(arch, seed=4)
    obj = objective(d, B)
    params = obj.init_params()
    dead = np.arange(D_SAE) % 4 == 0 if arch in ("topk", "batchtopk") else None
    grads = mx.grad(lambda p: library_loss(obj, p, x, dead=dead)[0])(params)
    base = as_numpy(params)
    rng = np.random.default_rng(5)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        for flat in rng.choice(base[name].size, 5, replace=False):
            index = np.unravel_index(flat, base[name].shape)
            numeric = _central_difference(arch, base, name, index, x, d, dead)
            got = float(np.array(grads[name])[index])
            assert abs(got - numeric) <= 1e-3 * max(1.0, abs(numeric)), (name, index, got, numeric)


def _central_difference(arch, base, name, index, x, d, dead, h=1e-6):
    """AuxK's target e is held at its value at ``base``: it carries no gradient (Gao et al.)."""
    error = ref.reconstruction_error(arch, base, x, x, K[arch]) if dead is not None else None
    values = []
    for sign in (1, -1):
        p = {k: v.copy() for k, v in base.items()}
        p[name][index] += sign * h
        values.append(_reference_loss(arch, p, x, x, d, dead=dead, error=error))
    return (values[0] - values[1]) / (2 * h)


def test_jumprelu_threshold_gradient_is_the_papers_pseudo_derivative():
    d, _, x, _ = setup("jumprelu", seed=6, bandwidth=0.5)
    obj = objective(d, B)
    params = obj.init_params()
    grads = mx.grad(lambda p: library_loss(obj, p, x)[0])(params)
    want = ref.jumprelu_threshold_grad(as_numpy(params), x, x, l0=d.config.l0_coefficient, bandwidth=0.5)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.array(grads["log_threshold"]), want, atol=1e-5, rtol=1e-4)
    # and no gradient reaches pre through the L0 step: the step's pseudo-derivative in pre is 0
    pre = mx.array(np.linspace(-1, 1, 9).astype(np.float32))
    theta, eps = mx.array(np.full(9, 0.1, np.float32)), mx.array(0.5)
    assert not np.array(mx.grad(lambda p: archs.step(p, theta, eps).sum())(pre)).any()


def test_sparsity_warmup_ramps_the_coefficient():
    d, _, x, _ = setup("relu", sparsity_warmup=0.5)
    obj = objective(d, B)
    assert [obj.hyper(s, 10)["coef"] for s in (0, 1, 4, 5, 9)] == [0.2, 0.4, 1.0, 1.0, 1.0]
    params = obj.init_params()
    full = library_loss(obj, params, x, coef=1.0)[1]["sparsity"].item()
    half = library_loss(obj, params, x, coef=0.5)[1]["sparsity"].item()
    np.testing.assert_allclose(half, full / 2, rtol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_on_a_few_dead_latents_works_on_them_alone_with_the_same_loss_and_gradients(arch):
    """5 dead latents of 128: the AuxK term runs on 8 gathered latents, the dead ones among them."""
    rng = np.random.default_rng(8)
    w = random_weights(rng, D_IN, 128)
    x = rng.normal(size=(B, D_IN)) + 0.3
    d = make(arch, w)
    obj = objective(d, B)
    dead = np.zeros(128, dtype=bool)
    dead[[3, 40, 41, 90, 127]] = True
    params = obj.init_params()
    state = obj.init_state()
    state["since_fired"] = mx.array(np.where(dead, obj.config.dead_tokens, 0).astype(np.int32))
    assert obj.variant(state) == 8
    loss, aux = library_loss(obj, params, x, dead=dead)
    np.testing.assert_allclose(loss.item(), _reference_loss(arch, as_numpy(params), x, x, d, dead=dead), rtol=1e-5)
    grads = mx.grad(lambda p: library_loss(obj, p, x, dead=dead)[0])(params)
    base = as_numpy(params)
    for name, index in (("W_dec", (40, 2)), ("W_dec", (90, 7)), ("W_enc", (1, 41)), ("b_enc", (127,))):
        numeric = _central_difference(arch, base, name, index, x, d, dead)
        assert abs(float(np.array(grads[name])[index]) - numeric) <= 1e-3 * max(1.0, abs(numeric)), (name, index)
