"""Folded runs: K variants of a program in one forward equal K separate runs, for every kind of node."""

import mlx.core as mx
import numpy as np

import mlxterp as mt
from mlxterp import apply


def test_folded_run_equals_separate_runs_for_every_kind_of_node(model, tokens):
    with model.trace(tokens, capture="saved") as tr:
        vec = mt.param("vec", mx.zeros(64))  # mapped below
        scale = mt.param("scale", 0.5)  # mapped below
        bias = mt.param("bias", mx.ones(64))  # not mapped: one value for all variants
        h0 = model.layers[0].output
        h0[:, 2] = h0[:, 2] + vec  # a write at one position, per variant
        model.layers[1].output = apply(mx.tanh, model.layers[1].output * scale) + bias
        (bias * 2.0).save("unmapped")  # the same for every variant
        model.layers[2].mlp.output = bias  # a write of an unmapped value, broadcast to the module
        model.layers[2].output.save("h2")
        model.output[:, -1].save("last")
    prog = tr.program()
    k = 4
    vecs = mx.random.normal((k, 64), key=mx.random.key(0))
    scales = mx.array([0.1, 0.5, -1.0, 2.0])
    folded = prog.batched(vec=vecs, scale=scales)
    for j in range(k):
        one = prog(vec=vecs[j], scale=scales[j].item())
        for key in ("unmapped", "h2", "last"):
            assert folded[key].shape == (k,) + one[key].shape, key
            np.testing.assert_allclose(np.array(folded[key][j]), np.array(one[key]), rtol=1e-5, atol=1e-5)


def test_folded_run_on_a_batch_of_prompts(model):
    tokens = mx.array([[1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]])
    with model.trace(tokens, capture="saved") as tr:
        model.layers[1].output = model.layers[1].output + mt.param("steer", mx.zeros(64))
        model.layers[3].output.save("h")
    prog = tr.program()
    vecs = mx.random.normal((2, 64), key=mx.random.key(1))
    folded = prog.batched(steer=vecs)["h"]
    assert folded.shape == (2, 3, 4, 64)
    for j in range(2):
        np.testing.assert_allclose(np.array(folded[j]), np.array(prog(steer=vecs[j])["h"]), rtol=1e-5, atol=1e-5)


def test_constant_writes_reach_every_variant_folded_and_vmapped(model, tokens):
    """A write whose value is the same for all variants (a number into a slice of a mapped value) lands in
    every variant, folded and under a user's ``mx.vmap`` alike (MLX's vmap of such a slice assignment
    writes only the first element, so it once reached variant 0 alone)."""
    with model.trace(tokens, capture="saved") as tr:
        steer = mt.param("steer", mx.zeros(64))
        model.layers[1].attn.heads[:, :, 1] = 0.0  # a head ablation: a constant write at an attention point
        model.layers[2].output[:, -1] = model.layers[2].output[:, -1] + steer
        model.layers[3].output[:, 1:, :8] = 0.5  # a constant slice write after the mapped one
        model.output[:, 0] = 0.0  # and into the logits
        model.output.save("logits")
    prog = tr.program()
    vecs = mx.random.normal((3, 64), key=mx.random.key(2))
    loop = np.stack([np.array(prog(steer=vecs[j])["logits"]) for j in range(3)])
    folded = np.array(prog.batched(steer=vecs)["logits"])
    vmapped = np.array(mx.vmap(lambda v: prog.fn(params={"steer": v})["logits"])(vecs))
    np.testing.assert_allclose(folded, loop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vmapped, loop, rtol=1e-5, atol=1e-5)
