"""Programs of traces with invokes: each invoke's prompt is an input of the program, named after the invoke.

``prog(clean="The capital of Germany is")`` replays the trace with that invoke's prompt replaced (the other
invokes keep theirs). An invoke's views cut the batch to its token width, so a prompt of another length
changes the indices of its views and row writes: the recorded graph is laid out again for those widths
(:func:`relayout`) and lowered once per layout, with the same params. The number of prompts (rows) of an
invoke is part of the program: a replacement gives as many.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Dict, Mapping

import mlx.core as mx

from mlxterp.compiler import Graph

from ..core import WrappedModel
from ..inputs import TokenBatch, pad_rows
from .invoke import Invoke, view_index
from .program import Program, build_program, relower

MAX_LAYOUTS = 16  # lowerings kept per program for prompt widths other than the recorded ones


@dataclasses.dataclass(frozen=True)
class InvokeSlot:
    """An invoke of a program: its name, first row, and the recorded tokens ``(rows, width)`` and lengths."""

    name: str
    row: int
    tokens: mx.array
    lengths: tuple

    def __repr__(self) -> str:
        return f"InvokeSlot({self.name!r}, rows {self.row}..{self.row + self.tokens.shape[0] - 1}, " \
               f"width {self.tokens.shape[1]})"


def build_invoke_program(owner: WrappedModel, graph: Graph, tokens: mx.array, lengths: tuple,
                         invokes: list[Invoke]) -> "InvokeProgram":
    """The program of a trace with invokes (see :class:`InvokeProgram`)."""
    slots = tuple(InvokeSlot(inv.name, inv.row, inv.tokens, inv.lengths) for inv in invokes)
    return build_program(owner, graph, tokens, lengths, kind=InvokeProgram, slots=slots)


def relayout(graph: Graph, owner: WrappedModel, tokens: Mapping[str, tuple[int, mx.array]]) -> Graph:
    """``graph`` with the views and row writes of each invoke re-indexed for its tokens (``name -> (first
    row, tokens)``)."""
    nodes = []
    for node in graph:
        name = node.meta.get("invoke")
        if name is not None:
            row, ids = tokens[name]
            index = view_index(owner, ids, row, node.meta["event"])
            node = node.replace(args=(node.args[0], index) + tuple(node.args[2:]))
        nodes.append(node)
    return graph.with_nodes(nodes)


class InvokeProgram(Program):
    """A :class:`~mlxterp.Program` of a trace with invokes: besides its params, each invoke's prompt is a
    keyword of its calls (``prog(clean="...", steer=v)``, ``prog.fn(params={"clean": ...})``,
    ``prog.batched(clean="...", steer=vectors)``), taking what ``tr.invoke`` takes with as many prompts as
    were recorded. ``tokens=`` takes the whole batch instead, shaped as recorded: each row keeps its
    recorded length (the form for ``mx.compile`` / ``mx.vmap`` placeholders).

    Attributes:
        invokes: ``{name: InvokeSlot}`` in row order.
    """

    def __init__(self, owner: WrappedModel, lowered: Any, specs: tuple, tokens: mx.array, lengths: tuple,
                 recorded: Graph, slots: tuple[InvokeSlot, ...]):
        super().__init__(owner, lowered, specs, tokens, lengths, recorded)
        self.invokes: Dict[str, InvokeSlot] = {s.name: s for s in slots}
        self._layouts: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def _prepare(self, tokens: Any, values: Dict[str, Any]) -> tuple[mx.array, Dict[str, Any], Any]:
        prompts = {k: v for k, v in values.items() if k in self.invokes}
        if not prompts:
            return self._recorded_shape(self._tokens(tokens)), values, self._current()
        if tokens is not None:
            raise TypeError(f"give this program its prompts by invoke name ({', '.join(prompts)}) or the whole "
                            "batch as tokens=, not both")
        values = {k: v for k, v in values.items() if k not in self.invokes}
        batches = {name: self._prompt(slot, prompts.get(name)) for name, slot in self.invokes.items()}
        rows = [row[:n] for b in batches.values() for row, n in zip(b.tokens.tolist(), b.lengths)]
        batch = pad_rows(rows, self._owner._pad_id())
        widths = tuple(b.tokens.shape[1] for b in batches.values())
        if widths == tuple(s.tokens.shape[1] for s in self.invokes.values()):
            return batch.tokens, values, self._current()
        return batch.tokens, values, self._laid_out(widths, batches, batch.tokens)

    def _prompt(self, slot: InvokeSlot, prompt: Any) -> TokenBatch:
        """An invoke's new prompt(s), checked (the recorded ones when ``prompt`` is ``None``)."""
        if prompt is None:
            return TokenBatch(slot.tokens, slot.lengths)
        batch = self._owner._batch(prompt)
        if batch.tokens.shape[0] != slot.tokens.shape[0]:
            raise ValueError(f"invoke {slot.name!r} was recorded with {slot.tokens.shape[0]} prompt(s); got "
                             f"{batch.tokens.shape[0]}. An invoke's number of rows is part of the program")
        return batch

    def _recorded_shape(self, tokens: mx.array) -> mx.array:
        if tuple(tokens.shape) != tuple(self.tokens.shape):
            raise ValueError(f"tokens= of this program is the whole batch of its invokes, shaped as recorded "
                             f"{tuple(self.tokens.shape)} (each row keeps its recorded length); got shape "
                             f"{tuple(tokens.shape)}. Give new prompts by invoke name instead: "
                             f"prog({', '.join(f'{n}=...' for n in self.invokes)})")
        return tokens

    def _laid_out(self, widths: tuple, batches: Dict[str, TokenBatch], tokens: mx.array) -> Any:
        """The lowered program for invokes of these token widths (cached; lowered again after a module swap)."""
        lowered = self._layouts.get(widths)
        if lowered is None or lowered.tree_version != self._owner._executor.tree_version:
            placed = {name: (slot.row, batches[name].tokens) for name, slot in self.invokes.items()}
            graph = relayout(self._recorded, self._owner, placed)
            lowered = self._layouts[widths] = relower(self._owner, graph, tokens, self._lowered)
            if len(self._layouts) > MAX_LAYOUTS:
                self._layouts.popitem(last=False)
        self._layouts.move_to_end(widths)
        return lowered

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", invokes {list(self.invokes)})"
