"""``with model.generate(...) as gen:``: record interventions once, run them at every decode step."""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from mlxterp.compiler import Graph, Op
from mlxterp.compiler.locks import model_lock

from ..core import WrappedModel
from ..tracing import context
from ..tracing.results import rebind_in_frame
from ..tracing.trace import Trace
from . import token_axis
from .cache import buffer_size, cache_layers, static_eligible
from .loop import run_steps
from .plan import Geometry, StepPlan, StepRange
from .program import MlxLmEngine, Programs, StaticEngine, static_disagreement
from .prompts import PromptBatch, prefix_cache
from .sampling import Rows, TokenEvent, eos_ids, stop_strings, token_sampler


class _Recorder(Trace):
    """The trace that records a generation's program: it also remembers each write's previous version
    (read instead at steps where the write does not apply) and the ``gen.steps[...]`` scope of each
    write and save."""

    def __init__(self, owner: WrappedModel, batch: Any, interventions: Any, compile: Any, positions: int):
        super().__init__(owner, batch, interventions, compile, "saved")
        self.bases: dict[int, int] = {}
        self.scopes: dict[int, tuple[StepRange, ...]] = {}
        self._positions = positions  # how many token positions the generation computes, prompt included

    def write(self, path: str, call_idx: int, phase: str, value: Any, origin: Optional[str] = None) -> None:
        target = (path, call_idx, phase)
        if phase not in ("output", "input"):  # a residual site: written through the module values it maps to
            super().write(path, call_idx, phase, value, origin)
            return
        base = self._versions.get(target)
        if base is None:
            base = self.module_value(path, call_idx, phase)._node
        super().write(path, call_idx, phase, value, origin)
        self.bases[self._versions[target]] = base

    def _check_index(self, proxy: Any, index: Any) -> None:
        try:
            super()._check_index(proxy, index)
        except IndexError:
            # shapes while recording are the prompt pass's; a position past the prompt is computed at a later
            # step, so check again against every position the generation computes
            saved = self.tokens, self._abstract
            self.tokens = mx.zeros((self.tokens.shape[0], self._positions), dtype=mx.int32)
            self._abstract = {}
            try:
                super()._check_index(proxy, index)
            finally:
                self.tokens, self._abstract = saved

    def scope(self, first_id: int, steps: StepRange) -> None:
        """Restrict the writes and saves recorded since node ``first_id`` to ``steps``."""
        for node_id in range(first_id, self.graph._next_id):
            if node_id in self.graph and self.graph.node(node_id).op in (Op.SAVE, Op.REPLACE):
                self.scopes[node_id] = self.scopes.get(node_id, ()) + (steps,)


class StepScope:
    """``with gen.steps[...]:`` (see :attr:`Generation.steps`)."""

    def __init__(self, recorder: _Recorder, steps: StepRange):
        self._recorder = recorder
        self._steps = steps
        self._first: Optional[int] = None

    def __enter__(self) -> "StepScope":
        self._recorder._check_open()
        self._first = self._recorder.graph._next_id
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._recorder.scope(self._first, self._steps)
        return False


class _Steps:
    def __init__(self, generation: "Generation"):
        self._generation = generation

    def __getitem__(self, key: Any) -> StepScope:
        recorder = self._generation._recorder
        if not self._generation._entered or recorder.finished:
            raise RuntimeError("gen.steps[...] restricts what is recorded inside the `with model.generate(...) "
                               "as gen:` block; use it there")
        return StepScope(recorder, StepRange.from_key(key))


