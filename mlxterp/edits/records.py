"""What an edited model remembers: one record per edit, applied in order at the start of every trace.

- :class:`InterventionEdit`: ``model.edit({"layers.5": iv.scale(0.5)})``: the function is applied at the
  start of every trace exactly as an ``interventions=`` entry is (so it sees that trace's shapes).
- :class:`RecordedEdit`: ``with model.edit() as ed:``: the writes recorded in the block, as a graph that is
  replayed into every trace (see :mod:`.replay`).
- :class:`DictionaryEdit`: ``model.edit(dictionaries=[sae])``: a dictionary spliced at its site in every trace
  (see :mod:`mlxterp.features.splice`).
- :class:`WeightEdit`: ``model.edit_weights({...})``: a weight of the edited model's own module tree (see
  :mod:`mlxterp.edits.weights`); nothing to record in a trace.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import mlx.core as mx

from mlxterp.compiler import Graph, Op

from ..interventions import positionwise
from ..tracing.source import format_source, pin
from .replay import Plan


class EditError(ValueError):
    """A bad edit: a value it cannot hold, a ``.save()`` inside it, a shape asked while recording it, or a
    weight of the wrong name, shape or dtype. Raised before the edited model exists (nothing is modified)."""


@dataclasses.dataclass(frozen=True, eq=False)
class InterventionEdit:
    """``fn`` applied to the value at ``site`` (``(path, phase)``) at the start of every trace.

    Attributes:
        name: the key the user wrote (``"layers.5.attn.heads"``).
        site: where it reads and writes (see ``ModuleIndex.resolve_site``).
        fn: ``activation -> activation`` (an :class:`~mlxterp.interventions.Intervention` or any function).
        source: where ``model.edit(...)`` was called; the nodes it records in a trace say they come from there.
    """

    name: str
    site: tuple
    fn: Callable
    source: Any

    def apply(self, trace: Any) -> None:
        """Record the edit into ``trace`` (as it begins)."""
        previous = pin(self.source)
        try:
            trace._apply_intervention(self.site, self.fn, self.name, kind="edit")
        finally:
            pin(previous)

    @property
    def padding_safe(self) -> bool:
        """Whether right padding leaves every real position as the prompt alone gives it: true for the
        library's interventions that act on each position alone (see
        :func:`mlxterp.interventions.positionwise`)."""
        return positionwise(self.fn, self.site)

    @property
    def sites(self) -> tuple:
        """The module values it reads and writes, ``(path, call, phase)``."""
        return ((self.site[0], 0, self.site[1]),)

    def __repr__(self) -> str:
        return f"Edit({self.name!r}: {self.fn!r}, at {format_source(self.source)})"


@dataclasses.dataclass(frozen=True, eq=False)
class RecordedEdit:
    """The writes recorded in a ``with model.edit():`` block, replayed into every trace.

    Attributes:
        graph: the recorded nodes (module reads, constants, params, computations, writes; no saves).
        writes: what it writes, as ``"layers.8 output"`` (for ``repr``).
        source: the line of the ``with`` statement.
    """

    graph: Graph
    writes: tuple
    source: Any

    padding_safe = False  # it may read or write positions counted from the end, or mix positions

    def __post_init__(self) -> None:
        object.__setattr__(self, "_plan", Plan(self.graph))  # what replaying needs, worked out once

    def apply(self, trace: Any) -> None:
        """Replay the recorded nodes into ``trace`` (as it begins); see :mod:`.replay`."""
        self._plan.replay(trace)

    @property
    def sites(self) -> tuple:
        """The module values it reads and writes, ``(path, call, phase)``."""
        found = [n.target for n in self.graph if n.op is Op.REPLACE]
        found += [n.target + ("output" if n.op is Op.MODULE_OUTPUT else "input",) for n in self.graph
                  if n.op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT)]
        return tuple(dict.fromkeys(found))

    @property
    def params(self) -> tuple:
        """Names of the params (``mlxterp.param``) the edit declares: they become params of every program of
        the edited model."""
        return tuple(n.meta["name"] for n in self.graph if n.op is Op.CONSTANT and n.meta.get("name"))

    def __repr__(self) -> str:
        return f"Edit(recorded at {format_source(self.source)}: writes {', '.join(self.writes)})"


@dataclasses.dataclass(frozen=True, eq=False)
class DictionaryEdit:
    """A dictionary spliced at its site in every trace (``model.edit(dictionaries=[sae])``; see
    :mod:`mlxterp.features.splice`).

    Attributes:
        splice: the checked :class:`~mlxterp.features.splice.Splice` (the dictionary, its name, sites and
            whether the error term is kept).
        source: where ``model.edit(...)`` was called.
    """

    splice: Any
    source: Any

    padding_safe = True  # a dictionary encodes and decodes each position alone

    def apply(self, trace: Any) -> None:
        """Splice the dictionary into ``trace`` (as it begins)."""
        previous = pin(self.source)
        try:
            self.splice.apply(trace)
        finally:
            pin(previous)

    def __repr__(self) -> str:
        return f"Edit({self.splice!r}, at {format_source(self.source)})"


@dataclasses.dataclass(frozen=True, eq=False)
class WeightEdit:
    """A weight of the edited model's module tree, replaced (the rest of the tree is shared with the model it
    was made from).

    Attributes:
        name: the weight's name (``"layers.10.mlp.down_proj.weight"``).
        shape, dtype: the new weight's (the same as the old one's).
        how: ``"replaced"`` (an array was given) or ``"updated by <fn>"`` (a function of the old weight).
        dequantized: for a weight of a quantized layer, what that layer was (``"4-bit, group size 32"``): the
            edited model's layer is a float layer holding the dequantized weight, edited; else ``None``.
        source: where ``edit_weights`` was called.
    """

    name: str
    shape: tuple
    dtype: mx.Dtype
    how: str
    dequantized: Optional[str]
    source: Any

    padding_safe = True  # the forward itself is a model's forward
    sites = ()  # it reads and writes no module value

    def apply(self, trace: Any) -> None:
        """Nothing to record: the weight lives in the edited model's module tree."""

    def __repr__(self) -> str:
        quant = f", layer dequantized from {self.dequantized}" if self.dequantized else ""
        return (f"WeightEdit({self.name!r} {self.how}, {self.shape} {str(self.dtype).rsplit('.', 1)[-1]}{quant}, "
                f"at {format_source(self.source)})")
