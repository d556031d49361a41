"""The identity of a model's module tree: which module object sits at every path.

A lowered forward hooks module *objects* (their classes are swapped while it runs), so a forward lowered
before a module was replaced (``nn.quantize``, a LoRA wrapper, ``layer.mlp = other``) would hook objects
the model no longer calls: its writes would be lost and its reads never fire. A :class:`ModuleTree`
records every slot that holds a module: a module's child, an item of a list, tuple or dict of modules
(``layers``), with the container, the key and the object, and the length of each list and dict of
modules. :meth:`ModuleTree.current` checks them all with C-level ``map`` calls (about 0.05 us a slot: a
few microseconds for a small llama, ~20 us for 30 layers), cheap enough to run before every trace.

What counts as a change: a module, list or dict of modules replaced at its slot (or removed), a module
appended to or removed from a list or dict of modules. Not a change: new weights (programs read them at
every call), and a new attribute added to a module without replacing anything (its class's code does not
call it; counting every key of every module would also count the arrays some models cache on themselves
while they run).
"""

from __future__ import annotations

import operator
from typing import Any

import mlx.nn as nn

_CONTAINERS = (list, tuple, dict)


class ModuleTree:
    """A snapshot of ``model``'s module slots (see the module docstring)."""

    __slots__ = ("_containers", "_keys", "_children", "_sized", "_lengths")

    def __init__(self, model: nn.Module):
        self._containers: list = []
        self._keys: list = []
        self._children: list = []
        self._sized: list = []  # the lists and dicts of modules, whose lengths are checked too
        self._walk(model, set())
        self._lengths = list(map(len, self._sized))

    def _walk(self, container: Any, seen: set) -> bool:
        """Record the module slots under ``container``; whether it holds any module."""
        if isinstance(container, nn.Module):
            if id(container) in seen:  # a module reachable at two paths: its slots are recorded once
                return True
            seen.add(id(container))
        items = enumerate(container) if isinstance(container, (list, tuple)) else container.items()
        found = False
        for key, value in items:
            if isinstance(value, nn.Module) or (isinstance(value, _CONTAINERS) and self._holds_modules(value)):
                self._containers.append(container)
                self._keys.append(key)
                self._children.append(value)
                self._walk(value, seen)
                found = True
        if found and not isinstance(container, (nn.Module, tuple)):
            self._sized.append(container)
        return found

    @staticmethod
    def _holds_modules(value: Any) -> bool:
        items = value if isinstance(value, (list, tuple)) else value.values()
        return any(isinstance(v, nn.Module) or (isinstance(v, _CONTAINERS) and ModuleTree._holds_modules(v))
                   for v in items)

    def current(self) -> bool:
        """Whether every recorded slot still holds the same object, and every list and dict of modules has
        the same length."""
        try:
            same = all(map(operator.is_, map(operator.getitem, self._containers, self._keys), self._children))
        except (KeyError, IndexError):  # a slot was deleted
            return False
        return same and list(map(len, self._sized)) == self._lengths

    def __len__(self) -> int:
        return len(self._children)
