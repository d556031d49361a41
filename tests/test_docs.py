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


@needs_griffe
def test_sphinx_roles_become_links_to_public_names_or_code():
    from docsgen.griffe_ext import SphinxRoles

    roles = SphinxRoles()
    assert roles.rewrite(":class:`Viewable`") == "[`Viewable`][mlxterp.views.Viewable]"
    assert roles.rewrite("see :meth:`~.Program.batched`.") == "see [`batched`][mlxterp.Program.batched]."
    assert roles.rewrite(":mod:`.attention`") == "`attention`"  # not a public name: plain code
    assert roles.rewrite(":class:`the trace <Trace>`") == "[`the trace`][mlxterp.Trace]"


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
