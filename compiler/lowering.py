"""Lowering: a scheduled graph becomes ``patched_forward(tokens, params) -> (output, saves, captures)``.

The function hooks only the modules the schedule (and the capture list) touches, runs each node at its
event, applies writes, and restores every class in ``finally``. The same function is run as is by the
eager path and wrapped in ``mx.compile`` by the compiled path.

When nothing after some event is read, written or captured, the forward stops there (the schedule's stop
event): the rest of the model, often a large vocabulary projection, is never built, and the output is
``None``. A *folded* run (see :mod:`.fold`) evaluates ``K`` variants of the program in one forward.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import mlx.core as mx
import mlx.nn as nn

from .errors import NodeExecutionError, TraceError
from .hooks import hooks_installed, primary_input, with_primary_input
from .ir import Graph, Node, Op, Ref, map_refs
from .passes.lift import as_param
from .passes.schedule import END, START, Schedule
from .points import Points, point_path
from .semantics import check_replacement, evaluate

Step = Callable[[Any, Any], None]


def default_call(model: nn.Module, tokens: mx.array) -> Any:
    """How the patched forward calls the model: ``model(tokens)``."""
    return model(tokens)


class StopForward(Exception):
    """Raised by a run's hook once its last needed event has fired; caught by the run's own forward."""

    def __init__(self, run: "Run"):
        super().__init__("the patched forward stops here: nothing later is read")
        self.run = run


class PatchedForward:
    """A model forward with a scheduled intervention program woven into its module calls.

    Args:
        model: the module to run.
        graph: the optimized graph (constants lifted).
        plan: its schedule.
        call: how to call the model on the tokens.
        stop_early: stop the forward after the schedule's stop event (callers whose forward has side
            effects later modules must see, such as a KV cache, pass ``False``).
        points: named values inside module calls (see :mod:`.points`) the graph may read or write.
    """

    def __init__(self, model: nn.Module, graph: Graph, plan: Schedule, *,
                 call: Callable[[nn.Module, mx.array], Any] = default_call, stop_early: bool = True,
                 points: Points | None = None):
        self.model = model
        self.graph = graph
        self.plan = plan
        self.call_model = call
        self._steps = {event: [_make_step(graph.node(i), event) for i in ids] for event, ids in plan.at_event.items()}
        self._replace_at = {event: node_id for event, node_id in _replacements(graph, plan)}
        self._weak = {n.id for n in graph if n.op in (Op.PARAM, Op.CONSTANT) and n.meta.get("weak")}
        self._capture_all = graph.captures == "all"
        self._captures = set() if self._capture_all else set(graph.captures)
        self._runners: dict[str, Any] = {}
        self.stop_at = plan.stop_event(graph.captures) if stop_early else None
        self._modules = self._modules_to_hook(model, points)

    def _modules_to_hook(self, model: nn.Module, points: Points | None) -> list[tuple[str, nn.Module]]:
        needed = self.plan.hooked_paths() | {p for p, _ in self._captures}
        if self.stop_at is not None:
            needed.add(self.stop_at[0])
        if points is not None:  # a module whose points are read or written runs through its runner
            for path in needed:
                owner = points.owner(path)
                runner = points.runner(owner) if owner is not None else None
                if runner is not None:
                    self._runners[owner] = runner
            needed |= set(self._runners)
        return [(p, m) for p, m in model.named_modules() if self._capture_all or p in needed]

    def __call__(self, tokens: mx.array, params: list) -> tuple[Any, dict, dict]:
        return self.execute(Run(self, params), tokens)

    def execute(self, run: "Run", tokens: mx.array) -> tuple[Any, dict, dict]:
        """Run the model on ``tokens`` (its input: ``(batch, seq)`` integer token ids for a language model) with
        ``run`` handling the hook events; returns ``(output, saves, captures)`` as :class:`.executor.RunResult`
        holds them."""

        run.fire(START, None)
        try:
            with hooks_installed(self._modules, run):
                output = self.call_model(self.model, tokens)
        except StopForward as stop:
            if stop.run is not run:
                raise
            output = None
        run.fire(END, None)
        return output, run.saves, run.captures


class Run:
    """State of one execution: node values, call counters, saves and captures.

    The ``on_*`` methods give each kind of node its value; a folded run (:class:`.fold.FoldedRun`)
    overrides them to carry ``K`` variants at once.
    """

    def __init__(self, forward: PatchedForward, params: list):
        self.f = forward
        self.params = params
        self.env: dict[int, Any] = {}
        self.saves: dict[str, Any] = {}
        self.captures: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def fire(self, event: tuple, current: Any) -> Any:
        """Run the nodes attached to ``event``; return the (possibly replaced) value flowing there."""
        for step in self.f._steps.get(event, ()):
            step(self, current)
        replace_id = self.f._replace_at.get(event)
        return current if replace_id is None else self.flow(replace_id)

    def call(self, path: str, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        idx = self.counts.get(path, 0)
        self.counts[path] = idx + 1
        f = self.f
        if (path, idx, "input") in f._steps:
            current = primary_input(original, args, kwargs)
            if current is not None:
                args, kwargs = with_primary_input(original, args, kwargs, self.fire((path, idx, "input"), current))
        if f.stop_at is not None and f.stop_at == (path, idx, "input"):
            raise StopForward(self)
        runner = f._runners.get(path)
        if runner is None:
            out = original(module, *args, **kwargs)
        else:
            out = runner(module, original, args, kwargs, lambda name, value: self.point(path, name, value))
        if (path, idx, "output") in f._steps:
            out = self.fire((path, idx, "output"), out)
        if isinstance(out, mx.array) and (f._capture_all or (path, idx) in f._captures):
            self.captures[path if idx == 0 else f"{path}#{idx}"] = out
        if f.stop_at is not None and f.stop_at == (path, idx, "output"):
            raise StopForward(self)
        return out

    def point(self, owner: str, name: str, value: Any) -> Any:
        """A runner reached point ``name`` of module ``owner`` (see :mod:`compiler.points`): fire its events
        and return the value to continue with. Captured only when named in the captures (``"all"`` means
        every module)."""
        path = point_path(owner, name)
        idx = self.counts.get(path, 0)
        self.counts[path] = idx + 1
        f = self.f
        if (path, idx, "input") in f._steps:
            value = self.fire((path, idx, "input"), value)
        if (path, idx, "output") in f._steps:
            value = self.fire((path, idx, "output"), value)
        if (path, idx) in f._captures:
            self.captures[path if idx == 0 else f"{path}#{idx}"] = value
        if f.stop_at is not None and f.stop_at[:2] == (path, idx):
            raise StopForward(self)
        return value

    # -- node values ---------------------------------------------------------------------------------
    def flow(self, node_id: int) -> Any:
        """The value a write hands to the model."""
        return self.env[node_id]

    def on_module_value(self, node: Node, current: Any) -> None:
        self.env[node.id] = current

    def on_param(self, node: Node) -> None:
        self.env[node.id] = self.params[node.target]

    def on_save(self, node: Node, source: int) -> None:
        self.saves[node.target] = self.env[source]

    def on_replace(self, node: Node, current: Any, source: int) -> None:
        self.env[node.id] = check_replacement(node, current, self.env[source])

    def on_compute(self, node: Node) -> None:
        args, kwargs = resolve_args(node, self.env.__getitem__, self.f._weak)
        self.env[node.id] = evaluate(node, args, kwargs)


def _replacements(graph: Graph, plan: Schedule) -> Iterable[tuple[tuple, int]]:
    # The last write to an event wins, as with repeated in-place assignment.
    for event, ids in plan.at_event.items():
        writes = [i for i in ids if graph.node(i).op is Op.REPLACE]
        if writes:
            yield event, writes[-1]


def _make_step(node: Node, event: tuple) -> Step:
    """A closure that computes ``node`` inside a run, with errors pointing at the user's line."""
    op = node.op
    if op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT):
        def step(run: Run, current: Any) -> None:
            run.on_module_value(node, current)
    elif op is Op.PARAM:
        def step(run: Run, current: Any) -> None:
            run.on_param(node)
    elif op is Op.CONSTANT:  # only in graphs lowered without the lifting pass
        value = as_param(node.meta["value"])

        def step(run: Run, current: Any) -> None:
            run.env[node.id] = value
    elif op is Op.SAVE:
        src = node.args[0].id

        def step(run: Run, current: Any) -> None:
            run.on_save(node, src)
    elif op is Op.REPLACE:
        src = node.args[0].id

        def step(run: Run, current: Any) -> None:
            run.on_replace(node, current, src)
    else:
        def step(run: Run, current: Any) -> None:
            run.on_compute(node)
    return _with_context(step, node, event)


