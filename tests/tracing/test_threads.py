"""Traces from several threads: each gets exactly its own result (compared with a hand-written reference
forward), forwards of one model are serialised by its lock, different models run concurrently, and a
plain forward in another thread is never intercepted by a running trace's hooks."""

import sys
import threading

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.compiler import is_hooked
from mlxterp.compiler.locks import model_lock
from tests.models import reference_llama_forward, tiny_llama_module

TOKENS = [[1, 5, 9, 13, 17, 21, 25]]


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    """Switch threads every 10 us instead of 5 ms, so that traces really interleave on a small model."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def zero(h):
    return mx.zeros_like(h)


def reference(module, zeroed: bool) -> np.ndarray:
    return np.array(reference_llama_forward(module, mx.array(TOKENS), {1: zero} if zeroed else None))


def traced(model, zeroed: bool, compile) -> tuple[np.ndarray, np.ndarray]:
    """One trace; results are evaluated in the calling thread (MLX arrays belong to their thread's stream)."""
    with model.trace(mx.array(TOKENS), compile=compile, capture="saved"):
        if zeroed:
            model.layers[1].output = model.layers[1].output * 0.0
        layer = model.layers[1].output.save()
        out = model.output.save()
    return np.array(layer), np.array(out)


def run_threads(work, n: int) -> list:
    """Run ``work(k)`` in ``n`` threads started together; re-raise the first failure."""
    start, errors = threading.Barrier(n), []

    def body(k):
        try:
            start.wait()
            work(k)
        except BaseException as e:  # noqa: BLE001 -- handed to the test's thread below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish (deadlock?)"
    if errors:
        raise errors[0]
    return threads


@pytest.mark.parametrize("compile", ["auto", True, False])
def test_concurrent_traces_of_one_model_each_get_their_own_result(llama_module, compile):
    model = InterpretableModel(llama_module)
    refs = {z: reference(llama_module, z) for z in (False, True)}
    mismatches = []

    def work(k):
        for i in range(20):
            zeroed = (k + i) % 2 == 0
            layer, out = traced(model, zeroed, compile)
            if zeroed != (not layer.any()) or not np.allclose(out, refs[zeroed], atol=1e-5):
                mismatches.append((k, i, zeroed))

    run_threads(work, 4)
    assert not mismatches, f"{len(mismatches)} of 80 traces got another trace's result: {mismatches[:5]}"
    stats = model.compile_stats()
    assert stats["hits"] + stats["misses"] == 80 and stats["eager_runs"] + stats["compiled_runs"] == 80, stats
    assert not any(is_hooked(m) for _, m in llama_module.named_modules())


def test_two_models_trace_concurrently():
    modules = [tiny_llama_module(seed=1, layers=2), tiny_llama_module(seed=2, layers=3)]
    models = [InterpretableModel(m) for m in modules]
    refs = [{z: reference(m, z) for z in (False, True)} for m in modules]
    mismatches = []

    def work(k):
        model, ref = models[k % 2], refs[k % 2]
        for i in range(10):
            zeroed = i % 2 == 0
            _, out = traced(model, zeroed, "auto")
            if not np.allclose(out, ref[zeroed], atol=1e-5):
                mismatches.append((k, i))

    run_threads(work, 4)
    assert not mismatches


def test_a_trace_waits_for_another_threads_forward_of_the_same_model(llama_module):
    # Thread A's intervention blocks while A's hooks are installed; meanwhile a plain forward in the test's
    # thread is not intercepted, and thread B's trace of the same model waits for A instead of running
    # through A's hooks. Then both finish with their own results.
    model = InterpretableModel(llama_module)
    inside, release, results = threading.Event(), threading.Event(), {}

    def blocking_zero(h):
        inside.set()
        assert release.wait(30)
        return mx.zeros_like(h)

    def thread_a():
        with model.trace(mx.array(TOKENS), interventions={"layers.1": blocking_zero}, compile=False,
                         capture="saved"):
            out = model.output.save()
        results["a"] = np.array(out)

    def thread_b():
        results["b"] = traced(model, False, False)[1]

    a = threading.Thread(target=thread_a)
    a.start()
    assert inside.wait(30)
    plain = np.array(llama_module(mx.array(TOKENS)))  # while A's hooks are installed
    b = threading.Thread(target=thread_b)
    b.start()
    b.join(timeout=0.5)
    assert b.is_alive() and "b" not in results  # B waits for the model's lock
    release.set()
    a.join(30)
    b.join(30)
    assert np.allclose(plain, reference(llama_module, False), atol=1e-5)
    assert np.allclose(results["a"], reference(llama_module, True), atol=1e-5)
    assert np.allclose(results["b"], reference(llama_module, False), atol=1e-5)


def test_compiled_retrace_in_a_new_thread_that_fails_restores_the_weights(llama_module):
    # MLX keeps compiled traces per thread: a thread's first compiled call traces again, with the weights
    # swapped for placeholders. If that trace raises, the weights must be put back.
    model = InterpretableModel(llama_module)
    main = threading.main_thread()

    def only_on_the_main_thread(h):
        if threading.current_thread() is not main:
            raise RuntimeError("refused off the main thread")
        return h * 0.5

    def trace_once():
        with model.trace(mx.array(TOKENS), interventions={"layers.1": only_on_the_main_thread}, compile=True,
                         capture="saved"):
            model.output.save()

    trace_once()  # traced and cached on the main thread
    with pytest.raises(RuntimeError, match="refused off the main thread"):
        run_threads(lambda k: trace_once(), 1)
    assert np.allclose(np.array(llama_module(mx.array(TOKENS))), reference(llama_module, False), atol=1e-5)


def test_model_lock_is_per_model_and_reentrant():
    a, b = tiny_llama_module(layers=1), tiny_llama_module(layers=1)
    assert model_lock(a) is model_lock(a) and model_lock(a) is not model_lock(b)
    with model_lock(a), model_lock(a):  # re-entrant: a trace inside an analysis helper takes it again
        took = []
        run_threads(lambda k: took.append(model_lock(b).acquire(timeout=5) and model_lock(b).release() is None), 1)
        assert took == [True]  # another model's lock is free meanwhile
