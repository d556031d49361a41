"""DAS with edits and invokes, against the hand-written forward (tests/reference.py) and DAS written by hand
(tests/circuits/das_reference.py): on an edited model, the source and intervened programs carry the edits
(the shared KV-cache prefix only under edits that act on each position alone); in a trace with invokes,
``das.intervention`` resolves its positions on each invoke's own tokens."""

from __future__ import annotations

import warnings

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import interventions as iv
from mlxterp.circuits.das_data import site_on
from mlxterp.circuits.das_train import interchange_program, source_program
from tests.circuits.das_reference import reference_logits, reference_values
from tests.circuits.test_das_reference import close, das_with_random_subspace

SITE = "layers.1.resid_post"


def base_and_source():
    rng = np.random.default_rng(3)
    return (mx.array(rng.integers(2, 100, (3, 6)), dtype=mx.int32),
            mx.array(rng.integers(2, 100, (3, 6)), dtype=mx.int32))


def recorded(model, position, layer=0):
    """A recorded edit: layer ``layer``'s output at ``position`` times 3."""
    with model.edit() as ed:
        model.layers[layer].output[:, position] = model.layers[layer].output[:, position] * 3.0
    return ed.model


def times_three_at(position, layer=0):
    """The same edit as a hook of the hand-written forward."""
    def hook(site, x):
        if site != ("layer", layer):
            return x
        x = mx.array(x)
        x[:, position] = x[:, position] * 3.0
        return x
    return hook


def logits_at_first_position(model):
    """A recorded edit of the logits at position 0 (the intervened run's logits are cut to the last position
    only after it)."""
    with model.edit() as ed:
        model.output[:, 0] = mt.apply(mx.tanh, model.output[:, 0])
    return ed.model


def tanh_at_first_logits(site, x):
    return mx.concatenate([mx.tanh(x[:, :1]), x[:, 1:]], axis=1) if site == ("output",) else x


# name -> (the edited model, its hook on the hand-written forward, whether the prefix may be shared)
EDITS = {
    "position-wise": (lambda m: m.edit({"layers.0": iv.scale(0.5)}),
                      lambda s, x: x * 0.5 if s == ("layer", 0) else x, True),
    "a recorded write inside the prefix": (lambda m: recorded(m, 1), times_three_at(1), False),
    "a recorded write at [:, -1]": (lambda m: recorded(m, -1), times_three_at(-1), False),
    "a recorded write of the logits at position 0": (logits_at_first_position, tanh_at_first_logits, False),
    "a weight edit": (lambda m: m.edit_weights({"layers.0.mlp.down_proj.weight": lambda w: w * 0.5}), None, True),
}


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("case", list(EDITS))
def test_the_programs_of_an_edited_model_equal_the_hand_forward(model, case, share_prefix):
    """The training's programs (source, and intervened base with or without the cached prefix) on an edited
    model: the intervened run used to fail (the edit's constants were params the program left unset)."""
    make, hook, prefix_safe = EDITS[case]
    edited = make(model)
    base, source = base_and_source()
    das = das_with_random_subspace(SITE, (-1,), 2)
    sites = [site_on(edited, SITE, das.position, 2, base)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "the KV cache does not reproduce the whole prompt" fallback
        program = interchange_program(edited, sites, base, share_prefix)
    assert program.prefix_len == (5 if share_prefix and prefix_safe else 0)
    acts = source_program(edited, sites, source)(source)
    close(acts[0], reference_values(edited.model, source, SITE, [5], hook))
    logits = program.logits(base, [das.rotation], acts)[0]
    close(logits, reference_logits(edited.model, base, np.array(acts[0]), SITE, [5], np.array(das.rotation), hook))


def test_folded_sites_of_an_edited_model_each_equal_their_hand_forward(model):
    """Sites born at layers 0 and 3 (a staircase) around an edit of layer 2's last position."""
    edited, hook = recorded(model, -1, layer=2), times_three_at(-1, layer=2)
    base, source = base_and_source()
    dases = [das_with_random_subspace(s, p, 2, seed=j) for j, (s, p) in enumerate(
        [("layers.0.resid_post", (-1,)), ("layers.3.mlp", (-2, -1))])]
    sites = [site_on(edited, d.site, d.position, 2, base) for d in dases]
    program = interchange_program(edited, sites, base)
    acts = source_program(edited, sites, source)(source)
    logits = program.logits(base, [d.rotation for d in dases], acts)

    for j, das in enumerate(dases):
        positions = [p % 6 for p in das.position]
        close(acts[j], reference_values(edited.model, source, das.site, positions, hook))
        close(logits[j], reference_logits(edited.model, base, np.array(acts[j]), das.site, positions,
                                          np.array(das.rotation), hook))


def test_das_trains_on_an_edited_model(model):
    edited = model.edit({"layers.0": iv.scale(0.5)})
    base, source = base_and_source()
    das = das_with_random_subspace(SITE, (-1,), 2)
    losses = das.train(edited, base, source, [7, 8, 9], steps=2, batch_size=3)
    assert np.all(np.isfinite(losses))


@pytest.mark.parametrize("position", [(-1,), (2,)])
@pytest.mark.parametrize("compile", [False, True])
def test_the_intervention_in_invokes_uses_each_invokes_own_positions(model, position, compile):
    """``interventions={das.site: das.intervention(acts)}`` of a trace with invokes of other lengths, and the
    same intervention written inside an invoke, on an edited model: each invoke as its prompt alone (the
    padded batch's last column was used for the shorter invokes)."""
    edited = recorded(model, -1)
    _, source = base_and_source()
    das = das_with_random_subspace(SITE, position, 3)
    acts = das.source_activations(edited, source[:1])
    prompts = [[5, 9, 13, 17, 21, 25, 29], [40, 41, 42], [7, 8, 9, 10, 11]]
    with edited.trace(interventions={das.site: das.intervention(acts)}, compile=compile, capture="saved") as tr:
        for prompt in prompts:
            with tr.invoke(prompt):
                edited.output[:, -1].save()
    with edited.trace(compile=compile, capture="saved") as inside:
        for prompt in prompts[::-1]:
            with inside.invoke(prompt):
                edited.layers[1].output = das.intervention(acts)(edited.layers[1].output)
                edited.output[:, -1].save()
    for k, prompt in enumerate(prompts):
        tokens = mx.array([prompt])
        expected = reference_logits(edited.model, tokens, np.array(acts), SITE, [position[0] % len(prompt)],
                                    np.array(das.rotation), times_three_at(-1))
        close(tr.invokes[k].output[:, -1], expected)
        close(inside.invokes[len(prompts) - 1 - k].output[:, -1], expected)
