"""Invokes: several prompts in one trace (``with tr.invoke(prompt):``), one right-padded batch.

Each invoke must equal the same computation written as a trace of its own (eager, compiled, as a program),
and the hand-written forward run on its prompt alone (tests/reference.py)."""

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import interventions as iv
from mlxterp.compiler import CausalityError, ShapeMismatchError
from mlxterp.tracing.invoke import InvokeError
from tests.reference import llama_forward
from tests.tracing.test_restoration import assert_restored, snapshot

CLEAN, CORRUPT = "The capital of France is", "Rome is in"  # 25 and 11 tokens (CharTokenizer: BOS + chars)


def ids(model, text):
    return mx.array([model.tokenizer.encode(text)])


def reference(model, tokens, writes=None, reads=()):
    """The hand-written forward with ``writes[site](value)`` applied; returns the logits and ``reads``."""
    got = {}

    def hook(site, value):
        if writes and site in writes:
            value = writes[site](value)
        if site in reads:
            got[site] = value
        return value

    return llama_forward(model.model, tokens, hook), got


def patch_at(position, new):
    def write(value):
        value = mx.array(value)
        value[:, position] = new
        return value

    return write


def close(a, b, tol=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def issue_example(model, compile):
    with model.trace(compile=compile, capture="saved") as tr:
        with tr.invoke(CLEAN, name="clean"):
            clean = model.layers[2].output[:, 3]
            clean_logits = model.output.save("clean_logits")
        with tr.invoke(CORRUPT, name="patched"):
            model.layers[2].output[:, 3] = clean  # row 1 reads row 0: same layer, one forward
            patched = model.output.save("patched")
    return tr, clean_logits, patched


# -- equal to separate traces and to the hand-written forward ------------------------------------------


@pytest.mark.parametrize("compile", [False, True])
def test_cross_invoke_patch_equals_two_traces_and_the_reference(model, compile):
    tr, clean_logits, patched = issue_example(model, compile)
    assert tr.tokens.shape == (2, 25) and tr.lengths == (25, 11)
    assert patched.shape == (1, 11, 128) and clean_logits.shape == (1, 25, 128)
    with model.trace(CLEAN, capture="saved", compile=compile):
        h = model.layers[2].output[:, 3].save()
    with model.trace(CORRUPT, capture="saved", compile=compile):
        model.layers[2].output[:, 3] = h
        alone = model.output.save()
    close(patched, alone)
    ref_clean, got = reference(model, ids(model, CLEAN), reads={("layer", 2)})
    ref_patched, _ = reference(model, ids(model, CORRUPT), {("layer", 2): patch_at(3, got[("layer", 2)][:, 3])})
    close(clean_logits, ref_clean)
    close(patched, ref_patched)


def test_invoke_values_have_the_prompt_alone_shapes(model):
    with model.trace(capture="saved") as tr:
        with tr.invoke(CLEAN):
            assert model.layers[1].output.shape == (1, 25, 64)
            pattern = model.layers[1].attn.pattern.save("p0")
        with tr.invoke(CORRUPT):
            assert model.layers[1].output.shape == (1, 11, 64)
            assert model.layers[1].attn.pattern.shape == (1, 4, 11, 11)  # both token axes cut
            last = model.layers[1].output[:, -1].save("last")  # its own last token, not padding
            pattern_b = model.layers[1].attn.pattern.save("p1")
            q = model.layers[1].attn.q.save("q1")
    _, got = reference(model, ids(model, CORRUPT), reads={("layer", 1), ("pattern", 1), ("q", 1)})
    _, got_a = reference(model, ids(model, CLEAN), reads={("pattern", 1)})
    close(last, got[("layer", 1)][:, -1])
    close(pattern_b, got[("pattern", 1)])
    close(q, got[("q", 1)])
    close(pattern, got_a[("pattern", 1)])


def test_an_invoke_of_several_prompts_is_its_own_padded_batch(model):
    prompts = ["abc", "abcdefg"]
    with model.trace(capture="saved") as tr:
        with tr.invoke(CLEAN):
            a = model.layers[3].output.save()
        with tr.invoke(prompts, name="pair"):
            assert model.layers[3].output.shape == (2, 8, 64)
            model.layers[0].output[:, 1] = 0.0
            b = model.layers[3].output.save()
    assert tr.lengths == (25, 4, 8) and tr.invokes[1].rows == slice(1, 3)
    with model.trace(prompts, capture="saved"):
        model.layers[0].output[:, 1] = 0.0
        alone = model.layers[3].output.save()
    close(b, alone)
    close(a, reference(model, ids(model, CLEAN), reads={("layer", 3)})[1][("layer", 3)])


@pytest.mark.parametrize("compile", [False, True])
def test_every_kind_of_write_inside_invokes_matches_the_reference(model, compile):
    """Whole writes of a number and of an array, item writes, an input write, resid_mid and an attention
    internal, each in its own invoke; another invoke in between is untouched."""
    texts = ["abcde", "xyz", "hello world", "q"]
    v = mx.arange(64, dtype=mx.float32) / 64
    with model.trace(compile=compile, capture="saved") as tr:
        with tr.invoke(texts[0]):
            model.layers[0].output = 0.5
            model.layers[1].mlp.output[:, -1] = v
            a = model.output.save("a")
        with tr.invoke(texts[1]):
            b = model.output.save("b")
        with tr.invoke(texts[2]):
            model.layers[2].input = model.layers[2].input * 2.0
            model.layers[2].resid_mid[:, 1:3] = model.layers[2].resid_mid[:, 1:3] + v
            c = model.output.save("c")
        with tr.invoke(texts[3]):
            model.layers[1].attn.heads[:, :, 2] = 0.0
            model.layers[3].output = model.layers[3].output + v
            d = model.output.save("d")

    def fill(x):
        return mx.full(x.shape, 0.5, x.dtype)

    def heads(x):
        x = mx.array(x)
        x[:, :, 2] = 0.0
        return x

    def mid(x):
        x = mx.array(x)
        x[:, 1:3] = x[:, 1:3] + v
        return x

    expect = [
        {("layer", 0): fill, ("mlp", 1): patch_at(-1, v)},
        {},
        {("layer_in", 2): lambda x: x * 2.0, ("resid_mid", 2): mid},
        {("heads", 1): heads, ("layer", 3): lambda x: x + v},
    ]
    for got, text, writes in zip((a, b, c, d), texts, expect):
        if ("resid_mid", 2) in writes:  # the library writes resid_mid as the layer's output + (new - old)
            continue
        close(got, reference(model, ids(model, text), writes)[0])
    # resid_mid: the same as a trace of its own (its reference is in the write-kinds tests)
    with model.trace(texts[2], capture="saved", compile=compile):
        model.layers[2].input = model.layers[2].input * 2.0
        model.layers[2].resid_mid[:, 1:3] = model.layers[2].resid_mid[:, 1:3] + v
        alone = model.output.save()
    close(c, alone)


def test_a_read_across_invokes_at_one_module_sees_the_value_before_or_after_writes(model):
    """Invoke 1 reads invoke 0's layer value after invoke 0 wrote it (a later version of the same
    batch value); invoke 2 reads invoke 0's value from before the write."""
    with model.trace(capture="saved") as tr:
        with tr.invoke("abcdef"):
            before = model.layers[1].output[:, 2]
            model.layers[1].output[:, 2] = before * 3.0
            after = model.layers[1].output[:, 2]
        with tr.invoke("uvwxyz"):
            model.layers[1].output[:, 4] = after
            x = model.output.save("x")
        with tr.invoke("ghijkl"):
            model.layers[1].output[:, 4] = before
            y = model.output.save("y")
    _, got = reference(model, ids(model, "abcdef"), reads={("layer", 1)})
    h = got[("layer", 1)][:, 2]
    close(x, reference(model, ids(model, "uvwxyz"), {("layer", 1): patch_at(4, h * 3.0)})[0])
    close(y, reference(model, ids(model, "ghijkl"), {("layer", 1): patch_at(4, h)})[0])


def test_interventions_apply_to_every_invoke(model):
    with model.trace(interventions={"layers.1": iv.scale(0.5)}, capture="saved") as tr:
        with tr.invoke(CLEAN):
            a = model.layers[2].output.save()
        with tr.invoke(CORRUPT):
            b = model.layers[2].output.save()
    for got, text in ((a, CLEAN), (b, CORRUPT)):
        ref = reference(model, ids(model, text), {("layer", 1): lambda x: x * 0.5}, reads={("layer", 2)})[1]
        close(got, ref[("layer", 2)])


def test_saves_are_named_after_their_invoke_and_outputs_are_each_invokes_rows(model):
    with model.trace() as tr:
        with tr.invoke(CLEAN) as first:
            model.layers[1].output.save()
            model.output[:, -1].save("mine")
        with tr.invoke(CORRUPT, name="other") as second:
            model.layers[1].output.save()
    assert set(tr.saved_values) == {"invoke_0.layers.1.output", "mine", "other.layers.1.output"}
    assert [i.name for i in tr.invokes] == ["invoke_0", "other"] and tr.output.shape == (2, 25, 128)
    assert first.output.shape == (1, 25, 128) and second.output.shape == (1, 11, 128)
    close(second.output, reference(model, ids(model, CORRUPT))[0])
    assert mx.array_equal(tr.saved_values["mine"], first.output[:, -1])


# -- programs ------------------------------------------------------------------------------------------


def test_a_program_replays_invokes_and_replaces_prompts_by_name(model):
    tr, _, patched = issue_example(model, False)
    prog = tr.program()
    assert list(prog.invokes) == ["clean", "patched"]
    close(prog()["patched"], patched)
    for clean, corrupt in [("The capital of Spain is!", CORRUPT), ("Paris!", "Rome is nice")]:
        out = prog(clean=clean, patched=corrupt) if corrupt != CORRUPT else prog(clean=clean)
        _, got = reference(model, ids(model, clean), reads={("layer", 2)})
        ref = reference(model, ids(model, corrupt), {("layer", 2): patch_at(3, got[("layer", 2)][:, 3])})[0]
        close(out["patched"], ref)
        close(out["clean_logits"], reference(model, ids(model, clean))[0])


def test_programs_of_invokes_fold_and_vmap_constant_and_mapped_writes(model):
    """Params inside invokes, batched into K variants and under mx.vmap; the number write of invoke 0 is
    the same for every variant (MLX's vmap of an item write with an unmapped value wrote variant 0 only)."""
    with model.trace(capture="saved") as tr:
        with tr.invoke(CLEAN):
            alpha = mt.param("alpha", 1.0)
            model.layers[0].output = 0.25
            model.layers[1].output = model.layers[1].output * alpha
            model.output[:, -1].save("a")
        with tr.invoke(CORRUPT):
            model.layers[2].output[:, -1] = mt.param("steer", mx.zeros(64))
            model.output[:, -1].save("b")
    prog = tr.program()
    vectors, alphas = mx.random.normal((3, 64), key=mx.random.key(1)), mx.array([0.5, 1.0, 2.0])
    folded = prog.batched(steer=vectors, alpha=alphas)
    mapped = mx.vmap(lambda s, a: prog.fn(params={"steer": s, "alpha": a}))(vectors, alphas)
    for k in range(3):
        a = reference(model, ids(model, CLEAN), {("layer", 0): lambda x: mx.full(x.shape, 0.25, x.dtype),
                                                 ("layer", 1): lambda x, k=k: x * alphas[k]})[0][:, -1]
        b = reference(model, ids(model, CORRUPT), {("layer", 2): patch_at(-1, vectors[k])})[0][:, -1]
        for out in (folded, mapped):
            close(out["a"][k], a)
            close(out["b"][k], b)
    # a new prompt for one invoke (another length): laid out again under fold and as prog.fn's params
    folded = prog.batched(invoke_1="Paris is", steer=vectors[:2])
    single = prog.fn(params={"invoke_1": "Paris is", "steer": vectors[1]})
    for k, out in ((0, folded["b"][0]), (1, folded["b"][1]), (1, single["b"])):
        close(out, reference(model, ids(model, "Paris is"), {("layer", 2): patch_at(-1, vectors[k])})[0][:, -1])


def test_program_inputs_are_checked(model):
    tr, _, _ = issue_example(model, False)
    prog = tr.program()
    with pytest.raises(ValueError, match="recorded with 1 prompt"):
        prog(clean=["ab", "cd"])
    with pytest.raises(ValueError, match=r"shaped as recorded \(2, 25\)"):
        prog(tokens=mx.zeros((2, 7), dtype=mx.int32))
    with pytest.raises(TypeError, match="not both"):
        prog(tokens=tr.tokens, clean="abc")
    with pytest.raises(TypeError, match="no param 'dirty'"):
        prog(dirty="abc")


# -- a patching sweep written with invokes --------------------------------------------------------------


def test_a_patching_sweep_with_invokes_equals_activation_patching(model):
    clean, corrupt = "The cat sat", "The dog sat"
    layers = len(model.layers)
    with model.trace(capture="saved") as tr:
        with tr.invoke(clean):
            mlps = [model.layers[i].mlp.output for i in range(layers)]
            ref = model.output[:, -1]
        with tr.invoke(corrupt):
            base = model.output[:, -1]
        patched = []
        for i in range(layers):
            with tr.invoke(corrupt):
                model.layers[i].mlp.output = mlps[i]
                patched.append(model.output[:, -1])
        d0 = mt.apply(mx.linalg.norm, base - ref).save("d0")
        ds = [mt.apply(mx.linalg.norm, p - ref).save(f"d{i + 1}") for i, p in enumerate(patched)]
    assert tr.tokens.shape[0] == layers + 2
    expected = model.activation_patching(clean, corrupt, component="mlp", metric="l2")
    for i in range(layers):
        got = (d0.item() - ds[i].item()) / d0.item() * 100.0
        assert abs(got - expected[i]) < 1e-3, (i, got, expected[i])


# -- bad input -----------------------------------------------------------------------------------------


def test_an_invoke_outside_its_trace_is_refused(model):
    tr = model.trace()
    with pytest.raises(InvokeError, match="never entered"):
        tr.invoke(CLEAN)
    with tr:
        with tr.invoke(CLEAN):
            model.output.save()
    with pytest.raises(InvokeError, match="it has ended"):
        tr.invoke(CLEAN)


def test_nested_invokes_and_invokes_of_a_trace_with_inputs_are_refused(model):
    with pytest.raises(InvokeError, match="do not nest"):
        with model.trace() as tr:
            with tr.invoke(CLEAN):
                with tr.invoke(CORRUPT):
                    pass
    with pytest.raises(InvokeError, match="opened without inputs"):
        with model.trace(CLEAN) as tr:
            with tr.invoke(CORRUPT):
                pass


def test_writes_to_rows_an_invoke_does_not_have_are_refused_at_the_line(model):
    with pytest.raises(IndexError, match="axis 0 of layers.1 output, which has length 1"):
        with model.trace() as tr:
            with tr.invoke(CLEAN):
                model.layers[1].output[1] = 0.0
    with pytest.raises(IndexError, match=r"selects no row .* 'invoke_0', which has 1 row"):
        with model.trace() as tr:
            with tr.invoke(CLEAN):
                model.layers[1].output[1:, 0] = 0.0
    with pytest.raises(ShapeMismatchError, match=r"invoke's value has shape \(1, 11, 64\).*test_invokes.py"):
        with model.trace() as tr:
            with tr.invoke(CLEAN):
                pass
            with tr.invoke(CORRUPT):
                model.layers[1].output = mx.zeros((2, 11, 64))


def test_writing_another_invokes_value_is_refused(model):
    """Its rows are not the open invoke's: with prompts of one length it would land in the wrong rows."""
    with pytest.raises(InvokeError, match="output of layers.1 of invoke 'a' is written inside invoke 'b'"):
        with model.trace() as tr:
            with tr.invoke("abcd", name="a"):
                h = model.layers[1].output
            with tr.invoke("efgh", name="b"):
                h[:, 0] = 0.0
    with pytest.raises(InvokeError, match="outside any invoke"):
        with model.trace() as tr:
            with tr.invoke("abcd", name="a"):
                h = model.layers[1].output
            h[:, 0] = 0.0


def test_module_access_outside_any_invoke_and_a_trace_without_prompts_are_refused(model):
    with pytest.raises(InvokeError, match="output of layers.1 is read or written outside any invoke"):
        with model.trace() as tr:
            with tr.invoke(CLEAN):
                pass
            model.layers[1].output.save()
    with pytest.raises(InvokeError, match="layers.0.self_attn.q is read or written outside any invoke"):
        with model.trace():
            model.layers[0].attn.q.save()
    with pytest.raises(ValueError, match="no inputs and its block opened no invoke"):
        with model.trace():
            pass


def test_names_are_checked(model):
    for bad, match in [("tokens", "not valid"), ("a b", "not valid"), (3, "not valid")]:
        with pytest.raises(ValueError, match=match):
            with model.trace() as tr:
                tr.invoke(CLEAN, name=bad)
    with pytest.raises(ValueError, match="already used by an invoke"):
        with model.trace() as tr:
            with tr.invoke(CLEAN, name="x"):
                pass
            with tr.invoke(CORRUPT, name="x"):
                pass
    with pytest.raises(ValueError, match="'x' is already used"):
        with model.trace() as tr:
            with tr.invoke(CLEAN, name="x"):
                mt.param("x", 1.0)


def test_a_write_from_another_invokes_later_module_is_refused_naming_both_lines(model):
    with pytest.raises(CausalityError, match=r"invoke 'b' writes the output of layers.1 \(traced at .*test_invokes"
                                             r".*from the output of layers.3 in invoke 'a'"):
        with model.trace() as tr:
            with tr.invoke(CLEAN, name="a"):
                late = model.layers[3].output[:, 2]
            with tr.invoke(CORRUPT, name="b"):
                model.layers[1].output[:, 2] = late


def test_the_model_is_unchanged_after_invoke_errors(model, tokens):
    before, raw = snapshot(model), model.model(tokens)
    for body in (lambda tr: tr.invoke(CLEAN, name="tokens"), lambda tr: model.layers[0].output):
        with pytest.raises((ValueError, InvokeError)):
            with model.trace() as tr:
                body(tr)
    with pytest.raises(CausalityError):
        with model.trace(compile=True) as tr:
            with tr.invoke(CLEAN):
                late = model.layers[3].output[:, 2]
            with tr.invoke(CORRUPT):
                model.layers[1].output[:, 2] = late
    assert_restored(model, before, tokens, raw)


def test_indices_are_checked_after_an_input_write_inside_an_invoke(model):
    """A row write keeps the input's shape, so later indices are still checked against the prompt's."""
    with pytest.raises(IndexError, match="index 11 is out of range for axis 1 of layers.3 output"):
        with model.trace() as tr:
            with tr.invoke(CORRUPT):
                model.layers[1].input = model.layers[1].input * 2.0
                model.layers[3].output[:, 11] = 0.0


@pytest.mark.realmodel
def test_invokes_on_a_real_checkpoint_equal_separate_traces(stories):
    prompts = ["Once upon a time there was a", "The dog ran"]
    with stories.trace(capture="saved") as tr:
        with tr.invoke(prompts[0]):
            h = stories.layers[2].output[:, 2]
            a = stories.output.save("a")
        with tr.invoke(prompts[1]):
            stories.layers[3].output[:, 2] = h
            b = stories.output.save("b")
    assert tr.lengths[0] != tr.lengths[1]
    with stories.trace(prompts[0], capture="saved"):
        h = stories.layers[2].output[:, 2].save()
        a_alone = stories.output.save()
    with stories.trace(prompts[1], capture="saved"):
        stories.layers[3].output[:, 2] = h
        b_alone = stories.output.save()
    close(a, a_alone)
    close(b, b_alone)
