"""Programs: replay, vmap, folded batches, gradients and composition equal separate traces and a forward
written by hand (tests/reference.py); retraces are counted; inputs are checked at the call boundary."""

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel
from mlxterp import interventions as iv
from tests.models import tiny_llama_module
from tests.reference import dequantized, llama_forward

TOKENS = mx.array([[1, 5, 9, 13, 17, 21]])
A, B = 3, 7  # the two tokens of the logit difference


@pytest.fixture(scope="module", params=["float", "q4"])
def family(request):
    """(wrapped model, float reference module): a float llama, and a 4-bit one with its dequantized copy."""
    module = tiny_llama_module(seed=5, layers=3, hidden=64, quantize=request.param == "q4")
    return InterpretableModel(module), module if request.param == "float" else dequantized(module)


def steering_program(model):
    with model.trace(TOKENS, capture="saved") as tr:
        steer = mt.param("steer", mx.zeros(64))
        alpha = mt.param("alpha", 1.0)
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + alpha * steer
        (model.output[:, -1, A] - model.output[:, -1, B]).save("diff")
    return tr.program()


def reference_diff(reference, steer, alpha=1.0, tokens=TOKENS):
    def hook(site, x):
        if site == ("layer", 1):
            x = mx.array(x)
            x[:, -1] = x[:, -1] + alpha * steer
        return x

    logits = llama_forward(reference, tokens, hook)
    return logits[:, -1, A] - logits[:, -1, B]


def traced_diff(model, steer, alpha=1.0, tokens=TOKENS):
    with model.trace(tokens, capture="saved"):
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + alpha * steer
        diff = (model.output[:, -1, A] - model.output[:, -1, B]).save()
    return diff


