"""Module proxies: ``model.layers[3].self_attn`` as a handle whose ``.output`` / ``.input`` record
reads (and, when assigned, writes) in the current trace."""

from __future__ import annotations

from typing import Any, Iterator

import mlx.nn as nn

from ..core import WrappedModel
from ..adapters import RESIDUAL_VALUES
from ..adapters.attention import POINTS
from ..inputs import is_int
from ..names import did_you_mean
from . import context

# Methods of every nn.Module (dict's included): a proxy attribute with one of these names is a typo for a
# component or an internal (``attn.keys`` for ``attn.k``), never the method.
MODULE_METHODS = frozenset(name for name in dir(nn.Module) if not name.startswith("_"))


class ModuleProxy:
    """A module of the wrapped model, by canonical path (nnsight's envoy).

    Inside a trace: ``.output`` / ``.input`` give proxies of what the module returns / receives
    (its first argument, positional or passed by name); assigning ``module.output = value`` replaces it. ``.call(i)``
    selects the ``i``-th call of a module that runs several times per forward (RoPE, shared modules).
    Other attributes reach the sub-modules (as proxies) or the module itself (weights, config).

    A layer also has the residual stream's values, readable and writable: ``resid_pre`` (its input),
    ``resid_post`` (its output) and, where the family's adapter knows the layer adds its attention before
    its MLP, ``resid_mid`` (the residual between them). An attention module has its internals, readable
    and writable: ``q``, ``k``, ``v``, ``scores``, ``pattern``, ``heads`` (see
    :mod:`mlxterp.adapters.attention`); a layer asked for them computes its attention explicitly.
    """

    __slots__ = ("_owner", "_path", "_call")

    def __init__(self, owner: WrappedModel, path: str, call_idx: int = 0):
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_call", call_idx)

    @property
    def path(self) -> str:
        """Canonical path (``model.layers.3.mlp``)."""
        return self._path

    @property
    def name(self) -> str:
        """Short, layer-relative name (``layers.3.mlp``)."""
        return self._owner._index.short(self._path)

    @property
    def module(self) -> nn.Module:
        """The wrapped ``nn.Module`` (the one at this path now, if it was replaced since)."""
        self._owner._sync_tree()
        index = self._owner._index
        found = index.modules.get(self._path)
        if found is None:
            owner = index.point_owner(self._path)
            if owner is None:
                raise AttributeError(f"the model has no module {self.name!r} any more (its modules were replaced "
                                     "since this proxy was made); look the name up again")
            raise AttributeError(f"{self.name!r} is a value inside the attention module {index.short(owner)!r}, "
                                 "not a module; read it with .output inside a trace")
        return found

    def call(self, idx: int) -> "ModuleProxy":
        """The same module at its ``idx``-th call within one forward (0-based)."""
        if not is_int(idx) or idx < 0:
            raise ValueError(f"call index must be a non-negative int, got {idx!r}")
        return ModuleProxy(self._owner, self._path, int(idx))

    @property
    def output(self) -> Any:
        """The module's output inside a trace: a traced value to read, index, ``.save()`` or assign to.

        Assigning (``module.output = value``) replaces the whole output; item assignment
        (``module.output[:, -1] = value``) writes part of it. The shape and dtype are the module's own, e.g.
        ``(batch, seq, hidden)`` in the model's activation dtype for a layer or an MLP (float32 on the default
        model; float16 on a float16 model); outside a trace it is an error.
        """
        return context.current(self, "output").module_value(self._path, self._call, "output")

    @output.setter
    def output(self, value: Any) -> None:
        context.current(self, "output").write(self._path, self._call, "output", value)

    @property
    def input(self) -> Any:
        """The module's first positional input inside a trace, read or written like :attr:`output`."""
        return context.current(self, "input").module_value(self._path, self._call, "input")

    @input.setter
    def input(self, value: Any) -> None:
        context.current(self, "input").write(self._path, self._call, "input", value)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr in RESIDUAL_VALUES and self._owner._index.is_layer(self._path):
            return context.current(self, attr).module_value(*self._residual(attr))
        if attr in POINTS and self._path in self._owner._index.attention:
            trace = context.current(self, attr)
            return trace.module_value(self._point(trace, attr), self._call, "output")
        child = self._owner._index.child(self._path, attr)
        if child is not None:
            return ModuleProxy(self._owner, child)
        if attr in MODULE_METHODS:  # `attn.keys` is dict.keys, not the attention's keys: never hand it out
            raise AttributeError(self._unknown(attr, f" ({attr!r} is a method of every nn.Module: for the method "
                                                     f"itself use .module.{attr})"))
        try:
            return getattr(self.module, attr)
        except AttributeError:
            raise AttributeError(self._unknown(attr, "")) from None

    def _unknown(self, attr: str, why: str) -> str:
        """The message for an attribute that names no component, internal or residual value of this module:
        the valid ones, and the closest (``keys`` -> ``k``)."""
        index = self._owner._index
        valid = {"components": index.children(self._path)}
        if self._path in index.attention:
            valid["attention internals"] = list(POINTS)
        if index.is_layer(self._path):
            valid["residual values"] = list(RESIDUAL_VALUES)
        names = [n for group in valid.values() for n in group] + ["output", "input"]
        listed = "; ".join(f"its {kind} are: {', '.join(group) or '(none)'}" for kind, group in valid.items())
        return (f"module {self.name or '<model>'!r} ({type(self.module).__name__}) has no component or attribute "
                f"{attr!r}{why}; {listed}{did_you_mean(attr, names)}")

    def __getitem__(self, idx: int) -> "ModuleProxy":
        key = int(idx) % len(self) if is_int(idx) and len(self) else idx
        child = self._owner._index.child(self._path, str(key))
        if child is None:
            raise IndexError(f"module {self.name!r} has no item {idx!r}; it has {len(self)} items")
        return ModuleProxy(self._owner, child)

    def __len__(self) -> int:
        return sum(1 for c in self._owner._index.children(self._path) if c.isdigit())

    def _point(self, trace: Any, name: str) -> str:
        """Path of attention internal ``name`` of this module, checked to exist in this trace's forward."""
        path = f"{self._path}.{name}"
        tokens = trace.recording_tokens(what=f"{self.name}.{name}")  # in a trace with invokes: the open one's
        if (path, self._call, "output") not in trace._owner._probe(tokens).values:
            raise AttributeError(
                f"{self.name}.{name}: this attention ({type(self.module).__name__}) exposes no internals: its "
                "__call__ never calls mlx-lm's scaled_dot_product_attention, which mlxterp replaces by an explicit "
                "computation to expose q, k, v, scores, pattern and heads (register an adapter for the family)")
        return path

    def _residual(self, name: str) -> tuple[str, int, str]:
        """``(path, call, phase)`` of a layer's residual value ``name`` (see :data:`RESIDUAL_VALUES`)."""
        path, phase = self._owner._index.residual_value(self._path, name)  # raises for a missing resid_mid
        return path, self._call, phase

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in ("output", "input"):
            object.__setattr__(self, attr, value)
            return
        if attr in RESIDUAL_VALUES and self._owner._index.is_layer(self._path):
            context.current(self, attr).write(*self._residual(attr), value)
            return
        if attr in POINTS and self._path in self._owner._index.attention:
            trace = context.current(self, attr)
            trace.write(self._point(trace, attr), self._call, "output", value)
            return
        index = self._owner._index
        settable = (list(POINTS) if self._path in index.attention else []) + (
            list(RESIDUAL_VALUES) if index.is_layer(self._path) else [])
        raise AttributeError(
            f"cannot set {attr!r} on module proxy {self.name!r}; inside a trace assign "
            f"`module.output = value` (or `.input`{''.join(', .' + n for n in settable)}), or edit weights on the "
            f"nn.Module itself ({self.name}.module){did_you_mean(attr, settable)}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModuleProxy) and (other._owner, other._path, other._call) == (
            self._owner, self._path, self._call)

    def __hash__(self) -> int:
        return hash((id(self._owner), self._path, self._call))

    def __repr__(self) -> str:
        call = f", call {self._call}" if self._call else ""
        return f"ModuleProxy({self.name or '<model>'}: {type(self.module).__name__}{call})"


class LayerListProxy:
    """Indexed access to the model's transformer layers: ``model.layers[3]``, ``len``, iteration."""

    __slots__ = ("_owner", "_proxies")

    def __init__(self, owner: WrappedModel):
        self._owner = owner
        self._proxies: dict[int, ModuleProxy] = {}  # module proxies are immutable: one per index serves

    def __getitem__(self, idx: int | slice) -> Any:
        found = self._proxies.get(idx) if type(idx) is int else None
        if found is not None:
            return found
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        proxy = ModuleProxy(self._owner, self._owner._index.layer_path(idx))
        if type(idx) is int:
            self._proxies[idx] = proxy
        return proxy

    def __len__(self) -> int:
        return len(self._owner._index)

    def __iter__(self) -> Iterator[ModuleProxy]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"LayerListProxy({len(self)} layers at {self._owner._index.container!r})"
