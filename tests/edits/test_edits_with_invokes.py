"""Edits and ``interventions=`` in traces with invokes: each invoke gets the model's edits, then the trace's
``interventions=``, on its own view, as it begins, so positions (``[:, -1]``), shapes and index checks are
its prompt's alone. Checked against the hand-written forward (tests/reference.py) run on each prompt alone
with the same hooks, eager and compiled, and as programs (replayed, prompts replaced, folded)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import interventions as iv
from tests.reference import llama_forward

PROMPTS = ["hello there", "hi", "abcdefg"]  # 12, 3 and 8 tokens (CharTokenizer: BOS + chars): right-padded
V = mx.random.normal((64,), key=mx.random.key(5))


def ids(model, text):
    return mx.array([model.tokenizer.encode(text)])


def at_last(fn):
    """A hook changing the last position only (of the value's own token axis 1)."""
    def hook(x):
        x = mx.array(x)
        x[:, -1] = fn(x[:, -1])
        return x
    return hook


def weigh_positions(x):
    """An intervention that reads its activation's shape: position i of n scaled by (i + 1) / n."""
    n = x.shape[1]
    return x * ((mx.arange(n) + 1) / n)[:, None]


def zero_head(x, head):
    x = mx.array(x)
    x[:, :, head] = 0.0
    return x


def scale_last_by_pattern(values):
    """Heads at the last position scaled by the last query's attention to the first key, per head."""
    def hook(site, x):
        if site == ("pattern", 1):
            values["pattern"] = x
        if site == ("heads", 1):
            x = mx.array(x)
            x[:, -1] = x[:, -1] * values["pattern"][:, :, -1, 0][:, :, None]
        return x
    return hook


def record_pattern_edit(model):
    with model.edit() as ed:
        w = model.layers[1].attn.pattern[:, :, -1, 0]
        model.layers[1].attn.heads[:, -1] = model.layers[1].attn.heads[:, -1] * w[:, :, None]
    return ed.model


def record_last_zero(model):
    with model.edit() as ed:
        model.layers[1].output[:, -1] = 0.0
    return ed.model


def weight_then_recorded(model):
    halved = model.edit_weights({"layers.1.mlp.down_proj.weight": lambda w: w * 0.5})
    with halved.edit() as ed:
        halved.layers[2].output[:, 0] = halved.layers[2].output[:, 0] + V
    return ed.model


def reads_its_own_write(model):
    with model.edit() as ed:
        h = model.layers[1].output
        h[:, -1] = 0.0
        model.layers[1].output = h  # the written value, written again
        model.layers[2].output = model.layers[2].output + model.layers[1].output * 0.5  # read after the write
    return ed.model


def reads_its_own_write_hook(values):
    def hook(site, x):
        if site == ("layer", 1):
            x = values["h1"] = at_last(mx.zeros_like)(x)
        if site == ("layer", 2):
            x = x + values["h1"] * 0.5
        return x
    return hook


def scale_then_last_zero(model):
    with model.edit({"layers.1": iv.scale(0.5)}).edit() as ed:  # position-wise first: on the whole batch
        model.layers[1].output[:, -1] = 0.0
    return ed.model


def last_zero_then_add(model):
    return record_last_zero(model).edit({"layers.1": iv.add_vector(V)})  # position-wise after: on each view


# name -> (the edited model, the same edits as hooks of the hand-written forward {site: fn})
EDITS = {
    "recorded write at [:, -1]": (record_last_zero, {("layer", 1): at_last(mx.zeros_like)}),
    "recorded edit reading the pattern": (record_pattern_edit, scale_last_by_pattern),
    "heads zeroed (reads shapes)": (lambda m: m.edit({"layers.2.attn.heads": iv.zero_out_heads([1])}),
                                    {("heads", 2): lambda x: zero_head(x, 1)}),
    "a function of the positions": (lambda m: m.edit({"layers.1": weigh_positions}), {("layer", 1): weigh_positions}),
    "position-wise (the issue's example)": (lambda m: m.edit({"layers.1": iv.scale(0.5)}),
                                            {("layer", 1): lambda x: x * 0.5}),
    "position-wise, then a recorded write": (scale_then_last_zero, {("layer", 1): lambda x: at_last(mx.zeros_like)(
        x * 0.5)}),
    "a recorded write, then position-wise": (last_zero_then_add, {("layer", 1): lambda x: at_last(mx.zeros_like)(x)
                                                                  + V}),
    "a recorded edit reading its own write": (reads_its_own_write, reads_its_own_write_hook),
    "a weight edit, then a recorded one": (weight_then_recorded,
                                           {("layer", 2): lambda x: mx.concatenate([x[:, :1] + V, x[:, 1:]], 1)}),
}


def edited_and_hook(model, case):
    make, hooks = EDITS[case]
    edited = make(model)
    if callable(hooks):  # a hook that keeps values between sites
        return edited, hooks({})
    return edited, lambda site, x: hooks[site](x) if site in hooks else x


def reference(module, tokens, hook, reads=()):
    """The hand-written forward with ``hook``; returns the logits and the values at ``reads``."""
    got = {}

    def at(site, x):
        x = hook(site, x)
        if site in reads:
            got[site] = x
        return x

    return llama_forward(module, tokens, at), got


def close(got, expected, tol=1e-4):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max())))


