"""What a Sphinx role in a docstring names (``:class:`Trace```, ``:meth:`~.Program.batched```), as Sphinx resolves it.

A role's target is looked up where its docstring is, innermost scope first: the docstring's own class, its
module, each enclosing package up to the root, then the target as a full path. The first scope in which the
name exists decides what it means:

- a public name there (:mod:`docsgen.public`) becomes a link to that name's anchor;
- anything else found there (a private helper, ``mx.compile`` through the module's ``import mlx.core as mx``)
  is shown as plain code, because that is what the name means in that docstring, whatever public name
  elsewhere shares its ending.

Names are looked up among the imported modules as Python finds them (a class's attributes, a module's
globals, a package's names and submodules), so a name imported into a module (``Trace`` in
``mlxterp.analysis.patching``) is the object it is, linked under its public path (``mlxterp.Trace``), and a
method named in its own class resolves even when the site documents that class under a re-export
(``mlxterp.Trace.invoke`` for ``mlxterp.tracing.trace.Trace``).

A name that exists in none of those scopes is never matched by its ending alone: a role ``:func:`gather``` in
``mlxterp.distributed`` must not link to ``Comm.gather``. When public names do end with it, the resolution
carries them as ``candidates`` and the site's build reports the role, naming the docstring and the candidates,
as a warning (``mkdocs build --strict`` fails on it): the docstring then names the object it means by a path
that resolves (``Comm.gather``, ``mlxterp.distributed.Comm.gather``), see ``docs/contributing.md``.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

MISSING = object()
"""What :func:`lookup` returns for a path that names nothing."""


@dataclass(frozen=True)
class Resolution:
    """What a role names: ``path``, the public path to link to, or ``None`` for plain code.

    ``candidates`` is set only when the name exists in none of the docstring's scopes: the public paths that
    end with it, none of which the role may link to (an ambiguous or misdirected role: reported).
    """

    path: str | None
    candidates: tuple[str, ...] = ()


def scopes(module: str, cls: str | None = None) -> list[str]:
    """The scopes a docstring's roles are looked up in, innermost first (``""``: the name as a full path).

    Args:
        module: the dotted path of the docstring's module (``mlxterp.analysis.patching``).
        cls: the dotted path of the docstring's class (its own, or the class of the method or attribute it
            documents), if any.
    """
    parts = module.split(".")
    packages = [".".join(parts[:end]) for end in range(len(parts), 0, -1)]
    return ([cls] if cls else []) + packages + [""]


def lookup(path: str) -> Any:
    """The object at dotted ``path``, found as an attribute chain from the longest imported module prefix, or
    :data:`MISSING`. Imports nothing: the public API's modules are imported before roles are resolved."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        obj = sys.modules.get(".".join(parts[:end]))
        if obj is not None:
            break
    else:
        return MISSING
    for part in parts[end:]:
        # A class's own attribute as defined (a property, not its value); a static or class method's function.
        obj = inspect.getattr_static(obj, part, MISSING) if inspect.isclass(obj) else getattr(obj, part, MISSING)
        if obj is MISSING:
            return MISSING
        obj = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    return obj


def _last(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _is_data(obj: Any) -> bool:
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj) or isinstance(obj, property))


class Resolver:
    """Resolves role targets against the public names.

    Args:
        public: ``(path, object)`` for every public name (``object`` is ``None`` where there is none at run
            time, such as an instance attribute), as :func:`docsgen.public.public_api` lists them.
        find: how a dotted path is looked up (:func:`lookup`, or anything that returns :data:`MISSING` where it
            finds nothing).
    """

    def __init__(self, public: Iterable[tuple[str, Any]], find: Callable[[str], Any] = lookup) -> None:
        self.paths: set[str] = set()
        self.by_object: dict[int, list[str]] = {}
        self.find = find
        self._keep: list[Any] = []  # the objects whose ids key by_object stay alive
        for path, obj in public:
            self.paths.add(path)
            if obj is not None:
                self.by_object.setdefault(id(obj), []).append(path)
                self._keep.append(obj)

    def public_path(self, obj: Any, name: str) -> str | None:
        """The public path documenting ``obj``, found as ``name``: the one ending in ``name``'s last part
        first (``OutputProxy`` is ``Proxy`` under another name); data only under its own name (an interned
        ``4`` or ``None`` is the same object as any other)."""
        paths = self.by_object.get(id(obj), [])
        same = [path for path in paths if _last(path) == _last(name)]
        if same:
            return same[0]
        return paths[0] if paths and not _is_data(obj) else None

    def aliases(self, scope: str) -> list[str]:
        """``scope`` and the public paths the object at ``scope`` is documented under."""
        obj = self.find(scope) if scope else MISSING
        return [scope] + (self.by_object.get(id(obj), []) if obj is not MISSING else [])

    def resolve(self, name: str, module: str, cls: str | None = None, role: str = "") -> Resolution:
        """What role target ``name`` (``Trace.invoke``, ``.weights``, ``mlxterp.Program``) means in a docstring
        of ``module`` (and class ``cls``): see the module docstring. A ``mod`` role names only modules (as in
        Sphinx): other objects of that name are passed over (``:mod:`.program``` in a method ``program``)."""
        name = name.lstrip(".")
        for scope in scopes(module, cls):
            obj = self.find(f"{scope}.{name}" if scope else name)
            if role == "mod" and not inspect.ismodule(obj):
                continue
            for base in self.aliases(scope):
                if (full := f"{base}.{name}" if base else name) in self.paths:
                    return Resolution(full)
            if obj is not MISSING:
                return Resolution(self.public_path(obj, name))
        return Resolution(None, tuple(sorted(path for path in self.paths if path.endswith("." + name))))


def problems() -> list[str]:
    """The roles of mlxterp's docstrings that name nothing in their scopes while public names end with them
    (what the site's build reports), read as the site reads them: Griffe with the site's extensions."""
    import griffe

    from .griffe_ext import CompilerPackage, SphinxRoles

    roles = SphinxRoles()
    loader = griffe.GriffeLoader(docstring_parser=griffe.Parser.google,
                                 extensions=griffe.Extensions(CompilerPackage(), roles))
    loader.load("mlxterp")
    return roles.problems
