"""Step programs and the engines that run them on a KV cache.

A :class:`StepProgram` is one step variant lowered once by the compiler (passes, schedule, a
``PatchedForward`` whose call passes the cache): values enter as params, so a new steering vector or alpha
reuses it. Programs are cached per model by graph structure, as the trace's executor caches its programs.

Two engines run them:

- :class:`MlxLmEngine` (eager): mlx-lm's own cache (``make_prompt_cache``; ``BatchKVCache`` for padded
  rows) and forward, so a generation without interventions is exactly ``mlx_lm.generate``'s.
- :class:`StaticEngine`: the static-shaped :class:`~mlxterp.generation.cache.StaticKVCache`; each step is a
  pure function ``(tokens, params, idx, left_padding, buffers) -> (last logits, saves, buffers)``, run
  under ``mx.compile`` (model state an implicit input, so weight edits are seen) and retraced only for a new
  input shape (the prompt's length, the batch size, the buffer size as it grows).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import mlx.core as mx
import mlx.nn as nn

from mlxterp.compiler import Graph, PatchedForward, Probe, StateCompiled, probe, run_passes, structure_key
from mlxterp.compiler.passes.lift import param_sources, param_values

from .cache import buffers_of, cache_layers, grow, grown_size, mlx_lm_caches, static_caches


def call_with_cache(model: nn.Module, inputs: tuple[mx.array, list]) -> Any:
    """How a step calls the model: ``model(tokens, cache=cache)``."""
    tokens, cache = inputs
    return model(tokens, cache=cache)


class StepProgram:
    """One lowered step variant (see the module docstring)."""

    def __init__(self, model: nn.Module, graph: Graph, probe: Probe, count_trace: Callable[[], None],
                 points: Any = None):
        result = run_passes(graph, probe.events)
        self.optimized = result.after
        self.forward = PatchedForward(model, result.after, result.schedule, call=call_with_cache, points=points,
                                      stop_early=False)  # every layer must update the KV cache
        self.param_ids = param_sources(result.after)
        self._model = model
        self._count_trace = count_trace
        self._static: dict[tuple, tuple[Callable, StateCompiled]] = {}  # shape key -> (eager fn, compiled)
        self.static_runs: dict[tuple, int] = {}

    def params(self, recorded: Graph) -> list[mx.array]:
        """The values of this program's params, read from the recorded graph's constants."""
        return param_values(recorded, self.param_ids)

    def static_step(self, n_layers: int, size: int, shape: tuple, first: bool, compiled: bool) -> Callable:
        """The static-cache step function for tokens of ``shape``, buffers of ``size`` columns, and the
        prompt pass (``first``: no buffers yet) or a decode step."""
        key = (shape, size, first)
        found = self._static.get(key)
        if found is None:
            forward, count = self.forward, self._count_trace

            def step(tokens: mx.array, params: list, idx: mx.array, left_padding: mx.array,
                     buffers: list) -> tuple:
                caches = static_caches(n_layers, size, idx, left_padding, buffers)
                out, saves, _ = forward((tokens, caches), params)
                return out[:, -1, :], saves, buffers_of(caches)

            def traced(*args: Any) -> tuple:
                count()  # runs only while mx.compile traces: counts retraces exactly
                return step(*args)

            found = self._static[key] = (step, StateCompiled(traced, self._model))
        self.static_runs[key] = self.static_runs.get(key, 0) + 1
        return found[1] if compiled else found[0]


class Programs:
    """The step programs of one model, by graph structure (an LRU dict owned by the model wrapper)."""

    def __init__(self, model: nn.Module, store: Any, probe: Callable[[tuple], Probe],
                 count_trace: Callable[[], None], points: Any = None, max_entries: int = 64):
        self.model = model
        self.points = points
        self.store = store
        self.probe = probe
        self.count_trace = count_trace
        self.max_entries = max_entries
        self.misses = 0

    def get(self, graph: Graph, shape: tuple) -> StepProgram:
        """The program of ``graph`` (lowered on first sight, with the event order of tokens of ``shape``)."""
        key = ("step", structure_key(graph))
        program = self.store.get(key)
        if program is None:
            self.misses += 1
            program = self.store[key] = StepProgram(self.model, graph, self.probe(shape), self.count_trace,
                                                    self.points)
            if len(self.store) > self.max_entries:
                self.store.popitem(last=False)
        else:
            self.store.move_to_end(key)
        return program


class MlxLmEngine:
    """Steps on mlx-lm's own cache, eagerly."""

    mode = "eager"

    def __init__(self, model: nn.Module, left_padding: Sequence[int]):
        self.caches = mlx_lm_caches(model, left_padding)

    def step(self, program: StepProgram, tokens: mx.array, params: list, first: bool) -> tuple[mx.array, dict]:
        out, saves, _ = program.forward((tokens, self.caches), params)
        return out[:, -1, :], saves


