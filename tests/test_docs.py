"""The documentation site: every public name has a docstring and a page, and `mkdocs build --strict` passes
offline (tests skip, saying why, without the docs packages: `pip install -e ".[docs]"`)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from tests.models import REPO

needs_griffe = pytest.mark.skipif(importlib.util.find_spec("griffe") is None,
                                  reason="griffe (mkdocstrings' loader) is not installed: pip install -e '.[docs]'")
needs_mkdocs = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material",
                                                                                    "mkdocstrings", "jupytext")),
                                  reason="the docs packages are not installed: pip install -e '.[docs]'")

# The seed reference's names (../shared/seed/mlxterp-api.md): the floor of the API reference.
SEED = ["mlxterp.InterpretableModel", "mlxterp.InterpretableModel.trace", "mlxterp.InterpretableModel.encode",
        "mlxterp.InterpretableModel.decode", "mlxterp.InterpretableModel.encode_batch",
        "mlxterp.InterpretableModel.token_to_str", "mlxterp.InterpretableModel.vocab_size",
        "mlxterp.InterpretableModel.tokenizer", "mlxterp.InterpretableModel.get_token_predictions",
        "mlxterp.InterpretableModel.logit_lens", "mlxterp.InterpretableModel.activation_patching",
        "mlxterp.InterpretableModel.named_modules", "mlxterp.InterpretableModel.layers",
        "mlxterp.InterpretableModel.output", "mlxterp.Trace", "mlxterp.Trace.output", "mlxterp.Trace.saved_values",
        "mlxterp.Trace.activations", "mlxterp.Trace.get", "mlxterp.Trace.get_activation", "mlxterp.OutputProxy",
        "mlxterp.Proxy.save", "mlxterp.interventions", "mlxterp.interventions.zero_out",
        "mlxterp.interventions.scale", "mlxterp.interventions.add_vector", "mlxterp.interventions.replace_with",
        "mlxterp.interventions.clamp", "mlxterp.interventions.noise", "mlxterp.interventions.InterventionComposer",
        "mlxterp.interventions.InterventionComposer.add", "mlxterp.interventions.InterventionComposer.build",
        "mlxterp.interventions.compose", "mlxterp.get_activations", "mlxterp.batch_get_activations",
        "mlxterp.collect_activations", "mlxterp.ModuleProxy", "mlxterp.LayerListProxy", "mlxterp.ActivationCache",
        "mlxterp.ActivationCache.activations", "mlxterp.ActivationCache.metadata", "mlxterp.ActivationCache.get",
        "mlxterp.ActivationCache.keys"]


def public_paths() -> list[str]:
    from docsgen.public import public_api

    return [name.path for name in public_api()]


def test_public_api_covers_the_seed_reference():
    paths = set(public_paths())
    assert [name for name in SEED if name not in paths] == []


def test_public_api_finds_a_new_package(tmp_path, monkeypatch):
    """A package with an ``__all__`` is public as soon as it exists (so the build asks for its page)."""
    from docsgen import public

    package = tmp_path / "mlxterp_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A probe."""\n\n__all__ = ["thing"]\n\n\ndef thing():\n    pass\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(public, "ROOTS", public.ROOTS + ("mlxterp_probe_pkg",))
    names = {p.path: p for p in public.public_api()}
    assert names["mlxterp_probe_pkg.thing"].kind == "function"


def test_result_classes_are_public():
    from docsgen.public import result_classes

    found = result_classes()
    assert "mlxterp.analysis.patching.PatchingGrid" in found and "mlxterp.generation.result.GenerationResult" in found


@needs_griffe
def test_every_public_name_has_a_docstring():
    from docsgen.docstrings import missing

    assert missing() == []


