"""The installed package: a unique import name for the compiler, and a light ``import mlxterp``."""

import subprocess
import sys
import textwrap


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_import_works_from_a_folder_holding_a_compiler_package(tmp_path):
    # A user's project with its own `compiler` package must not shadow mlxterp's compiler.
    (tmp_path / "compiler").mkdir()
    (tmp_path / "compiler" / "__init__.py").write_text("raise ImportError('the user compiler package')\n")
    done = _run("""
        import mlxterp
        from mlxterp.compiler import Graph, Op
        print(Op.SAVE.value)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "save"


def test_import_does_not_load_networkx(tmp_path):
    done = _run("""
        import sys
        import mlxterp
        print('networkx' in sys.modules)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_graph_export_still_reaches_networkx():
    from mlxterp.compiler import Graph, Op, Ref

    g = Graph()
    a = g.add(Op.MODULE_OUTPUT, ("layers.0", 0))
    g.add(Op.SAVE, "x", (Ref(a.id),))
    assert g.to_networkx().number_of_nodes() == 2


def test_benchmarks_are_not_installed(tmp_path):
    done = _run("import importlib.util; print(importlib.util.find_spec('benchmarks') is None)", tmp_path)
    assert done.stdout.strip() == "True", done.stderr


def test_every_subpackage_is_listed_for_installation():
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib", reason="tomllib (to read pyproject.toml) is in Python >= 3.11 only")

    repo = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "mlxterp").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_every_package_folder_is_listed_in_pyproject():
    # setuptools installs only the packages pyproject.toml lists: one left out imports from a checkout but
    # not from an installed wheel.
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(mlxterp(?:\.[\w.]+)?)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    found = {"mlxterp." + ".".join(p.parent.relative_to(repo / "mlxterp").parts) if p.parent != repo / "mlxterp"
             else "mlxterp" for p in (repo / "mlxterp").rglob("__init__.py")}
    found |= {"mlxterp.compiler." + ".".join(p.parent.relative_to(repo / "compiler").parts)
              if p.parent != repo / "compiler" else "mlxterp.compiler" for p in (repo / "compiler").rglob("__init__.py")}
    assert found - listed == set(), f"package folders missing from pyproject.toml's packages: {sorted(found - listed)}"