class StaticEngine:
    """Steps on a :class:`StaticKVCache`, compiled (the prompt pass eagerly the first time its shape and
    program are seen when ``compile_prompt`` is ``"auto"``). Its buffers grow with the tokens computed
    (:func:`~mlxterp.generation.cache.grown_size`), up to what ``limit`` tokens need."""

    mode = "compiled"

    def __init__(self, n_layers: int, limit: int, left_padding: Sequence[int], compile_prompt: str):
        self.n_layers = n_layers
        self.limit = limit
        self.size = 0
        self.left_padding = mx.array(list(left_padding), dtype=mx.int32)
        self.compile_prompt = compile_prompt
        self.idx = 0
        self.buffers: list[mx.array] = []

    def step(self, program: StepProgram, tokens: mx.array, params: list, first: bool) -> tuple[mx.array, dict]:
        shape = tuple(tokens.shape)
        size = grown_size(self.size, self.idx + shape[1], self.limit)
        if size != self.size:
            self.buffers, self.size = grow(self.buffers, size), size
        seen = program.static_runs.get((shape, self.size, first), 0) > 0
        compiled = not first or self.compile_prompt == "compiled" or seen
        fn = program.static_step(self.n_layers, self.size, shape, first, compiled)
        logits, saves, self.buffers = fn(tokens, params, mx.array(self.idx, dtype=mx.int32), self.left_padding,
                                         self.buffers)
        self.idx += tokens.shape[1]
        return logits, saves


def decode_probe(model: nn.Module, points: Any, shape: tuple) -> Probe:
    """The probe of a decode step: tokens of ``shape`` after one cached position (built, never evaluated).
    Attention internals there attend to one key more than the step has queries."""
    caches = cache_layers(model)
    model(mx.zeros((shape[0], 1), dtype=mx.int32), cache=caches)
    return probe(model, lambda: model(mx.zeros(shape, dtype=mx.int32), cache=caches), points)


def static_disagreement(model: nn.Module, program: StepProgram, tokens: mx.array, n_layers: int) -> str | None:
    """Why the compiled static-cache step cannot stand in for mlx-lm's cache on this model, or ``None``.

    Runs a prompt pass and one decode step of ``tokens`` (shape ``(1, n >= 2)``) with no interventions both
    ways and compares the logits: a model family that reads its cache in a way the static cache does not
    serve (or that cannot be compiled) fails here instead of producing wrong numbers later.
    """
    prompt, last = tokens[:, :-1], tokens[:, -1:]
    reference = MlxLmEngine(model, [0])
    expected = [reference.step(program, prompt, [], True)[0], reference.step(program, last, [], False)[0]]
    engine = StaticEngine(n_layers, tokens.shape[1], [0], "compiled")
    try:
        got = [engine.step(program, prompt, [], True)[0], engine.step(program, last, [], False)[0]]
        mx.eval(got, expected)
    except Exception as e:  # any failure means "not supported here"; the caller falls back or reports it
        return f"the compiled step failed: {type(e).__name__}: {e}"
    for step, (a, b) in enumerate(zip(got, expected)):
        err = mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item()
        scale = mx.abs(b.astype(mx.float32)).max().item()
        if not err <= 1e-2 * (scale + 1.0):
            return f"its logits differ from mlx-lm's by {err:.3g} at step {step}"
    return None
