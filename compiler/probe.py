"""The probe: one lazily built, never evaluated forward that records every module call in execution
order with its input and output shapes. MLX infers shapes while building the graph, so this costs
graph construction only; callers cache it per input shape."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn

from .hooks import hooks_installed, primary_input
from .locks import model_lock
from .points import Points, identity_call, point_path


@dataclasses.dataclass(frozen=True)
class Probe:
    """Execution order of hook events and the abstract value (shape, dtype) seen at each."""

    events: tuple  # ((path, call_idx, phase), ...) in the order they happen
    values: dict  # event -> (shape, dtype) for array values, else the Python type name

    def spec(self, event: tuple) -> Any:
        """The ``(shape, dtype)`` recorded at ``event`` (KeyError if it never happened)."""
        return self.values[event]

    @functools.cached_property
    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for path, idx, phase in self.events:
            if phase == "output":
                counts[path] = max(counts.get(path, 0), idx + 1)
        return counts

    def call_counts(self) -> dict[str, int]:
        """How many times each module path was called (computed once: a probe is immutable)."""
        return self._counts


class _Recorder:
    def __init__(self, points: Points | None) -> None:
        self.events: list[tuple] = []
        self.values: dict[tuple, Any] = {}
        self.counts: dict[str, int] = {}
        self.points = points

    def _record(self, event: tuple, value: Any) -> None:
        self.events.append(event)
        self.values[event] = (tuple(value.shape), value.dtype) if isinstance(value, mx.array) else type(value).__name__

    def call(self, path: str, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        idx = self.counts.get(path, 0)
        self.counts[path] = idx + 1
        self._record((path, idx, "input"), primary_input(original, args, kwargs))
        runner = self.points.runner(path) if self.points is not None else None
        if runner is None:
            out = original(module, *args, **kwargs)
        else:
            out = runner(module, original, args, kwargs, lambda name, value: self.point(path, name, value))
        self._record((path, idx, "output"), out)
        return out

    def point(self, owner: str, name: str, value: Any) -> Any:
        return self.call(point_path(owner, name), None, identity_call, (value,), {})


def probe(model: nn.Module, run: Callable[[], Any], points: Points | None = None) -> Probe:
    """Hook every module of ``model``, call ``run()`` (which calls the model) and record the events. Every
    module with a runner in ``points`` runs through it, so the probe records all points."""
    recorder = _Recorder(points)
    with model_lock(model), hooks_installed(model.named_modules(), recorder):
        run()
    return Probe(tuple(recorder.events), recorder.values)
