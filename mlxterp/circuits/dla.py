"""The residual stream as a sum of its senders' outputs, and direct logit attribution.

In a pre-norm transformer the final norm reads ``embed + sum over layers (attn + mlp)``, and an attention's
output is the sum of its heads' outputs (each head's ``attn.heads`` through its slice of the output
projection) plus the projection's bias. :func:`decompose` runs one forward that saves every one of these
components. :func:`direct_logit_attribution` takes the last position's components through the final norm with
its scale frozen at the clean run's value (TransformerLens' convention; see :mod:`.norms`) and the
unembedding direction of the target (minus the foil): the components' contributions then sum to the logit
(difference), up to what belongs to no component (biases, a LayerNorm's offset, logit soft-capping), reported
as ``error``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..adapters.base import plain_logits
from ..analysis.display import show_if_interactive
from ..analysis.unembed import find_unembedding
from ..analysis.validate import show_token, token_id
from ..views.page import Page, Viewable
from ..views.saving import Saveable, attach
from .inputs import prompt_rows
from .nodes import CircuitGraph
from .norms import freeze
from .parts import circuit_parts
from .runs import capture_program, sender_stack

if TYPE_CHECKING:
    from ..model import InterpretableModel

PathLike = Union[str, Path]


@dataclasses.dataclass
class ResidualDecomposition(Saveable):
    """Every sender's output at every position of one forward (saves and loads: ``save(path)``,
    ``ResidualDecomposition.load(path)``).

    Attributes:
        graph: the model's :class:`~.nodes.CircuitGraph` (its ``senders`` name the components).
        stack: ``(n_senders, batch, seq, hidden)`` ``mx.array`` in the model's activation dtype: ``stack[i]``
            is sender ``graph.senders[i]``'s output.
        error: ``(batch, hidden)``, same dtype: the final residual at the last position minus the sum of the
            components there (the output projections' biases; float rounding).
        tokens: the prompt's token ids, an int32 ``(batch, seq)`` ``mx.array``.
    """

    kind = "residual_decomposition"

    graph: CircuitGraph
    stack: mx.array
    error: mx.array
    tokens: mx.array

    def _record_fields(self) -> Dict[str, Any]:
        return {"graph": self.graph.as_record(), "stack": self.stack, "error": self.error, "tokens": self.tokens}

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "ResidualDecomposition":
        return cls(**dict(data, graph=CircuitGraph.from_record(data["graph"])))

    @property
    def names(self) -> List[str]:
        """The components' names (``embed``, ``layers.L.attn.heads.H``, ``layers.L.mlp``)."""
        return self.graph.senders

    def __getitem__(self, name: str) -> mx.array:
        """One component's output ``(batch, seq, hidden)``, by name."""
        lookup = {n: i for i, n in enumerate(self.names)}
        return self.stack[self.graph.sender_index(name, lookup, "name")]

    def components(self, layer: Optional[int] = None, phase: str = "pre") -> Tuple[List[str], mx.array]:
        """The components that make up one point of the residual stream: layer ``layer``'s input
        (``phase="pre"``), its MLP's input (``"mid"``: the input plus its heads), or, with ``layer=None``,
        the final norm's input. Returns their names and ``(n, batch, seq, hidden)`` outputs."""
        count = self._count(layer, phase)
        return self.names[:count], self.stack[:count]

    def residual(self, layer: Optional[int] = None, phase: str = "pre") -> mx.array:
        """The sum of :meth:`components` ``(batch, seq, hidden)``: the residual stream at that point (without
        the output projections' biases, if the model has any)."""
        return self.components(layer, phase)[1].sum(axis=0)

    def accumulated(self, incl_mid: bool = False) -> Tuple[List[str], mx.array]:
        """The residual stream after the embedding and after each layer (and, with ``incl_mid``, after each
        attention): names (``layers.L.resid_pre``, ``layers.L.resid_mid``, ``final``) and ``(n, batch, seq,
        hidden)`` (TransformerLens' ``accumulated_resid``)."""
        labels, points = [], []
        for layer in range(self.graph.n_layers):
            for phase in ("pre", "mid") if incl_mid else ("pre",):
                labels.append(f"layers.{layer}.resid_{phase}")
                points.append(self._count(layer, phase))
        labels.append("final")
        points.append(self.graph.n_senders)
        sums = mx.cumsum(self.stack, axis=0)
        return labels, sums[mx.array([p - 1 for p in points])]

    def heads(self, layer: int) -> mx.array:
        """Layer ``layer``'s heads' outputs ``(n_heads, batch, seq, hidden)``."""
        senders = self.graph.layer_senders(self._layer(layer))
        return self.stack[senders.start:senders.stop - 1]

    def mlp(self, layer: int) -> mx.array:
        """Layer ``layer``'s MLP output ``(batch, seq, hidden)``."""
        return self.stack[self.graph.layer_senders(self._layer(layer)).stop - 1]

    def _layer(self, layer: Any) -> int:
        n = self.graph.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(f"layer: expected an int in 0..{n - 1} (or -{n}..-1), got {layer!r}")
        return layer % n

    def _count(self, layer: Optional[int], phase: str) -> int:
        if phase not in ("pre", "mid"):
            raise ValueError(f"phase: expected 'pre' (the layer's input) or 'mid' (its MLP's input), got {phase!r}")
        if layer is None:
            return self.graph.n_senders
        start = self.graph.layer_senders(self._layer(layer)).start
        return start + (self.graph.n_heads if phase == "mid" else 0)


def decompose(model: InterpretableModel, prompt: Any, *, last_only: bool = False) -> ResidualDecomposition:
    """One forward of ``prompt`` saving every component of the residual stream (see the module docstring).

    Args:
        model: the InterpretableModel.
        prompt: a prompt, a list of prompts of one token length, or a ``(batch, seq)`` token array.
        last_only: keep the last position only (``seq`` becomes 1).
    """
    tokens = prompt_rows(model, prompt, "prompt")
    parts = circuit_parts(model)
    saves = capture_program(model, parts, tokens, last_only)()
    stack = sender_stack(parts, saves)
    error = saves["resid"][:, -1] - stack[:, :, -1].sum(axis=0)
    return attach(ResidualDecomposition(parts.graph, stack, error, tokens), model, [prompt], {"last_only": last_only})


@dataclasses.dataclass
class DirectLogitAttribution(Saveable, Viewable):
    """Each component's direct effect on a logit (difference) at the last position.

    Saves and loads (``save(path)``, ``DirectLogitAttribution.load(path)``); ``save_html(path)`` writes the
    interactive layers x (heads, MLP) view.

    Attributes:
        graph: the model's :class:`~.nodes.CircuitGraph`; ``graph.senders`` names the components.
        values: ``(n_senders,)`` float64 numpy: each component's contribution in logits (mean over the
            prompts).
        logit_diff: the model's logit difference (or target logit), in logits, mean over the prompts.
        label: what is attributed (``"logit(' Paris') - logit(' Rome')"``).
        per_prompt: ``(n_senders, batch)`` float64 numpy: the contributions of each prompt, in logits.
    """

    kind = "direct_logit_attribution"

    graph: CircuitGraph
    values: np.ndarray
    logit_diff: float
    label: str
    per_prompt: np.ndarray

    def _record_fields(self) -> Dict[str, Any]:
        return dict(super()._record_fields(), graph=self.graph.as_record())

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "DirectLogitAttribution":
        return cls(**dict(data, graph=CircuitGraph.from_record(data["graph"])))

    def _page(self) -> Page:
        from ..views.dla import dla_page

        return dla_page(self)

    @property
    def total(self) -> float:
        """The sum of the components' contributions (logits)."""
        return float(self.values.sum())

    @property
    def error(self) -> float:
        """``logit_diff - total`` (logits): what no component carries (biases, norm offsets, float rounding)."""
        return self.logit_diff - self.total

    @property
    def heads(self) -> np.ndarray:
        """``(n_layers, n_heads)`` float64: each head's contribution (logits)."""
        g = self.graph
        return self.values[1:].reshape(g.n_layers, g.n_heads + 1)[:, :-1]

    @property
    def mlps(self) -> np.ndarray:
        """``(n_layers,)`` float64: each MLP's contribution (logits)."""
        return self.values[1:].reshape(self.graph.n_layers, self.graph.n_heads + 1)[:, -1]

    @property
    def embed(self) -> float:
        """The embedding's contribution (logits)."""
        return float(self.values[0])

    def as_dict(self) -> Dict[str, float]:
        """``{component name: contribution in logits}`` (``to_dict()`` is the saved record)."""
        return {name: float(v) for name, v in zip(self.graph.senders, self.values)}

    def top(self, k: int = 10) -> List[Tuple[str, float]]:
        """The ``k`` components of largest absolute contribution, ``(name, contribution)`` (logits), largest
        first."""

        order = np.argsort(-np.abs(self.values), kind="stable")[:k]
        return [(self.graph.senders[i], float(self.values[i])) for i in order]

    def plot(self, save_path: Optional[PathLike] = None, *, figsize: Tuple[float, float] = (10, 8),
             cmap: str = "RdBu_r", title: Optional[str] = None) -> Any:
        """Heatmap: layers (rows) by heads and the MLP (columns); the embedding's share is in the title."""
        from ..plotting import plot_patching_grid

        grid = np.concatenate([self.heads, self.mlps[:, None]], axis=1)
        labels = [f"H{h}" for h in range(self.graph.n_heads)] + ["MLP"]
        title = title or (f"Direct logit attribution of {self.label} (total {self.total:.3g}, embed "
                          f"{self.embed:.3g}, error {self.error:.2g})")
        return plot_patching_grid(grid, layer_labels=list(range(self.graph.n_layers)), position_labels=labels,
                                  figsize=figsize, cmap=cmap, title=title, colorbar_label="contribution",
                                  save_path=save_path, xlabel="component")


def direct_logit_attribution(model: InterpretableModel, prompt: Any, target: Any = None, foil: Any = None, *,
                             plot: bool = False, save_path: Optional[PathLike] = None) -> DirectLogitAttribution:
    """See :meth:`mlxterp.circuits.methods.CircuitsMixin.direct_logit_attribution`."""
    tokens = prompt_rows(model, prompt, "prompt")
    given = None if target is None else token_id(model, target, "target")
    f = None if foil is None else token_id(model, foil, "foil")
    parts = circuit_parts(model)
    saves = capture_program(model, parts, tokens, last_only=True)()
    t = int(mx.argmax(saves["logits"][0]).item()) if given is None else given
    if f == t:
        raise ValueError(f"target and foil are the same token {show_token(model, t)}; the logit difference is 0")
    direction = _direction(model, saves["resid"], t, f)  # (batch, 1, hidden)
    frozen = freeze(model._index.modules[parts.final_norm], saves["resid"])
    stack = sender_stack(parts, saves)  # (senders, batch, 1, hidden)
    contributions = (frozen.linear(stack) * direction).sum(axis=(-1, -2))  # (senders, batch)
    logits = saves["logits"].astype(mx.float32)
    diff = logits[:, t] - (logits[:, f] if f is not None else 0.0)
    per_prompt = np.array(contributions, dtype=np.float64)
    label = f"logit({show_token(model, t)})" + (f" - logit({show_token(model, f)})" if f is not None else "")
    out = DirectLogitAttribution(parts.graph, per_prompt.mean(axis=1), float(diff.mean().item()), label, per_prompt)
    attach(out, model, [prompt], {"target": target, "foil": foil})
    if plot or save_path is not None:
        fig = out.plot(save_path)
        if plot:
            show_if_interactive(fig)
    return out


def _direction(model: InterpretableModel, resid: mx.array, target: int, foil: Optional[int]) -> mx.array:
    """The unembedding direction of ``logit(target) - logit(foil)`` at the normed residual: the difference of
    the output projection's rows for a plain projection, else the logits' gradient there (a family that
    scales or soft-caps its logits)."""
    unembed = find_unembedding(model)
    arch = model._index.arch
    if arch is not None and arch.logits is plain_logits and "bias" not in model._index.modules[unembed.head_path]:
        rows = _rows(model._index.modules[unembed.head_path], [target] if foil is None else [target, foil])
        return (rows[0] if foil is None else rows[0] - rows[1]).astype(mx.float32)
    normed = unembed.norm(resid) if unembed.norm is not None else resid
    vocab = int(model._index.modules[unembed.head_path].weight.shape[0])
    cot = mx.zeros((vocab,), dtype=mx.float32).at[target].add(1.0)
    if foil is not None:
        cot = cot.at[foil].add(-1.0)
    out = unembed.head(normed)
    cot = mx.broadcast_to(cot, out.shape).astype(out.dtype)
    return mx.vjp(unembed.head, [normed], [cot])[1][0].astype(mx.float32)


def _rows(module: nn.Module, ids: List[int]) -> mx.array:
    """Rows ``ids`` of a projection's ``(vocab, hidden)`` weight (a linear head or a tied embedding),
    dequantized if quantized."""
    index = mx.array(ids, dtype=mx.int32)
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        biases = module.get("biases")
        return mx.dequantize(module.weight[index], module.scales[index], None if biases is None else biases[index],
                             module.group_size, module.bits, mode=getattr(module, "mode", "affine"))
    return module.weight[index]
