"""Every view in headless Chromium: it loads with no console error and no network request, the page holds the
expected cells / heads / tokens, a hover shows the result's own number, hostile tokens show as text, and the
screenshot is not blank. Skipped, with the reason, where Chromium or Playwright is missing."""

from __future__ import annotations

import io
from typing import Dict

import numpy as np
import pytest

from mlxterp.analysis.patterns import AttentionPatterns
from tests.views.conftest import HOSTILE, softmax_patterns


def shown(token: str) -> str:
    """A token as the views show it (common.js's MX.show): marks for line breaks and tabs, and for the spaces of a
    token that is only spaces."""
    text = token.replace("\n", "\u21b5").replace("\r", "\u240d").replace("\t", "\u21e5")
    return text.replace(" ", "\u2423") if text and set(text) == {" "} else text


def tip(view) -> Dict[str, str]:
    """The tooltip's fields: ``{field: text}`` (labels as ``field-label``)."""
    return view.page.eval_on_selector_all("#tip [data-field]", "els => Object.fromEntries(els.map("
                                          "e => [e.dataset.field, e.textContent]))")


def assert_clean(view) -> None:
    assert view.errors == [], view.errors
    assert view.requests == [], view.requests
    assert view.page.evaluate("window.__pwned") is None  # no hostile token ran as code


def assert_not_blank(view) -> None:
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(view.page.screenshot(full_page=True))).convert("RGB"))
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 20 and image.std() > 10, f"{len(colours)} colours, std {image.std():.1f}"


def hover_canvas_cell(view, q: int, k: int, seq: int) -> None:
    """Move the mouse over cell (query q, key k) of the pattern, scrolled into the middle of its box first."""
    view.page.locator("canvas.pattern-canvas").evaluate(
        """(c, [q, k, seq]) => {
            const box = c.closest('.scroll'), cell = c.width / seq;
            box.scrollIntoView({block: 'start'});
            box.scrollTop = (q + 0.5) * cell - box.clientHeight / 2;
            box.scrollLeft = (k + 0.5) * cell - box.clientWidth / 2;
        }""", [q, k, seq])
    box = view.page.locator("canvas.pattern-canvas").bounding_box()
    cell = box["width"] / seq
    view.page.mouse.move(box["x"] + (k + 0.5) * cell, box["y"] + (q + 0.5) * cell)


def shown_weight(w: float, digits: int = 3) -> str:
    return f"{np.rint(np.float64(w) * 10 ** digits) / 10 ** digits:.{digits}f}"


# ---------------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------------
def test_attention_view(results, open_view):
    patterns = results["attention_patterns"]
    seq, layers = len(patterns.tokens), patterns.layers
    view = open_view(patterns)
    assert_clean(view)
    heads = patterns.patterns[layers[0]].shape[0]
    assert view.page.locator(".head-thumb").count() == len(layers) * heads
    assert view.page.locator(".tok-q").count() == seq and view.page.locator(".tok-k").count() == seq
    for q, k in [(0, 0), (seq - 1, 2), (5, 5), (3, 1)]:
        hover_canvas_cell(view, q, k, seq)
        fields = tip(view)
        assert fields["query"] == shown(patterns.tokens[q]) and fields["key"] == shown(patterns.tokens[k])
        assert fields["weight"] == shown_weight(patterns.patterns[layers[0]][0, q, k]), (q, k)
    assert_not_blank(view)


def test_attention_head_picker_switches_the_pattern(results, open_view):
    patterns = results["attention_patterns"]
    seq, layer = len(patterns.tokens), patterns.layers[1]
    view = open_view(patterns)
    view.page.click(f'.head-thumb[data-layer="{layer}"][data-head="3"]')
    assert view.page.inner_text(".pattern-title") == f"Layer {layer}, head 3"
    assert view.page.locator(".head-thumb.selected").count() == 1
    hover_canvas_cell(view, seq - 1, 4, seq)
    assert tip(view)["weight"] == shown_weight(patterns.patterns[layer][3, seq - 1, 4])
    hover_canvas_cell(view, 2, 6, seq)  # a key after its query: masked
    assert tip(view)["weight"].startswith("0 (masked")
    assert_clean(view)


def test_attention_view_shows_hostile_tokens_as_text(hostile_patterns, open_view):
    view = open_view(hostile_patterns, head=1)
    assert_clean(view)
    assert view.page.locator(".tok-q").all_text_contents() == HOSTILE
    assert view.page.locator(".tok-k").all_text_contents() == HOSTILE
    assert view.page.locator("#view script, #view img").count() == 0
    hover_canvas_cell(view, 4, 0, len(HOSTILE))
    fields = tip(view)
    assert fields["query"] == HOSTILE[4] and fields["key"] == HOSTILE[0]
    assert fields["weight"] == shown_weight(hostile_patterns.patterns[0][1, 4, 0])


