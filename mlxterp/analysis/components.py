"""Patchable components of a transformer layer: ``output`` (the whole layer) and every sub-module that
runs exactly once per forward (``mlp``, ``self_attn``, ``mlp.gate_proj``, ...; GPT-2: ``attn``,
``mlp.c_fc``, ...). Names are relative to the layer; ``attn`` and ``self_attn`` are aliases."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List

import mlx.core as mx
import numpy as np

from ..names import ModuleNameError
from .validate import OUTPUT

if TYPE_CHECKING:
    from ..model import InterpretableModel


@dataclasses.dataclass(frozen=True)
class ComponentSite:
    """Where a component lives in one layer, and the shape of what it outputs (for the probed input)."""

    layer: int
    layer_path: str
    path: str  # canonical module path (the layer's own path for "output")
    shape: tuple
    dtype: Any
    width: int  # elements per position of the widest tensor patched or grown (component or residual)
    cell_axis: int = 1  # the axis of the output a sweep cell's index selects: 1 positions, 2 heads




def layer_components(model: InterpretableModel, probe: Any, layer: int = 0) -> List[str]:
    """Valid component names of ``layer``: ``"output"``, then its sub-modules called once per forward."""
    base = model._index.layer_path(layer)
    counts = probe.call_counts()
    subs = [p[len(base) + 1:] for p in model._index.modules if p.startswith(base + ".") and counts.get(p) == 1]
    return [OUTPUT] + sorted(subs)


def resolve_sites(model: InterpretableModel, component: Any, layers: List[int], tokens: mx.array) -> Dict[int, ComponentSite]:
    """The component's site in each requested layer.

    Raises:
        ValueError: the component is not a str, does not exist in some layer, runs more or less than once
            per forward, or does not output a ``(batch, seq, ...)`` array; the message lists the valid names.
    """
    probe = model._probe(tokens)
    counts = probe.call_counts()

    def choices(layer: int) -> str:
        names = ", ".join(repr(c) for c in layer_components(model, probe, layer))
        return names + " ('attn' and 'self_attn' are aliases)"

    if not isinstance(component, str) or not component:
        raise ValueError(f"component: expected a component name such as 'mlp' or 'output'; valid components are "
                         f"{choices(layers[0])}; got {component!r}")
    return {layer: _site(model, probe, counts, component, layer, tokens, choices) for layer in layers}


def _site(model: InterpretableModel, probe: Any, counts: Dict[str, int], component: str, layer: int, tokens: mx.array,
          choices: Any) -> ComponentSite:
    index = model._index
    base = index.layer_path(layer)
    if component == OUTPUT:
        path = base
    else:
        try:
            path = index.resolve(f"{index.short(base)}.{component}")
        except ModuleNameError:
            path = None
        if path is None or not path.startswith(base + "."):
            raise ValueError(f"component: {component!r} is not a component of layer {layer} "
                             f"({index.short(base)}){index.why_missing(base, component)}; "
                             f"valid components are {choices(layer)}") from None
    calls = counts.get(path, 0)
    if calls != 1:
        raise ValueError(f"component: {component!r} of layer {layer} runs {calls} times per forward; patching needs "
                         f"a module that runs once. Valid components are {choices(layer)}")
    spec = probe.spec((path, 0, "output"))
    if not _batch_seq_array(spec, tokens):
        raise ValueError(f"component: {component!r} of layer {layer} returns {spec!r}, not an array shaped "
                         f"(batch, seq, ...) = {tuple(tokens.shape)} + (...); valid components are {choices(layer)}")
    residual = probe.values.get((base, 0, "input"))
    if not _batch_seq_array(residual, tokens):
        raise ValueError(f"layers: layer {layer} ({index.short(base)}) receives {residual!r} as its first argument, "
                         "not the (batch, seq, hidden) residual stream that patching sweeps grow along the batch")
    width = max(int(np.prod(spec[0][2:])), int(np.prod(residual[0][2:])))
    return ComponentSite(layer, base, path, tuple(spec[0]), spec[1], width)


def _batch_seq_array(spec: Any, tokens: mx.array) -> bool:
    return isinstance(spec, tuple) and len(spec[0]) >= 2 and tuple(spec[0][:2]) == tuple(tokens.shape)
