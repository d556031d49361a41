"""Fixtures for the views and saved-results tests: one result of every class, made on the tiny llama (module
scope), hand-made results whose tokens are hostile HTML, and views opened in headless Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel, apply
from mlxterp.analysis.lens import LogitLensResult
from mlxterp.analysis.patterns import AttentionPatterns
from mlxterp.views.browser import OpenedView, chromium, unavailable
from tests.models import CharTokenizer, tiny_llama_module

CLEAN, CORRUPTED = "abcdef", "abcxef"
# tokens that break a page that writes them as HTML: each must show as itself
HOSTILE = ["<script>window.__pwned = 1</script>", '"', "&amp;", "</script>", '<img src=x onerror="window.__pwned=2">',
           " Paris", "a & b < c > d"]


@pytest.fixture(scope="module")
def tiny() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(), tokenizer=CharTokenizer())


@pytest.fixture(scope="module")
def results(tiny: InterpretableModel) -> Dict[str, Any]:
    """One result of every saveable class, made by the library on the tiny llama."""
    with tiny.generate(["hello", "ab"], max_new_tokens=5) as gen:
        apply(lambda x: x.sum(-1), tiny.layers[1].output[:, -1]).save("probe")
        apply(lambda x: x.astype(mx.bfloat16), tiny.output[:, -1]).save("logits")
        with gen.steps[0]:
            tiny.layers[0].output.save("prompt_resid")  # one step's value (no steps axis)
    scores = tiny.edge_attribution(CLEAN, CORRUPTED, metric="logprob", target=5, method="eap-ig", steps=2)
    circuit = scores.circuit(n_edges=40)
    return {
        "edge_scores": scores,
        "circuit": circuit,
        "edge_patching": tiny.edge_patching(CLEAN, CORRUPTED, circuit, metric="logprob", target=5),
        "faithfulness": tiny.evaluate_circuit(circuit, CLEAN, CORRUPTED, metric="logprob", target=5),
        "faithfulness_curve": tiny.faithfulness_curve(scores, CLEAN, CORRUPTED, sizes=[5, 40, 200], metric="logprob",
                                                      target=5, ablation="mean"),
        "dla": tiny.direct_logit_attribution([CLEAN, CORRUPTED], target=5, foil=7),
        "decomposition": tiny.decompose(CLEAN),
        "logit_lens": tiny.logit_lens("hello world", top_k=3),
        "layer_patching": tiny.activation_patching(CLEAN, CORRUPTED, component="mlp"),
        "patching_grid": tiny.patching_grid(CLEAN, CORRUPTED, positions=[2, 3, 4]),
        "attribution": tiny.attribution_patching(CLEAN, CORRUPTED),
        "head_patching": tiny.head_patching(CLEAN, CORRUPTED, metric="logit_diff"),
        "attention_patterns": tiny.attention_patterns("hello world", layers=[0, 2]),
        "head_scores": tiny.head_scores(seq_len=6, batch=2),
        "generation": gen.result(),
    }


def softmax_patterns(heads: int, seq: int, seed: int = 0) -> np.ndarray:
    """``(heads, seq, seq)`` causal softmax patterns of random scores (float32)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(heads, seq, seq)) * 2.0
    scores[:, np.triu(np.ones((seq, seq), dtype=bool), k=1)] = -np.inf
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def hostile_patterns() -> AttentionPatterns:
    return AttentionPatterns({0: softmax_patterns(2, len(HOSTILE))}, list(HOSTILE), [0])


@pytest.fixture()
def hostile_lens() -> LogitLensResult:
    n = len(HOSTILE)
    ids = np.stack([np.arange(n), (np.arange(n) + 1) % n], axis=-1)[None].repeat(2, axis=0).astype(np.int64)
    probs = np.tile(np.array([0.625, 0.25], dtype=np.float32), (2, n, 1))
    return LogitLensResult([0, 1], list(range(n)), list(HOSTILE), ids, probs, dict(enumerate(HOSTILE)))


# ---------------------------------------------------------------------------------------------------
# the browser
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")  # closed after each module: a running sync Playwright blocks any other in-process
def browser() -> Any:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"browser tests: {reason}")
    with chromium() as b:
        yield b


@pytest.fixture()
def open_view(browser: Any, tmp_path: Path) -> Callable[..., OpenedView]:
    """``open_view(result, **options)``: write the result's view and open it in a new tab (closed after)."""
    opened: List[OpenedView] = []

    def _open(result: Any, name: str = "view.html", **options: Any) -> OpenedView:
        path = result.save_html(tmp_path / name, **options)
        view = OpenedView(browser, path)
        opened.append(view)
        return view

    yield _open
    for view in opened:
        view.close()
