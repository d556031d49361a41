"""IR records and the verifier's messages."""

import mlx.core as mx
import pytest

from mlxterp.compiler import Graph, GraphError, Op, Ref, to_dot, to_json, to_text, verify


def small_graph() -> Graph:
    g = Graph()
    out = g.add(Op.MODULE_OUTPUT, ("model.layers.0", 0), meta={"source": "user.py:3"})
    c = g.add(Op.CONSTANT, meta={"value": 0.5, "weak": True, "source": "user.py:4"})
    mul = g.add(Op.BINARY, "mul", (Ref(out.id), Ref(c.id)), meta={"source": "user.py:4"})
    g.add(Op.REPLACE, ("model.layers.0", 0, "output"), (Ref(mul.id),), meta={"source": "user.py:4"})
    g.add(Op.SAVE, "x", (Ref(out.id),), meta={"source": "user.py:5"})
    return g


def test_nodes_record_op_target_args_and_source():
    g = small_graph()
    mul = g.node(2)
    assert mul.op is Op.BINARY and mul.target == "mul" and mul.refs() == [0, 1]
    assert mul.source == "user.py:4"
    assert [n.id for n in g] == [0, 1, 2, 3, 4]


def test_nodes_are_immutable():
    node = small_graph().node(0)
    with pytest.raises(Exception):
        node.op = Op.SAVE


def test_verify_accepts_a_sound_graph():
    verify(small_graph())


def test_dangling_reference_is_reported_with_node_and_line():
    g = Graph()
    g.add(Op.SAVE, "x", (Ref(7),), meta={"source": "user.py:9"})
    with pytest.raises(GraphError, match=r"node %0 \(save\[x\], traced at user.py:9\) reads %7, which is not in the graph"):
        verify(g)


def test_forward_reference_is_reported():
    g = Graph()
    g.add(Op.BINARY, "add", (Ref(1), Ref(1)))
    g.add(Op.MODULE_OUTPUT, ("a", 0))
    with pytest.raises(GraphError, match="reads %1 before it is defined"):
        verify(g)


def test_duplicate_save_keys_are_reported():
    g = small_graph()
    g.add(Op.SAVE, "x", (Ref(0),), meta={"source": "user.py:6"})
    with pytest.raises(GraphError, match="saves under key 'x', already used by node %4"):
        verify(g)


@pytest.mark.parametrize("op,target,msg", [(Op.REPLACE, ("a", 0), "needs a \\(module path, call index, 'output' \\| 'input'\\) triple"),
                                           (Op.CALL_FUNCTION, "tanh", "needs a callable"),
                                           (Op.MODULE_OUTPUT, "a", "needs a \\(module path, call index\\) pair")])
def test_malformed_targets_say_what_is_expected(op, target, msg):
    g = Graph()
    src = g.add(Op.MODULE_OUTPUT, ("x", 0))
    g.add(op, target, (Ref(src.id),))
    with pytest.raises(GraphError, match=msg):
        verify(g)


def test_text_dot_and_json_exports():
    g = small_graph()
    text = to_text(g)
    assert "%2 = binary[mul](%0, %1)    # user.py:4" in text
    assert "%1 = constant(0.5)" in text
    dot = to_dot(g)
    assert dot.startswith('digraph "trace"') and "n0 -> n2;" in dot and "shape=box" in dot
    data = __import__("json").loads(to_json(g))
    assert [n["op"] for n in data["nodes"]] == ["module_output", "constant", "binary", "replace", "save"]
    assert data["nodes"][2]["inputs"] == [0, 1]


def test_networkx_view_has_the_data_flow_edges():
    nxg = small_graph().to_networkx()
    assert set(nxg.edges) == {(0, 2), (1, 2), (2, 3), (0, 4)}
    assert nxg.nodes[2]["op"] == "binary"


def test_array_constants_render_by_shape():
    g = Graph()
    g.add(Op.CONSTANT, meta={"value": mx.zeros((2, 3))})
    assert "array(2, 3):float32" in to_text(g)


def test_shared_refs_point_at_their_own_node():
    from mlxterp.compiler.ir import Ref

    assert Ref.of(5) is Ref.of(5) and Ref.of(5).id == 5
    assert Ref.of(300).id == 300 and Ref.of(5) == Ref(5)
    assert Ref.of(-1).id == -1 and Ref.of(-1) is not Ref.of(-1)  # not a recorder id: a fresh ref


def test_structure_key_helpers_write_what_node_key_computes():
    # The recorder builds keys through these helpers; each must equal node_key for the node it describes.
    from mlxterp.compiler import structure as keys

    g = Graph()
    h = g.add(Op.MODULE_OUTPUT, ("model.layers.0", 1))
    c = g.add(Op.CONSTANT, meta={"value": mx.ones((3,)), "weak": False})
    b = g.add(Op.BINARY, "add", (Ref(h.id), Ref(c.id)))
    u = g.add(Op.UNARY, "neg", (Ref(b.id),))
    r = g.add(Op.REPLACE, ("model.layers.0", 1, "output"), (Ref(u.id),))
    s = g.add(Op.SAVE, "k", (Ref(r.id),))
    expected = {
        h.id: keys.module_key(Op.MODULE_OUTPUT, "model.layers.0", 1),
        c.id: keys.constant_key(mx.ones((3,)), False),
        b.id: keys.refs_key(Op.BINARY, "add", (h.id, c.id)),
        u.id: keys.refs_key(Op.UNARY, "neg", (b.id,)),
        r.id: keys.replace_key("model.layers.0", 1, "output", u.id),
        s.id: keys.save_key("k", r.id),
    }
    for node in g:
        assert keys.node_key(node) == expected[node.id], node.describe()