def test_a_large_attention_view_opens(open_view):
    """30 layers x 9 heads x 128 tokens: every thumbnail is there and a hover answers (timed in benchmarks/)."""
    patterns = AttentionPatterns({layer: softmax_patterns(9, 128, seed=layer) for layer in range(30)},
                                 [f"t{i}" for i in range(128)], list(range(30)))
    view = open_view(patterns, layer=29, head=8)
    assert_clean(view)
    assert view.page.locator(".head-thumb").count() == 270
    hover_canvas_cell(view, 127, 64, 128)
    assert tip(view)["weight"] == shown_weight(patterns.patterns[29][8, 127, 64])


# ---------------------------------------------------------------------------------------------------
# logit lens
# ---------------------------------------------------------------------------------------------------
def test_lens_view(results, open_view):
    lens = results["logit_lens"]
    n_layers, seq, k = lens.ids.shape
    view = open_view(lens)
    assert_clean(view)
    assert view.page.locator(".lens-panel").count() == 1
    assert view.page.locator(".cell").count() == n_layers * seq
    cells = view.page.locator(".cell")
    for row, col in [(0, 0), (n_layers - 1, seq - 1), (1, 3)]:
        layer_index = n_layers - 1 - row  # the last layer is the top row
        cell = view.page.locator(f'.cell[data-row="{row}"][data-col="{col}"]')
        assert cell.text_content() == shown(lens.strings[int(lens.ids[layer_index, col, 0])])
        cell.hover()
        fields = tip(view)
        assert fields["input"] == shown(lens.input_tokens[col])
        for rank in range(k):
            assert fields[f"top{rank}-label"] == shown(lens[lens.layers[layer_index]][col][rank][2])
            percent = float(fields[f"top{rank}"].rstrip("%"))
            assert abs(percent - 100 * lens[lens.layers[layer_index]][col][rank][1]) <= 0.005 + 1e-9
    assert cells.count() > 0
    assert_not_blank(view)


def test_lens_view_with_a_second_lens_beside_it(hostile_lens, open_view):
    tuned = type(hostile_lens)(hostile_lens.layers, hostile_lens.input_ids, hostile_lens.input_tokens,
                               hostile_lens.ids[:, :, :1], hostile_lens.probs[:, :, :1] * 0 + 0.5,
                               hostile_lens.strings, lens="tuned lens")
    view = open_view(hostile_lens, compare=tuned)
    assert_clean(view)
    assert view.page.locator(".lens-panel").count() == 2
    assert view.page.locator(".lens-panel h2").all_text_contents() == ["logit lens", "tuned lens"]
    second = view.page.locator('.lens-panel[data-panel="1"] .cell')
    assert second.count() == 2 * len(HOSTILE)
    assert view.page.locator('.lens-panel[data-panel="0"] .col-label').all_text_contents() == HOSTILE
    second.nth(0).hover()
    fields = tip(view)
    assert fields["top0"] == "50.00%" and fields["top0-label"] == HOSTILE[0] and "top1" not in fields
    view.page.locator('.lens-panel[data-panel="0"] .cell').nth(3).hover()
    fields = tip(view)
    assert fields["top0-label"] == HOSTILE[3] and fields["top1-label"] == HOSTILE[4] and fields["top1"] == "25.00%"


