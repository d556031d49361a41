"""Compiled analysis programs: a whole analysis computation (traces included) under ``mx.compile``,
cached on the model, so a repeated sweep or attribution runs no Python tracing at all.

A trace checks its token ids' range, which evaluates them, so it cannot run on ids inside ``mx.compile``.
A program therefore takes the *token embedding's output* as its input: its body traces on placeholder
ids and overwrites the embedding's output with the real embeddings (computed outside by the embedding
module). Models whose token embedding cannot be identified get ``None`` and run their body uncompiled.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Optional, Tuple

import mlx.core as mx

from mlxterp.compiler import StateCompiled
from mlxterp.compiler.locks import model_lock

from ..tracing.proxy import apply

MAX_PROGRAMS = 32  # programs kept per model and kind (least recently used dropped)

Embed = Optional[Tuple[str, mx.array]]  # (token embedding path, embeddings to use) or None


def replace_output(_: mx.array, value: mx.array) -> mx.array:
    """The replacement written over a module output (module-level so the graph structure is stable)."""
    return value


def use_embeddings(model: Any, embed: Embed) -> None:
    """Inside a trace: make the token embedding output ``embed[1]`` (no-op when ``embed`` is None)."""
    if embed is not None:
        module = model.module(embed[0])
        module.output = apply(replace_output, module.output, embed[1])


class EmbeddingProgram:
    """``body(placeholder_ids, embed, *args)`` compiled as a function of ``(embeddings, *args)``; called
    with token ids, it embeds them and runs the compiled body."""

    def __init__(self, model: Any, embed_path: str, ids_shape: Tuple[int, ...], body: Callable[..., Any]):
        self.embedding = model._index.modules[embed_path]
        placeholder = mx.zeros(ids_shape, dtype=mx.int32)  # ids in range for any vocabulary, never read
        mx.eval(placeholder)

        def run(embeddings: mx.array, *args: Any) -> Any:
            return body(placeholder, (embed_path, embeddings), *args)

        # The model's weights are implicit inputs (weight edits are seen), as in the executor's compiled traces.
        self.compiled = StateCompiled(run, model.model)

    def __call__(self, tokens: mx.array, *args: Any) -> Any:
        with model_lock(self.compiled.module):  # the embedding reads weights another thread may be tracing
            return self.compiled(self.embedding(tokens), *args)


def cached_program(model: Any, kind: str, key: Hashable, ids_shape: Tuple[int, ...],
                   body: Callable[..., Any]) -> Optional[EmbeddingProgram]:
    """The model's cached program of ``kind`` for ``key`` (built on first use), or ``None`` when the token
    embedding is not identifiable (the caller then runs ``body`` itself)."""
    programs = model._program_cache(kind)
    if key in programs:
        programs.move_to_end(key)
        return programs[key]
    embed_path = token_embedding(model, int(ids_shape[1]))
    program = None if embed_path is None else EmbeddingProgram(model, embed_path, ids_shape, body)
    programs[key] = program
    while len(programs) > MAX_PROGRAMS:
        programs.popitem(last=False)
    return program


def token_embedding(model: Any, seq: int) -> Optional[str]:
    """Path of the token embedding if it is unambiguous and called once per forward, ``(1, seq)`` ids in and
    ``(1, seq, hidden)`` out; else ``None``."""
    path = model._index.token_embedding()
    if path is None:
        return None
    probe = model._probe(mx.zeros((1, seq), dtype=mx.int32))
    if probe.call_counts().get(path) != 1:
        return None
    spec_in, spec_out = probe.values.get((path, 0, "input")), probe.values.get((path, 0, "output"))
    ok = (isinstance(spec_in, tuple) and tuple(spec_in[0]) == (1, seq)
          and isinstance(spec_out, tuple) and len(spec_out[0]) == 3 and tuple(spec_out[0][:2]) == (1, seq))
    return path if ok else None
