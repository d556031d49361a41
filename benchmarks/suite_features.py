"""Dictionary evaluation: ``mt.evaluate`` of K dictionaries against the three-forwards-per-dictionary loop, with
the floor beside it.

``evaluate``   K = 3 TopK SAEs (``d_sae`` 8x the hidden size, as the dictionaries suite's, ``k`` 32) at
               ``layers.{L/4, L/2, 3L/4}.resid_pre`` of llama256, and K = 8, one at every layer's ``resid_pre`` (as
               SAE suites are released), on 32 prompts of 64 random tokens in chunks of 8 (every token evaluated, no padding).
               Candidate: ``mt.evaluate(model, saes, prompts, batch_size=8, exclude=None)`` (one staircase
               program per chunk: the clean rows, and each dictionary's spliced and zero-ablated rows born at
               its layer). Baseline: the loop, per dictionary and chunk three compiled forwards written with
               raw mlx-lm calls (no mlxterp): the clean one capturing the site, the spliced one, the
               zero-ablated one, with the same statistics and losses. Floor: the staircase itself written by
               hand and compiled (no mlxterp): the work the evaluation cannot avoid. Target: evaluate <= 0.5x
               the loop. The notes give evaluate / floor.

Clocks: process CPU time (other processes on a shared machine do not inflate it); the wall-clock ratio is
in the notes. On the ``tiny`` smoke model the prompts shrink (8 prompts of 16 tokens, chunks of 4).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List

import mlx.core as mx
from mlx_lm.models.base import create_attention_mask

import mlxterp as mt
from mlxterp import SAE
from mlxterp.features.evaluate import logit_losses, site_statistics

from .context import Context
from .harness import Row, Target, compare, ratio_row
from .suite_dictionaries import _wall_ratio

SUITE = "features"
DESCRIPTION = "mt.evaluate of K dictionaries vs the 3-forwards-per-dictionary loop, and its hand-written floor"

TARGET = Target("<=", 0.5)


def _setup(ctx: Context, every_layer: bool) -> Dict[str, Any]:
    smoke = "tiny" in ctx.settings.models
    name = "tiny" if smoke else "llama256"
    m = ctx.model(name)
    n, seq, batch = (8, 16, 4) if smoke else (32, 64, 8)
    prompts = [m.tokens(1, seq, seed=100 + i).tolist()[0] for i in range(n)]
    # distinct layers (the smoke run's tiny model has 2: its quartiles would put two SAEs at one layer, which the
    # hand-written floor, one function per layer, cannot hold)
    layers = list(range(m.layers)) if every_layer else sorted({m.layers // 4, m.layers // 2, 3 * m.layers // 4})
    saes = []
    for i, layer in enumerate(layers):
        sae = SAE.create("topk", d_sae=8 * m.hidden, k=min(32, m.hidden), site=f"layers.{layer}.resid_pre", seed=i)
        sae.bind(m.hidden)
        saes.append(sae)
    chunks = [mx.array(prompts[i:i + batch]) for i in range(0, n, batch)]
    return {"loaded": m, "name": name, "prompts": prompts, "saes": saes, "layers": layers, "chunks": chunks,
            "batch": batch, "shape": f"K{len(layers)} {n}x{seq} b{batch}"}


class Raw:
    """The llama forward with raw mlx-lm calls: embedding, blocks (an optional function of each block's input
    first), norm, head."""

    def __init__(self, module: Any):
        self.inner = module.model
        self.module = module
        self.tied = bool(getattr(module.args, "tie_word_embeddings", False)) or not hasattr(module, "lm_head")

    def __call__(self, tokens: mx.array, before: Dict[int, Any]) -> mx.array:
        h = self.inner.embed_tokens(tokens)
        for i, block in enumerate(self.inner.layers):
            if i in before:
                h = before[i](h)
            h = block(h, create_attention_mask(h, None))
        h = self.inner.norm(h)
        return self.inner.embed_tokens.as_linear(h) if self.tied else self.module.lm_head(h)


def _targets(tokens: mx.array) -> tuple:
    rows, width = tokens.shape
    targets = mx.concatenate([tokens[:, 1:], mx.zeros((rows, 1), dtype=tokens.dtype)], axis=1)
    keep = mx.concatenate([mx.ones((rows, width - 1)), mx.zeros((rows, 1))], axis=1)
    return targets, keep


def _loop(raw: Raw, saes: List[SAE], layers: List[int]) -> Any:
    """Per dictionary: compiled clean (capturing the site), spliced and zero-ablated forwards, the statistics of
    the clean site and the losses of the three."""
    runs = []
    for sae, layer in zip(saes, layers):
        enc, dec, w = sae.encoder, sae.decoder, sae.inference_weights()

        def clean(tokens: mx.array, layer: int = layer) -> tuple:
            seen = {}
            logits = raw(tokens, {layer: lambda h: seen.setdefault("x", h)})
            return logits, seen["x"]

        def spliced(tokens: mx.array, layer: int = layer, enc: Any = enc, dec: Any = dec, w: Any = w) -> mx.array:
            return raw(tokens, {layer: lambda h: dec(enc(h, w), w).astype(h.dtype)})

        def zero(tokens: mx.array, layer: int = layer) -> mx.array:
            return raw(tokens, {layer: mx.zeros_like})

        def stats(x: mx.array, enc: Any = enc, dec: Any = dec, w: Any = w) -> tuple:
            f = enc(x, w)
            return site_statistics(x, dec(f, w), f, mx.ones(x.shape[:2] + (1,)))

        runs.append([mx.compile(fn) for fn in (clean, spliced, zero, stats)])
    losses = mx.compile(lambda logits, targets, keep: logit_losses(logits, targets, keep, 3))

    def run(chunks: List[mx.array]) -> None:
        for clean, spliced, zero, stats in runs:
            for tokens in chunks:
                targets, keep = _targets(tokens)
                logits, x = clean(tokens)
                both = mx.concatenate([logits, spliced(tokens), zero(tokens)], axis=0)
                mx.eval(stats(x), losses(both, targets, keep))
    return run


def _floor(raw: Raw, saes: List[SAE], layers: List[int]) -> Any:
    """The staircase by hand: at each dictionary's layer, the clean rows' reconstruction and zeros join the
    batch; one forward of all rows from there on; the statistics and the losses."""
    def forward(tokens: mx.array, targets: mx.array, keep: mx.array) -> tuple:
        rows, stats = tokens.shape[0], []

        def grow(h: mx.array, sae: SAE) -> mx.array:
            x = h[:rows]
            f = sae.encoder(x, sae.inference_weights())
            r = sae.decoder(f, sae.inference_weights())
            stats.append(site_statistics(x, r, f, mx.ones(x.shape[:2] + (1,))))
            return mx.concatenate([h, r.astype(h.dtype), mx.zeros_like(x)], axis=0)

        logits = raw(tokens, {layer: lambda h, s=sae: grow(h, s) for sae, layer in zip(saes, layers)})
        return stats, logit_losses(logits, targets, keep, 1 + 2 * len(saes))

    compiled = mx.compile(forward)

    def run(chunks: List[mx.array]) -> None:
        for tokens in chunks:
            mx.eval(compiled(tokens, *_targets(tokens)))
    return run


def evaluate(ctx: Context) -> Iterator[Row]:
    """``mt.evaluate`` of 3 SAEs at the quartiles, and of an SAE at every layer, vs the loop of 3 forwards per
    dictionary (target <= 0.5x), the floor in the notes."""
    name = "tiny" if "tiny" in ctx.settings.models else "llama256"
    if name not in ctx.available((name,)):
        yield Row(SUITE, "evaluate", name, "", "3 forwards per dictionary", "mt.evaluate", float("nan"),
                  skipped=ctx.missing((name,)).get(name, "unavailable"))
        return
    for every_layer in (False, True):
        yield _evaluate_row(ctx, _setup(ctx, every_layer))


def _evaluate_row(ctx: Context, s: Dict[str, Any]) -> Row:
    model, raw = s["loaded"].wrap(), Raw(s["loaded"].module)
    saes, layers, chunks = s["saes"], s["layers"], s["chunks"]
    loop, floor = _loop(raw, saes, layers), _floor(raw, saes, layers)

    def candidate() -> None:
        mt.evaluate(model, saes, s["prompts"], batch_size=s["batch"], exclude=None)

    ctx.log(f"  evaluate {s['shape']}")
    repeats = max(3, ctx.settings.repeats // 2)
    timings = compare(lambda: loop(chunks), candidate, repeats=repeats, warmup=ctx.settings.warmup,
                      clock=time.process_time)
    floor_timings = compare(lambda: floor(chunks), candidate, repeats=repeats, warmup=ctx.settings.warmup,
                            clock=time.process_time)
    sites = ", ".join(sae.site for sae in saes) if len(saes) <= 4 else "layers.N.resid_pre for every N"
    note = (f"sites {sites}; floor (the staircase by hand, compiled): evaluate / floor "
            f"{floor_timings[1].median / floor_timings[0].median:.3f}x (min {floor_timings[1].min / floor_timings[0].min:.3f}x), "
            f"floor / loop {floor_timings[0].median / timings[0].median:.3f}x; cpu time; wall-clock ratio "
            f"{_wall_ratio(lambda: loop(chunks), candidate, rounds=2):.3f}x")
    return ratio_row(SUITE, "evaluate", s["name"], s["shape"], "3 compiled forwards per dictionary (loop)",
                     "mt.evaluate (one staircase program per chunk)", timings, TARGET, note=note)


CASES = {"evaluate": evaluate}
