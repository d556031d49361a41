"""Check that every public name has a docstring, as the site shows it (``python -m docsgen.docstrings``).

MkDocs and mkdocstrings render an object without a docstring as a bare signature and do not fail, so
``mkdocs build --strict`` runs this check (``docsgen.hooks``) and so does ``tests/test_docs.py``. The
docstrings are read by Griffe, as mkdocstrings reads them: constants need an attribute docstring (a
string literal on the line after the assignment).
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Any

from .public import Public, public_api


@lru_cache(maxsize=1)
def griffe_loader() -> Any:
    """A Griffe loader with mlxterp (``mlxterp.compiler`` grafted in) loaded and its aliases resolved."""
    import griffe

    from .griffe_ext import CompilerPackage

    loader = griffe.GriffeLoader(docstring_parser=griffe.Parser.google,
                                 extensions=griffe.load_extensions(CompilerPackage))
    loader.load("mlxterp")
    loader.resolve_aliases(implicit=False, external=False)
    return loader


def missing(api: list[Public] | None = None) -> list[str]:
    """``"kind path"`` for every public name whose documentation has no docstring (or is not found)."""
    collection = griffe_loader().modules_collection
    problems = []
    for name in api if api is not None else public_api():
        try:
            obj = collection[name.path]
        except (KeyError, ValueError, AttributeError) as exc:
            problems.append(f"{name.kind} {name.path}: not found by Griffe ({type(exc).__name__}: {exc})")
            continue
        if not (obj.docstring and obj.docstring.value.strip()):
            problems.append(f"{name.kind} {name.path}: no docstring (defined at {_where(obj)})")
    return problems


def _where(obj: Any) -> str:
    try:
        return f"{obj.filepath}:{obj.lineno}"
    except Exception:  # an alias that does not resolve has no file: say what it points to
        return getattr(obj, "target_path", "?")


def main() -> int:
    problems = missing()
    for line in problems:
        print(line)
    print(f"{len(problems)} public name(s) without a docstring" if problems else "every public name has a docstring")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