@needs_griffe
def test_docstring_check_reports_what_is_missing():
    from docsgen.docstrings import missing
    from docsgen.public import Public

    problems = missing([Public("mlxterp.interventions._ZeroOut.__call__", None, "method"),
                        Public("mlxterp.no_such_name", None, "function"),
                        Public("mlxterp.InterpretableModel.trace", None, "method")])
    assert len(problems) == 2
    assert "no docstring" in problems[0] and "not found" in problems[1]


# A tiny package for the role resolver: Comm and Group both have a public ``gather``; ``dist`` has a private
# ``gather`` and ``invoke`` of its own; ``sub.mod`` imports Trace; ``LIMIT`` and ``N`` are the same interned 4.
WORLD = {
    "__init__.py": "from .comm import Comm, Group\nfrom .trace import Trace\nLIMIT = 4\n",
    "comm.py": "class Comm:\n    def gather(self): pass\n    def dist(self): pass\n\n\n"
               "class Group:\n    def gather(self): pass\n",
    "trace.py": "class Trace:\n    def invoke(self): pass\n",
    "dist.py": "N = 4\n\n\ndef gather(): pass\n\n\ndef invoke(): pass\n",
    "other.py": "",
    "sub/__init__.py": "",
    "sub/mod.py": "from ..trace import Trace as T\n",
}


@pytest.fixture()
def resolver(tmp_path, monkeypatch):
    import importlib

    from docsgen.roles import Resolver

    for name, source in WORLD.items():
        (tmp_path / "rw" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "rw" / name).write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("rw", "rw.dist", "rw.other", "rw.sub.mod"):
        monkeypatch.setitem(sys.modules, name, importlib.import_module(name))
    rw = sys.modules["rw"]
    public = [("rw.Comm", rw.Comm), ("rw.Comm.gather", rw.Comm.gather), ("rw.Group", rw.Group),
              ("rw.Group.gather", rw.Group.gather), ("rw.Trace", rw.Trace), ("rw.Trace.invoke", rw.Trace.invoke),
              ("rw.Trace.tokens", None), ("rw.LIMIT", rw.LIMIT)]
    yield Resolver(public)
    for name in [m for m in sys.modules if m == "rw" or m.startswith("rw.")]:
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize("name, module, cls, role, path", [
    ("gather", "rw.comm", "rw.comm.Comm", "meth", "rw.Comm.gather"),  # the docstring's own class first
    ("gather", "rw.comm", "rw.comm.Group", "meth", "rw.Group.gather"),
    ("tokens", "rw.trace", "rw.trace.Trace", "attr", "rw.Trace.tokens"),  # an instance attribute of its class
    ("Comm.gather", "rw.sub.mod", None, "meth", "rw.Comm.gather"),  # found in an enclosing package
    ("T", "rw.sub.mod", None, "class", "rw.Trace"),  # a name the module imported: the object it is
    (".comm.Comm", "rw.other", None, "class", "rw.Comm"),
    ("rw.trace.Trace.invoke", "rw.dist", None, "meth", "rw.Trace.invoke"),  # a full path
    ("LIMIT", "rw.dist", None, "data", "rw.LIMIT"),
    ("N", "rw.dist", None, "data", None),  # the same object as rw.LIMIT, under another name: not linked
    ("gather", "rw.dist", None, "func", None),  # the module's own private gather, not Comm.gather
    ("invoke", "rw.dist", None, "func", None),  # nor Trace.invoke, the only public name ending with it
    ("mx.compile", "rw.dist", None, "func", None),  # nothing public: plain code
    (".dist", "rw.comm", "rw.comm.Comm", "mod", None),  # a mod role skips the method Comm.dist: the module
    (".dist", "rw.comm", "rw.comm.Comm", "meth", None),  # the method, not public
])
def test_role_resolves_in_its_docstrings_scope(resolver, name, module, cls, role, path):
    found = resolver.resolve(name, module, cls, role)
    assert (found.path, found.candidates) == (path, ())


