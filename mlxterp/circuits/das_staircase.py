"""Where each of ``K`` DAS variants runs in the batch of the intervened base run: a staircase.

A variant that intervenes at a site inside layer ``l`` computes exactly the base run below layer ``l``. So the
batch starts with the base rows (one block of ``batch`` rows) and, at the input of each layer where variants
are born, grows by one block per variant, a copy of the base block; the site's interchange then writes only
its own block. After the last birth the base block is dropped (nothing reads it any more). Variants whose
site is outside the layers (the embedding, the final norm) run from the start. A variant's rows thus run
only the layers from its site on, forward and backward (as the patching sweeps' staircase does, see
:mod:`mlxterp.analysis.sweep`), and the KV cache of each layer holds as many blocks as run through it.

Blocks are laid out as :func:`~mlxterp.compiler.fold.fold_tokens` lays out copies: block ``i`` is rows
``i * batch .. (i + 1) * batch - 1``. Variants are ordered by birth (the start, then layer by layer; sites
in one layer in the order given).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional, Sequence

import mlx.core as mx

from .das_data import Site
from .das_rotation import interchange

if TYPE_CHECKING:
    from ..model import InterpretableModel


@dataclasses.dataclass(frozen=True)
class Staircase:
    """The blocks of the intervened run (see the module docstring).

    Attributes:
        layers: per site, the layer whose input it is born at (``None``: born at the start).
        before: per site outside the layers, whether it comes before them (the embedding) or after.
        order: site indices in birth order.
    """

    layers: tuple[Optional[int], ...]
    before: tuple[bool, ...]
    order: tuple[int, ...]

    @property
    def last_birth(self) -> Optional[int]:
        """The last layer a variant is born at (the base block is dropped there), or ``None``."""
        born = [layer for layer in self.layers if layer is not None]
        return max(born) if born else None

    def has_base(self, layer: Optional[int], before: bool = True) -> bool:
        """Whether the base block runs through ``layer`` (``None``: outside the layers, ``before`` them or not)."""
        last = self.last_birth
        if last is None:
            return False
        return before if layer is None else layer < last

    def start_blocks(self) -> int:
        """Blocks of the tokens the run starts with: the base (if variants are born later) and the variants
        born at the start."""
        return int(self.has_base(None)) + sum(layer is None for layer in self.layers)

    def births(self) -> list[tuple[int, int]]:
        """``(layer, count)``: how many variants are born at each layer's input, by layer."""
        counts: dict[int, int] = {}
        for layer in self.layers:
            if layer is not None:
                counts[layer] = counts.get(layer, 0) + 1
        return sorted(counts.items())

    def blocks_before(self, layer: int) -> int:
        """Blocks reaching ``layer``'s input (before the births there)."""
        born = sum(1 for lay in self.layers if lay is None or lay < layer)
        return born + int(self.last_birth is not None)

    def blocks_at(self, layer: int) -> int:
        """Blocks running through ``layer`` (after the births at its input)."""
        born = sum(1 for lay in self.layers if lay is None or lay <= layer)
        return born + int(self.has_base(layer))

    def block(self, j: int) -> int:
        """The block of site ``j``'s variant where its site is."""
        return self.order.index(j) + int(self.has_base(self.layers[j], self.before[j]))


def staircase(model: "InterpretableModel", sites: Sequence[Site], tokens: mx.array) -> Staircase:
    """The staircase of ``sites`` on ``model`` (event order from the probe of ``tokens``' shape)."""
    container = model._index.container + "."
    events = model._probe(tokens).events
    rank = {event: i for i, event in enumerate(events)}
    first_layer = rank[(container + "0", 0, "input")]
    layers, before = [], []
    for site in sites:
        inside = site.path.startswith(container)
        layers.append(int(site.path[len(container):].split(".")[0]) if inside else None)
        before.append(inside or rank.get((site.path, 0, site.phase), first_layer) < first_layer)
    order = sorted(range(len(sites)), key=lambda j: (-1 if layers[j] is None else layers[j], j))
    return Staircase(tuple(layers), tuple(before), tuple(order))


def grow_blocks(x: mx.array, blocks: int, count: int, keep_base: bool) -> mx.array:
    """``x`` (``blocks`` blocks of rows, the base block first) with ``count`` copies of its base block appended
    along the batch axis; without the base block when ``keep_base`` is false."""
    block = x.shape[0] // blocks
    copies = mx.concatenate([x[:block]] * count, axis=0)
    return mx.concatenate([x if keep_base else x[block:], copies], axis=0)


def interchange_rows(x: mx.array, rotation: mx.array, source: mx.array, block: int, positions: tuple) -> mx.array:
    """:func:`~.das_rotation.interchange` on block ``block`` of ``x`` (blocks of ``len(source)`` rows) only; the
    other rows are returned as they are."""
    start = block * source.shape[0]
    stop = start + source.shape[0]
    part = interchange(x[start:stop], rotation, source, positions)
    return mx.concatenate([x[:start], part, x[stop:]], axis=0)
