"""MkDocs hooks (``mkdocs.yml``: ``hooks:``): the pages made from other files, and the site's checks.

- The landing page is ``README.md`` and the Benchmarks page ``benchmarks/README.md``, their links into
  ``docs/`` rewritten to site links.
- Each tutorial ``docs/tutorials/<name>.py`` (jupytext percent format) becomes the page
  ``tutorials/<name>.md`` with the outputs recorded by ``python -m docsgen.tutorials`` (see
  :mod:`docsgen.tutorials`); the script itself is copied beside it for download.
- ``api/cli.md`` gets every subcommand's ``--help``, from the parser itself.
- Checks, as warnings (``--strict`` makes them fail the build): every public name has a docstring
  (:mod:`docsgen.docstrings`), and every public name is documented under its own anchor in the built
  site (its search index), so a newcomer finds it.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.docsgen")
REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def site_link(target: str, folder: str = "") -> str:
    """A README link as the site has it: ``docs/x.md`` is ``x.md``, ``benchmarks/README.md`` the Benchmarks page.

    ``folder`` is the README's folder in the repository (``"benchmarks"``): its relative links are read from
    there (``../docs/x.png`` in ``benchmarks/README.md`` is ``docs/x.png``)."""
    path, sep, anchor = target.partition("#")
    if "://" in path or not path or path.startswith("mailto:"):
        return target
    if folder not in ("", "."):
        path = posixpath.normpath(posixpath.join(folder, path))
    if path.startswith("docs/"):
        path = path[len("docs/"):]
    elif path == "benchmarks/README.md":
        path = "benchmarks.md"
    elif path == "README.md":
        path = "index.md"
    return path + sep + anchor


def readme_page(source: Path) -> str:
    """``source`` (a README) with its links rewritten by :func:`site_link`."""
    folder = source.parent.relative_to(REPO).as_posix()
    return LINK.sub(lambda m: f"]({site_link(m.group(1), folder)})", source.read_text())


def on_config(config):
    # MkDocs loads this file by path and restores sys.path afterwards; its package sits beside it.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return config


def on_files(files: Files, config) -> Files:
    from docsgen import tutorials

    files.append(File.generated(config, "index.md", content=readme_page(REPO / "README.md")))
    files.append(File.generated(config, "benchmarks.md", content=readme_page(REPO / "benchmarks" / "README.md")))
    for script in tutorials.scripts(Path(config["docs_dir"]) / "tutorials"):
        page, problems = tutorials.render(script)
        for problem in problems:
            log.warning(problem)
        files.append(File.generated(config, f"tutorials/{script.stem}.md", content=page))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "api/cli.md":
        return markdown + "\n" + cli_reference()
    return markdown


def cli_reference() -> str:
    """Every subcommand's ``--help`` as a section, read from the parser (80 columns)."""
    from mlxterp.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        sections = [f"## mlxterp\n\n```text\n{parser.format_help()}```\n"]
        commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
        for name, sub in commands.items():
            sections.append(f"## mlxterp {name}\n\n```text\n{sub.format_help()}```\n")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(sections)


def on_pre_build(config) -> None:
    from docsgen.docstrings import missing

    for problem in missing():
        log.warning(f"docstring check: {problem}")


def on_post_build(config) -> None:
    from docsgen.public import public_api

    index = Path(config["site_dir"]) / "search" / "search_index.json"
    for path in undocumented(index, [name.path for name in public_api()]):
        log.warning(f"public name {path} has no anchor in the site: add '::: {path}' (or its package) to a page "
                    "under docs/api/ (see docs/contributing.md)")


def undocumented(search_index: Path, paths: list[str]) -> list[str]:
    """The ``paths`` that no location of the built site's search index anchors (``page/#path``)."""
    docs = json.loads(search_index.read_text())["docs"]
    anchors = {doc["location"].rpartition("#")[2] for doc in docs}
    return [path for path in paths if path not in anchors]
