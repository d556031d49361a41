"""Griffe extensions for the API reference (loaded by mkdocstrings, see ``mkdocs.yml``).

- :class:`CompilerPackage`: the repository's ``compiler/`` folder installs as ``mlxterp.compiler`` (a
  ``package-dir`` mapping, which Griffe's static finder does not follow); this grafts it under ``mlxterp``
  so that ``::: mlxterp.compiler.Graph`` and cross-references to it resolve.
- :class:`SphinxRoles`: the code's docstrings name other objects with Sphinx roles (``:class:`Trace```,
  ``:meth:`~.Program.batched```); MkDocs would show them raw. Each becomes a link when it names a public
  object the site documents, else inline code.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import griffe


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


ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj):`(~?)([^`<]*?)\s*(?:<([^>`]+)>)?`")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in docstrings: ``[`Name`][public.path]`` for a public name, else ```Name```."""

    def __init__(self) -> None:
        super().__init__()
        self._paths: list[str] | None = None

    def paths(self) -> list[str]:
        """The public paths (``docsgen.public``), each of which the site documents under that id."""
        if self._paths is None:
            from docsgen.public import public_api

            self._paths = [name.path for name in public_api()]
        return self._paths

    def target(self, name: str) -> str | None:
        """The public path that ``name`` (``Trace.invoke``, ``mlxterp.Program``) names, if exactly one does."""
        found = {path for path in self.paths() if path == name or path.endswith("." + name)}
        return found.pop() if len(found) == 1 else None

    def rewrite(self, text: str) -> str:
        """``text`` with every role replaced (see the class docstring)."""
        def one(match: re.Match) -> str:
            tilde, title, explicit = match.group(1), match.group(2).strip(), match.group(3)
            name = (explicit or title).strip().lstrip("~").lstrip(".").removesuffix("()")
            shown = title if explicit else (name.rsplit(".", 1)[-1] if tilde else name)
            path = self.target(name)
            return f"[`{shown}`][{path}]" if path else f"`{shown}`"
        return ROLE.sub(one, text)

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = self.rewrite(obj.docstring.value)