def close(a, b, tol=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def test_replay_equals_separate_traces_and_the_reference(family):
    model, reference = family
    prog = steering_program(model)
    for seed in range(3):
        v, alpha = mx.random.normal((64,), key=mx.random.key(seed)), 0.5 + seed
        got = prog(steer=v, alpha=alpha)["diff"]
        close(got, traced_diff(model, v, alpha))
        close(got, reference_diff(reference, v, alpha), tol=1e-4)


def test_replay_with_new_tokens(family):
    model, reference = family
    prog = steering_program(model)
    other = mx.array([[2, 4, 6, 8, 10, 12, 14]])
    v = mx.random.normal((64,), key=mx.random.key(9))
    close(prog(tokens=other, steer=v)["diff"], reference_diff(reference, v, tokens=other), tol=1e-4)
    close(prog(tokens=[2, 4, 6, 8, 10, 12, 14], steer=v)["diff"], traced_diff(model, v, tokens=other))


def test_vmap_and_batched_equal_separate_traces(family):
    model, reference = family
    prog = steering_program(model)
    vectors = mx.random.normal((5, 64), key=mx.random.key(1))
    alphas = mx.array([0.0, 0.5, 1.0, 2.0, -1.0])
    expected = mx.stack([traced_diff(model, vectors[i], alphas[i].item()) for i in range(5)])
    batched = prog.batched(steer=vectors, alpha=alphas)["diff"]
    assert batched.shape == (5, 1)
    close(batched, expected)
    unit = mx.stack([traced_diff(model, vectors[i]) for i in range(5)])  # alpha at its default, 1.0
    close(prog.batched(steer=vectors)["diff"], unit)
    if model.model.model.layers[0].mlp.up_proj.__class__.__name__ == "QuantizedLinear":
        with pytest.raises(RuntimeError, match=r"QuantizedMatmul::vmap"):  # MLX has no vmap rule for it
            mx.eval(mx.vmap(lambda s: prog(steer=s)["diff"])(vectors))
    else:
        close(mx.vmap(lambda s: prog(steer=s)["diff"])(vectors), unit)
        close(mx.vmap(lambda s, a: prog(steer=s, alpha=a)["diff"])(vectors, alphas), expected)


def test_gradient_through_the_intervention(family):
    model, reference = family
    prog = steering_program(model)
    v = mx.random.normal((64,), key=mx.random.key(3)) * 0.5
    grad = mx.grad(lambda s: prog(steer=s)["diff"].sum())(v)
    expected = mx.grad(lambda s: reference_diff(reference, s).sum())(v)
    close(grad, expected, tol=1e-4)
    # finite differences along a few directions, in float64 arithmetic of float32 forwards
    for seed in range(3):
        d = mx.random.normal((64,), key=mx.random.key(100 + seed))
        eps = 1e-2
        up = prog(steer=v + eps * d)["diff"].item()
        down = prog(steer=v - eps * d)["diff"].item()
        assert abs((up - down) / (2 * eps) - mx.sum(grad * d).item()) < 1e-3 * max(1.0, abs(up - down) / eps)


def test_thousand_replays_do_not_retrace_and_new_shapes_retrace_once(family):
    model, _ = family
    prog = steering_program(model)
    prog(steer=mx.ones(64))
    before = model.compile_stats()["traces"]
    vectors = mx.random.normal((1000, 64), key=mx.random.key(2))
    for i in range(1000):
        out = prog(steer=vectors[i], alpha=float(i % 7))
    mx.eval(out)
    assert model.compile_stats()["traces"] == before
    for length in (3, 4, 3, 4):  # two new shapes, each traced once
        prog(tokens=mx.arange(1, 1 + length)[None])
    assert model.compile_stats()["traces"] == before + 2


def test_two_programs_compose_under_one_compile_as_cross_prompt_patching():
    model = InterpretableModel(tiny_llama_module(seed=8, layers=3, hidden=64))
    clean, corrupted = mx.array([[1, 5, 9, 13, 17]]), mx.array([[1, 6, 9, 14, 17]])
    with model.trace(clean, capture="saved") as ta:
        model.layers[1].output.save("h")
    source = ta.program()
    with model.trace(corrupted, capture="saved") as tb:
        model.layers[1].output = mt.param("patch", mx.zeros((1, 5, 64)))
        model.output[:, -1].save("logits")
    target = tb.program()

    @mx.compile
    def patched(t1, t2):
        return target(tokens=t2, patch=source(tokens=t1)["h"])["logits"]

    got = patched(clean, corrupted)
    with model.trace(clean, capture="saved"):
        h = model.layers[1].output.save()
    with model.trace(corrupted, capture="saved"):
        model.layers[1].output = h
        expected = model.output[:, -1].save()
    close(got, expected)
    lazy = target(patch=source()["h"])["logits"]  # one lazy graph, evaluated once
    close(lazy, expected)


def test_unnamed_constants_are_params_too(model):
    with model.trace(TOKENS, interventions={"layers.1": iv.scale(0.5)}, capture="saved") as tr:
        model.layers[2].output = model.layers[2].output + mx.ones(64)
        model.output.save("logits")
    prog = tr.program()
    assert list(prog.params) == ["const_0", "const_1"]
    assert prog.params["const_0"].weak and prog.params["const_1"].shape == (64,)
    with model.trace(TOKENS, interventions={"layers.1": iv.scale(2.0)}, capture="saved"):
        model.layers[2].output = model.layers[2].output + mx.zeros(64)
        expected = model.output.save()
    close(prog(const_0=2.0, const_1=mx.zeros(64))["logits"], expected)


def test_param_names_are_part_of_the_program_structure(model):
    progs = []
    for name in ("first", "second"):
        with model.trace(TOKENS, capture="saved") as tr:
            model.layers[0].output = model.layers[0].output * mt.param(name, 1.0)
            model.output.save("logits")
        progs.append(tr.program())
    assert list(progs[0].params) == ["first"] and list(progs[1].params) == ["second"]


def test_errors_name_the_param_and_the_choices(model):
    prog = steering_program(model)
    with pytest.raises(TypeError, match=r"no param 'stear'; its params are: steer, alpha"):
        prog(stear=mx.zeros(64))
    with pytest.raises(ValueError, match=r"param 'steer' has shape \(64,\); got a value of shape \(32,\)"):
        prog(steer=mx.zeros(32))
    with pytest.raises(ValueError, match=r"must share their leading \(variant\) axis"):
        prog.batched(steer=mx.zeros((3, 64)), alpha=mx.zeros(2))
    with pytest.raises(ValueError, match="out of range"):
        prog(tokens=mx.array([[1, 2, 500]]))
    with pytest.raises(RuntimeError, match="only available inside a trace"):
        mt.param("x", 1.0)
    with model.trace(TOKENS) as tr:
        with pytest.raises(ValueError, match="already used"):
            mt.param("a", 1.0), mt.param("a", 2.0)
        with pytest.raises(ValueError, match="not valid"):
            mt.param("tokens", 1.0)
        with pytest.raises(RuntimeError, match="after the"):
            tr.program()


def test_program_values_are_cast_to_the_param_dtype(model):
    prog = steering_program(model)
    v = mx.random.normal((64,), key=mx.random.key(4))
    close(prog(steer=v.astype(mx.float16))["diff"], prog(steer=v.astype(mx.float16).astype(mx.float32))["diff"])


@pytest.mark.parametrize("tokens", [mx.zeros((1, 0), mx.int32), mx.zeros((0, 4), mx.int32)])
def test_empty_tokens_are_refused_at_the_call(model, tokens):
    prog = steering_program(model)
    with pytest.raises(ValueError, match=r"token array has shape .*expected .*batch > 0 and seq > 0"):
        prog(tokens=tokens)
    with pytest.raises(ValueError, match=r"batch > 0 and seq > 0"):
        mx.compile(lambda t: prog.fn(t)["diff"])(tokens)


def test_batched_with_no_variants_is_refused(model):
    prog = steering_program(model)
    with pytest.raises(ValueError, match=r"param 'steer' has shape \(0, 64\): no variants .*K >= 1"):
        prog.batched(steer=mx.zeros((0, 64)))


def test_a_lossy_cast_of_a_param_value_is_refused(model):
    prog = steering_program(model)
    with pytest.raises(TypeError, match=r"param 'steer' is real .*complex value .*imaginary part"):
        prog(steer=mx.zeros(64, dtype=mx.complex64))
    with pytest.raises(TypeError, match=r"param 'alpha' is real .*complex value"):
        prog(alpha=1 + 2j)
    with pytest.raises(TypeError, match=r"param 'steer' is real"):
        prog.batched(steer=np.zeros((2, 64), dtype=np.complex64))
    with model.trace(TOKENS, capture="saved") as tr:
        model.layers[1].output = model.layers[1].output * mt.param("n", 2)
        model.output.save("logits")
    with pytest.raises(TypeError, match=r"param 'n' is mlx.core.int32 \(recorded from a Python int\); got a "
                                        r"mlx.core.float32 value, which would be truncated"):
        tr.program()(n=0.5)


def test_vmap_over_a_program_saving_one_value_twice(model):
    """Two saves of one value are one array among the outputs; MLX's vmap moved its mapped axis to the front
    once per occurrence, so the second save came back permuted ((64, 3, 1, 6) for (3, 1, 6, 64))."""
    with model.trace(TOKENS, capture="saved") as tr:
        model.layers[1].output = mt.param("fill", 0.5)  # a broadcast number: its mapped axis is not first
        model.layers[1].output.save("a")
        model.layers[1].output.save("b")
        model.output.save("logits")
    prog = tr.program()
    fills = mx.array([0.5, 1.0, -2.0])
    out = mx.vmap(lambda f: prog.fn(params={"fill": f}))(fills)
    for j in range(3):
        one = prog(fill=fills[j].item())
        for key in ("a", "b", "logits"):
            assert out[key].shape == (3,) + one[key].shape, key
            close(out[key][j], one[key])