def invoke_trace(model, prompts=PROMPTS, compile=False, **kwargs):
    """Every prompt an invoke; each saves its logits and its layer-2 output."""
    with model.trace(compile=compile, capture="saved", **kwargs) as tr:
        for k, prompt in enumerate(prompts):
            with tr.invoke(prompt, name=f"p{k}"):
                model.layers[2].output.save(f"h{k}")
                model.output.save(f"out{k}")
    return tr


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("case", list(EDITS))
def test_each_invoke_gets_the_edits_as_its_prompt_alone(model, case, compile):
    edited, hook = edited_and_hook(model, case)
    tr = invoke_trace(edited, compile=compile)
    for k, prompt in enumerate(PROMPTS):
        logits, got = reference(edited.model, ids(model, prompt), hook, reads={("layer", 2)})
        close(tr.saved_values[f"out{k}"], logits)
        close(tr.saved_values[f"h{k}"], got[("layer", 2)])
    assert not np.allclose(np.array(tr.saved_values["out1"]), np.array(model.model(ids(model, PROMPTS[1]))),
                           atol=1e-3)  # the edit does something to the shortest prompt


def test_position_wise_edits_coming_first_are_recorded_once_on_the_whole_batch(model):
    """Every row gets what its prompt alone gets from them on the batch value: no row write per invoke (K
    row writes of one value cost K copies of it)."""
    from mlxterp.compiler import Op

    for edited, whole in ((scale_then_last_zero(model), True), (last_zero_then_add(model), False)):
        graph = invoke_trace(edited).graph
        scaled = [n for n in graph if n.op is Op.BINARY and n.target == "mul" and "invoke" not in n.meta]
        added = [n for n in graph if n.op is Op.BINARY and n.target == "add"]
        assert (len(scaled), len(added)) == ((1, 0) if whole else (0, len(PROMPTS)))


@pytest.mark.parametrize("compile", [False, True])
def test_interventions_reading_shapes_and_positions_apply_to_each_invoke(model, compile):
    """interventions= functions that read the activation's shape, index positions from the end, or check
    head indices against the shape: each invoke's own (before: the padded batch's, or refused)."""
    interventions = {"layers.1": weigh_positions, "layers.2": at_last(lambda h: h * 3.0),
                     "layers.3.attn.heads": iv.zero_out_heads([2])}
    hooks = {("layer", 1): weigh_positions, ("layer", 2): at_last(lambda h: h * 3.0),
             ("heads", 3): lambda x: zero_head(x, 2)}
    tr = invoke_trace(model, compile=compile, interventions=interventions)
    for k, prompt in enumerate(PROMPTS):
        logits, _ = reference(model.model, ids(model, prompt), lambda s, x: hooks[s](x) if s in hooks else x)
        close(tr.saved_values[f"out{k}"], logits)


def test_edits_then_interventions_then_the_block_in_each_invoke(model):
    edited = model.edit({"layers.1": at_last(lambda h: h + V)})
    with edited.trace(capture="saved", interventions={"layers.1": iv.scale(2.0)}) as tr:
        seen = []
        for prompt in PROMPTS:
            with tr.invoke(prompt):
                seen.append(edited.layers[1].output.save())  # after the edit and the intervention
                edited.layers[1].output[:, 0] = 0.0  # the block writes last
                edited.output.save()
    for k, prompt in enumerate(PROMPTS):
        def hook(site, x):
            return at_last(lambda h: h + V)(x) * 2.0 if site == ("layer", 1) else x
        _, got = reference(model.model, ids(model, prompt), hook, reads={("layer", 1)})
        close(seen[k], got[("layer", 1)])
        written = mx.concatenate([mx.zeros_like(got[("layer", 1)][:, :1]), got[("layer", 1)][:, 1:]], axis=1)
        close(tr.invokes[k].output, reference(model.model, ids(model, prompt),
                                              lambda s, x: written if s == ("layer", 1) else x)[0])


def test_an_invoke_of_several_prompts_gets_the_edit_as_that_batch_alone(model):
    edited = record_last_zero(model)
    pair = ["abc", "abcdefg"]
    with edited.trace(capture="saved") as tr:
        with tr.invoke(PROMPTS[0]):
            edited.output.save("a")
        with tr.invoke(pair):
            b = edited.output.save("b")
    with edited.trace(pair, capture="saved"):  # [:, -1] is the pair's padded last column, as in any trace
        alone = edited.output.save()
    close(b, alone)
    close(tr.saved_values["a"], reference(model.model, ids(model, PROMPTS[0]),
                                          lambda s, x: at_last(mx.zeros_like)(x) if s == ("layer", 1) else x)[0])


