"""The decode loop: run each step's program, sample, stop; the next step is built while this one runs."""

from __future__ import annotations

from typing import Any, Callable

import mlx.core as mx

from mlxterp.compiler import Graph

from .plan import StepPlan
from .program import Programs
from .sampling import Rows, Sampler

_STREAMS: list[Any] = []


def _stream() -> Any:
    """A (thread-local) stream of its own, as mlx-lm's generation has: evaluation then runs beside the
    Python that builds the next step instead of in line with it. Made on first use, not on import."""
    if not _STREAMS:
        _STREAMS.append(mx.new_thread_local_stream(mx.default_device()))
    return _STREAMS[0]


def run_steps(plan: StepPlan, programs: Programs, engine: Any, prompt: mx.array, sampler: Sampler, rows: Rows,
              recorded: Graph) -> list[dict]:
    """Generate until every row has finished; return each accepted step's saves (``[step 0's, ...]``).

    Like mlx-lm's loop, step ``k + 1`` is built and started (``mx.async_eval``) before step ``k``'s tokens
    are read on the host, so Python overhead overlaps the computation; a step started after the last row
    finished is dropped unread.
    """
    with mx.stream(_stream()):
        return _run(plan, programs, engine, prompt, sampler, rows, recorded)


def _run(plan: StepPlan, programs: Programs, engine: Any, prompt: mx.array, sampler: Sampler, rows: Rows,
         recorded: Graph) -> list[dict]:
    batch = prompt.shape[0]
    launch = _launcher(plan, programs, engine, sampler, recorded, batch)
    saves_per_step: list[dict] = []
    current = launch(0, prompt)
    k = 0
    while True:
        following = launch(k + 1, current[0][:, None]) if k + 1 < rows.max_new_tokens else None
        tokens, saves = current
        ids = tokens.tolist()
        saves_per_step.append(saves)
        rows.push(k, ids)
        if rows.done or following is None:
            return saves_per_step
        current, k = following, k + 1


def _launcher(plan: StepPlan, programs: Programs, engine: Any, sampler: Sampler, recorded: Graph,
              batch: int) -> Callable[[int, mx.array], tuple[mx.array, dict]]:
    def launch(k: int, tokens: mx.array) -> tuple[mx.array, dict]:
        program = programs.get(plan.variant(k), (batch, tokens.shape[1]))
        logits, saves = engine.step(program, tokens, program.params(recorded), k == 0)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        sampled = sampler(logprobs)
        mx.async_eval(sampled, *saves.values())
        return sampled, saves

    return launch
