"""Module names: canonical ``named_modules()`` paths, and the other forms users write.

Accepted for ``model.layers.3.mlp`` (an mlx-lm llama): ``layers.3.mlp`` (relative to the layer
container's parent), ``model.model.layers.3.mlp`` (the seed's prefixed form) and component aliases
(``attn`` <-> ``self_attn``), and ``layers.N`` for the layer container whatever its attribute is called
(``layers.3.attn`` is ``h.3.attn`` on GPT-2). Unknown names raise :class:`ModuleNameError` listing the closest valid ones.

When the model's family has an adapter (:mod:`mlxterp.adapters`), the canonical names come from it and
are tried first: ``layers.N.attn``, ``layers.N.mlp`` (Mixtral's ``block_sparse_moe``, InternLM2's
``feed_forward``), ``layers.N.ln1`` / ``ln2`` (the norms before them), and ``embed``, ``final_norm``,
``unembed`` at the top. Without an adapter, the layer list and the aliases are guessed from names.
"""

from __future__ import annotations

import difflib
from typing import Iterator, Optional

import mlx.nn as nn

from .adapters import LAYER_MODULES, MODEL_MODULES, RESIDUAL_VALUES, Architecture
from .adapters.attention import POINTS
from .inputs import is_int

TOKEN_EMBEDDING_NAMES = ("embed_tokens", "wte", "tok_embeddings", "word_embeddings", "embed_in", "embedding")
ALIASES = {"attn": ("self_attn", "attention"), "self_attn": ("attn", "attention"), "attention": ("self_attn", "attn")}


class ModuleNameError(ValueError):
    """A module name that does not resolve; the message lists the closest valid names."""