# -- programs ------------------------------------------------------------------------------------------


def steer_last(model):
    """A recorded edit with a named param: the last position of layer 1 steered by alpha * V."""
    with model.edit() as ed:
        alpha = mt.param("alpha", 1.0)
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + alpha * V
    return ed.model


def steered(model, prompt, alpha):
    hook = at_last(lambda h: h + alpha * V)
    return reference(model.model, ids(model, prompt), lambda s, x: hook(x) if s == ("layer", 1) else x)[0]


def test_a_program_replays_the_edits_with_prompts_replaced_by_name(model):
    edited = steer_last(model)
    prog = invoke_trace(edited).program()
    assert [n for n in prog.params if not n.startswith("const_")] == ["alpha"]  # one param for every invoke
    for k, prompt in enumerate(PROMPTS):
        close(prog()[f"out{k}"], steered(model, prompt, 1.0))
    new = ["a much longer prompt", "hey", "xy"]  # other lengths: the views and the edit's writes laid out again
    out = prog(p0=new[0], p1=new[1], p2=new[2], alpha=2.5)
    for k, prompt in enumerate(new):
        close(out[f"out{k}"], steered(model, prompt, 2.5))


def test_a_folded_program_of_an_edited_invoke_trace(model):
    edited = steer_last(model)
    prog = invoke_trace(edited).program()
    alphas = mx.array([0.0, -1.0, 3.0])
    folded = prog.batched(alpha=alphas, p1="hello")
    for j in range(3):
        for k, prompt in enumerate([PROMPTS[0], "hello", PROMPTS[2]]):
            close(folded[f"out{k}"][j], steered(model, prompt, alphas[j].item()))


def test_an_edited_invoke_program_under_vmap_and_grad(model):
    prog = invoke_trace(steer_last(model)).program()
    alphas = mx.array([0.5, 2.0])
    mapped = mx.vmap(lambda a: prog.fn(params={"alpha": a})["out1"])(alphas)
    for j in range(2):
        close(mapped[j], steered(model, PROMPTS[1], alphas[j].item()))

    def last_logit(alpha, prompt):
        return steered(model, prompt, alpha)[0, -1, 3]

    grad = mx.grad(lambda a: sum(prog.fn(params={"alpha": a})[f"out{k}"][0, -1, 3] for k in range(3)))(mx.array(1.5))
    want = sum(mx.grad(lambda a, p=p: last_logit(a, p))(mx.array(1.5)) for p in PROMPTS)
    close(grad, want, tol=1e-3)


def test_an_edits_constant_is_one_param_of_the_invoke_program(model):
    """The edit's vector is one param (as in a trace without invokes), so replacing it changes every invoke."""
    edited = model.edit({"layers.1": iv.add_vector(V)})
    prog = invoke_trace(edited).program()
    with edited.trace(PROMPTS[0], capture="saved") as plain:
        edited.output.save()
    assert list(prog.params) == list(plain.program().params) == ["const_0"]
    other = mx.random.normal((64,), key=mx.random.key(9))
    out = prog(const_0=other)
    for k, prompt in enumerate(PROMPTS):
        close(out[f"out{k}"], reference(model.model, ids(model, prompt),
                                        lambda s, x: x + other if s == ("layer", 1) else x)[0])


def test_edited_models_of_one_structure_share_the_compiled_invoke_program(model):
    for k in range(3):
        with model.edit() as ed:  # the same structure, another vector: no retrace
            model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + k * V
        tr = invoke_trace(ed.model, compile=True)
        for j, prompt in enumerate(PROMPTS):
            close(tr.saved_values[f"out{j}"], steered(model, prompt, float(k)))
    assert model.compile_stats()["traces"] == 1 and model.compile_stats()["compiled_runs"] == 3


# -- errors --------------------------------------------------------------------------------------------


def test_a_recorded_index_is_checked_against_each_invokes_own_length(model, tokens):
    with model.edit() as ed:
        model.layers[1].output[:, 5] = 0.0  # the edit's line
    line = test_a_recorded_index_is_checked_against_each_invokes_own_length.__code__.co_firstlineno + 2
    with pytest.raises(IndexError, match=rf"index 5 is out of range.*length 3.*:{line}"):
        with ed.model.trace() as tr:
            with tr.invoke(PROMPTS[0]):  # 12 tokens: fine
                ed.model.output.save()
            with tr.invoke("hi"):  # 3 tokens: refused, as ed.model.trace("hi") refuses it
                ed.model.output.save()
    with model.trace(tokens, capture="saved"):  # the model is whole
        out = model.output.save()
    assert mx.array_equal(out, model.model(tokens))
