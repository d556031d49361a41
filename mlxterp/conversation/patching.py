"""Turn patching: whole turns of a clean conversation patched into a corrupted one, layer by layer.

Cell ``(layer, turn)`` gives every position of the turn (or of its content) the clean run's value of the
layer's component in the corrupted run, and scores the last position's logits as the other patching sweeps
do (recovery %, see :mod:`mlxterp.analysis.patching`). The cells run on the same staircase sweep
(:mod:`mlxterp.analysis.sweep`): one cell is a :class:`~mlxterp.analysis.chunks.Span` of positions.

Positions are matched one to one, so the two conversations must have the same turns (the same roles in
order) and every turn as many tokens in both: the conversations then have the same layout, position for
position. Turns of different token lengths are refused, naming the turn and both lengths.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .. import distributed as dist
from ..analysis.chunks import Span
from ..analysis.display import show_if_interactive
from ..analysis.metrics import identical_logits_message
from ..analysis.patching import PatchingGrid, _details, _setup, sharded_sweep
from ..analysis.serial import holds_model_lock
from ..analysis.validate import check_positive_int, resolve_indices
from ..views.page import Page
from ..views.saving import attach
from .conversation import Conversation

if TYPE_CHECKING:
    from ..model import InterpretableModel

PathLike = Union[str, Path]


@dataclasses.dataclass
class TurnPatching(PatchingGrid):
    """A layers x turns grid of recovery percentages (a :class:`~mlxterp.analysis.patching.PatchingGrid`
    whose columns are turns: ``positions`` holds the turn indices, ``position_labels`` their ``"<index>
    <role>"``, marked ``*`` where the two conversations' tokens of the turn differ). Saves, loads and has an
    HTML view as a patching grid does.

    Attributes:
        roles: the role of each column's turn.
        spans: the positions ``(start, stop)`` each column patches.
        content_only: whether the spans are the turns' contents (else the whole turns).
    """

    kind = "turn_patching"

    roles: List[str]
    spans: List[Tuple[int, int]]
    content_only: bool

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "TurnPatching":
        return cls(**dict(data, spans=[tuple(s) for s in data["spans"]]))

    def top(self, k: int = 5) -> List[Tuple[int, int, str, float]]:
        """The ``k`` cells of highest recovery: ``(layer, turn, role, recovery)`` (recovery in percent), best
        first."""

        order = np.argsort(-self.grid, axis=None, kind="stable")[:check_positive_int(k, "k")]
        rows, cols = np.unravel_index(order, self.grid.shape)
        return [(self.layers[i], self.positions[j], self.roles[j], float(self.grid[i, j])) for i, j in zip(rows, cols)]

    def plot(self, save_path: Optional[PathLike] = None, *, figsize: Tuple[float, float] = (12, 8),
             cmap: str = "RdBu_r", title: Optional[str] = None) -> Any:
        """Heatmap of the grid, layers as rows and turns as columns.

        Args:
            save_path: if given, write a PNG there.
            figsize: figure size in inches.
            cmap: diverging colormap.
            title: the figure's title (default: the component, whether turns or their contents were patched,
                and the metric).

        Returns:
            The matplotlib Figure.
        """
        from ..plotting import plot_patching_grid

        part = "turn contents" if self.content_only else "turns"
        title = title or f"Turn patching: {self.component} over {part} (metric {self.metric})"
        return plot_patching_grid(self.grid, layer_labels=self.layers, position_labels=self.position_labels,
                                  figsize=figsize, cmap=cmap, title=title, save_path=save_path, xlabel="turn")

    def _page(self) -> Page:
        from ..views.patching import patching_page

        part = "content" if self.content_only else "span"
        titles = [f"turn {label} ({part} {a}:{b})" for label, (a, b) in zip(self.position_labels, self.spans)]
        return patching_page(self.grid, self.layers, self.position_labels, titles, axis="turn",
                             title="Turn patching", provenance=self.provenance,
                             details=_details(self.metric, self.component, self.method, self.corrupted_distance)
                             + [("Turns", "* marks a turn whose clean and corrupted tokens differ")])


@holds_model_lock
def turn_patching(model: InterpretableModel, clean: Conversation, corrupted: Conversation, component: str = "output",
                  layers: Optional[List[int]] = None, turns: Optional[List[int]] = None, metric: Any = "l2", *,
                  content_only: bool = False, plot: bool = False, figsize: Tuple[float, float] = (12, 8),
                  cmap: str = "RdBu_r", batch_size: Optional[int] = None, progress: bool = False,
                  save_path: Optional[PathLike] = None, target: Any = None, foil: Any = None,
                  distributed: dist.Distributed = "auto") -> TurnPatching:
    """Recovery (%) for every (layer, turn) cell. See
    :meth:`InterpretableModel.turn_patching` for the arguments."""
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    spans = aligned_spans(model, clean, corrupted, content_only)
    n = len(spans)
    turn_ids = resolve_indices(turns, n, arg="turns", unit="turn", sort=False,
                               valid=f"the conversations have {n} turns ({', '.join(clean.labels)})")
    group = dist.resolve_group(distributed)
    dist.check_same_call(group, "turn_patching", clean=clean.tokens, corrupted=corrupted.tokens, component=component,
                         layers=layers, turns=turns, metric=metric, target=target, foil=foil,
                         content_only=content_only)
    s = _setup(model, clean, corrupted, component, layers, metric, target, foil)
    cells = [(layer, Span(*spans[t])) for layer in s.layers for t in turn_ids]
    result = sharded_sweep(model, s.tokens, s.sites, cells, s.metric, norm_path=s.norm_path, group=group,
                           batch_size=batch_size, progress=progress, desc=f"patching {component} x turns")
    if result.corrupted == 0.0:
        raise ValueError(identical_logits_message(s.metric))
    grid = ((result.corrupted - result.patched) / result.corrupted * 100.0).reshape(len(s.layers), len(turn_ids))
    differ = [clean.tokens[slice(*spans[t])] != corrupted.tokens[slice(*spans[t])] for t in turn_ids]
    labels = [clean.labels[t] + ("*" if d else "") for t, d in zip(turn_ids, differ)]
    roles = [clean.turns[t].role for t in turn_ids]
    out = TurnPatching(grid, s.layers, turn_ids, labels, str(s.metric), component, "turn patching", result.corrupted,
                       roles, [spans[t] for t in turn_ids], content_only)
    attach(out, model, [clean.messages, corrupted.messages],
           dict(component=component, layers=layers, turns=turns, metric=str(s.metric), target=target, foil=foil,
                content_only=content_only))
    if plot or save_path is not None:
        fig = out.plot(save_path, figsize=figsize, cmap=cmap)
        if plot:
            show_if_interactive(fig)
    return out


def aligned_spans(model: InterpretableModel, clean: Any, corrupted: Any, content_only: bool) -> List[Tuple[int, int]]:
    """Each turn's ``(start, stop)``, the same in both conversations (see the module docstring).

    Raises:
        TypeError: an argument is not a conversation.
        ValueError: different turns, or a turn with a different number of tokens in each.
    """
    for name, conv in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(conv, Conversation):
            raise TypeError(f"{name}: expected a Conversation (model.conversation([...])), got "
                            f"{type(conv).__name__}; patch plain prompts with patching_grid or activation_patching")
        conv.token_ids(model.tokenizer)  # made with this model's tokenizer
    a, b = clean.turns, corrupted.turns
    if [t.role for t in a] != [t.role for t in b]:
        raise ValueError(f"clean and corrupted must have the same turns to be patched turn by turn: clean has "
                         f"{', '.join(clean.labels)}; corrupted has {', '.join(corrupted.labels)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.span != y.span or x.content != y.content:
            raise ValueError(
                f"turn {i} ({x.role}) is {_length(x)} in clean and {_length(y)} in corrupted: turns are patched "
                "position by position, so each turn must have as many tokens in both conversations (reword one "
                "of the messages so that their token counts match)")
    for name in ("preamble", "generation_prompt"):
        if getattr(clean, name) != getattr(corrupted, name):
            raise ValueError(f"clean and corrupted differ in their {name.replace('_', ' ')} "
                             f"({getattr(clean, name)} against {getattr(corrupted, name)}); make both with the same "
                             "add_generation_prompt and the same kind of first message")
    return [(t.content.start, t.content.stop) if content_only else (t.span.start, t.span.stop) for t in a]


def _length(turn: Any) -> str:
    return (f"{turn.span.stop - turn.span.start} tokens at {turn.span.start}:{turn.span.stop} "
            f"(content {turn.content.stop - turn.content.start})")
