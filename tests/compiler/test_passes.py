"""Each pass leaves its input untouched, keeps the graph valid, and does its one job."""


import mlx.core as mx
import pytest

from mlxterp.compiler import (CausalityError, Graph, GraphError, Op, Ref, eliminate_dead_code, lift_constants,
                              run_passes, schedule, verify)
from mlxterp.compiler.passes.lift import param_sources, param_values

EVENTS = [("", 0, "input"), ("model.layers.0", 0, "input"), ("model.layers.0", 0, "output"),
          ("model.layers.1", 0, "input"), ("model.layers.1", 0, "output"), ("", 0, "output")]


def program() -> Graph:
    g = Graph()
    h1 = g.add(Op.MODULE_OUTPUT, ("model.layers.1", 0))
    g.add(Op.UNARY, "neg", (Ref(h1.id),))  # dead: nothing reads it
    h0 = g.add(Op.MODULE_OUTPUT, ("model.layers.0", 0))
    c = g.add(Op.CONSTANT, meta={"value": 0.5, "weak": True})
    a = g.add(Op.BINARY, "mul", (Ref(h0.id), Ref(c.id)))
    v = g.add(Op.CONSTANT, meta={"value": mx.ones((4,))})
    b = g.add(Op.BINARY, "add", (Ref(a.id), Ref(v.id)))
    t = g.add(Op.CALL_FUNCTION, mx.tanh, (Ref(b.id),))
    g.add(Op.REPLACE, ("model.layers.0", 0, "output"), (Ref(t.id),))
    g.add(Op.SAVE, "h1", (Ref(h1.id),))
    return g


def frozen(g: Graph):
    return [(n.id, n.op, n.target, n.args, dict(n.kwargs)) for n in g]


@pytest.mark.parametrize("p", [eliminate_dead_code, lift_constants])
def test_pass_leaves_its_input_untouched_and_output_valid(p):
    g = program()
    before = frozen(g)
    out, _ = p(g)
    assert frozen(g) == before
    verify(out)


def test_dce_drops_unused_nodes_but_never_a_save_or_write():
    out, changed = eliminate_dead_code(program())
    ops = [n.op for n in out]
    assert changed and Op.UNARY not in ops
    assert ops.count(Op.SAVE) == 1 and ops.count(Op.REPLACE) == 1


def test_dce_keeps_an_unused_save():
    g = Graph()
    h = g.add(Op.MODULE_OUTPUT, ("a", 0))
    g.add(Op.SAVE, "never_read", (Ref(h.id),))
    out, changed = eliminate_dead_code(g)
    assert not changed and len(out) == 2


def test_lifting_turns_constants_into_params_in_order():
    g = program()
    out, changed = lift_constants(g)
    params = [n for n in out if n.op is Op.PARAM]
    assert changed and [p.target for p in params] == [0, 1]
    assert params[0].meta["weak"] is True
    assert Op.CONSTANT not in {n.op for n in out}
    values = param_values(g, param_sources(out))
    assert values[0].item() == 0.5 and values[1].shape == (4,)


def test_params_bind_to_their_constants_by_id_after_dead_code_is_dropped():
    # A dead constant recorded before the live ones must not shift the live values onto other params.
    g = Graph()
    h = g.add(Op.MODULE_OUTPUT, ("model.layers.0", 0))
    dead = g.add(Op.CONSTANT, meta={"value": 2.0, "weak": True})
    g.add(Op.BINARY, "mul", (Ref(h.id), Ref(dead.id)))  # never used
    live = g.add(Op.CONSTANT, meta={"value": 0.5, "weak": True})
    m = g.add(Op.BINARY, "mul", (Ref(h.id), Ref(live.id)))
    g.add(Op.REPLACE, ("model.layers.0", 0, "output"), (Ref(m.id),))
    result = run_passes(g, EVENTS)
    assert param_sources(result.after) == (live.id,)
    assert [v.item() for v in param_values(g, param_sources(result.after))] == [0.5]


def _lifted(*params):
    g = Graph()
    h = g.add(Op.MODULE_OUTPUT, ("a", 0))
    refs = [Ref(h.id)]
    for target, meta in params:
        refs.append(Ref(g.add(Op.PARAM, target, meta=meta).id))
    s = g.add(Op.CALL_FUNCTION, mx.add, tuple(refs[:2]))
    g.add(Op.SAVE, "s", (Ref(s.id),))
    return g


@pytest.mark.parametrize("params, message", [
    ([(1, {"constant_id": 7})], r"numbered \[1\]; they must be exactly 0..0"),
    ([(0, {"constant_id": 7}), (0, {"constant_id": 8})], r"numbered \[0, 0\]"),
    ([(0, {})], r"does not name the constant it came from"),
    ([(0, {"constant_id": 7}), (1, {"constant_id": 7})], r"both read constant %7"),
])
def test_verifier_refuses_params_that_could_bind_the_wrong_value(params, message):
    with pytest.raises(GraphError, match=message):
        verify(_lifted(*params))


def test_verifier_checks_each_param_names_a_constant_of_the_recorded_graph():
    recorded = program()
    lifted, _ = lift_constants(recorded)
    verify(lifted, origin=recorded)
    other = Graph([n for n in recorded if n.op is not Op.CONSTANT])
    with pytest.raises(GraphError, match="not a constant of the recorded graph"):
        verify(lifted, origin=other)


def test_scheduling_follows_execution_order_not_recording_order():
    g = eliminate_dead_code(program())[0]
    plan = schedule(g, EVENTS)
    assert plan.at_event[("model.layers.0", 0, "output")][0] == 2  # h0 read at layer 0
    assert 0 in plan.at_event[("model.layers.1", 0, "output")]  # h1 recorded first, runs later
    assert plan.replacements[("model.layers.0", 0, "output")] == 7
    assert plan.hooked_paths() == {"model.layers.0", "model.layers.1"}


def test_scheduler_refuses_a_write_that_reads_the_future():
    g = Graph()
    h1 = g.add(Op.MODULE_OUTPUT, ("model.layers.1", 0), meta={"source": "u.py:1"})
    g.add(Op.REPLACE, ("model.layers.0", 0, "output"), (Ref(h1.id),), meta={"source": "u.py:2"})
    with pytest.raises(CausalityError, match=r"output of model.layers.0 \(traced at u.py:2\) depends on the output "
                                             r"of model.layers.1, which the model computes later"):
        schedule(g, EVENTS)


def test_pipeline_records_before_after_and_changes():
    result = run_passes(program(), EVENTS)
    assert result.changed == ("eliminate_dead_code", "lift_constants")
    assert len(result.before) == 10 and len(result.after) < 10
