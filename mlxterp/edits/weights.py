"""Weight edits: a module tree that differs from the model's in some weights and shares everything else.

``model.edit_weights({"layers.10.mlp.down_proj.weight": new})`` builds the edited model's module tree
*copy-on-write*: the root, every module and list on the path to each edited module, and the edited
modules themselves are shallow copies (new dicts holding the same arrays and children); every other
module, and every other array, is the model's own object. So no weight is copied, the model's module
tree is untouched (its cached programs, which hook its module objects, stay valid: the tree check of
:class:`mlxterp.compiler.ModuleTree` sees every slot as it was), and the edited model's tree is a tree
of its own, with its own programs. The two share the model's lock (:func:`mlxterp.compiler.locks.share_lock`):
a forward of either hooks modules both hold.

A weight of a quantized layer (a 4-bit ``QuantizedLinear``, a ``QuantizedEmbedding``) is edited as a float
matrix: in the edited model that layer becomes its float counterpart holding the dequantized weight (in
the dtype of the layer's scales, in which the quantized layer computed), edited. The model's own layer
stays quantized. Its ``scales`` and ``biases`` are not edited directly.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxterp.compiler.locks import model_lock

from ..loading.forms import float_layer
from ..names import ModuleNameError, did_you_mean
from .records import EditError, WeightEdit


@dataclasses.dataclass(frozen=True)
class _Planned:
    """One checked weight edit: where it goes, the new array, the float layer that replaces a quantized one."""

    path: str
    key: str
    value: mx.array
    layer: Optional[nn.Module]
    record: WeightEdit


def plan(model: Any, weights: Any, source: Any) -> list[_Planned]:
    """Check every entry of ``weights`` (``{name: array or fn(old) -> new}``) against ``model`` before any
    tree is built; the new arrays are evaluated here (an error in a function shows now)."""
    if not isinstance(weights, dict) or not weights:
        raise TypeError(f"edit_weights takes a non-empty dict {{weight name: new array or fn(old) -> new}}, got "
                        f"{type(weights).__name__} {weights!r:.60}")
    planned, seen = [], {}
    for name, value in weights.items():
        entry = _plan_one(model, name, value, source)
        where = (entry.path, entry.key)
        if where in seen:
            raise EditError(f"edit_weights: {name!r} and {seen[where]!r} name the same weight; give it once")
        seen[where] = name
        planned.append(entry)
    mx.eval([p.value for p in planned], [p.layer.parameters() for p in planned if p.layer is not None])
    return planned


def _plan_one(model: Any, name: Any, value: Any, source: Any) -> _Planned:
    if not isinstance(name, str) or "." not in name:
        raise EditError(f"edit_weights: weight name {name!r} is not of the form 'module.weight' "
                        "(e.g. 'layers.10.mlp.down_proj.weight')")
    module_name, _, key = name.rpartition(".")
    index = model._index
    try:
        path = index.resolve(module_name)
    except ModuleNameError as e:
        raise ModuleNameError(f"edit_weights[{name!r}]: {e}") from None
    if index.point_owner(path) is not None:
        raise EditError(f"edit_weights[{name!r}]: {module_name!r} is an attention internal (a value, not a module); "
                        "weights belong to modules such as 'layers.0.attn.q_proj'")
    module = index.modules[path]
    short = index.short(path) or "<model>"
    layer, old, quantized = None, _arrays(module).get(key), _quantized(module)
    if quantized is not None and key in ("weight", "bias"):
        try:
            layer = float_layer(path, module, module["scales"].dtype)
        except ValueError:
            raise EditError(f"edit_weights[{name!r}]: {short} is a quantized {type(module).__name__} ({quantized}), "
                            "which has no float counterpart here to hold an edited weight; load the model with "
                            "dtype='float32' to edit it") from None
        old = layer[key]
    elif quantized is not None and key in ("scales", "biases"):
        raise EditError(f"edit_weights[{name!r}]: {short} is quantized ({quantized}); edit its 'weight' instead, "
                        "as a float matrix (the edited model's layer is then dequantized)")
    if old is None:
        raise EditError(_no_weight(name, short, key, module))
    new, how = _new_value(name, value, old)
    record = WeightEdit(f"{short}.{key}", tuple(new.shape), new.dtype, how, quantized if layer is not None else None,
                        source)
    return _Planned(path, key, new, layer, record)


def _new_value(name: str, value: Any, old: mx.array) -> tuple[mx.array, str]:
    """The new array (checked to have ``old``'s shape and dtype) and how it was given."""
    how = "replaced"
    if callable(value):
        how = f"updated by {getattr(value, '__qualname__', None) or type(value).__name__}"
        value = value(old)
    if isinstance(value, np.ndarray):
        value = mx.array(value)
    if not isinstance(value, mx.array):
        raise EditError(f"edit_weights[{name!r}]: expected an mx.array of shape {tuple(old.shape)} and dtype "
                        f"{old.dtype} (or a function of the old weight returning one), got {type(value).__name__}")
    if tuple(value.shape) != tuple(old.shape):
        raise EditError(f"edit_weights[{name!r}]: the weight has shape {tuple(old.shape)}, the new value "
                        f"{tuple(value.shape)}")
    if value.dtype != old.dtype:
        raise EditError(f"edit_weights[{name!r}]: the weight has dtype {old.dtype}, the new value {value.dtype}; "
                        f"convert it with .astype({old.dtype})")
    return value, how


def _arrays(module: nn.Module) -> dict[str, mx.array]:
    return {k: v for k, v in module.items() if isinstance(v, mx.array)}


def _quantized(module: nn.Module) -> Optional[str]:
    """``"4-bit, group size 32"`` for a quantized layer, else ``None``."""
    if "scales" not in module:
        return None
    return f"{getattr(module, 'bits', '?')}-bit, group size {getattr(module, 'group_size', '?')}"


def _no_weight(name: str, short: str, key: str, module: nn.Module) -> str:
    arrays = list(_arrays(module))
    children = [k for k, v in module.items() if isinstance(v, (nn.Module, list))]
    child = (f"; {key!r} is a module: name one of its weights, e.g. '{name}.weight'" if key in children else "")
    return (f"edit_weights[{name!r}]: module {short} has no weight {key!r}; its weights are: "
            f"{', '.join(arrays) or '(none)'}{did_you_mean(key, arrays)}{child}")


# ---------------------------------------------------------------------------------------------------
# the copy-on-write tree
# ---------------------------------------------------------------------------------------------------
class CopyOnWrite:
    """A module tree built from ``root`` by copying only the containers on the paths it changes."""

    def __init__(self, root: nn.Module):
        self.root = _shallow(root)
        self._own = {id(self.root)}  # containers this tree made (changed in place from then on)

    def own(self, path: str) -> Any:
        """This tree's own copy of the module at ``path`` (and of every container on the way)."""
        node = self.root
        for part in path.split(".") if path else ():
            key = int(part) if isinstance(node, list) else part
            child = node[key]
            if isinstance(child, tuple):
                raise EditError(f"cannot edit a weight under {path!r}: a module in a tuple (the tree's tuples are "
                                "immutable); mlx-lm models keep their layers in lists")
            if id(child) not in self._own:
                child = _shallow(child)
                self._own.add(id(child))
                node[key] = child
            node = child
        return node

    def replace(self, path: str, module: nn.Module) -> None:
        """Put ``module`` at ``path`` (its parent copied first)."""
        parent_path, _, last = path.rpartition(".")
        parent = self.own(parent_path)
        parent[int(last) if isinstance(parent, list) else last] = module
        self._own.add(id(module))


def _shallow(value: Any) -> Any:
    """A new container holding the same items: a module's copy has its own dict and attribute sets."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, nn.Module):
        new = copy.copy(value)
        state = vars(new)
        for attr, item in list(state.items()):
            if type(item) in (set, list, dict):  # e.g. the frozen-parameter set: not shared with the original
                state[attr] = copy.copy(item)
        return new
    if isinstance(value, dict):
        return dict(value)
    raise EditError(f"cannot copy a {type(value).__name__} on the path of a weight edit")


def edited_tree(model: Any, planned: list[_Planned]) -> nn.Module:
    """The edited module tree (see the module docstring), built holding the model's lock (no forward of it
    runs meanwhile, so no module is copied while hooked)."""
    with model_lock(model.model):
        tree, dequantized = CopyOnWrite(model.model), set()
        for entry in planned:
            if entry.layer is not None and entry.path not in dequantized:  # one float layer per quantized one
                tree.replace(entry.path, entry.layer)
                dequantized.add(entry.path)
            tree.own(entry.path)[entry.key] = entry.value
    return tree.root
