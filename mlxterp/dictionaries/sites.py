"""Sites: where a dictionary reads (and, spliced into a trace, writes) activations, by name.

A site is any value a trace can read with shape ``(batch, seq, width)``:

- a layer's residual stream: ``layers.N.resid_pre`` (its input), ``layers.N.resid_mid`` (between its
  attention and its MLP, where the family has one), ``layers.N.resid_post`` (its output, also written
  ``layers.N``);
- a module's output or input: ``layers.N.mlp`` (= ``layers.N.mlp.output``), ``layers.N.mlp.input``,
  ``layers.N.attn``, ``layers.N.attn.input``, any other module name the model accepts.

:func:`resolve` checks a name against a model (an unknown name lists the closest valid ones) and gives its
:class:`Site`; :func:`read` is the traced value of a site inside ``with model.trace(...)``. Without a
model (training on an activation store) sites are matched to the store's keys by :func:`site_key`, a
textual canonical form. :func:`to_hook_name` / :func:`from_hook_name` translate to and from the
TransformerLens hook names SAELens records (``blocks.N.hook_resid_pre``, ...).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import mlx.core as mx

from ..adapters import RESIDUAL_VALUES
from ..core import WrappedModel
from ..names import ModuleNameError
from ..tracing.module_proxy import ModuleProxy

PHASES = ("output", "input")
PROBE_TOKENS = 8  # tokens of the probe forward that gives a site's width
_LAYER = re.compile(r"^(?:model\.)*(?:layers|layer_)\.?(\d+)$")
_ALIASES = {"self_attn": "attn", "attention": "attn"}
_LAYER_VALUES = {"input": "resid_pre", "output": "resid_post", "resid_mid": "resid_mid"}
# Our canonical site keys <-> TransformerLens hook names (what SAELens's cfg.json calls hook_name).
_HOOKS = (
    (r"layers\.(\d+)\.resid_pre", "blocks.{}.hook_resid_pre"),
    (r"layers\.(\d+)\.resid_mid", "blocks.{}.hook_resid_mid"),
    (r"layers\.(\d+)\.resid_post", "blocks.{}.hook_resid_post"),
    (r"layers\.(\d+)\.mlp", "blocks.{}.hook_mlp_out"),
    (r"layers\.(\d+)\.attn", "blocks.{}.hook_attn_out"),
    (r"layers\.(\d+)\.mlp\.input", "blocks.{}.ln2.hook_normalized"),
)


@dataclasses.dataclass(frozen=True)
class Site:
    """A site resolved on a model.

    Attributes:
        name: the name as given.
        path: canonical module path (the layer's, for residual values).
        phase: ``"output"``, ``"input"`` or ``"resid_mid"`` (the trace's pseudo-phase for a layer's
            residual between attention and MLP).
        key: the canonical short form (:func:`site_key`), used as the batch key while training.
        width: the size of the value's last axis.
    """

    name: str
    path: str
    phase: str
    key: str
    width: int


def site_key(name: str) -> str:
    """The canonical short form of a site name, computed from the text alone: ``layers.3`` and
    ``layer_3`` (a positions store's key) become ``layers.3.resid_post``, a trailing ``.output`` is
    dropped, ``self_attn``/``attention`` become ``attn`` and a leading ``model.`` is dropped."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a site name must be a non-empty str such as 'layers.3.resid_pre', got {name!r}")
    text = name[:-len(".output")] if name.endswith(".output") else name
    while text.startswith("model."):
        text = text[len("model."):]
    layer = _LAYER.match(text)
    if layer:
        return f"layers.{layer.group(1)}.resid_post"
    parts = [_ALIASES.get(p, p) for p in text.split(".")]
    return ".".join(parts)


def resolve(model: WrappedModel, name: str) -> Site:
    """The :class:`Site` of ``name`` on ``model``, with its width.

    Raises:
        ModuleNameError: no module or residual value of that name (the closest valid names are listed), a
            layer without ``resid_mid`` (the reason given), or a value that is not ``(batch, seq, width)``.
    """
    path, phase = _path_phase(model, name)
    index = model._index
    short = index.short(path)
    if index.is_layer(path):
        key = f"{short}.{_LAYER_VALUES[phase]}"
    else:
        key = site_key(short if phase == "output" else f"{short}.input")
    return Site(name, path, phase, key, _width(model, name, path, phase))


def read(model: WrappedModel, site: Site) -> Any:
    """The traced value of ``site`` (call inside ``with model.trace(...)``)."""
    proxy = ModuleProxy(model, site.path)
    return getattr(proxy, site.phase)


def _path_phase(model: WrappedModel, name: str) -> tuple:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a site name must be a non-empty str such as 'layers.3.resid_pre', got {name!r}")
    index = model._index
    head, _, last = name.rpartition(".")
    try:
        if last in PHASES and head:
            return index.resolve(head), last
        if last in RESIDUAL_VALUES and head:
            layer = index.resolve(head)
            if index.is_layer(layer):
                return index.residual_value(layer, last)
        return index.resolve(name), "output"
    except (AttributeError, ModuleNameError) as exc:  # AttributeError: a layer without resid_mid, and why
        text = str(exc).removeprefix(f"{name!r}: ")
        raise ModuleNameError(f"dictionary site {name!r}: {text}") from None


def _width(model: WrappedModel, name: str, path: str, phase: str) -> int:
    """The last-axis size of the site's value on a probe forward; the value must be ``(batch, seq, width)``."""
    probe = model._probe(mx.zeros((1, PROBE_TOKENS), dtype=mx.int32))
    event = (path, 0, phase)
    if phase == "resid_mid":  # the input of the layer's MLP half
        mid_path, mid_phase = model._index.residual_site(path, "resid_mid")
        event = (mid_path, 0, mid_phase)
    spec = probe.values.get(event)
    if not (isinstance(spec, tuple) and len(spec[0]) == 3 and spec[0][:2] == (1, PROBE_TOKENS)):
        shown = f"shape {spec[0]}" if isinstance(spec, tuple) else f"a {spec}" if spec else "nothing (never called)"
        raise ModuleNameError(f"site {name!r} holds {shown} on a (1, {PROBE_TOKENS}) prompt; a dictionary needs a "
                              "(batch, seq, width) value: a residual (layers.N.resid_pre/resid_mid/resid_post) or a "
                              "module's output or input such as layers.N.mlp, layers.N.mlp.input, layers.N.attn")
    return int(spec[0][2])


def to_hook_name(key: str) -> Optional[str]:
    """The TransformerLens hook name of a canonical site key, or ``None`` when it has none."""
    for pattern, hook in _HOOKS:
        match = re.fullmatch(pattern, key)
        if match:
            return hook.format(match.group(1))
    return None


def from_hook_name(hook: Optional[str]) -> Optional[str]:
    """The canonical site key of a TransformerLens hook name (as SAELens records it), or ``None``."""
    if not isinstance(hook, str):
        return None
    for pattern, template in _HOOKS:
        regex = re.escape(template).replace(re.escape("{}"), r"(\d+)")
        match = re.fullmatch(regex, hook)
        if match:
            return pattern.replace(r"(\d+)", match.group(1)).replace("\\", "")
    return None
