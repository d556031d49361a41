"""DAS against a forward written by hand: the source activations, the interchange intervention (in traces,
compiled and eager, and in the folded training program, with and without the shared KV-cache prefix) and
its gradient, on the tiny llama and the hand-written llama forward of ``tests/reference.py``."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxterp as mt
from mlxterp.circuits.das_data import interchange_pairs, site_on
from mlxterp.circuits.das_rotation import householder, initial_vectors
from mlxterp.circuits.das_train import interchange_program, site_losses, source_program
from tests.circuits.das_reference import reference_logits, reference_site, reference_values
from tests.reference import llama_forward

SITES = ["layers.0.resid_pre", "layers.1.resid_mid", "layers.2.resid_post", "layers.1.attn", "layers.3.mlp", "embed"]
POSITIONS = [(-1,), (2, 4)]


@pytest.fixture()
def prompts():
    rng = np.random.default_rng(0)
    base = mx.array(rng.integers(2, 100, (3, 6)), dtype=mx.int32)
    source = mx.array(rng.integers(2, 100, (3, 6)), dtype=mx.int32)
    return base, source


def das_with_random_subspace(site: str, position: tuple, dim: int, width: int = 64, seed: int = 1) -> mt.DAS:
    das = mt.DAS(site, list(position), dim, seed=seed)
    das._vectors, das.width = initial_vectors(dim, width, seed), width  # a random rotation, as if trained
    return das


def close(a, b, tol=1e-5) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    error = float(np.max(np.abs(a - b)))
    assert error <= tol * (1.0 + float(np.max(np.abs(b)))), error
    return error


def absolute(positions: tuple, seq: int = 6) -> list[int]:
    return [p % seq for p in positions]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("position", POSITIONS)
def test_source_activations_are_the_hand_forward_values(model, llama_module, prompts, site, position):
    _, source = prompts
    das = das_with_random_subspace(site, position, 2)
    got = das.source_activations(model, source)
    close(got, reference_values(llama_module, source, site, absolute(position)))


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("compile", [False, True])
def test_intervention_in_a_trace_equals_the_hand_forward(model, llama_module, prompts, site, position, compile):
    base, source = prompts
    das = das_with_random_subspace(site, position, 3)
    acts = das.source_activations(model, source)
    with model.trace(base, interventions={site: das.intervention(acts)}, compile=compile, capture="saved"):
        logits = model.output[:, -1].save()
    expected = reference_logits(llama_module, base, np.array(acts), site, absolute(position), np.array(das.rotation))
    close(logits, expected)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("share_prefix", [True, False])
def test_training_program_equals_the_hand_forward(model, llama_module, prompts, site, position, share_prefix):
    base, source = prompts
    das = das_with_random_subspace(site, position, 2)
    sites = [site_on(model, site, das.position, 2, base)]
    program = interchange_program(model, sites, base, share_prefix)
    assert program.prefix_len == (min(absolute(position)) if share_prefix else 0)
    acts = source_program(model, sites, source)(source)
    logits = program.logits(base, [das.rotation], acts)  # (K=1, batch, vocab)
    expected = reference_logits(llama_module, base, np.array(acts[0]), site, absolute(position), np.array(das.rotation))
    close(logits[0], expected)


def test_folded_sites_each_equal_their_own_hand_forward(model, llama_module, prompts):
    base, source = prompts
    specs = [("layers.0.resid_post", (-1,), 1), ("layers.1.resid_mid", (3, 5), 2), ("layers.3.mlp", (-1,), 4),
             ("layers.3.mlp", (-2,), 1)]  # the same site twice: each variant sees only its own write
    dases = [das_with_random_subspace(s, p, d, seed=j) for j, (s, p, d) in enumerate(specs)]
    sites = [site_on(model, d.site, d.position, d.dim, base) for d in dases]
    program = interchange_program(model, sites, base)
    assert program.prefix_len == 3
    acts = source_program(model, sites, source)(source)
    logits = program.logits(base, [d.rotation for d in dases], acts)
    assert logits.shape == (4, 3, 128)
    for j, das in enumerate(dases):
        expected = reference_logits(llama_module, base, np.array(acts[j]), das.site, absolute(das.position),
                                    np.array(das.rotation))
        close(logits[j], expected)


def test_full_rank_interchange_is_patching_the_source_activation(model, prompts):
    base, source = prompts
    das = das_with_random_subspace("layers.1.resid_post", (-1,), 64)
    acts = das.source_activations(model, source)
    with model.trace(base, interventions={das.site: das.intervention(acts)}, capture="saved"):
        intervened = model.output[:, -1].save()
    with model.trace(base, capture="saved"):
        model.layers[1].output[:, -1] = acts[:, 0]
        patched = model.output[:, -1].save()
    close(intervened, patched)
    sites = [site_on(model, das.site, das.position, 64, base)]
    close(interchange_program(model, sites, base).logits(base, [das.rotation], [acts])[0], patched)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_gradient_through_the_program_equals_the_hand_forwards(model, llama_module, prompts, share_prefix):
    base, source = prompts
    labels = [7, 8, 9]
    specs = [("layers.1.resid_post", (-1,), 2), ("layers.2.attn", (4, 5), 1)]
    pairs = interchange_pairs(model, base, source, labels)
    sites = [site_on(model, s, p, d, base) for s, p, d in specs]
    program = interchange_program(model, sites, base, share_prefix)
    acts = source_program(model, sites, source)(source)
    vectors = {f"site_{j}": initial_vectors(d, 64, seed=j) for j, (_, _, d) in enumerate(specs)}
    (_, per_site), grads = mx.value_and_grad(lambda v: site_losses(program, v, (pairs.base, pairs.labels), acts))(
        vectors)
    for j, (site, position, _) in enumerate(specs):
        loss, grad = mx.value_and_grad(lambda v: hand_loss(llama_module, base, acts[j], site, absolute(position), v,
                                                           pairs.labels))(vectors[f"site_{j}"])
        close(per_site[j], loss)
        close(grads[f"site_{j}"], grad, tol=1e-4)
        assert float(mx.abs(grad).max()) > 1e-4  # the gradient is not trivially zero


def hand_loss(module: nn.Module, base: mx.array, source: mx.array, site: str, positions: list, vectors: mx.array,
              labels: mx.array) -> mx.array:
    """The DAS loss on the hand-written forward, differentiable: low-rank interchange in MLX ops."""
    key, rotation = reference_site(site), householder(vectors)

    def hook(where: tuple, value: mx.array) -> mx.array:
        if where != key:
            return value
        columns = [value[:, p] for p in range(value.shape[1])]
        for j, p in enumerate(positions):
            columns[p] = columns[p] + ((source[:, j] - columns[p]) @ rotation) @ rotation.T
        return mx.stack(columns, axis=1)

    logits = llama_forward(module, base, hook)[:, -1]
    return nn.losses.cross_entropy(logits, labels).mean()


def test_a_quantized_model_equals_the_hand_forward_of_its_dequantized_weights(prompts):
    from mlxterp import InterpretableModel
    from tests.models import tiny_llama_module
    from tests.reference import dequantized

    module = tiny_llama_module(quantize=True)
    model, base, source = InterpretableModel(module), *prompts
    das = das_with_random_subspace("layers.2.resid_post", (-1,), 3)
    sites = [site_on(model, das.site, das.position, 3, base)]
    program = interchange_program(model, sites, base)
    assert program.prefix_len == 5
    acts = source_program(model, sites, source)(source)
    expected = reference_logits(dequantized(module), base, np.array(acts[0]), das.site, [5], np.array(das.rotation))
    close(program.logits(base, [das.rotation], acts)[0], expected, tol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_other_families_share_the_prefix_with_the_same_numbers(family, prompts):
    from mlxterp import InterpretableModel
    from tests.models import tiny_gpt2_module, tiny_qwen2_module

    module = tiny_gpt2_module() if family == "gpt2" else tiny_qwen2_module()
    model, base, source = InterpretableModel(module, layer_attr="h" if family == "gpt2" else "layers"), *prompts
    das = das_with_random_subspace("layers.1.resid_post", (3, -1), 2)
    sites = [site_on(model, das.site, das.position, 2, base)]
    shared, whole = (interchange_program(model, sites, base, share) for share in (True, False))
    assert (shared.prefix_len, whole.prefix_len) == (3, 0)
    acts = source_program(model, sites, source)(source)
    close(shared.logits(base, [das.rotation], acts), whole.logits(base, [das.rotation], acts))
    losses = das.train(model, base, source, [5, 6, 7], steps=2, batch_size=3)
    assert np.all(np.isfinite(losses)) and das.steps == 2
