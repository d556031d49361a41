"""``with model.generate(...) as gen:``: record interventions once, run them at every decode step."""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from mlxterp.compiler import Graph, Node, Op
from mlxterp.compiler.locks import model_lock

from ..adapters.attention import KEY_AXIS_POINTS
from ..adapters.attention_cache import cache_support
from ..core import WrappedModel
from ..tracing import context
from ..tracing.attached import is_part
from ..tracing.results import rebind_in_frame
from ..tracing.trace import Trace
from . import token_axis
from .cache import cache_layers, static_eligible
from .loop import run_steps
from .plan import Geometry, StepPlan, StepRange
from .program import MlxLmEngine, Programs, StaticEngine, decode_probe, static_disagreement
from .prompts import PromptBatch, prefix_cache
from .result import GenerationResult
from .sampling import Rows, TokenEvent, check_sampling, eos_ids, stop_strings, token_sampler


class _Recorder(Trace):
    """The trace that records a generation's program: it also remembers each write's previous version
    (read instead at steps where the write does not apply) and the ``gen.steps[...]`` scope of each
    write and save."""

    def __init__(self, owner: WrappedModel, batch: Any, interventions: Any, compile: Any, positions: int,
                 dictionaries: Any = None):
        super().__init__(owner, batch, interventions, compile, "saved", dictionaries)
        self.bases: dict[int, int] = {}
        self.scopes: dict[int, tuple[StepRange, ...]] = {}
        self._positions = positions  # how many token positions the generation computes, prompt included

    def write(self, path: str, call_idx: int, phase: str, value: Any, origin: Optional[str] = None) -> None:
        target = (path, call_idx, phase)
        if is_part(phase):  # a spliced dictionary's parts: each new version is a write too (the written part's,
            before = {b: v for b, v in self._versions.items() if is_part(b[2])}  # and the reconstruction
            super().write(path, call_idx, phase, value, origin)                  # decoded from new features)
            for binding, base in before.items():
                if self._versions[binding] != base:
                    self.bases[self._versions[binding]] = base
            return
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
            length = min(self._positions, max(self.tokens.shape[1], token_axis.reach(index) + 1))
            self.tokens = mx.zeros((self.tokens.shape[0], length), dtype=mx.int32)
            self._abstract = {}
            try:
                super()._check_index(proxy, index)
            finally:
                self.tokens, self._abstract = saved

    def scope(self, first_id: int, steps: StepRange) -> None:
        """Restrict what was recorded since node ``first_id`` to ``steps``: writes, saves, and the values read
        and computed there (a module's value itself, and constants, exist at every step)."""
        for node_id in range(first_id, self.graph._next_id):
            if node_id in self.graph and self.graph.node(node_id).op not in _EVERY_STEP:
                self.scopes[node_id] = self.scopes.get(node_id, ()) + (steps,)


_EVERY_STEP = (Op.MODULE_OUTPUT, Op.MODULE_INPUT, Op.CONSTANT, Op.PARAM)


class StepScope:
    """``with gen.steps[...]:`` (see :attr:`Generation.steps`)."""

    def __init__(self, generation: "Generation", steps: StepRange):
        self._generation = generation
        self._steps = steps
        self._first: Optional[int] = None

    def __enter__(self) -> "StepScope":
        generation = self._generation
        generation._recorder._check_open()
        common: Optional[StepRange] = self._steps
        for outer in generation._open_scopes:
            common = common and common.intersect(outer)
        if common is None or not common.runs_below(generation.max_new_tokens):
            outers = " inside ".join(s.show() for s in reversed(generation._open_scopes))
            raise IndexError(f"{self._steps.show()} inside {outers}: no step is in all of them below "
                             f"max_new_tokens={generation.max_new_tokens}, so what is recorded here would never run")
        generation._open_scopes.append(self._steps)
        self._first = generation._recorder.graph._next_id
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._generation._open_scopes.pop()
        self._generation._recorder.scope(self._first, self._steps)
        return False


class _Steps:
    def __init__(self, generation: "Generation"):
        self._generation = generation

    def __getitem__(self, key: Any) -> StepScope:
        generation = self._generation
        recorder = generation._recorder
        if not generation._entered or recorder.finished:
            raise RuntimeError("gen.steps[...] restricts what is recorded inside the `with model.generate(...) "
                               "as gen:` block; use it there")
        steps = StepRange.from_key(key)
        last = generation.max_new_tokens - 1
        if not steps.runs_below(last + 1):
            raise IndexError(f"{steps.show()} never runs: this generation's steps are 0 (the prompt pass) to {last} "
                             f"(one per new token, max_new_tokens={generation.max_new_tokens}); what is recorded "
                             "there would be dropped")
        return StepScope(generation, steps)


