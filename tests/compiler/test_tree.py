"""ModuleTree: which module object sits at every path, and the executor's check of it before each run."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models import llama

from mlxterp.compiler import Executor, Graph, ModuleTree, Op, Ref, probe
from tests.models import tiny_llama_module


@pytest.fixture()
def raw():
    return tiny_llama_module(layers=2, hidden=32)


CHANGES = {
    "child replaced": lambda m: setattr(m.model.layers[1].mlp, "down_proj", nn.Linear(64, 32, bias=False)),
    "quantized": lambda m: nn.quantize(m.model.layers[0], group_size=32, bits=4),
    "list item replaced": lambda m: m.model.layers.__setitem__(1, llama.TransformerBlock(m.args)),
    "list replaced": lambda m: setattr(m.model, "layers", list(m.model.layers)),
    "layer appended": lambda m: m.model.layers.append(llama.TransformerBlock(m.args)),
    "layer removed": lambda m: m.model.layers.pop(),
    "child deleted": lambda m: m.model.layers[0].mlp.pop("gate_proj"),
    "update_modules": lambda m: m.model.layers[0].update_modules({"mlp": llama.MLP(m.args)}),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_kind_of_module_replacement_is_noticed(raw, change):
    tree = ModuleTree(raw)
    assert tree.current()
    CHANGES[change](raw)
    assert not tree.current()
    assert ModuleTree(raw).current()


NOT_CHANGES = {
    "a forward": lambda m: mx.eval(m(mx.array([[1, 2, 3]]))),
    "new weights": lambda m: m.update({"model": {"norm": {"weight": mx.zeros(32)}}}),
    "load_weights": lambda m: m.load_weights([("lm_head.weight", mx.zeros((128, 32)))], strict=False),
    "freeze and train": lambda m: (m.freeze(), m.unfreeze(), m.eval(), m.train()),
    "a probe (every module hooked and restored)": lambda m: probe(m, lambda: m(mx.array([[1, 2]]))),
    "the same module set again": lambda m: setattr(m.model.layers[0], "mlp", m.model.layers[0].mlp),
}


@pytest.mark.parametrize("event", list(NOT_CHANGES))
def test_what_is_not_a_module_replacement_is_not_noticed(raw, event):
    tree = ModuleTree(raw)
    NOT_CHANGES[event](raw)
    assert tree.current()


def test_a_module_shared_at_two_paths_is_one_slot_each_and_checked(raw):
    raw.model.layers[1].mlp = raw.model.layers[0].mlp  # shared: two slots hold it
    tree = ModuleTree(raw)
    raw.model.layers[1].mlp = llama.MLP(raw.args)
    assert not tree.current()


def save_down_proj() -> Graph:
    g = Graph()
    out = g.add(Op.MODULE_OUTPUT, ("model.layers.1.mlp.down_proj", 0), ())
    g.add(Op.SAVE, "down", (Ref.of(out.id),))
    return g


def test_the_executor_relowers_after_a_swap_and_tells_its_owner(raw):
    """Before ModuleTree, a cached lowering kept hooking the replaced Linear: the save never fired (KeyError)."""
    told = []
    executor = Executor(raw, on_tree_change=lambda: told.append(True))
    tokens = mx.array([[1, 2, 3]])
    run = lambda: executor.run(save_down_proj(), tokens, lambda: probe(raw, lambda: raw(tokens)), "eager")  # noqa: E731
    first = run()
    new = nn.Linear(64, 32, bias=False)
    raw.model.layers[1].mlp.down_proj = new
    second = run()
    assert told == [True] and executor.tree_version == 1 and executor.stats["tree_changes"] == 1
    assert "down" in second.saves and not mx.allclose(first.saves["down"], second.saves["down"])
    assert second.entry is not first.entry  # lowered again, on the new module
    assert run().entry is second.entry and executor.stats["tree_changes"] == 1  # no change since: cached


def test_a_failing_owner_keeps_the_tree_unaccepted(raw):
    calls = []

    def refuse():
        calls.append(True)
        raise ValueError("not a model any more")

    executor = Executor(raw, on_tree_change=refuse)
    raw.model.layers[0].mlp = llama.MLP(raw.args)
    for _ in range(2):  # every later check tries again and raises again
        with pytest.raises(ValueError, match="not a model any more"):
            executor.sync()
    assert len(calls) == 2 and executor.tree_version == 0
