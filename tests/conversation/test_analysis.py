"""turn_attention and turn_patching against hand computations on the hand-written reference forward
(tests/reference.py), never the tracer; and traces indexed by turn."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.conversation import TurnAttention, TurnPatching
from tests.conversation.conftest import MESSAGES
from tests.reference import llama_forward

SYSTEM = [{"role": "system", "content": "Be brief."}] + MESSAGES
# Every turn as many characters (tokens) as in MESSAGES: France/Greece, Paris./Athens.
CORRUPTED = [{"role": "user", "content": "What is the capital of Greece?"},
             {"role": "assistant", "content": "Athens"},
             {"role": "user", "content": "And of Italy?"}]


def reference_sites(module, tokens, kind):
    """``{layer: value}`` of one kind of site of the hand-written forward."""
    found = {}

    def hook(site, value):
        if site[0] == kind:
            found[site[1]] = np.array(value[0].astype(mx.float32), dtype=np.float64)
        return value

    logits = llama_forward(module, mx.array([tokens]), hook)
    return found, np.array(logits[0, -1], dtype=np.float64)


def test_positions_by_turn_are_the_forwards(chat, llama_module):
    model = chat("llama3")
    conv = model.conversation(MESSAGES)
    with model.trace(conv) as tr:
        turn = model.layers[2].output[:, conv.turn(2)].save()
        content = model.layers[2].output[:, conv.turn(0, content_only=True)].save()
    layers, _ = reference_sites(llama_module, conv.tokens, "layer")
    np.testing.assert_allclose(np.array(turn[0]), layers[2][conv.turn(2)], atol=1e-4)
    np.testing.assert_allclose(np.array(content[0]), layers[2][9:39], atol=1e-4)
    assert tr.tokens.tolist() == [conv.tokens]


def test_a_list_of_conversations_is_a_padded_batch(chat):
    model = chat()
    a, b = model.conversation(MESSAGES), model.conversation(MESSAGES[:1])
    with model.trace([a, b]) as tr:
        out = model.output.save()
    assert tr.lengths == (len(a.tokens), len(b.tokens))
    with model.trace(b):
        alone = model.output.save()
    np.testing.assert_allclose(np.array(out[1, :len(b.tokens)]), np.array(alone[0]), atol=1e-4)


def hand_mass(patterns, spans, layer_ids):
    """mass[l, h, i, j] = mean over queries q of segment i of the sum over keys k of segment j, by loops."""
    heads = patterns[0].shape[0]
    mass = np.zeros((len(layer_ids), heads, len(spans), len(spans)))
    outside = np.zeros((len(layer_ids), heads, len(spans)))
    for a, layer in enumerate(layer_ids):
        for h in range(heads):
            for i, (q0, q1) in enumerate(spans):
                if q1 == q0:
                    mass[a, h, i], outside[a, h, i] = np.nan, np.nan
                    continue
                for q in range(q0, q1):
                    row = patterns[layer][h, q]
                    covered = 0.0
                    for j, (k0, k1) in enumerate(spans):
                        part = sum(row[k] for k in range(k0, k1))
                        mass[a, h, i, j] += part / (q1 - q0)
                        covered += part
                    outside[a, h, i] += (sum(row) - covered) / (q1 - q0)
    return mass, outside


@pytest.mark.parametrize("family, messages, content_only, layers", [
    ("chatml", MESSAGES, False, None),  # the default system prompt is the preamble: outside every turn
    ("llama3", SYSTEM, True, [1, 3]),
    ("gemma3", SYSTEM, False, [0]),     # the folded system turn has no positions: a NaN row
])
def test_turn_attention_equals_loops_over_the_reference_pattern(chat, llama_module, family, messages, content_only,
                                                                layers):
    model = chat(family)
    conv = model.conversation(messages)
    att = model.turn_attention(conv, layers=layers, content_only=content_only)
    layer_ids = layers or [0, 1, 2, 3]
    turns = [t.content if content_only else t.span for t in conv.turns]
    spans = [(s.start, s.stop) for s in turns] + [(conv.generation_prompt.start, conv.generation_prompt.stop)]
    patterns, _ = reference_sites(llama_module, conv.tokens, "pattern")
    mass, outside = hand_mass(patterns, spans, layer_ids)
    assert isinstance(att, TurnAttention) and att.layers == layer_ids and att.spans == spans
    assert att.labels == conv.labels + ["generation prompt"]
    np.testing.assert_allclose(att.mass, mass, atol=1e-5)
    np.testing.assert_allclose(att.outside, outside, atol=1e-5)
    rows = att.mass.sum(axis=-1) + att.outside
    np.testing.assert_allclose(rows[~np.isnan(rows)], 1.0, atol=1e-5)
    later = np.triu_indices(len(spans), 1)
    assert np.all(np.nan_to_num(att.mass[..., later[0], later[1]]) == 0)  # causal: nothing from later turns
    np.testing.assert_allclose(att.mean, mass.mean(axis=(0, 1)), atol=1e-5)


def test_turn_attention_top_and_plot(chat, tmp_path):
    model = chat()
    att = model.turn_attention(model.conversation(MESSAGES))
    top = att.top(3)
    assert len(top) == 3 and [t[-1] for t in top] == sorted((t[-1] for t in top), reverse=True)
    layer, head, to_from = top[0][0], top[0][1], top[0][2:4]
    i, j = att.labels.index(to_from[0]), att.labels.index(to_from[1])
    assert j < i and top[0][-1] == att.mass[att.layers.index(layer), head, i, j]
    assert att.mass[..., 1, 0].max() <= top[0][-1]
    assert att.per_layer.shape == (4, 4, 4) and att.mean.shape == (4, 4)
    att.plot(save_path=tmp_path / "mean.png")
    att.plot(layer=2, heads=[0, 1], save_path=tmp_path / "heads.png")
    assert (tmp_path / "mean.png").stat().st_size > 0 and (tmp_path / "heads.png").stat().st_size > 0
    with pytest.raises(ValueError, match="layers read"):
        att.plot(layer=9)


def hand_turn_patching(module, clean, corrupted, layer_ids, spans):
    """Recovery (%) of every (layer, turn) by separate hand-written forwards, metric l2."""
    clean_layers, clean_logits = reference_sites(module, clean, "layer")
    _, corrupted_logits = reference_sites(module, corrupted, "layer")
    d0 = np.linalg.norm(corrupted_logits - clean_logits)
    grid = np.zeros((len(layer_ids), len(spans)))
    for a, layer in enumerate(layer_ids):
        for t, (start, stop) in enumerate(spans):
            def patch(site, value, layer=layer, start=start, stop=stop):
                if site != ("layer", layer):
                    return value
                value = np.array(value)
                value[0, start:stop] = clean_layers[layer][start:stop]
                return mx.array(value)

            logits = llama_forward(module, mx.array([corrupted]), patch)
            d = np.linalg.norm(np.array(logits[0, -1], dtype=np.float64) - clean_logits)
            grid[a, t] = (d0 - d) / d0 * 100
    return grid


@pytest.mark.parametrize("family, content_only, layers, batch_size", [
    ("chatml", False, None, None),
    ("gemma3", True, [1, 2], 2),  # chunks of two cells
])
def test_turn_patching_equals_separate_hand_written_patches(chat, llama_module, family, content_only, layers,
                                                            batch_size):
    model = chat(family)
    clean, corrupted = model.conversation(MESSAGES), model.conversation(CORRUPTED)
    got = model.turn_patching(clean, corrupted, layers=layers, content_only=content_only, batch_size=batch_size)
    layer_ids = layers or [0, 1, 2, 3]
    spans = [(t.content if content_only else t.span) for t in clean.turns]
    spans = [(s.start, s.stop) for s in spans]
    want = hand_turn_patching(llama_module, clean.tokens, corrupted.tokens, layer_ids, spans)
    assert isinstance(got, TurnPatching) and got.layers == layer_ids and got.positions == [0, 1, 2]
    assert got.spans == spans and got.roles == ["user", "assistant", "user"]
    assert got.position_labels == ["0 user*", "1 assistant*", "2 user"]
    np.testing.assert_allclose(got.grid, want, atol=1e-3)


def test_turn_patching_selects_turns_and_ranks_cells(chat, tmp_path):
    model = chat()
    clean, corrupted = model.conversation(MESSAGES), model.conversation(CORRUPTED)
    got = model.turn_patching(clean, corrupted, component="mlp", turns=[-1, 0], layers=[3])
    assert got.positions == [2, 0] and got.grid.shape == (1, 2)
    full = model.turn_patching(clean, corrupted, component="mlp")
    np.testing.assert_allclose(got.grid, full.grid[3:, [2, 0]], atol=1e-4)
    top = full.top(2)
    assert top[0][3] == full.grid.max() and top[0][1:3] in [(0, "user"), (1, "assistant"), (2, "user")]
    full.plot(save_path=tmp_path / "turns.png")
    assert (tmp_path / "turns.png").stat().st_size > 0


def test_turn_results_save_load_and_view(chat, tmp_path):
    model = chat("gemma3")
    clean, corrupted = model.conversation(SYSTEM), model.conversation([SYSTEM[0]] + CORRUPTED)
    grid = model.turn_patching(clean, corrupted, layers=[1, 3], content_only=True)
    att = model.turn_attention(clean, layers=[2])
    loaded = TurnPatching.load(grid.save(tmp_path / "grid.json"), model=model, strict=True)
    assert loaded.spans == grid.spans and loaded.roles == grid.roles and loaded.content_only
    np.testing.assert_array_equal(loaded.grid, grid.grid)
    assert loaded.provenance["prompts"] == [clean.messages, corrupted.messages]
    back = TurnAttention.load(att.save(tmp_path / "att.json"))
    np.testing.assert_array_equal(back.mass, att.mass)  # NaN row of the folded system turn included
    assert back.spans == att.spans and back.labels == att.labels
    html = grid.to_html()
    assert "Turn patching" in html and "1 user*" in html
