"""The public API of mlxterp: the names the site must document and every one of them must have a docstring.

Public means: every name in the ``__all__`` of a package (a folder with ``__init__.py``) of ``mlxterp`` or
``mlxterp.compiler``, of the modules in :data:`MODULES`, the names in :data:`NAMES`, every result class
(a subclass of :class:`mlxterp.views.Saveable` or :class:`mlxterp.views.Viewable`), and the public methods
and properties of each of those classes (``InterpretableModel``'s included, from all its mixins). A new
package with an ``__all__`` is public as soon as it exists, so the site's build fails until a page documents
it (see ``docs/contributing.md``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, Iterator

ROOTS = ("mlxterp", "mlxterp.compiler")
# Modules (not packages) whose ``__all__`` is public API.
MODULES = ("mlxterp.interventions",)
# Public names that live in a module without a public ``__all__``.
NAMES = (
    "mlxterp.distributed.DistributedMismatchError",
    "mlxterp.distributed.local_hostfile",
    "mlxterp.views.generation.token_probabilities",
    "mlxterp.views.generation.token_values",
)
# Instance attributes (set in ``__init__``) that the seed reference and the README name: documented by an
# attribute docstring after the assignment.
ATTRIBUTES = (
    "mlxterp.InterpretableModel.model",
    "mlxterp.InterpretableModel.tokenizer",
    "mlxterp.InterpretableModel.layers",
    "mlxterp.InterpretableModel.weight_form",
    "mlxterp.Trace.tokens",
    "mlxterp.Trace.lengths",
    "mlxterp.Trace.saved_values",
    "mlxterp.Trace.activations",
    "mlxterp.ActivationCache.activations",
    "mlxterp.ActivationCache.metadata",
)


@dataclass(frozen=True)
class Public:
    """One public name: ``path`` is where the site documents it (``mlxterp.Trace.invoke``)."""

    path: str
    obj: Any
    kind: str  # "module", "class", "function", "method", "property", "data"


def packages() -> list[str]:
    """Every package under :data:`ROOTS` (imported), in name order."""
    found = set()
    for root in ROOTS:
        module = importlib.import_module(root)
        found.add(root)
        for info in pkgutil.walk_packages(module.__path__, root + "."):
            if info.ispkg and ".static" not in info.name:
                found.add(info.name)
    return sorted(found)


def all_modules() -> list[Any]:
    """Every module of mlxterp (imported), for finding result classes."""
    modules = []
    for root in ROOTS:
        package = importlib.import_module(root)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, root + "."):
            if ".static" not in info.name:
                modules.append(importlib.import_module(info.name))
    return modules


def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if inspect.isroutine(obj):
        return "function"
    return "data"


def top_level() -> dict[str, Any]:
    """``{path: object}`` for the modules' and packages' ``__all__`` names and :data:`NAMES`."""
    names: dict[str, Any] = {}
    for name in packages() + list(MODULES):
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            names[f"{name}.{attr}"] = getattr(module, attr)
    for path in NAMES:
        module, attr = path.rsplit(".", 1)
        names[path] = getattr(importlib.import_module(module), attr)
    return names


def result_classes() -> dict[str, type]:
    """Every result class (a ``Saveable`` or ``Viewable`` subclass of mlxterp), by defining module path."""
    from mlxterp.views import Saveable, Viewable

    found = {}
    for module in all_modules():
        for obj in vars(module).values():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__ and obj not in (Saveable, Viewable)
                    and issubclass(obj, (Saveable, Viewable))):
                found[f"{module.__name__}.{obj.__qualname__}"] = obj
    return found


def members(cls: type, documented: frozenset = frozenset()) -> Iterator[tuple[str, Any, str]]:
    """``(name, object, kind)`` for the public methods and properties ``cls`` gets from mlxterp code: its own
    and those of its private bases (``InterpretableModel``'s mixins), not those of bases in ``documented``
    (a result's ``save_html`` is documented once, on ``Viewable``)."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("mlxterp") or (klass is not cls and klass in documented):
            seen.update(vars(klass))
            continue
        fields = getattr(klass, "__dataclass_fields__", {})  # documented in the class's Attributes section
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen or name in fields:
                continue
            seen.add(name)
            if isinstance(value, property):
                yield name, value, "property"
            elif isinstance(value, (staticmethod, classmethod)):
                yield name, value.__func__, "method"
            elif inspect.isfunction(value):
                yield name, value, "method"


def public_api() -> list[Public]:
    """Every public name, classes followed by their members.

    An object re-exported under its own name (``mlxterp.compiler.schedule`` and
    ``mlxterp.compiler.passes.schedule``) is listed once, at its first path in package order; one exported
    under another name (``OutputProxy``, the seed's name for ``Proxy``) is listed under both, without
    its members twice.
    """
    names = top_level()
    for path, cls in result_classes().items():
        names.setdefault(path, cls)
    classes = frozenset(obj for obj in names.values() if inspect.isclass(obj))
    result, done, classes_done = [], set(), set()
    for path, obj in names.items():
        key = (id(obj), path.rsplit(".", 1)[-1])
        if key in done and _kind(obj) != "data":
            continue
        done.add(key)
        result.append(Public(path, obj, _kind(obj)))
        if inspect.isclass(obj) and id(obj) not in classes_done and obj.__name__ == path.rsplit(".", 1)[-1]:
            classes_done.add(id(obj))
            result.extend(Public(f"{path}.{name}", value, kind) for name, value, kind in members(obj, classes))
    result.extend(Public(path, None, "attribute") for path in ATTRIBUTES)
    return result
