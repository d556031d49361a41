"""Griffe extensions for the API reference (loaded by mkdocstrings, see ``mkdocs.yml``).

- :class:`CompilerPackage`: the repository's ``compiler/`` folder installs as ``mlxterp.compiler`` (a
  ``package-dir`` mapping, which Griffe's static finder does not follow); this grafts it under ``mlxterp``
  so that ``::: mlxterp.compiler.Graph`` and cross-references to it resolve.
- :class:`SphinxRoles`: the code's docstrings name other objects with Sphinx roles (``:class:`Trace```,
  ``:meth:`~.Program.batched```); MkDocs would show them raw. Each becomes a link when it names a public
  object the site documents in its docstring's scope, else inline code (see :mod:`docsgen.roles`).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import griffe

if TYPE_CHECKING:
    from docsgen.roles import Resolver

log = logging.getLogger("mkdocs.plugins.docsgen.roles")


def compiler_path() -> Path:
    """Where ``mlxterp.compiler``'s source lives (found through the import system, as Python finds it)."""
    spec = importlib.util.find_spec("mlxterp.compiler")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mlxterp.compiler is not importable: install the project (pip install -e .)")
    return Path(list(spec.submodule_search_locations)[0])


class CompilerPackage(griffe.Extension):
    """Load ``compiler/`` as the ``mlxterp.compiler`` subpackage when ``mlxterp`` is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "mlxterp" or "compiler" in pkg.members:
            return
        module = loader._load_module("compiler", compiler_path() / "__init__.py", parent=pkg)
        pkg.set_member("compiler", module)
        loader.expand_exports(module)
        loader.expand_wildcards(module, external=False)


ROLE = re.compile(r":(?:py:)?(class|meth|func|mod|data|attr|exc|obj):`(~?)([^`<]*?)\s*(?:<([^>`]+)>)?`")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in docstrings: ``[`Name`][public.path]`` where the role names a public object in
    its docstring's scope (:mod:`docsgen.roles`), else ```Name```. A role whose name exists in no scope while
    public names end with it is logged as a warning (``mkdocs build --strict`` fails) naming the docstring
    and the candidates, and kept in :attr:`problems`."""

    def __init__(self) -> None:
        super().__init__()
        self._resolver: Resolver | None = None
        self.problems: list[str] = []

    def resolver(self) -> Resolver:
        """The resolver over the public names (``docsgen.public``), each of which the site documents under that id."""
        if self._resolver is None:  # imported here: MkDocs puts the repository on sys.path (docsgen/hooks.py)
            from docsgen.public import public_api
            from docsgen.roles import Resolver

            self._resolver = Resolver((name.path, name.obj) for name in public_api())
        return self._resolver

    def rewrite(self, text: str, module: str, cls: str | None = None, where: str = "") -> str:
        """``text``, a docstring of ``module`` (and class ``cls``), with every role replaced (see the class
        docstring); ``where`` names the docstring in a problem."""
        from docsgen.roles import scopes

        def one(match: re.Match) -> str:
            role, tilde, title, explicit = match.group(1), match.group(2), match.group(3).strip(), match.group(4)
            name = (explicit or title).strip().lstrip("~").removesuffix("()")
            shown = title if explicit else (name.rsplit(".", 1)[-1] if tilde else name.lstrip("."))
            found = self.resolver().resolve(name, module, cls, role)
            if found.candidates:
                self.problem(f"{where or module}: {match.group(0)} names nothing in its scopes "
                             f"({', '.join(filter(None, scopes(module, cls)))}) and is not a full path, but public "
                             f"names end with it: {', '.join(found.candidates)}. Name the object meant by a path "
                             f"that resolves (e.g. :{role}:`~{found.candidates[0]}`; see docs/contributing.md)")
            return f"[`{shown}`][{found.path}]" if found.path else f"`{shown}`"
        return ROLE.sub(one, text)

    def problem(self, message: str) -> None:
        """Record ``message`` and log it as a warning (which fails ``mkdocs build --strict``)."""
        self.problems.append(message)
        log.warning(f"cross-reference: {message}")

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None or ":" not in obj.docstring.value:
            return
        owner = obj
        while owner is not None and not owner.is_class and not owner.is_module:
            owner = owner.parent
        cls = owner.path if owner is not None and owner.is_class else None
        where = f"docstring of {obj.path} ({obj.filepath}:{obj.docstring.lineno})"
        obj.docstring.value = self.rewrite(obj.docstring.value, obj.module.path, cls, where)
