"""Views: a large attention page stays small and opens fast in headless Chromium.

``attention_view``: the attention view of 30 layers x 9 heads x 128 tokens (SmolLM2-135M's shape; causal
softmax patterns of random scores, seeded). Two rows: the page's size in MB (target <= 5) and the time from
navigation start until the view has drawn itself (``window.MX_READY``, set by the page's script after
parsing the data, unpacking every weight and drawing 270 thumbnails and the chosen head), median over
opens of the same file in a fresh tab of one browser (target <= 2000 ms). Needs Chromium and Playwright
(``apt-get install -y chromium``; the dev extra); without them the timing row says SKIP and why.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .context import Context
from .harness import Row, Target

SUITE = "views"
DESCRIPTION = "HTML views: the size of a large attention page and its opening time in headless Chromium"

LAYERS, HEADS, TOKENS = 30, 9, 128
SIZE_TARGET = Target("<=", 5.0)
OPEN_TARGET = Target("<=", 2000.0)
SHAPE = f"{LAYERS}L x {HEADS}H x {TOKENS}"


def _patterns() -> object:
    from mlxterp.analysis.patterns import AttentionPatterns

    rng = np.random.default_rng(0)
    mask = np.triu(np.ones((TOKENS, TOKENS), dtype=bool), k=1)
    patterns = {}
    for layer in range(LAYERS):
        scores = rng.normal(size=(HEADS, TOKENS, TOKENS)) * 2.0
        scores[:, mask] = -np.inf
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        patterns[layer] = (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)
    return AttentionPatterns(patterns, [f" tok{i}" for i in range(TOKENS)], list(range(LAYERS)))


def attention_view(ctx: Context) -> Iterator[Row]:
    """The size of a 30 x 9 x 128 attention page, and its opening time in headless Chromium."""
    from mlxterp.views.browser import OpenedView, chromium, unavailable

    patterns = _patterns()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "attention.html"
        t0 = time.perf_counter()
        patterns.save_html(path)
        build_s = time.perf_counter() - t0
        megabytes = path.stat().st_size / 1e6
        yield Row(SUITE, "attention_view", "synthetic", SHAPE, "(absolute)", "page size", megabytes, "MB", SIZE_TARGET,
                  note=f"written by save_html in {build_s * 1e3:.0f} ms")
        reason = unavailable()
        if reason is not None:
            yield Row(SUITE, "attention_view", "synthetic", SHAPE, "(absolute)", "open in Chromium", float("nan"), "ms",
                      OPEN_TARGET, skipped=reason)
            return
        with chromium() as browser:
            opens = []
            for _ in range(max(3, ctx.settings.repeats)):
                view = OpenedView(browser, path)
                opens.append(view.ready_ms)
                errors = view.errors
                view.close()
        note = f"min {min(opens):.0f} ms over {len(opens)} opens" + (f"; console errors: {errors}" if errors else "")
        yield Row(SUITE, "attention_view", "synthetic", SHAPE, "(absolute)", "open in Chromium (until drawn)",
                  statistics.median(opens), "ms", OPEN_TARGET, note=note, failures=[f"{len(errors)} console errors"]
                  if errors else [])


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {"attention_view": attention_view}
