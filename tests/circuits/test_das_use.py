"""A trained DAS in use: its intervention in programs (replayed and batched over sources) and in generation,
and saved to / loaded from a file."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp.circuits.das_rotation import initial_vectors

PROMPT = [1, 5, 9, 13, 17]
SOURCES = [[1, 7, 11, 15, 19], [1, 8, 12, 16, 20], [1, 2, 3, 4, 6]]


def random_das(site: str = "layers.1.resid_post", position=-1, dim: int = 8, seed: int = 1) -> mt.DAS:
    das = mt.DAS(site, position, dim, seed=seed)
    das._vectors, das.width = initial_vectors(dim, 64, seed), 64  # a random rotation, as if trained
    return das


def traced_logits(model, tokens, interventions) -> mx.array:
    with model.trace(tokens, interventions=interventions, capture="saved"):
        logits = model.output[:, -1].save()
    return logits


def test_a_program_recorded_with_the_intervention_replays_with_new_sources(model):
    das = random_das()
    acts = das.source_activations(model, SOURCES)  # (3, 1, 64)
    with model.trace([PROMPT], interventions={das.site: das.intervention(acts[:1])}, capture="saved") as tr:
        model.output[:, -1].save("logits")
    prog = tr.program()
    source_param = next(name for name, spec in prog.params.items() if spec.shape == (1, 1, 64))
    for j in range(3):
        expected = traced_logits(model, [PROMPT], {das.site: das.intervention(acts[j:j + 1])})
        np.testing.assert_allclose(np.array(prog(**{source_param: acts[j:j + 1]})["logits"]), np.array(expected),
                                   atol=1e-5)
    scan = prog.batched(**{source_param: acts[:, None]})["logits"]  # 3 sources, one folded forward
    assert scan.shape == (3, 1, 128)
    np.testing.assert_allclose(np.array(scan[2]), np.array(prog(**{source_param: acts[2:3]})["logits"]), atol=1e-5)


@pytest.mark.parametrize("compile", [False, True])
def test_generation_applies_it_at_every_new_token(model, compile):
    das = random_das(dim=16)
    acts = das.source_activations(model, SOURCES[:1])
    with model.generate([PROMPT], max_new_tokens=3, interventions={das.site: das.intervention(acts)},
                        compile=compile) as gen:
        stepped = model.output[:, -1].save()  # (3 steps, 1, vocab)
    new = gen.tokens[0]
    # By hand: the whole sequence traced once, the subspace interchanged at every position a token was
    # generated from (causal: position p's logits see only positions <= p).
    at_each = mt.DAS(das.site, [4, 5, 6], 16)
    at_each._vectors, at_each.width = das._vectors, 64
    with model.trace([PROMPT + new[:2]], interventions={das.site: at_each.intervention(mx.repeat(acts, 3, axis=1))},
                     capture="saved"):
        logits = model.output.save()
    np.testing.assert_allclose(np.array(stepped)[:, 0], np.array(logits[0, 4:]), atol=1e-4)
    plain = traced_logits(model, [PROMPT], None)
    assert float(mx.abs(plain[0] - logits[0, 4]).max()) > 1e-2  # the intervention changes the logits


def test_save_and_load_round_trip(model, tmp_path):
    das = random_das(position=[-2, -1], dim=3)
    das.steps = 7
    path = das.save(tmp_path / "subspace")
    assert path.name == "subspace.safetensors"
    loaded = mt.DAS.load(path)
    assert (loaded.site, loaded.position, loaded.dim, loaded.width, loaded.steps) == (das.site, (-2, -1), 3, 64, 7)
    assert mx.array_equal(loaded.vectors, das.vectors) and mx.array_equal(loaded.rotation, das.rotation)
    assert repr(loaded) == "DAS(site='layers.1.resid_post', position=[-2, -1], dim=3, width=64, trained 7 steps)"
    acts = das.source_activations(model, SOURCES)
    np.testing.assert_array_equal(np.array(traced_logits(model, [PROMPT] * 3, {das.site: das.intervention(acts)})),
                                  np.array(traced_logits(model, [PROMPT] * 3, {das.site: loaded.intervention(acts)})))
    arrays = mx.load(str(path))
    assert set(arrays) == {"vectors", "rotation"} and arrays["rotation"].shape == (64, 3)


def test_load_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="DAS file not found"):
        mt.DAS.load(tmp_path / "absent.safetensors")
    mx.save_safetensors(str(tmp_path / "other.safetensors"), {"x": mx.zeros(2)})
    with pytest.raises(ValueError, match="is not a DAS file written by DAS.save"):
        mt.DAS.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="directory .* does not exist"):
        random_das().save(tmp_path / "no" / "such" / "dir")


def test_source_activations_of_several_positions(model):
    das = random_das(position=[1, -1])
    acts = das.source_activations(model, SOURCES)
    with model.trace(SOURCES, capture="saved"):
        out = model.layers[1].output.save()
    np.testing.assert_array_equal(np.array(acts), np.array(out)[:, [1, 4]])


def test_a_site_after_the_layers_keeps_every_position(model):
    # the final norm's input is cut to the last position only when every site is inside the layers
    from mlxterp.circuits.das_data import site_on
    from mlxterp.circuits.das_train import interchange_program, source_program

    das = random_das("final_norm", position=[-2, -1])
    base = mx.array([PROMPT] * 3)
    sites = [site_on(model, das.site, das.position, das.dim, base)]
    acts = source_program(model, sites, mx.array(SOURCES))(mx.array(SOURCES))
    got = interchange_program(model, sites, base).logits(base, [das.rotation], acts)[0]
    expected = traced_logits(model, base, {das.site: das.intervention(acts[0])})
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=1e-5)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_variants_born_at_the_start_at_layers_and_after_them_each_see_only_their_own_site(model, share_prefix):
    from mlxterp.circuits.das_data import site_on
    from mlxterp.circuits.das_train import interchange_program, source_program

    specs = [("final_norm", -1), ("layers.3.resid_pre", -1), ("embed", -2), ("layers.1.mlp", -1),
             ("layers.1.resid_post", -2), ("layers.3.attn", -1)]
    dases = [random_das(site, position, dim=4, seed=j) for j, (site, position) in enumerate(specs)]
    base, source = mx.array([PROMPT] * 3), mx.array(SOURCES)
    sites = [site_on(model, d.site, d.position, d.dim, base) for d in dases]
    program = interchange_program(model, sites, base, share_prefix)
    assert program.stairs.order == (0, 2, 3, 4, 1, 5)  # the start (in site order), then by layer
    acts = source_program(model, sites, source)(source)
    got = program.logits(base, [d.rotation for d in dases], acts)
    for j, das in enumerate(dases):
        expected = traced_logits(model, base, {das.site: das.intervention(acts[j])})
        np.testing.assert_allclose(np.array(got[j]), np.array(expected), atol=1e-5)


def test_the_batch_grows_at_the_sites_layers_and_drops_the_base_after_the_last(model):
    from mlxterp.circuits.das_data import site_on
    from mlxterp.circuits.das_staircase import staircase

    base = mx.array([PROMPT] * 2)
    names = ["layers.2.mlp", "layers.0.resid_post", "layers.2.resid_pre", "layers.3.attn"]
    stairs = staircase(model, [site_on(model, n, (-1,), 1, base) for n in names], base)
    assert stairs.births() == [(0, 1), (2, 2), (3, 1)] and stairs.start_blocks() == 1
    assert [stairs.blocks_at(i) for i in range(4)] == [2, 2, 4, 4]  # base + born so far; no base in layer 3
    assert [stairs.block(j) for j in range(4)] == [2, 1, 3, 3]