@pytest.mark.parametrize("name, candidates", [
    ("gather", ("rw.Comm.gather", "rw.Group.gather")),  # several public names: none is picked
    ("invoke", ("rw.Trace.invoke",)),  # one public name in no enclosing scope: still not linked
])
def test_role_in_no_scope_is_not_matched_by_its_ending(resolver, name, candidates):
    from docsgen.roles import Resolution

    assert resolver.resolve(name, "rw.other", None, "meth") == Resolution(None, candidates)


def test_role_scopes_are_class_module_packages_then_full_path():
    from docsgen.roles import scopes

    assert scopes("a.b.c", "a.b.c.K") == ["a.b.c.K", "a.b.c", "a.b", "a", ""]
    assert scopes("a") == ["a", ""]


@needs_griffe
def test_sphinx_roles_become_links_to_public_names_or_code(resolver, caplog):
    from docsgen.griffe_ext import SphinxRoles

    roles = SphinxRoles()
    roles._resolver = resolver
    assert roles.rewrite(":class:`T`", "rw.sub.mod") == "[`T`][rw.Trace]"
    assert roles.rewrite("see :meth:`~.Comm.gather`.", "rw.dist") == "see [`gather`][rw.Comm.gather]."
    assert roles.rewrite(":func:`gather`", "rw.dist") == "`gather`"
    assert roles.rewrite(":class:`the trace <rw.Trace>`", "rw.other") == "[`the trace`][rw.Trace]"
    assert roles.problems == []
    with caplog.at_level("WARNING", logger="mkdocs"):
        assert roles.rewrite(":meth:`gather`", "rw.other", where="docstring of rw.other") == "`gather`"
    assert len(roles.problems) == 1 and roles.problems[0] == caplog.records[-1].getMessage().split(": ", 1)[1]
    assert caplog.records[-1].name.startswith("mkdocs.")  # counted by mkdocs build --strict
    assert all(s in roles.problems[0] for s in ("docstring of rw.other", "rw.Comm.gather", "rw.Group.gather"))


@needs_griffe
def test_every_role_in_the_docstrings_resolves_or_is_not_ambiguous():
    from docsgen.roles import problems

    assert problems() == []


def test_undocumented_reads_the_search_index(tmp_path):
    from docsgen.hooks import undocumented

    index = tmp_path / "search_index.json"
    index.write_text(json.dumps({"docs": [{"location": "api/tracing/#mlxterp.Trace"}, {"location": "index.html"}]}))
    assert undocumented(index, ["mlxterp.Trace", "mlxterp.Program"]) == ["mlxterp.Program"]


def test_readme_links_become_site_links():
    from docsgen.hooks import readme_page

    page = readme_page(REPO / "README.md")
    assert "](docs/" not in page and "](benchmarks/README.md)" not in page
    assert "](guide/tracing.md)" in page


@needs_mkdocs
def test_tutorial_outputs_are_recorded_for_the_current_source():
    from docsgen.tutorials import render, scripts

    problems = [p for script in scripts() for p in render(script)[1]]
    assert problems == []


@needs_mkdocs
def test_site_builds_strict_offline_with_every_public_name(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    from docsgen.hooks import undocumented

    assert undocumented(site / "search" / "search_index.json", public_paths()) == []
    remote = re.compile(r"<(?:script|link|img|iframe)\b[^>]*(?:src|href)=\"(?:https?:)?//", re.I)
    fetched = [str(p.relative_to(site)) for p in site.rglob("*.html") if remote.search(p.read_text(errors="replace"))]
    assert fetched == []  # nothing loaded from the network when a page is viewed
    cli = (site / "api" / "cli" / "index.html").read_text()
    assert all(f"mlxterp {command}" in cli for command in ("demo", "logit-lens", "patch", "activations", "generate"))
    fact = (site / "tutorials" / "find_a_fact" / "index.html").read_text()
    assert "<iframe" in fact and (site / "tutorials" / "outputs" / "find_a_fact" / "grid.html").is_file()
