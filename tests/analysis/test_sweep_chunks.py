"""Chunks of a sweep: sized by time (so progress moves and Ctrl-C lands within about a second), bounded in
what they add, and Ctrl-C taken between them with the model whole."""

from __future__ import annotations

import os
import signal
import threading

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlxterp.analysis.sweep as sweep
from mlxterp import InterpretableModel
from mlxterp.analysis import chunks
from mlxterp.analysis.chunks import CHUNK_SECONDS, MAX_OVERHEAD, ForwardTiming, chunk_count, plan_chunks
from mlxterp.interrupts import at_step_end

from .conftest import CLEAN, CORRUPTED, make_llama

LAYERS = 30
CELLS = [(layer, None) for layer in range(LAYERS)]  # activation patching of every layer


def chunk_seconds(chunk, timing: ForwardTiming) -> float:
    return timing.base + timing.row_layer * sum(LAYERS - layer for layer, _ in chunk)


# ---------------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------------
def test_a_fast_sweep_is_one_chunk():
    assert plan_chunks(CELLS, LAYERS, ForwardTiming(0.01, 1e-5), 10_000) == [CELLS]


def test_chunks_stay_under_the_budget_in_order():
    timing = ForwardTiming(0.2, 0.004)  # one chunk: 0.2 + 1.86 s
    parts = plan_chunks(CELLS, LAYERS, timing, 10_000)
    assert len(parts) > 1 and sum(parts, []) == CELLS
    assert max(chunk_seconds(c, timing) for c in parts) <= CHUNK_SECONDS * 1.1


@pytest.mark.parametrize("base, row_layer", [(2.0, 0.03), (0.5, 0.01), (0.9, 0.001), (0.05, 0.02)])
def test_chunking_adds_at_most_the_overhead_bound(base, row_layer):
    timing = ForwardTiming(base, row_layer)
    parts = plan_chunks(CELLS, LAYERS, timing, 10_000)
    one = chunk_seconds(CELLS, timing)
    assert sum(chunk_seconds(c, timing) for c in parts) <= one * (1 + MAX_OVERHEAD) + 1e-9
    assert sum(parts, []) == CELLS


def test_a_slow_machine_gets_fewer_longer_chunks():
    """When the clean and corrupted rows alone take longer than the budget, only the overhead bound limits."""
    assert chunk_count(2.0, 14.0) == 3  # (3 - 1) * 2.0 <= (2.0 + 14.0) / 4
    assert chunk_count(0.2, 0.0) == 1


def test_max_rows_splits_chunks():
    parts = plan_chunks(CELLS, LAYERS, ForwardTiming(0.01, 1e-5), 7)
    assert [len(c) for c in parts] == [7, 7, 7, 7, 2] and sum(parts, []) == CELLS


# ---------------------------------------------------------------------------------------------------
# progress and interrupts on a tiny model
# ---------------------------------------------------------------------------------------------------
class Bar:
    """Stands in for tqdm: records updates, optionally raises at one."""

    def __init__(self, raise_at=None):
        self.updates, self.raise_at = [], raise_at

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.updates.append(n)
        if len(self.updates) == self.raise_at:
            raise KeyboardInterrupt


@pytest.fixture()
def slow(monkeypatch):
    """Make every sweep believe its forwards are slow, so it is split into several chunks."""
    monkeypatch.setattr(chunks, "forward_timing", lambda model, tokens, norm_path=None: ForwardTiming(0.3, 0.1))


def snapshot(model: InterpretableModel):
    classes = {name: type(m) for name, m in model.named_modules()}
    params = {k: np.array(v) for k, v in tree_flatten(model.model.parameters())}
    return classes, params


def assert_unchanged(model: InterpretableModel, before) -> None:
    classes, params = snapshot(model)
    assert classes == before[0]  # no module left hooked
    assert params.keys() == before[1].keys()
    assert all(np.array_equal(params[k], before[1][k]) for k in params)


def test_progress_advances_per_chunk(monkeypatch, slow):
    model = InterpretableModel(make_llama(seed=41))
    want = model.activation_patching(CLEAN, CORRUPTED, batch_size=100)  # one chunk
    bar = Bar()
    monkeypatch.setattr(sweep, "_progress", lambda total, enabled, desc: bar)
    got = model.activation_patching(CLEAN, CORRUPTED, progress=True)
    assert len(bar.updates) > 1 and sum(bar.updates) == len(want)
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-4)


def test_interrupt_from_the_progress_callback_leaves_the_model_whole(monkeypatch, slow):
    model = InterpretableModel(make_llama(seed=42))
    want = model.activation_patching(CLEAN, CORRUPTED)
    before = snapshot(model)
    monkeypatch.setattr(sweep, "_progress", lambda total, enabled, desc: Bar(raise_at=1))
    with pytest.raises(KeyboardInterrupt):
        model.activation_patching(CLEAN, CORRUPTED, progress=True)
    assert_unchanged(model, before)
    monkeypatch.undo()
    again = model.activation_patching(CLEAN, CORRUPTED)
    np.testing.assert_allclose([again[k] for k in want], list(want.values()), atol=1e-4)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="needs POSIX signals")
def test_ctrl_c_mid_chunk_is_taken_when_the_chunk_ends(monkeypatch, slow):
    model = InterpretableModel(make_llama(seed=43))
    want = model.activation_patching(CLEAN, CORRUPTED)
    before = snapshot(model)
    run_chunk, finished = sweep._run_chunk, []

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives as the chunk starts ...
        result = run_chunk(*args, **kwargs)
        finished.append(len(args[3]))  # ... and the chunk still runs to its end
        return result

    monkeypatch.setattr(sweep, "_run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.activation_patching(CLEAN, CORRUPTED)
    assert len(finished) == 1  # taken between the first chunk and the second
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert_unchanged(model, before)
    monkeypatch.undo()
    again = model.activation_patching(CLEAN, CORRUPTED)
    np.testing.assert_allclose([again[k] for k in want], list(want.values()), atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# at_step_end
# ---------------------------------------------------------------------------------------------------
def test_at_step_end_defers_one_interrupt_and_not_two():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with at_step_end():
            os.kill(os.getpid(), signal.SIGINT)
            mx.eval(mx.ones(4))  # bytecodes run: the signal has been handled (recorded) by now
            done.append(1)
    assert done == [1]
    with pytest.raises(KeyboardInterrupt):
        with at_step_end():
            os.kill(os.getpid(), signal.SIGINT)
            mx.eval(mx.ones(4))
            os.kill(os.getpid(), signal.SIGINT)  # pressed twice: taken at once
            mx.eval(mx.ones(4))
            done.append(2)
    assert done == [1] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_at_step_end_elsewhere_than_the_main_thread_changes_nothing():
    seen = []

    def body():
        with at_step_end():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
