"""The model is unchanged after a generation (also one that raised or was interrupted mid-way), and a scan
over values neither re-lowers nor recompiles."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxterp import interventions as iv
from tests.generation.conftest import MODES
from tests.tracing.test_restoration import assert_restored, snapshot

PROMPT = "hello there"


def steered(model, vector, compile=True, n=6, **kwargs):
    with model.generate(PROMPT, n, ignore_eos=True, compile=compile, **kwargs) as gen:
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + vector
        model.layers[1].output[:, -1].save("h")
    return gen


@pytest.mark.parametrize("compile", MODES)
def test_model_unchanged_after_a_generation(model, tokens, steer, compile):
    before, raw = snapshot(model), model.model(tokens)
    steered(model, steer, compile)
    assert_restored(model, before, tokens, raw)


@pytest.mark.parametrize("compile", MODES)
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_model_unchanged_after_an_interruption_mid_generation(model, tokens, steer, compile, error):
    before, raw = snapshot(model), model.model(tokens)
    reference = steered(model, steer, compile).tokens

    def stop_at_step_3(event):
        if event.step == 3:
            raise error("interrupted")

    with pytest.raises(error, match="interrupted"):
        steered(model, steer, compile, stream=stop_at_step_3)
    assert_restored(model, before, tokens, raw)
    assert steered(model, steer, compile).tokens == reference


@pytest.mark.parametrize("compile", MODES)
def test_model_unchanged_after_a_failing_intervention(model, tokens, compile):
    before, raw = snapshot(model), model.model(tokens)
    with pytest.raises(Exception, match="shape|broadcast"):
        with model.generate(PROMPT, 4, compile=compile):
            model.layers[2].output = model.layers[2].output + mx.zeros((3, 7))
    assert_restored(model, before, tokens, raw)


def test_exception_inside_the_block_runs_nothing(model, tokens):
    before, raw = snapshot(model), model.model(tokens)
    with pytest.raises(KeyError, match="boom"):
        with model.generate(PROMPT, 4) as gen:
            model.layers[0].output.save()
            raise KeyError("boom")
    assert_restored(model, before, tokens, raw)
    with pytest.raises(RuntimeError, match="did not complete"):
        gen.tokens


def test_a_scan_over_alphas_neither_relowers_nor_recompiles(model, steer):
    steered(model, 0.0 * steer)
    first = model.compile_stats()
    results = [steered(model, a * steer).saved_values["h"] for a in (0.5, 1.0, 2.0, 4.0)]
    stats = model.compile_stats()
    assert stats["traces"] == first["traces"] and stats["analysis_programs"] == first["analysis_programs"]
    assert not mx.allclose(results[0], results[-1])


def test_weight_edits_are_seen_by_the_compiled_step(model, steer):
    first = steered(model, steer).tokens
    layer = model.model.model.layers[2].mlp.down_proj
    saved = layer.weight
    try:
        layer.weight = saved * 0.0
        edited = steered(model, steer).tokens
        eager = steered(model, steer, compile=False).tokens
    finally:
        layer.weight = saved
    assert edited == eager and edited != first


def test_seed_style_interventions_equal_the_block_form(model, steer):
    seed_style = model.generate(PROMPT, 8, ignore_eos=True, interventions={"layers.1": iv.add_vector(steer)})
    with model.generate(PROMPT, 8, ignore_eos=True) as block:
        model.layers[1].output = model.layers[1].output + steer
    assert seed_style.tokens == block.tokens
    assert seed_style.run() is seed_style


def test_results_inside_the_block_are_an_error(model):
    with model.generate(PROMPT, 2) as gen:
        with pytest.raises(RuntimeError, match="after the"):
            gen.tokens