class Generation:
    """Generation with interventions (created by :meth:`InterpretableModel.generate`).

    Inside ``with model.generate(prompt, ...) as gen:`` the block records reads, writes and saves as a
    trace does; on exit the prompt pass runs once on a KV cache, then one decode step per new token. Writes
    apply at every step (``[:, -1]`` is the step's newest token), unless recorded inside
    ``with gen.steps[k]:`` / ``gen.steps[a:b]:``; a token position ``p >= 0`` is absolute and applies at the
    step that computes it. Each ``.save()`` keeps one value per step, stacked on a new first axis
    (a list when the shapes differ, e.g. a whole output: the prompt's columns, then one per step); a save
    that exists at one step only (inside ``gen.steps[k]``, or of an absolute position) is that step's value.

    Without a ``with`` block (``model.generate(prompt, interventions={...}).text``) it runs on first use of
    its results.

    After the run: ``text`` / ``tokens`` / ``finish_reason`` (one per prompt, or a single value for a single
    prompt), ``saved_values``, ``saved_steps`` (the steps each save has values for), ``get(key)``,
    ``num_steps`` (forward passes kept), ``mode`` (``"compiled"`` or ``"eager"``).
    """

    def __init__(self, owner: WrappedModel, prompt: Any, max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: Optional[int] = None, stop: Any = None,
                 ignore_eos: bool = False, stream: Optional[Callable[[TokenEvent], Any]] = None,
                 chat: bool = False, interventions: Any = None, compile: Any = "auto"):
        if not (isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an int >= 1")
        if stream is not None and not callable(stream):
            raise TypeError(f"stream={stream!r}: expected a callable taking a TokenEvent (row, step, token, text)")
        _require_cache_argument(owner.model)
        self._owner = owner
        self.max_new_tokens = max_new_tokens
        self._settings = (temperature, top_p, top_k, seed)
        token_sampler(*self._settings)  # checks the settings now
        self._stops = stop_strings(stop)
        self._eos = frozenset() if ignore_eos else eos_ids(owner.tokenizer)
        self._stream = stream
        self._prefix = prefix_cache(owner, prompt)  # a conversation's KV cache, resumed by a plain run
        self.prompts = PromptBatch.of(owner, prompt, chat)
        owner._positions.check(self.prompts.columns + max_new_tokens - 1,
                               f"the prompt plus max_new_tokens={max_new_tokens} (less the last, never fed back)")
        self._recorder = _Recorder(owner, self.prompts.batch, interventions, compile,
                                   self.prompts.columns + max_new_tokens - 1)
        self.steps = _Steps(self)
        self._entered = False
        self._rows: Optional[Rows] = None
        self._saved_values: dict[str, Any] = {}
        self._saved_steps: dict[str, list[int]] = {}
        self._mode: Optional[str] = None
        self._num_steps = 0

    # -- context protocol --------------------------------------------------------------------
    def __enter__(self) -> "Generation":
        if self._entered:
            raise RuntimeError("this generation has been entered (or run) already; call model.generate again")
        self._entered = True
        self._recorder.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        recorder = self._recorder
        context.pop(recorder)
        recorder.finished = True
        if exc_type is not None:
            return False
        self._run()
        rebind_in_frame(sys._getframe(1), {id(p): p._value for p in recorder._saved})
        recorder._saved, recorder._abstract = [], {}
        return False

    def run(self) -> "Generation":
        """Run now (for use without a ``with`` block; results also run it on first use)."""
        if not self._entered:
            with self:
                pass
        return self

    # -- results -----------------------------------------------------------------------------
    @property
    def text(self) -> Any:
        """The new text: a str for a single prompt, else one str per prompt."""
        rows = self._finished()
        if rows.decode is None:
            raise ValueError("gen.text needs a tokenizer, and this model has none; read gen.tokens")
        return self.prompts.shape([rows.text(i) for i in range(len(rows.tokens))])

    @property
    def tokens(self) -> Any:
        """The new token ids (EOS excluded): a list for a single prompt, else one list per prompt."""
        return self.prompts.shape([list(t) for t in self._finished().tokens])

    @property
    def finish_reason(self) -> Any:
        """Why each row stopped: ``"eos"``, ``"stop"`` (a stop string) or ``"length"``."""
        return self.prompts.shape(list(self._finished().reasons))

    @property
    def saved_values(self) -> dict[str, Any]:
        """Saved values by key: one per step stacked on a first axis (a list when shapes differ), or the
        one step's value for a save that exists at one step only."""
        self._finished()
        return self._saved_values

    @property
    def saved_steps(self) -> dict[str, list[int]]:
        """The steps each save has a value for (step 0 is the prompt pass)."""
        self._finished()
        return self._saved_steps

    @property
    def mode(self) -> str:
        """``"compiled"`` (decode steps as one compiled function on a fixed-size cache) or ``"eager"``."""
        self._finished()
        return self._mode

    @property
    def num_steps(self) -> int:
        """Forward passes whose results were kept (the prompt pass and one per later token)."""
        self._finished()
        return self._num_steps

    def get(self, name: str) -> Any:
        """A saved value by key (``"layers.3.output"``), or ``None``."""
        return self.saved_values.get(name)

    @property
    def graph(self) -> Graph:
        """The recorded program (every step runs a variant of it)."""
        return self._recorder.graph

    def _finished(self) -> Rows:
        if self._rows is None:
            if self._entered and not self._recorder.finished:
                raise RuntimeError("generation results exist after the `with model.generate(...)` block")
            self.run()
        if self._rows is None:
            raise RuntimeError("this generation did not complete (its block raised); call model.generate again")
        return self._rows

    # -- running ------------------------------------------------------------------------------
    def _run(self) -> None:
        # One forward of a model at a time (hooks, compile tracing): the generation holds the model's lock.
        with model_lock(self._owner.model):
            self._run_locked()

    def _run_locked(self) -> None:
        owner, recorder = self._owner, self._recorder
        layers = len(cache_layers(owner.model))
        plan = StepPlan(recorder.graph, recorder.scopes, recorder.bases, self._token_entries(),
                        Geometry(self.prompts.columns, self.prompts.uniform))
        engine = self._engine(layers)
        store = owner._program_cache("generation")
        programs = Programs(owner.model, store, self._probe, self._count_trace, owner._executor.points)
        rows = Rows(self.prompts.size, self.max_new_tokens, self._eos, self._stops, self._decoder(), self._stream)
        sampler = token_sampler(*self._settings)  # a fresh key sequence per run
        resumes = self._resumes()
        start = self._prefix.resume(owner.model, engine, self.prompts.rows[0]) if resumes else 0
        per_step = run_steps(plan, programs, engine, self.prompts.tokens[:, start:], sampler, rows, recorder.graph)
        if resumes:
            self._prefix.keep(owner.model, engine, self.prompts.rows[0] + tuple(rows.tokens[0]))
        self._bind(per_step, plan)
        self._mode, self._num_steps, self._rows = engine.mode, len(per_step), rows

    def _resumes(self) -> bool:
        """Whether this run starts from its prompt's KV prefix cache (and keeps its own KV there): one prompt
        that carries a cache (a conversation), and a program that records nothing (a write would change the
        keys and values, and a read of the prompt pass would see only the positions it runs)."""
        return self._prefix is not None and self.prompts.size == 1 and len(self._recorder.graph) == 0

    def _engine(self, layers: int) -> Any:
        mode = self._recorder.compile_mode
        padding = self.prompts.left_padding
        if mode == "eager" or (mode == "auto" and self._reads_attention_points()):
            # attention internals have one key column per cache slot: mlx-lm's cache has one per position
            return MlxLmEngine(self._owner.model, padding)
        reason = self._static_support(layers)
        if reason is None:
            size = buffer_size(self.prompts.columns + self.max_new_tokens)
            return StaticEngine(layers, size, padding, "compiled" if mode == "compiled" else "auto")
        if mode == "compiled":
            raise ValueError(f"compile=True: this model's decode step cannot run compiled ({reason}); "
                             "use compile=False (mlx-lm's cache, eagerly) or 'auto'")
        return MlxLmEngine(self._owner.model, padding)

    def _reads_attention_points(self) -> bool:
        points = self._owner._executor.points
        if points is None:
            return False
        targets = (n.target[0] for n in self._recorder.graph if n.op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT, Op.REPLACE))
        return any(points.owner(path) is not None for path in targets)

    def _static_support(self, layers: int) -> Optional[str]:
        """Why the compiled static-cache path does not serve this model (checked once per model), or None."""
        checks = self._owner._program_cache("generation_support")
        if "static" not in checks:
            model = self._owner.model
            if not static_eligible(model):
                checks["static"] = "its mlx-lm cache is not one plain KVCache per layer"
            else:
                row = self.prompts.rows[0]
                sample = mx.array([(row * 2)[:4]], dtype=mx.int32)
                programs = Programs(model, self._owner._program_cache("generation"), self._probe,
                                    self._count_trace, self._owner._executor.points)
                checks["static"] = static_disagreement(model, programs.get(Graph(), (1, 3)), sample, layers)
        return checks["static"]

    def _token_entries(self) -> dict:
        graph = self._recorder.graph
        if not token_axis.needs_analysis(graph):
            return {}
        longest = self.prompts.columns + self.max_new_tokens + 1
        batch = self.prompts.size

        def values_at(n: int) -> Callable[[tuple], Any]:
            return self._probe((batch, n)).values.get

        return token_axis.token_entries(graph, values_at, (longest, longest + 1))

    def _probe(self, shape: tuple) -> Any:
        return self._owner._probe(mx.zeros(shape, dtype=mx.int32))

    def _count_trace(self) -> None:
        self._owner._executor.stats["traces"] += 1

    def _decoder(self) -> Optional[Callable[[list[int]], str]]:
        tokenizer = self._owner.tokenizer
        return None if tokenizer is None else (lambda ids: tokenizer.decode(ids))

    def _bind(self, per_step: list[dict], plan: StepPlan) -> None:
        pinned = {self._recorder.graph.node(i).target for i in plan.pinned_saves()}
        keys = [n.target for n in self._recorder.graph if n.op is Op.SAVE]
        for key in keys:
            steps = [k for k, saves in enumerate(per_step) if key in saves]
            values = [per_step[k][key] for k in steps]
            self._saved_steps[key] = steps
            if key in pinned:
                self._saved_values[key] = values[0] if values else None
            elif values and all(isinstance(v, mx.array) and v.shape == values[0].shape for v in values):
                self._saved_values[key] = mx.stack(values)
            else:
                self._saved_values[key] = values
        for proxy in self._recorder._saved:
            proxy._value = self._saved_values.get(proxy._save_key)

    def __repr__(self) -> str:
        state = "not run" if self._rows is None else f"{self._num_steps} steps, {self._mode}"
        return f"Generation({self.prompts.size} prompt(s), max_new_tokens={self.max_new_tokens}, {state})"


def _require_cache_argument(model: nn.Module) -> None:
    try:
        params = inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return
    if "cache" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"generation needs a language model whose forward takes a KV cache (`model(tokens, "
                        f"cache=...)`, as mlx-lm models do); {type(model).__name__}.__call__ does not")
