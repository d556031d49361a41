"""The source run edge patching keeps across calls on the same prompts (mlxterp/circuits/sources.py): run once,
and never served stale. Every change a model's weights can undergo (an array replaced at its slot, changed in
place, with and without MLX reusing its buffer, a module replaced, an activation edit reading outside state)
is followed by a call whose value must equal the hand-written forward of the changed model."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.circuits import sources
from mlxterp.circuits.weights import WeightSnapshot
from tests.circuits import reference as ref
from tests.circuits.conftest import CLEAN, CORRUPTED, metric, tokens
from tests.models import CharTokenizer, tiny_llama_module

EDGES = [("embed", "layers.1.mlp"), ("layers.0.attn.heads.2", "layers.2.attn.heads.1.k"), ("layers.2.mlp", "logits")]
PREFIXED = (["hello world", "hello there"], ["hello wxrld", "hello theme"])


@pytest.fixture()
def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=11), tokenizer=CharTokenizer())


@pytest.fixture()
def runs(monkeypatch) -> list:
    """The prompts each source run was made for (a list that grows at every run)."""
    made = []
    run = sources._run

    def counted(model, parts, clean, source, p0, need_clean):
        made.append(p0)
        return run(model, parts, clean, source, p0, need_clean)

    monkeypatch.setattr(sources, "_run", counted)
    return made


def by_hand(model: InterpretableModel, pair=(CLEAN, CORRUPTED)) -> float:
    """The clean prompts with EDGES carrying their corrupted values, through the hand-written forward of the model
    as it is now."""
    clean, corrupted = pair
    _, ablated = ref.forward(model.model, tokens(model, corrupted))
    wanted = {}
    for u, r in EDGES:
        wanted.setdefault(r, []).append(u)

    def receive(name, x, senders):
        for u in wanted.get(name, ()):
            x = x + (ablated[u] - senders[u])
        return x

    logits, _ = ref.forward(model.model, tokens(model, clean), receive)
    return float(metric(logits[:, -1]).mean())


def patched(model: InterpretableModel, pair=(CLEAN, CORRUPTED)) -> float:
    return model.edge_patching(*pair, EDGES, metric=metric).value


def test_calls_on_the_same_prompts_run_the_source_prompts_once(model, runs):
    scores = model.edge_attribution(CLEAN, CORRUPTED, metric=metric, method="eap")
    patched(model)
    model.edge_patching(CLEAN, CORRUPTED, EDGES[:1], metric=metric)
    model.evaluate_circuit(scores.circuit(n_edges=20), CLEAN, CORRUPTED, metric=metric)
    model.faithfulness_curve(scores, CLEAN, CORRUPTED, sizes=[5, 50], metric=metric)
    assert len(runs) == 1
    model.edge_patching(CORRUPTED, CLEAN, EDGES, metric=metric)  # other prompts: another run
    model.edge_patching(CLEAN, CORRUPTED, EDGES, metric=metric, ablation="mean")  # another ablation
    assert len(runs) == 3


def test_prompts_that_share_their_first_tokens_run_them_once_on_a_cache(model, runs):
    assert patched(model, PREFIXED) == pytest.approx(by_hand(model, PREFIXED), abs=1e-5)
    assert runs == [8]  # BOS + "hello w" are the same in every row: the variants run positions 8 on
    model.edge_patching(*PREFIXED, EDGES, metric=metric, ablation="mean")
    assert runs == [8, 0]  # a mean over prompts is no prompt's prefix


def test_a_weight_replaced_at_its_slot_is_seen(model):
    patched(model)
    mlp = model.model.model.layers[1].mlp
    mlp.down_proj.weight = mlp.down_proj.weight * 3.0
    assert patched(model) == pytest.approx(by_hand(model), abs=1e-5)


@pytest.mark.parametrize("change", ["item", "add"])
def test_a_weight_changed_in_place_is_seen(model, change):
    patched(model, PREFIXED)
    weight = model.model.model.layers[0].self_attn.v_proj.weight
    if change == "item":
        weight[3] = weight[3] * 4.0  # the same Python object now holds another array
    else:
        weight += 0.05  # nothing else holds the old buffer: MLX may build the new array in it
    assert patched(model, PREFIXED) == pytest.approx(by_hand(model, PREFIXED), abs=1e-5)


def test_weights_loaded_anew_are_seen(model):
    patched(model)
    other = tiny_llama_module(seed=12)
    model.model.load_weights(_flat(other))
    assert patched(model) == pytest.approx(by_hand(model), abs=1e-5)


def _flat(module: nn.Module) -> list:
    from mlx.utils import tree_flatten

    return tree_flatten(module.parameters())


def test_a_replaced_module_is_seen(model):
    patched(model)
    model.model.model.layers[2].mlp = tiny_llama_module(seed=13).model.layers[2].mlp
    assert patched(model) == pytest.approx(by_hand(model), abs=1e-5)


def test_a_model_with_edits_keeps_no_run(model, runs):
    steer = mx.zeros((64,))
    with model.edit() as ed:
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + steer
    edited = ed.model
    first = patched(edited)
    steer += 3.0  # the edit's value, changed in place: the edited model's programs read it at every call
    second = patched(edited)
    with model.edit() as ed:
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + mx.full((64,), 3.0)
    assert second == pytest.approx(patched(ed.model), abs=1e-5) and first != pytest.approx(second, abs=1e-4)
    assert len(edited._program_cache("circuits.sources")) == 0 and len(runs) == 3


def test_at_most_a_few_runs_are_kept_per_model(model):
    for i in range(sources.KEEP + 2):
        model.edge_patching(CLEAN, [f"jelly word{i}", CORRUPTED[1]], EDGES, metric=metric)
    assert len(model._program_cache("circuits.sources")) == sources.KEEP
    model.clear_compile_cache()
    assert len(model._program_cache("circuits.sources")) == 0


# -- the snapshot alone ----------------------------------------------------------------------------------------
def _module(dtype=mx.float32) -> nn.Module:
    module = nn.Linear(8, 8)
    module.set_dtype(dtype)
    mx.eval(module.parameters())
    return module


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
def test_a_snapshot_sees_every_kind_of_change_and_nothing_else(dtype):
    module = _module(dtype)
    snap = WeightSnapshot(module)
    assert snap.current(module)
    _ = module.weight * 2.0  # reading is no change
    mx.eval(module.parameters())
    assert snap.current(module)
    module.weight[0, 0] = 1.0
    assert not snap.current(module)
    module = _module(dtype)
    snap = WeightSnapshot(module)
    module.bias += 0  # the same values, another array: counted as a change (safe)
    assert not snap.current(module)
    module = _module(dtype)
    snap = WeightSnapshot(module)
    module.update({"weight": mx.array(np.ones((8, 8))).astype(dtype)})
    assert not snap.current(module)


def test_a_snapshot_keeps_the_buffers_mlx_would_otherwise_reuse():
    module = _module()
    snap = WeightSnapshot(module)
    weight = module.weight
    module.weight = mx.array(weight)  # a copy: the same values in another buffer
    assert not snap.current(module)
    module.weight = weight
    assert snap.current(module)
    weight *= 2.0  # in place, and only the snapshot still holds the old buffer: a new one is used
    mx.eval(weight)
    assert not snap.current(module)


def test_a_snapshot_sees_a_view_of_the_same_buffer_read_another_way():
    module = _module()
    snap = WeightSnapshot(module)
    module.weight = module.weight.T  # the same buffer, transposed
    assert not snap.current(module)


def test_a_compiled_call_that_leaves_new_objects_over_the_same_buffers_is_no_change(model):
    snap = WeightSnapshot(model.model)
    before = [id(a) for a in _flat(model.model)]
    patched(model)
    assert [id(a) for _, a in _flat(model.model)] != before and snap.current(model.model)