# ---------------------------------------------------------------------------------------------------
# patching
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["patching_grid", "attribution", "head_patching", "layer_patching"])
def test_patching_views(results, open_view, name):
    result = results[name]
    grid = np.array(list(result.values()))[:, None] if name == "layer_patching" else result.grid
    view = open_view(result)
    assert_clean(view)
    assert view.page.locator(".cell").count() == grid.size
    assert view.page.locator(".heatmap .row-label").count() == grid.shape[0]
    header = view.page.inner_text("header")
    assert '"abcdef"' in header and '"abcxef"' in header and str(result.metric) in header
    for i, j in {(0, 0), (grid.shape[0] - 1, grid.shape[1] - 1), (1, grid.shape[1] // 2)}:
        view.page.locator(f'.cell[data-row="{i}"][data-col="{j}"]').hover()
        percent = float(tip(view)["recovery"].rstrip("%"))
        assert abs(percent - grid[i, j]) <= 0.005 + 1e-9, (i, j, percent, grid[i, j])
    assert_not_blank(view)


# ---------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------
def test_generation_view_coloured_by_a_saved_probe(results, open_view):
    gen = results["generation"]
    probe = np.array(gen.saved_values["probe"])  # (steps, rows)
    view = open_view(gen, values="probe")
    assert_clean(view)
    assert view.page.locator(".tok.gen").count() == sum(len(t) for t in gen.new_tokens)
    assert view.page.locator(".tok.prompt").count() == sum(len(t) for t in gen.prompt_tokens)
    for row, tokens in enumerate(gen.new_tokens):
        for step in range(len(tokens)):
            view.page.locator(f'.tok.gen[data-row="{row}"][data-step="{step}"]').hover()
            fields = tip(view)
            assert fields["token"] == shown(gen.new_labels[row][step]) and fields["id"] == str(tokens[step])
            assert fields["value-label"] == "probe"
            assert float(fields["value"]) == pytest.approx(float(probe[step, row]), rel=1e-5, abs=1e-9)
    assert_not_blank(view)


def test_generation_view_coloured_by_an_array(results, open_view):
    gen = results["generation"]
    values = np.arange(10, dtype=np.float64).reshape(2, 5) / 7
    values[1, 2] = np.nan  # no value: shown as n/a, uncoloured
    view = open_view(gen, values=values, label="steering effect")
    assert_clean(view)
    view.page.locator('.tok.gen[data-row="1"][data-step="3"]').hover()
    assert float(tip(view)["value"]) == pytest.approx(values[1, 3], rel=1e-5)
    view.page.locator('.tok.gen[data-row="1"][data-step="2"]').hover()
    assert tip(view)["value"] == "n/a" and tip(view)["value-label"] == "steering effect"


def test_generation_view_of_hostile_tokens(results, open_view):
    import dataclasses

    gen = dataclasses.replace(results["generation"], prompt_labels=[HOSTILE[:3], HOSTILE[3:4]],
                              new_labels=[HOSTILE[:5], HOSTILE[2:7]])
    view = open_view(gen)
    assert_clean(view)
    assert view.page.locator('.tok.gen[data-row="0"]').all_text_contents() == HOSTILE[:5]
    assert view.page.locator(".tok.prompt").all_text_contents() == HOSTILE[:4]


def test_small_negatives_show_without_a_minus_and_blank_tokens_show_their_spaces(open_view):
    from mlxterp.analysis.patching import PatchingGrid

    grid = PatchingGrid(np.array([[-0.001, -0.3, 12.345]]), [4], [0, 1, 2], [" ", "\n", "x*"], "l2", "output",
                        "activation patching", 1.0)
    view = open_view(grid)
    assert_clean(view)
    assert view.page.locator(".cell").all_text_contents() == ["0", "0", "12"]
    assert view.page.locator(".col-label").all_text_contents() == ["\u2423", "\u21b5", "x*"]
    view.page.locator('.cell[data-col="0"]').hover()
    assert tip(view)["recovery"] == "0.00%"


# ---------------------------------------------------------------------------------------------------
# circuits
# ---------------------------------------------------------------------------------------------------
def drawn(view, selector: str) -> int:
    return view.page.locator(f"{selector}:not(.off)").count()


def test_circuit_view(results, open_view):
    scores = results["edge_scores"]
    g = scores.graph
    view = open_view(scores, n_edges=12, max_edges=120)
    assert_clean(view)
    assert view.page.locator("line.edge").count() == 120 and drawn(view, "line.edge") == 12
    top = scores.top(12)
    assert drawn(view, ".node") == len({("s", u) for u, _, _ in top} | {("r", r) for _, r, _ in top})
    header = view.page.inner_text("header")
    assert '"abcdef"' in header and '"abcxef"' in header and "eap-ig (2 steps)" in header
    for rank in (1, 2, 3, 7):
        view.page.locator(f'line.edge[data-rank="{rank}"]').hover(force=True)  # another edge may lie on top
        fields = tip(view)
        u, r = g.senders.index(fields["sender"]), g.receivers.index(fields["receiver"])
        assert float(fields["score"]) == pytest.approx(scores.scores[r, u], rel=1e-5, abs=1e-12)
        shown_rank = int(fields["rank"].split()[0].lstrip("#"))
        assert scores.top(shown_rank)[-1][:2] == (fields["sender"], fields["receiver"])
    assert_not_blank(view)


def test_the_circuit_slider_sets_how_many_edges_are_drawn(results, open_view):
    scores = results["edge_scores"]
    view = open_view(scores, n_edges=5, max_edges=60)
    for k in (40, 1, 60):
        view.page.fill("#edge-count", str(k))
        assert drawn(view, "line.edge") == k
        top = scores.top(k)
        assert drawn(view, ".node") == len({("s", u) for u, _, _ in top} | {("r", r) for _, r, _ in top})
        assert view.page.inner_text(".count").startswith(f"{k} of the best 60")
    assert_clean(view)


def test_circuit_nodes_hover_with_their_scores(results, open_view):
    scores = results["edge_scores"]
    view = open_view(scores, n_edges=30, max_edges=30)
    senders = scores.node_scores()
    received = dict(zip(scores.graph.receivers, scores.scores.sum(axis=1)))
    for role, sums in (("sender", senders), ("receiver", received)):
        nodes = view.page.locator(f".node.{role}:not(.off)")
        for i in range(min(3, nodes.count())):
            nodes.nth(i).hover(force=True)
            fields = tip(view)
            assert fields["role"] == role
            name = view.page.inner_text("#tip .tip-title")
            assert float(fields["node-score"]) == pytest.approx(sums[name], rel=1e-5, abs=1e-12)


def test_dla_view(results, open_view):
    dla = results["dla"]
    g = dla.graph
    view = open_view(dla)
    assert_clean(view)
    assert view.page.locator(".cell").count() == g.n_layers * (g.n_heads + 1)
    assert dla.label in view.page.inner_text("header")
    for layer, col in [(0, 0), (g.n_layers - 1, g.n_heads), (1, 2)]:
        view.page.locator(f'.cell[data-row="{layer}"][data-col="{col}"]').hover()
        fields = tip(view)
        expected = dla.mlps[layer] if col == g.n_heads else dla.heads[layer, col]
        assert float(fields["contribution"]) == pytest.approx(expected, rel=1e-5, abs=1e-12)
        name = f"layers.{layer}.mlp" if col == g.n_heads else f"layers.{layer}.attn.heads.{col}"
        assert view.page.inner_text("#tip .tip-title") == name
    assert_not_blank(view)
# feature page
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feature_contexts(tiny):
    import mlxterp as mt
    from tests.features.helpers import dictionary

    d = dictionary("relu", "layers.1.resid_pre", 64, 96, seed=2)
    return mt.features.top_contexts(tiny, d, ["hello world", "the cat sat", "abc abc", "<b>&amp;"], k=4,
                                    window=(3, 2), logits=5)


def test_feature_page(feature_contexts, open_view):
    ctx = feature_contexts
    feature = int(ctx.features[int(np.nanargmax(ctx.values[:, 0]))])
    contexts = ctx.top(feature)
    view = open_view(ctx, feature=feature)
    assert_clean(view)
    assert view.page.locator(".context").count() == len(contexts)
    for r, c in enumerate(contexts):
        spans = view.page.locator(f'.tok.ctx[data-row="{r}"]')
        assert spans.all_text_contents() == [shown(t) for t in c["tokens"]]
        centre = view.page.locator(f'.tok.ctx.centre[data-row="{r}"]')
        centre.hover()
        fields = tip(view)
        assert float(fields["activation"]) == pytest.approx(c["activation"], rel=1e-5)
    histogram = view.page.locator(".histogram .bin")
    assert histogram.count() == 30 and view.page.locator(".histogram .bin.mine").count() == 1
    promoted = ctx.effects.top(feature)["promoted"]
    assert view.page.locator('.effect[data-kind="promoted"] .effect-token').all_text_contents() == [
        shown(t) for t, _ in promoted]
    assert_not_blank(view)


def test_feature_page_of_hostile_tokens(feature_contexts, open_view):
    import dataclasses

    ctx = feature_contexts
    feature = int(ctx.features[int(np.nanargmax(ctx.values[:, 0]))])
    labels = {t: HOSTILE[i % len(HOSTILE)] for i, t in enumerate(sorted(ctx.labels))}
    effects = dataclasses.replace(ctx.effects, labels={t: HOSTILE[i % len(HOSTILE)]
                                                       for i, t in enumerate(sorted(ctx.effects.labels))})
    view = open_view(dataclasses.replace(ctx, labels=labels, effects=effects), feature=feature)
    assert_clean(view)
    first = [labels[int(t)] for t in ctx.tokens[ctx.row(feature), 0] if t >= 0]
    assert view.page.locator('.tok.ctx[data-row="0"]').all_text_contents() == [shown(t) for t in first]
    assert view.page.locator("#view script, #view img").count() == 0


def test_feature_page_of_a_feature_never_active(feature_contexts, open_view):
    ctx = feature_contexts
    dead = [int(f) for f in ctx.features if ctx.density[int(f)] == 0]
    if not dead:
        pytest.skip("every feature of this random dictionary fires on the prompts")
    view = open_view(ctx, feature=dead[0])
    assert_clean(view)
    assert view.page.locator(".context").count() == 0 and view.page.locator(".empty-note").count() == 1
    assert view.page.locator(".histogram .bin.mine").count() == 0
