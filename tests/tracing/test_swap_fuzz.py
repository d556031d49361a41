"""Differential fuzzing across module swaps: a random program (tests/tracing/test_reference_fuzz.py's
generator) runs on a model, then modules are replaced between runs (an MLP by one with other weights, a
layer by a new one, a layer or the whole model quantized with ``nn.quantize``, a linear wrapped in a
LoRA-style module), and every executor must then give what the hand-written forward (tests/reference.py)
gives on a float copy of the swapped model: traces of the structure seen before the swap, eager and
compiled, and the program recorded before it, replayed (compiled), as ``prog.fn`` and folded
(``prog.batched``)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from mlxterp import InterpretableModel
from tests.models import LoRALinear
from tests.fuzz import LAYERS, VOCAB, fuzz_module, programs, run_reference, run_trace, values_for


LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
SWAPS = ("new_mlp", "new_layer", "quantize_layer", "quantize_all", "lora")


def swap(raw: nn.Module, kind: str, layer: int, choice: int) -> None:
    """Replace modules of ``raw`` in place (see the module docstring)."""
    mx.random.seed(choice)
    block = raw.model.layers[layer]
    if kind == "new_mlp":
        block.mlp = llama.MLP(raw.args)
    elif kind == "new_layer":
        raw.model.layers[layer] = llama.TransformerBlock(raw.args)
    elif kind == "quantize_layer":
        nn.quantize(block, group_size=32, bits=(4, 8)[choice % 2])
    elif kind == "quantize_all":
        nn.quantize(raw.model, group_size=32, bits=(4, 8)[choice % 2])
    else:
        parent, _, name = LINEARS[choice % len(LINEARS)].rpartition(".")
        holder = block[parent]
        holder[name] = LoRALinear(holder[name], seed=choice)
    mx.eval(raw.parameters())


def float_weight(module: nn.Module) -> mx.array:
    """A module's weight in float: quantized ones dequantized, LoRA wrappers merged."""
    if isinstance(module, LoRALinear):
        return float_weight(module.base) + module.delta()
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits)
    return module.weight


def float_copy(raw: nn.Module) -> nn.Module:
    """A plain float llama computing what ``raw`` (swapped) computes, for the hand-written forward."""
    copy = llama.Model(raw.args)
    modules = dict(raw.named_modules())
    weights = []
    for key, _ in tree_flatten(copy.parameters()):
        path, name = key.rsplit(".", 1)
        weights.append((key, float_weight(modules[path]) if name == "weight" else modules[path][name]))
    copy.load_weights(weights)
    mx.eval(copy.parameters())
    return copy


def close(got, expected, what):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * scale, err_msg=what)


def check(got_logits, got_saves, expected, what):
    logits, saves = expected
    close(got_logits, logits, "logits " + what)
    assert set(got_saves) == set(saves), what
    for key in saves:
        close(got_saves[key], saves[key], f"save {key} " + what)


def run_library(model, tokens, program, values, compile):
    """The program in a trace: its logits and saves."""
    run = run_trace(model, tokens, program, values, compile)
    return run.logits, run.saves


def check_program(prog, expected, what):
    for name, out in (("replay", prog()), ("fn", prog.fn())):
        check(out["logits"], {k: v for k, v in out.items() if k != "logits"}, expected, f"{name} {what}")
    if not prog.params:
        return
    twice = {name: mx.stack([mx.array(spec.default)] * 2) for name, spec in prog.params.items()}
    folded = prog.batched(**twice)
    for row in range(2):
        check(folded["logits"][row], {k: v[row] for k, v in folded.items() if k != "logits"}, expected,
              f"batched row {row} " + what)


FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(program=programs(), swaps=st.lists(st.tuples(st.sampled_from(SWAPS), st.integers(0, LAYERS - 1),
                                                    st.integers(0, 10_000)), min_size=1, max_size=2),
       seq=st.integers(2, 6), batch=st.integers(1, 2), seeds=st.tuples(st.integers(0, 99), st.integers(100, 199)))
def test_every_executor_follows_swapped_modules(program, swaps, seq, batch, seeds):
    raw = fuzz_module()
    model = InterpretableModel(raw)
    tokens = mx.array(np.random.default_rng(seq * 7 + batch).integers(1, VOCAB, size=(batch, seq)), dtype=mx.int32)
    first, second = values_for(program, seeds[0]), values_for(program, seeds[1])
    prog = run_trace(model, tokens, program, first, False).trace.program()
    run_library(model, tokens, program, first, True)  # the structure is cached, and compiled
    changes = 0
    for n, (kind, layer, choice) in enumerate(swaps):
        before = [(path, id(module)) for path, module in raw.named_modules()]
        swap(raw, kind, layer, choice)
        changes += before != [(path, id(module)) for path, module in raw.named_modules()]  # quantizing twice is not
        reference = float_copy(raw)
        what = f"after swaps {swaps[:n + 1]} program={program}"
        expected = run_reference(reference, tokens, program, second)
        for compile in (False, True):
            check(*run_library(model, tokens, program, second, compile), expected, f"compile={compile} {what}")
        check_program(prog, run_reference(reference, tokens, program, first), what)
    assert model.compile_stats()["tree_changes"] == changes
