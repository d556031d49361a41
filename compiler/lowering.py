"""Lowering: a scheduled graph becomes ``patched_forward(tokens, params) -> (output, saves, captures)``.

The function hooks only the modules the schedule (and the capture list) touches, runs each node at its
event, applies writes, and restores every class in ``finally``. The same function is run as is by the
eager path and wrapped in ``mx.compile`` by the compiled path.
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

Step = Callable[[dict, list, Any], None]


def default_call(model: nn.Module, tokens: mx.array) -> Any:
    """How the patched forward calls the model: ``model(tokens)``."""
    return model(tokens)


class PatchedForward:
    """A model forward with a scheduled intervention program woven into its module calls."""

    def __init__(self, model: nn.Module, graph: Graph, plan: Schedule, *,
                 call: Callable[[nn.Module, mx.array], Any] = default_call,
                 on_run: Callable[[], None] | None = None, points: Points | None = None):
        self.model = model
        self.graph = graph
        self.plan = plan
        self.call_model = call
        self.on_run = on_run
        self._steps = {event: [_make_step(graph.node(i), event) for i in ids] for event, ids in plan.at_event.items()}
        self._replace_at = {event: node_id for event, node_id in _replacements(graph, plan)}
        self._weak = {n.id for n in graph if n.op in (Op.PARAM, Op.CONSTANT) and n.meta.get("weak")}
        self._capture_all = graph.captures == "all"
        self._captures = set() if self._capture_all else set(graph.captures)
        self._runners: dict[str, Any] = {}
        self._modules = self._modules_to_hook(model, points)

    def _modules_to_hook(self, model: nn.Module, points: Points | None) -> list[tuple[str, nn.Module]]:
        needed = self.plan.hooked_paths() | {p for p, _ in self._captures}
        if points is not None:  # a module whose points are read or written runs through its runner
            for path in needed:
                owner = points.owner(path)
                runner = points.runner(owner) if owner is not None else None
                if runner is not None:
                    self._runners[owner] = runner
            needed |= set(self._runners)
        return [(p, m) for p, m in model.named_modules() if self._capture_all or p in needed]

    def __call__(self, tokens: mx.array, params: list) -> tuple[Any, dict, dict]:
        if self.on_run is not None:
            self.on_run()
        run = _Run(self, params)
        run.fire(START, None)
        with hooks_installed(self._modules, run):
            output = self.call_model(self.model, tokens)
        run.fire(END, None)
        return output, run.saves, run.captures


class _Run:
    """State of one execution: node values, call counters, saves and captures."""

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
        return current if replace_id is None else self.env[replace_id]

    def call(self, path: str, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        idx = self.counts.get(path, 0)
        self.counts[path] = idx + 1
        if (path, idx, "input") in self.f._steps:
            current = primary_input(original, args, kwargs)
            if current is not None:
                args, kwargs = with_primary_input(original, args, kwargs, self.fire((path, idx, "input"), current))
        runner = self.f._runners.get(path)
        if runner is None:
            out = original(module, *args, **kwargs)
        else:
            out = runner(module, original, args, kwargs, lambda name, value: self.point(path, name, value))
        if (path, idx, "output") in self.f._steps:
            out = self.fire((path, idx, "output"), out)
        if isinstance(out, mx.array) and (self.f._capture_all or (path, idx) in self.f._captures):
            self.captures[path if idx == 0 else f"{path}#{idx}"] = out
        return out

    def point(self, owner: str, name: str, value: Any) -> Any:
        """A runner reached point ``name`` of module ``owner`` (see :mod:`compiler.points`): fire its events
        and return the value to continue with. Captured only when named in the captures (``"all"`` means
        every module)."""
        path = point_path(owner, name)
        idx = self.counts.get(path, 0)
        self.counts[path] = idx + 1
        steps = self.f._steps
        if (path, idx, "input") in steps:
            value = self.fire((path, idx, "input"), value)
        if (path, idx, "output") in steps:
            value = self.fire((path, idx, "output"), value)
        if (path, idx) in self.f._captures:
            self.captures[path if idx == 0 else f"{path}#{idx}"] = value
        return value


def _replacements(graph: Graph, plan: Schedule) -> Iterable[tuple[tuple, int]]:
    # The last write to an event wins, as with repeated in-place assignment.
    for event, ids in plan.at_event.items():
        writes = [i for i in ids if graph.node(i).op is Op.REPLACE]
        if writes:
            yield event, writes[-1]


def _make_step(node: Node, event: tuple) -> Step:
    """A closure that computes ``node`` inside a run, with errors pointing at the user's line."""
    op, nid = node.op, node.id
    if op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT):
        def step(run: _Run, current: Any) -> None:
            run.env[nid] = current
    elif op is Op.PARAM:
        def step(run: _Run, current: Any) -> None:
            run.env[nid] = run.params[node.target]
    elif op is Op.CONSTANT:  # only in graphs lowered without the lifting pass
        value = as_param(node.meta["value"])

        def step(run: _Run, current: Any) -> None:
            run.env[nid] = value
    elif op is Op.SAVE:
        src = node.args[0].id

        def step(run: _Run, current: Any) -> None:
            run.saves[node.target] = run.env[src]
    elif op is Op.REPLACE:
        src = node.args[0].id

        def step(run: _Run, current: Any) -> None:
            run.env[nid] = check_replacement(node, current, run.env[src])
    else:
        def step(run: _Run, current: Any) -> None:
            args, kwargs = _resolve(node, run)
            run.env[nid] = evaluate(node, args, kwargs)
    return _with_context(step, node, event)


def _with_context(step: Step, node: Node, event: tuple) -> Step:
    def guarded(run: _Run, current: Any) -> None:
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


def _resolve(node: Node, run: _Run) -> tuple[tuple, dict]:
    """Node arguments with refs replaced by values; weak (Python-number) params take their partner's dtype."""
    weak: list[Ref] = []

    def value(ref: Ref) -> Any:
        if ref.id in run.f._weak:
            weak.append(ref)
        return run.env[ref.id]

    args = map_refs(node.args, value)
    kwargs = map_refs(node.kwargs, value) if node.kwargs else {}
    if weak:
        dtype = _partner_dtype(node, run, {r.id for r in weak})
        if dtype is not None:
            cast = lambda r: run.env[r.id].astype(dtype) if r in weak else run.env[r.id]  # noqa: E731
            args = map_refs(node.args, cast)
            kwargs = map_refs(node.kwargs, cast) if node.kwargs else {}
    return args, kwargs


def _partner_dtype(node: Node, run: _Run, weak_ids: set[int]) -> Any:
    """dtype a Python number adopts, as MLX does for ``array * 0.5``: the first non-weak array's."""
    for ref_id in node.refs():
        if ref_id in weak_ids:
            continue
        v = run.env[ref_id]
        if isinstance(v, mx.array) and (mx.issubdtype(v.dtype, mx.floating) or not _any_float(run, weak_ids)):
            return v.dtype
    return None


def _any_float(run: _Run, weak_ids: set[int]) -> bool:
    return any(mx.issubdtype(run.env[i].dtype, mx.floating) for i in weak_ids)