class ModuleIndex:
    """Resolves user-written module names to canonical paths of one model.

    Args:
        model: the raw model.
        layer_attr: attribute holding the layer list (ignored in favour of the adapter's when it is the
            default ``"layers"`` and ``arch`` is given).
        arch: the family's :class:`~mlxterp.adapters.Architecture`, or ``None`` to guess from names.
    """

    def __init__(self, model: nn.Module, layer_attr: str = "layers", arch: Optional[Architecture] = None):
        self.modules: dict[str, nn.Module] = {}
        for path, module in model.named_modules():
            self.modules.setdefault(path, module)
        self.layer_attr = layer_attr
        use_arch = arch is not None and layer_attr == "layers"
        self.layers = _find_layers(model, arch.layers if use_arch else layer_attr)
        self.container = self._path_of_layers()
        # An adapter describes its own layer list; a user who points layer_attr elsewhere gets name guessing.
        self.arch = arch if arch is not None and self.container == arch.layers else None
        self._layer_paths = {f"{self.container}.{i}" for i in range(len(self.layers))}
        self.attention = self._attention_modules()
        # Paths are shortened relative to the container's parent: "model.layers.3" -> "layers.3".
        self.prefix = self.container.rsplit(".", 1)[0] + "." if "." in self.container else ""
        self._short_attr = self.container[len(self.prefix):]

    def _path_of_layers(self) -> str:
        if not len(self.layers):
            raise AttributeError(f"layer attribute {self.layer_attr!r} is an empty list; expected transformer layers")
        first = self.layers[0]
        for path, module in self.modules.items():
            if module is first:
                return path.rsplit(".", 1)[0]
        raise AttributeError(f"the modules under {self.layer_attr!r} are not registered children of the model")

    def __len__(self) -> int:
        return len(self.layers)

    def layer_path(self, idx: int) -> str:
        """Canonical path of layer ``idx`` (negative indices count from the end)."""
        n = len(self.layers)
        if not is_int(idx):
            raise TypeError(f"layer index must be an int, got {type(idx).__name__} {idx!r}")
        idx = int(idx)  # a numpy integer too
        if not -n <= idx < n:
            raise IndexError(f"layer index {idx} is out of range: the model has {n} layers (0 to {n - 1})")
        return f"{self.container}.{idx % n}"

    def short(self, path: str) -> str:
        """The layer-relative form of a canonical path (``model.layers.3.mlp`` -> ``layers.3.mlp``)."""
        return path[len(self.prefix):] if self.prefix and path.startswith(self.prefix) else path

    def resolve(self, name: str) -> str:
        """Canonical path for ``name`` in any accepted form; :class:`ModuleNameError` if none fits."""
        if not isinstance(name, str):
            raise TypeError(f"module name must be a str such as 'layers.3.mlp', got {type(name).__name__} {name!r}")
        for candidate in self._candidates(name):
            if candidate in self.modules:
                return candidate
        point = self._point(name)
        if point is not None:
            return point
        raise ModuleNameError(self._explain(name))

    def _attention_modules(self) -> dict[str, str]:
        """``{attention module path: how its internals are computed}`` (see :mod:`mlxterp.adapters.attention`):
        the adapter's attention of every layer, else each layer's child named like an attention."""
        order = [f"{self.container}.{i}" for i in range(len(self.layers))]
        if self.arch is not None:
            if self.arch.attn is None or self.arch.attention is None:
                return {}
            return {f"{layer}.{self.arch.attn}": self.arch.attention for layer in order}
        found = {}
        for layer in order:
            attn = self.child(layer, "attn")
            if attn is not None:
                found[attn] = "sdpa"
        return found

    def _point(self, name: str) -> Optional[str]:
        """The path of an attention internal (``layers.3.attn.pattern``), or ``None``."""
        head, _, last = name.rpartition(".")
        if last not in POINTS or not head:
            return None
        try:
            owner = self.resolve(head)
        except ModuleNameError:
            return None
        return f"{owner}.{last}" if owner in self.attention else None

    def point_owner(self, path: str) -> Optional[str]:
        """The attention module whose internal ``path`` is (``...self_attn`` for ``...self_attn.pattern``)."""
        head, _, last = path.rpartition(".")
        return head if last in POINTS and head in self.attention else None

    def _candidates(self, name: str) -> Iterator[str]:
        bases = [name]
        if name.startswith("model.") or name == "model":
            bases.append(name[len("model."):])  # the seed's "model.model.layers.6" form
        for base in list(bases):
            if self.prefix and not base.startswith(self.prefix):
                bases.append(self.prefix + base)
            for head in {self.layer_attr, "layers"} - {self._short_attr}:
                # "layers.3.mlp" works on every model (GPT-2's "h.3.mlp" too), as does the layer_attr form.
                if base.startswith(head + "."):
                    bases.append(self.container + base[len(head):])
        if self.arch is not None:
            for base in bases:
                found = self._canonical(base)
                if found is not None:
                    yield found
        for base in bases:
            yield from _alias_variants(base)

    def _canonical(self, name: str) -> Optional[str]:
        """The adapter's path for a name using a canonical part (``model.layers.3.mlp`` -> ``...block_sparse_moe``)."""
        head, _, rest = name.partition(".")
        if head in MODEL_MODULES:
            target = self._model_module(head)
            return None if target is None else target + (f".{rest}" if rest else "")
        if not name.startswith(self.container + "."):
            return None
        parts = name[len(self.container) + 1:].split(".")
        if len(parts) < 2 or not parts[0].isdigit() or parts[1] not in LAYER_MODULES:
            return None
        target = self.arch.layer_module(parts[1])
        return None if target is None else ".".join([self.container, parts[0], target] + parts[2:])

    def _model_module(self, name: str) -> Optional[str]:
        arch = self.arch
        return {"embed": arch.embed, "final_norm": arch.final_norm, "unembed": arch.head}.get(name)

    def _explain(self, name: str) -> str:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part.isdigit() and i > 0:
                head = ".".join(parts[:i])
                if any(head_path == self.container for head_path in self._candidates_safe(head)):
                    n = len(self.layers)
                    if int(part) >= n:
                        return f"{name!r}: layer index {part} is out of range; the model has {n} layers (0 to {n - 1})"
                    parent = self.resolve(".".join(parts[: i + 1]))
                    return self._missing_child(name, parent, parts[i + 1:])
        close = difflib.get_close_matches(name, self.short_names(), n=5, cutoff=0.5)
        hint = f"; closest valid names: {', '.join(close)}" if close else ""
        return (f"unknown module name {name!r}{hint}. Valid names look like "
                f"{', '.join(self.short_names()[:6])}, ... (see model.named_modules())")

    def _candidates_safe(self, name: str) -> list[str]:
        return [c for c in self._candidates(name)]

    def _missing_child(self, name: str, parent: str, rest: list[str]) -> str:
        path = parent
        for part in rest:
            children = self.children(path)
            match = next((c for c in _alias_variants(part) if f"{path}.{c}" in self.modules), None)
            if match is None:
                points = list(POINTS) if path in self.attention and part == rest[-1] else []
                inside = f"; its attention internals are: {', '.join(POINTS)}" if path in self.attention else ""
                return (f"{name!r}: module {self.short(path)!r} has no component {part!r}{self.why_missing(path, part)}; "
                        f"its components are: {', '.join(children) or '(none)'}{inside}{did_you_mean(part, children + points)}")
            path = f"{path}.{match}"
        return f"unknown module name {name!r}"

    def why_missing(self, path: str, part: str) -> str:
        """`` (why)`` when layer ``path`` lacks canonical component ``part`` and the adapter says why, else ``""``."""
        arch = self.arch
        if arch is None or path not in self._layer_paths or part not in LAYER_MODULES + RESIDUAL_VALUES:
            return ""
        return f" ({arch.lacks})" if arch.lacks else f" (this {arch.family} layer has no {part})"

    def is_layer(self, path: str) -> bool:
        """Whether ``path`` is one of the transformer layers."""
        return path in self._layer_paths

    def resolve_site(self, name: str) -> tuple[str, str]:
        """``(path, phase)`` that a name reads and writes: ``(module path, "output")`` for a module or an
        attention internal, :meth:`residual_value` for a layer's residual value (``layers.3.resid_mid``).

        Raises:
            ModuleNameError: no module, internal or residual value has this name.
            AttributeError: ``resid_mid`` of a layer without one (the reason given).
        """
        head, _, last = name.rpartition(".") if isinstance(name, str) else ("", "", "")
        if last in RESIDUAL_VALUES and head:
            layer = self.resolve(head)
            if self.is_layer(layer):
                return self.residual_value(layer, last)
        return self.resolve(name), "output"

    def residual_value(self, layer_path: str, name: str) -> tuple[str, str]:
        """``(path, phase)`` a trace reads and writes for a layer's residual value: :meth:`residual_site`,
        except that ``resid_mid`` stays the trace's pseudo-phase ``(layer path, "resid_mid")`` (a write
        there feeds both the MLP half and the residual add). Raises as :meth:`residual_site` does."""
        path, phase = self.residual_site(layer_path, name)
        return (layer_path, "resid_mid") if name == "resid_mid" else (path, phase)

    def residual_site(self, layer_path: str, name: str) -> tuple[str, str]:
        """``(module path, phase)`` of a residual value of a layer: ``resid_pre`` is the layer's input,
        ``resid_post`` its output, ``resid_mid`` (adapter families whose layers add their attention before
        their MLP) the input of the MLP half's first module.

        Raises:
            AttributeError: ``resid_mid`` of a model without an adapter or of a layer without one.
        """
        if name == "resid_pre":
            return layer_path, "input"
        if name == "resid_post":
            return layer_path, "output"
        arch = self.arch
        mid = arch.mid_module() if arch is not None else None
        if mid is None:
            why = (f"a {arch.family} layer has a {arch.residual.form} residual (attention and MLP read the same "
                   "residual), so there is no residual between them" if arch is not None else
                   "this model's family has no adapter (mlxterp.adapters.registered()), so where its attention "
                   "half ends is unknown")
            raise AttributeError(f"{self.short(layer_path)}.resid_mid does not exist: {why}; "
                                 "resid_pre (the layer input) and resid_post (its output) do")
        return f"{layer_path}.{mid}", "input"

    def children(self, path: str) -> list[str]:
        """Names of the direct sub-modules of ``path``."""
        depth = path.count(".") + 1 if path else 0
        prefix = path + "." if path else ""
        return sorted({p[len(prefix):].split(".")[0] for p in self.modules
                       if p.startswith(prefix) and p != path and p.count(".") >= depth})

    def child(self, path: str, attr: str) -> str | None:
        """Canonical path of sub-module ``attr`` of ``path`` (canonical names and aliases allowed), or ``None``."""
        if self.arch is not None:
            target = None
            if attr in LAYER_MODULES and path in self._layer_paths:
                target = self.arch.layer_module(attr)
                target = target and f"{path}.{target}"
            elif attr in MODEL_MODULES and path in ("", self.prefix.rstrip(".")):
                target = self._model_module(attr)
            if target is not None and target in self.modules:
                return target
        prefix = path + "." if path else ""
        for variant in _alias_variants(attr):
            if prefix + variant in self.modules:
                return prefix + variant
        return None

    def token_embedding(self) -> str | None:
        """Path of the token embedding: the adapter's, else the only embedding module or the one named like
        one (GPT-2 has ``wte`` and ``wpe``); ``None`` if there is no embedding or the choice is ambiguous."""
        if self.arch is not None:
            return self.arch.embed
        found = [p for p, m in self.modules.items() if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))]
        named = [p for p in found if p.rsplit(".", 1)[-1] in TOKEN_EMBEDDING_NAMES]
        candidates = named or found
        return candidates[0] if len(candidates) == 1 else None

    def short_names(self) -> list[str]:
        """Every module's short name, for error messages."""
        return [self.short(p) for p in self.modules if p]