def _with_context(step: Step, node: Node, event: tuple) -> Step:
    def guarded(run: Run, current: Any) -> None:
        try:
            step(run, current)
        except TraceError:
            raise
        except Exception as e:
            where = {START: "before the forward pass", END: "after the forward pass"}.get(
                event, f"at {event[0] or '<model>'} ({event[2]})")
            raise NodeExecutionError(
                f"while executing {node.describe()} {where}, traced at {node.source}: {type(e).__name__}: {e}"
            ) from e

    return guarded


def resolve_args(node: Node, value_of: Callable[[int], Any], weak_ids: set[int]) -> tuple[tuple, dict]:
    """Node arguments with refs replaced by ``value_of(id)``; weak (Python-number) params take their
    partner's dtype, as MLX does for ``array * 0.5``."""
    weak: set[int] = set()

    def value(ref: Ref) -> Any:
        if ref.id in weak_ids:
            weak.add(ref.id)
        return value_of(ref.id)

    args = map_refs(node.args, value)
    kwargs = map_refs(node.kwargs, value) if node.kwargs else {}
    if weak:
        dtype = _partner_dtype(node, value_of, weak)
        if dtype is not None:
            cast = lambda r: value_of(r.id).astype(dtype) if r.id in weak else value_of(r.id)  # noqa: E731
            args = map_refs(node.args, cast)
            kwargs = map_refs(node.kwargs, cast) if node.kwargs else {}
    return args, kwargs


def _partner_dtype(node: Node, value_of: Callable[[int], Any], weak_ids: set[int]) -> Any:
    """dtype a Python number adopts: the first non-weak array argument's (a float one where the
    numbers include a float)."""
    any_float = any(mx.issubdtype(value_of(i).dtype, mx.floating) for i in weak_ids)
    for ref_id in node.refs():
        if ref_id in weak_ids:
            continue
        v = value_of(ref_id)
        if isinstance(v, mx.array) and (mx.issubdtype(v.dtype, mx.floating) or not any_float):
            return v.dtype
    return None
