"""The hand-written reference forward (tests/reference.py) itself: its attention-internal sites equal the
library's reads of them, writes there land where the library's do, and its decode form (``offset`` and
``past``) equals the whole-sequence forward. The fuzzers trust this file, so it is checked against mlx-lm's
own forward too."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from tests.models import tiny_llama_module
from tests.reference import llama_forward

POINTS = ("q", "k", "v", "scores", "pattern", "heads")


@pytest.fixture(scope="module")
def ref_model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=3, layers=2, hidden=32, vocab=64))


TOKENS = mx.array([[1, 7, 3, 9, 22, 5], [4, 4, 8, 1, 2, 60]])


def test_reference_equals_mlx_lm(ref_model):
    np.testing.assert_allclose(np.array(llama_forward(ref_model.model, TOKENS)), np.array(ref_model.model(TOKENS)),
                               rtol=1e-4, atol=1e-4)


def test_attention_sites_equal_the_library_reads(ref_model):
    seen = {}

    def hook(site, value):
        seen[site] = value
        return value

    llama_forward(ref_model.model, TOKENS, hook)
    with ref_model.trace(TOKENS, capture="saved", compile=False):
        got = {p: getattr(ref_model.layers[1].attn, p).save() for p in POINTS}
    for p in POINTS:
        np.testing.assert_allclose(np.array(got[p]), np.array(seen[(p, 1)]), rtol=1e-4, atol=1e-5, err_msg=p)


@pytest.mark.parametrize("point", POINTS)
def test_attention_site_writes_land_where_the_library_writes(ref_model, point):
    def edit(value):
        value = mx.array(value)
        value[..., 1] = value[..., 1] * 0.5 + 0.25
        return value

    ref = llama_forward(ref_model.model, TOKENS, lambda s, v: edit(v) if s == (point, 0) else v)
    with ref_model.trace(TOKENS, capture="saved", compile=False):
        site = getattr(ref_model.layers[0].attn, point)
        site[..., 1] = site[..., 1] * 0.5 + 0.25
        out = ref_model.output.save()
    np.testing.assert_allclose(np.array(out), np.array(ref), rtol=1e-4, atol=1e-4)


def test_decode_form_equals_the_whole_sequence(ref_model):
    full = llama_forward(ref_model.model, TOKENS)
    present: list = []
    llama_forward(ref_model.model, TOKENS[:, :4], present=present)
    step = llama_forward(ref_model.model, TOKENS[:, 4:], offset=4, past=present)
    np.testing.assert_allclose(np.array(step), np.array(full[:, 4:]), rtol=1e-4, atol=1e-4)
