"""The sites the activation utilities read: any value a trace can read, named as in a trace.

``collect_activations``, ``batch_get_activations`` and ``get_activations`` (and the activation store) take
``layers`` as layer indices (a layer's output) or names of anything ``model.trace`` reads: a module in any
accepted form (``"layers.3.mlp"``, ``"model.model.layers.3.mlp"``), an attention internal
(``"layers.3.attn.q"``), or a layer's residual value (``"layers.3.resid_pre"``, ``"layers.3.resid_mid"``,
``"layers.3.resid_post"``), resolved by the same :meth:`~mlxterp.names.ModuleIndex.resolve_site` as the
trace and ``interventions=``, and read inside the trace as ``model.layers[3].resid_mid`` is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Sequence

import mlx.core as mx
import numpy as np

from .core import WrappedModel
from .names import ModuleNameError

PROBE_LEN = 8  # tokens of the probe forwards that check a site's layout (at this length and the next)
RESIDUAL_PHASE = "resid_mid"


@dataclasses.dataclass(frozen=True)
class Site:
    """A value read by the activation utilities: ``key`` names it in results and stores, ``path`` and
    ``phase`` (``"output"``, ``"input"`` or ``"resid_mid"``) locate it as the trace does, ``name`` is its
    canonical name (a module path, or a layer path plus ``.resid_pre``/``.resid_mid``/``.resid_post``)."""

    key: str
    path: str
    phase: str
    name: str
    layer: Optional[int] = None  # the index it was given as, for a layer given by its index

    @property
    def label(self) -> Any:
        """How the store's manifest lists it: the layer index, else the key."""
        return self.key if self.layer is None else self.layer


def activation_sites(index: Any, layers: Any, layer_key: str = "short") -> List[Site]:
    """The sites of ``layers`` (see the module docstring), de-duplicated, in order.

    Args:
        index: the model's :class:`~mlxterp.names.ModuleIndex` (``model._index``).
        layers: an int, a name, or a non-empty list of them; None: every layer.
        layer_key: how a layer index is keyed: ``"short"`` (``"layers.3"``, as ``collect_activations``) or
            ``"index"`` (``"layer_3"``, as ``batch_get_activations``).

    Raises:
        ValueError: an index out of range, an unknown name (:class:`~mlxterp.ModuleNameError`, the closest
            valid names listed) or a residual value the layer has not (the reason given).
    """
    if layers is None:
        layers = list(range(len(index)))
    items = [layers] if isinstance(layers, (str, int, np.integer)) and not isinstance(layers, bool) else layers
    if not isinstance(items, (list, tuple, range)) or not items:
        raise ValueError(f"layers: expected a layer index, a name such as 'layers.3', 'layers.3.mlp', 'layers.3.attn.q' "
                         f"or 'layers.3.resid_mid', or a non-empty list of them (None: every layer); got {layers!r}")
    sites: List[Site] = []
    for item in items:
        site = _site(index, item, layer_key)
        if all((s.path, s.phase) != (site.path, site.phase) for s in sites):
            sites.append(site)
    return sites


def _site(index: Any, item: Any, layer_key: str) -> Site:
    n = len(index)
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        if not -n <= int(item) < n:
            raise ValueError(f"layer index {int(item)} is out of range: the model has {n} layers (valid indices 0 to "
                             f"{n - 1}, or -{n} to -1 from the end)")
        i = int(item) % n
        path = index.layer_path(i)
        return Site(f"layer_{i}" if layer_key == "index" else index.short(path), path, "output", path, i)
    if not isinstance(item, str):
        raise ValueError(f"layers: {type(item).__name__} {item!r} is neither a layer index (an int; the model has {n} "
                         f"layers, valid indices 0 to {n - 1}) nor a site name (a str such as 'layers.3.mlp', "
                         "'layers.3.attn.q' or 'layers.3.resid_mid')")
    try:
        path, phase = index.resolve_site(item)
    except AttributeError as exc:  # resid_mid of a layer without one: the reason, as a name error
        raise ModuleNameError(f"layers: {exc}") from None
    if phase == "output":  # a module or internal's output (a layer's resid_post is its output: the same key)
        return Site(index.short(path) if path else "model", path, phase, path)
    name = f"{path}.{'resid_pre' if phase == 'input' else phase}"  # a layer's resid_pre or resid_mid
    return Site(index.short(name), path, phase, name)


def read_site(model: WrappedModel, site: Site) -> Any:
    """Inside a trace of ``model``: the proxy of ``site``'s value."""
    module = model.module(site.path) if site.path else model
    if site.phase == RESIDUAL_PHASE:
        return module.resid_mid
    return module.input if site.phase == "input" else module.output


def sequence_specs(model: WrappedModel, sites: Sequence[Site], what: str) -> List[tuple]:
    """``(trailing shape, dtype)`` of each site's value, checked to be ``(batch, seq, *trailing)`` with a
    trailing shape that does not depend on the sequence length: what rows at token positions need.

    Two lazy probe forwards (``PROBE_LEN`` tokens, and one more) give the shapes.

    Raises:
        ValueError: a site whose value is laid out otherwise (an attention pattern ``(batch, heads, query,
            key)``, a tuple, ...), naming it, its shape and what ``what`` needs.
    """
    probes = [model._probe(mx.zeros((1, n), dtype=mx.int32)) for n in (PROBE_LEN, PROBE_LEN + 1)]
    specs = []
    for site in sites:
        a, b = (_spec(model, p, site) for p in probes)
        ok = all(isinstance(s, tuple) and len(s[0]) >= 3 for s in (a, b)) and \
            a[0][:2] == (1, PROBE_LEN) and b[0][:2] == (1, PROBE_LEN + 1) and a[0][2:] == b[0][2:]
        if not ok:
            shown = f"shape {a[0]} for {PROBE_LEN} tokens" if isinstance(a, tuple) else f"a {a}"
            raise ValueError(f"{what} needs values laid out (batch, seq, ...), one row per token with the same width "
                             f"at every length; {site.key!r} gives {shown} (an attention pattern or scores is "
                             "(batch, heads, query, key): collect_activations without out= returns it whole)")
        specs.append((tuple(int(d) for d in a[0][2:]), a[1]))
    return specs


def _spec(model: WrappedModel, probe: Any, site: Site) -> Optional[Any]:
    path, phase = site.path, site.phase
    if phase == RESIDUAL_PHASE:
        path, phase = model._index.residual_site(path, phase)
    return probe.values.get((path, 0, phase))
