"""Analysis programs: the traces an analysis helper runs again and again, kept on the model as
:class:`~mlxterp.Program` s, so a repeated sweep, attribution or activation run records nothing.

The first call for a key records the trace (its inputs as named params) and serves that call from the
trace's own results; later calls replay the cached program with new tokens and param values, compiled.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable

import mlx.core as mx

from ..core import WrappedModel
from ..tracing.program import param

MAX_PROGRAMS = 32  # programs kept per model and kind (least recently used dropped)


def run_program(model: WrappedModel, kind: str, key: Hashable, tokens: mx.array, values: Dict[str, mx.array],
                record: Callable[[Dict[str, Any]], None]) -> Dict[str, mx.array]:
    """The saves of the analysis program ``kind``/``key`` run on ``tokens`` with param ``values``.

    Args:
        model: the InterpretableModel.
        kind: a family of programs (``"sweep"``, ``"attribution"``, ``"activations"``).
        key: everything that fixes the program's structure (and its params' shapes).
        tokens: the token ids.
        values: param values by name.
        record: called inside a trace with ``{name: traced param}``; saves what the program returns.
    """
    program = cached_program(model, kind, key)
    if program is not None:
        return program(tokens=tokens, **values)
    with model.trace(tokens, capture="saved") as tr:
        record({name: param(name, value) for name, value in values.items()})
    keep_program(model, kind, key, tr.program())
    return dict(tr.saved_values)


def cached_program(model: WrappedModel, kind: str, key: Hashable) -> Any:
    """The model's program of ``kind`` for ``key`` (a :class:`~mlxterp.Program`, or a compiled function
    built on one), if cached (marked most recently used); else ``None``."""
    programs = model._program_cache(kind)
    program = programs.get(key)
    if program is not None:
        programs.move_to_end(key)
    return program


def keep_program(model: WrappedModel, kind: str, key: Hashable, program: Any) -> Any:
    """Cache ``program`` on the model under ``kind``/``key`` (dropping the least recently used)."""
    programs = model._program_cache(kind)
    programs[key] = program
    while len(programs) > MAX_PROGRAMS:
        programs.popitem(last=False)
    return program