class Generation:
    """Generation with interventions (created by :meth:`InterpretableModel.generate`).

    Inside ``with model.generate(prompt, ...) as gen:`` the block records reads, writes and saves as a
    trace does; on exit the prompt pass runs once on a KV cache, then one decode step per new token. Reads
    and writes apply at every step (``[:, -1]`` is the step's newest token), unless recorded inside
    ``with gen.steps[k]:`` / ``gen.steps[a:b]:`` (a step that never runs is an ``IndexError`` there); a
    token position ``p >= 0`` is absolute and applies at the step that computes it. Attention ``k``/``v``
    are each step's own keys and values (a write is stored in the KV cache); ``scores``/``pattern`` key
    positions are absolute (a write at key ``p`` holds at every step; ``-1`` is each step's newest key), and
    such programs decode eagerly. Each ``.save()`` keeps one value per step, stacked on a new first axis
    (a list when the shapes differ, e.g. a whole output: the prompt's columns, then one per step); a save
    that exists at one step only (inside ``gen.steps[k]``, or of an absolute position) is that step's value.

    Without a ``with`` block (``model.generate(prompt, interventions={...}).text``) it runs on first use of
    its results.

    After the run: ``text`` / ``tokens`` / ``finish_reason`` (one per prompt, or a single value for a single
    prompt), ``saved_values``, ``saved_steps`` (the steps each save has values for), ``get(key)``,
    ``num_steps`` (forward passes kept), ``mode`` (``"compiled"`` or ``"eager"``); ``result()`` (a
    :class:`~mlxterp.generation.result.GenerationResult`, which ``to_dict()``, ``save(path)`` and
    ``save_html(path, values=...)`` go through; ``Generation.load(path)`` reads one back).
    """

    def __init__(self, owner: WrappedModel, prompt: Any, max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: Optional[int] = None, stop: Any = None,
                 ignore_eos: bool = False, stream: Optional[Callable[[TokenEvent], Any]] = None,
                 chat: bool = False, interventions: Any = None, compile: Any = "auto", dictionaries: Any = None):
        if not (isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an int >= 1")
        if stream is not None and not callable(stream):
            raise TypeError(f"stream={stream!r}: expected a callable taking a TokenEvent (row, step, token, text)")
        _require_cache_argument(owner.model)
        self._owner = owner
        self.max_new_tokens = max_new_tokens
        check_sampling(temperature, top_p, top_k, seed)
        self._stops = stop_strings(stop)
        self._eos = frozenset() if ignore_eos else eos_ids(owner.tokenizer)
        self._stream = stream
        self._prefix = prefix_cache(owner, prompt)  # a conversation's KV cache, resumed by a plain run
        self.prompts = PromptBatch.of(owner, prompt, chat)
        self._settings = (temperature, top_p, top_k, seed, self._vocab() if top_k else None)
        check_sampling(*self._settings)  # top_k against the vocabulary
        owner._positions.check(self.prompts.columns + max_new_tokens - 1,
                               f"the prompt plus max_new_tokens={max_new_tokens} (less the last, never fed back)")
        self._recorder = _Recorder(owner, self.prompts.batch, interventions, compile,
                                   self.prompts.columns + max_new_tokens - 1, dictionaries)
        self._origin: tuple = (prompt, dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                            top_k=top_k, seed=seed, stop=stop, ignore_eos=ignore_eos, chat=chat,
                                            interventions=sorted(interventions or {}), compile=compile,
                                            dictionaries=[repr(s) for s in self._recorder._splices]))
        self._result: Optional[GenerationResult] = None
        self.steps = _Steps(self)
        self._open_scopes: list[StepRange] = []  # the `with gen.steps[...]:` blocks being recorded, outermost first
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
        """Saved values by key (``mx.array`` values, in the dtype they were computed in): one per step stacked
        on a new first axis, ``(steps, ...)`` (``model.layers[i].output[:, -1]`` saves ``(steps, batch,
        hidden)``); a list of the steps' arrays when their shapes differ (a whole output: ``(batch, prompt_len,
        hidden)`` for the prompt pass, left-padded for several prompts, then ``(batch, 1, hidden)`` per step);
        or the one step's value for a save that exists at one step only."""

        self._finished()
        return self._saved_values

    @property
    def saved_steps(self) -> dict[str, list[int]]:
        """The steps each save has a value for (step 0 is the prompt pass)."""
        self._finished()
        return self._saved_steps

    @property
    def mode(self) -> str:
        """``"compiled"`` (decode steps as one compiled function on a static cache) or ``"eager"``."""
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

    # -- saving and viewing ------------------------------------------------------------------
    load = GenerationResult.load  # Generation.load(path) reads a saved generation as a GenerationResult

    def result(self) -> GenerationResult:
        """The finished generation as a :class:`~mlxterp.generation.result.GenerationResult` (runs it first if
        needed): tokens, text, saves and settings, with the model's fingerprint as it was when it ran."""
        if self._result is None:
            self._finished()
            self._result = GenerationResult.of(self, self._owner, *self._origin)
        return self._result

    def to_dict(self) -> dict:
        """The record of :meth:`result` (see :meth:`mlxterp.views.saving.Saveable.to_dict`)."""
        return self.result().to_dict()

    def save(self, path: Any) -> Any:
        """Save :meth:`result` to ``path`` (a ``.json`` file, arrays beside it); returns the path."""
        return self.result().save(path)

    def save_html(self, path: Any, **options: Any) -> Any:
        """Write the generation view (see :func:`mlxterp.views.generation.generation_page` for ``values=``,
        ``label=``); returns the path."""
        return self.result().save_html(path, **options)

    def _repr_html_(self) -> Optional[str]:
        """Jupyter's inline view once the generation has run (None before: showing it never runs it)."""
        return self.result()._repr_html_() if self._rows is not None else None

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
            self._owner._sync_tree()  # run lazily (results read later): modules may have been replaced since
            self._run_locked()

    def _run_locked(self) -> None:
        owner, recorder = self._owner, self._recorder
        layers = len(cache_layers(owner.model))
        engine = self._engine(layers)
        plan = StepPlan(recorder.graph, recorder.scopes, recorder.bases, self._token_entries(),
                        Geometry(self.prompts.columns, self.prompts.uniform))
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
        keyed = self._point_node(KEY_AXIS_POINTS)
        if keyed is not None and mode == "compiled":
            raise ValueError(
                f"{keyed.describe()} traced at {keyed.source} has a key axis, one column per position the step "
                "attends to, so its shape changes at every step; compile=True runs decode steps on fixed shapes "
                "(a static KV cache): use compile='auto' (decodes this program eagerly) or compile=False")
        if mode == "eager" or keyed is not None:
            return self._mlx_lm_engine(padding)
        reason = self._static_support(layers)
        if reason is None:
            limit = self.prompts.columns + self.max_new_tokens - 1  # every position a step computes
            return StaticEngine(layers, limit, padding, "compiled" if mode == "compiled" else "auto")
        if mode == "compiled":
            raise ValueError(f"compile=True: this model's decode step cannot run compiled ({reason}); "
                             "use compile=False (mlx-lm's cache, eagerly) or 'auto'")
        return self._mlx_lm_engine(padding)

    def _mlx_lm_engine(self, padding: list[int]) -> MlxLmEngine:
        engine = MlxLmEngine(self._owner.model, padding)
        node = self._point_node(None)
        reason = None if node is None else next(filter(None, map(cache_support, engine.caches)), None)
        if reason is not None:
            raise ValueError(f"{node.describe()} traced at {node.source} reads attention internals, and {reason}")
        return engine

    def _point_node(self, names: Optional[tuple]) -> Optional[Node]:
        """The first recorded node that reads or writes an attention point (one of ``names``; ``None``: any)."""
        points = self._owner._executor.points
        if points is None:
            return None
        for node in self._recorder.graph:
            if node.op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT, Op.REPLACE):
                path = node.target[0]
                if points.owner(path) is not None and (names is None or path.rpartition(".")[2] in names):
                    return node
        return None

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
        longest = max(self.prompts.columns, token_axis.graph_reach(graph)) + 2  # holds every position named
        batch = self.prompts.size

        def values_at(n: int) -> Callable[[tuple], Any]:
            return self._probe((batch, n)).values.get

        def decode_at() -> Callable[[tuple], Any]:
            return decode_probe(self._owner.model, self._owner._executor.points, (batch, longest)).values.get

        keyed = self._point_node(KEY_AXIS_POINTS) is not None
        return token_axis.token_entries(graph, values_at, (longest, longest + 1), decode_at if keyed else None)

    def _vocab(self) -> Optional[int]:
        """Width of the logits tokens are sampled from (``None`` if the model's output is not one array)."""
        found = self._probe(tuple(self.prompts.tokens.shape)).values.get(("", 0, "output"))
        return found[0][-1] if isinstance(found, tuple) else None

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