def did_you_mean(name: str, valid: list[str]) -> str:
    """``"; did you mean 'k'?"`` with the valid names closest to ``name`` (a one-letter name that starts it
    counts: ``keys`` -> ``k``), or ``""``."""
    close = [v for v in valid if len(v) == 1 and name.startswith(v)] + difflib.get_close_matches(name, valid, 3)
    return f"; did you mean {' or '.join(repr(v) for v in dict.fromkeys(close))}?" if close else ""


def _alias_variants(name: str) -> Iterator[str]:
    yield name
    parts = name.split(".")
    for i, part in enumerate(parts):
        for alias in ALIASES.get(part, ()):
            yield ".".join(parts[:i] + [alias] + parts[i + 1:])


def _find_layers(model: nn.Module, layer_attr: str) -> list:
    """The list of transformer layers at ``layer_attr`` (dotted paths allowed), looked up on the model
    or its usual wrappers (``model.model``, ``model.transformer``)."""
    for root in (model, getattr(model, "model", None), getattr(model, "transformer", None)):
        value = _getattr_path(root, layer_attr) if root is not None else None
        if isinstance(value, (list, tuple)):
            return list(value)
    lists = sorted({p.rsplit(".", 1)[0] for p, m in model.named_modules() if p.rsplit(".", 1)[-1] == "0"})
    raise AttributeError(
        f"{type(model).__name__} has no layer list at layer_attr={layer_attr!r}; "
        f"module lists found in this model: {', '.join(lists) or '(none)'} "
        "(common values: 'layers' for Llama/Mistral, 'h' for GPT-2, 'transformer.h')"
    )


def _getattr_path(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return None
    return obj
