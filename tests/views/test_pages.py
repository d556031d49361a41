"""Pages without a browser: self-contained (no external reference), hostile tokens cannot leave the data
element, the data carries the result's numbers, the packing is exact, and a 30-layer x 9-head x 128-token
attention page stays under 5 MB."""

from __future__ import annotations

import html.parser
import json
import re

import numpy as np
import pytest

from mlxterp.analysis.patterns import AttentionPatterns
from mlxterp.views import packing
from mlxterp.views.page import embed_json
from tests.views.conftest import HOSTILE, softmax_patterns


class Elements(html.parser.HTMLParser):
    """The tags of a document, the text of its JSON data element, and every URL-bearing attribute."""

    def __init__(self):
        super().__init__()
        self.tags, self.urls, self.data, self._in_data = [], [], None, False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "srcset", "action") and v]
        self._in_data = dict(attrs).get("id") == "mlxterp-data"

    def handle_data(self, data):
        if self._in_data:
            self.data = (self.data or "") + data

    def handle_endtag(self, tag):
        self._in_data = False


def parse(document: str) -> Elements:
    parser = Elements()
    parser.feed(document)
    return parser


def pages(results, hostile_patterns, hostile_lens):
    yield "attention", results["attention_patterns"].to_html()
    yield "hostile attention", hostile_patterns.to_html()
    yield "lens", results["logit_lens"].to_html()
    yield "hostile lens", hostile_lens.to_html(compare=hostile_lens)
    yield "layer patching", results["layer_patching"].to_html()
    yield "grid", results["patching_grid"].to_html()
    yield "heads", results["head_patching"].to_html()
    yield "generation", results["generation"].to_html(values="probe")
    yield "edge scores", results["edge_scores"].to_html()
    yield "dla", results["dla"].to_html()


SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name (document.createElementNS's), never fetched


def test_pages_are_self_contained(results, hostile_patterns, hostile_lens):
    for name, document in pages(results, hostile_patterns, hostile_lens):
        elements = parse(document)
        assert elements.urls == [], name  # no src/href: nothing to fetch
        assert elements.tags.count("script") == 2, name  # the data element and the inline script, no more
        assert not re.search(r"https?://|@import|url\(", document.replace(SVG_NAMESPACE, "")), name


def test_hostile_tokens_stay_inside_the_data_element(hostile_patterns, hostile_lens):
    for document in (hostile_patterns.to_html(), hostile_lens.to_html()):
        elements = parse(document)
        assert elements.tags.count("script") == 2 and "img" not in elements.tags
        data = json.loads(elements.data)
        assert data["tokens"] == HOSTILE  # every token back, character for character


def test_header_text_is_escaped(hostile_patterns):
    from mlxterp.views.saving import attach

    attach(hostile_patterns, {"class": "<b>", "parameters": 1, "fingerprint": "f" * 32}, ["</script><i>x"], {})
    elements = parse(hostile_patterns.to_html())
    assert "b" not in elements.tags and "i" not in elements.tags


def test_embedded_json_round_trips_and_has_no_markup():
    value = {"t": HOSTILE + ["\u2028", "</SCRIPT >"], "x": [1.5, float("nan"), None]}
    text = embed_json(value)
    assert not set("<>&") & set(text)
    assert json.loads(text) == {"t": value["t"], "x": [1.5, None, None]}  # NaN shown as a gap


def test_data_carries_the_results_numbers(results):
    grid = results["patching_grid"]
    data = json.loads(parse(grid.to_html()).data)
    assert np.array_equal(np.array(data["grid"]), grid.grid) and data["layers"] == grid.layers
    lens = results["logit_lens"]
    data = json.loads(parse(lens.to_html()).data)
    panel = data["panels"][0]
    assert np.array_equal(np.array(panel["probs"], dtype=np.float32), lens.probs)  # float32 values, exactly
    assert [[[data["strings"][s] for s in pos] for pos in layer] for layer in panel["top"]] == \
        [[[lens.strings[int(i)] for i in pos] for pos in layer] for layer in lens.ids]


def test_circuit_data_carries_the_best_edges_and_their_scores(results):
    scores = results["edge_scores"]
    data = json.loads(parse(scores.to_html(n_edges=7, max_edges=25)).data)
    names = [node[0] for node in data["nodes"]]
    edges = [(names[u], names[r], score) for u, r, score, _ in data["edges"]]
    assert edges == scores.top(25) and data["shown"] == 7 and data["total"] == scores.graph.n_edges
    assert [rank for *_, rank in data["edges"]] == list(range(1, 26))
    dla = results["dla"]
    data = json.loads(parse(dla.to_html()).data)
    assert np.array_equal(np.array(data["grid"]), np.concatenate([dla.heads, dla.mlps[:, None]], axis=1))


def test_attention_packing_is_the_result_rounded(results):
    patterns = results["attention_patterns"]
    data = json.loads(parse(patterns.to_html(digits=4)).data)
    shown = packing.unpack(data["values"])
    tri = np.tril_indices(len(patterns.tokens))
    expected = np.concatenate([patterns.patterns[layer][:, tri[0], tri[1]].reshape(-1) for layer in patterns.layers])
    assert data["causal"] and np.array_equal(shown, np.rint(expected.astype(np.float64) * 1e4) / 1e4)


@pytest.mark.parametrize("digits", [1, 3, 4])
def test_packing_round_trips_any_values(digits):
    rng = np.random.default_rng(digits)
    for values in (rng.random(1000), rng.normal(size=777) * 3, np.zeros(5), np.array([0.5]), np.array([])):
        packed = packing.pack(values, digits)
        assert np.array_equal(packing.unpack(packed), packing.rounded(values, digits) / 10 ** digits)


def test_packing_refuses_non_finite_values_and_huge_ranges():
    with pytest.raises(ValueError, match="finite"):
        packing.pack(np.array([0.0, np.nan]), 3)
    with pytest.raises(ValueError, match="more than 24 bits"):
        packing.pack(np.array([0.0, 1e6]), 3)


def test_a_large_attention_page_stays_under_5_mb():
    patterns = AttentionPatterns({layer: softmax_patterns(9, 128, seed=layer) for layer in range(30)},
                                 [f"tok{i}" for i in range(128)], list(range(30)))
    size = len(patterns.to_html().encode("utf-8"))
    assert size < 5 * 2 ** 20, f"{size / 2 ** 20:.2f} MiB"


def test_non_causal_patterns_keep_every_cell():
    full = np.full((1, 3, 3), 1 / 3, dtype=np.float32)
    data = json.loads(parse(AttentionPatterns({0: full}, ["a", "b", "c"], [0]).to_html()).data)
    assert not data["causal"] and data["values"]["n"] == 9


def test_view_options_are_checked(results, hostile_lens):
    patterns = results["attention_patterns"]
    with pytest.raises(ValueError, match=r"layer: 1 was not read; the layers read are \[0, 2\]"):
        patterns.to_html(layer=1)
    with pytest.raises(ValueError, match="head: expected 0 to 3"):
        patterns.to_html(head=4)
    with pytest.raises(ValueError, match="digits"):
        patterns.to_html(digits=9)
    with pytest.raises(ValueError, match="compare: made on another prompt"):
        results["logit_lens"].to_html(compare=hostile_lens)
    with pytest.raises(ValueError, match="compare: expected a LogitLensResult"):
        results["logit_lens"].to_html(compare=patterns)
    with pytest.raises(ValueError, match="n_edges: 60 edges drawn, but the page holds max_edges=50"):
        results["edge_scores"].to_html(n_edges=60, max_edges=50)
    with pytest.raises(ValueError, match="max_edges: expected a positive int"):
        results["edge_scores"].to_html(max_edges=0)


def test_generation_values_are_checked(results):
    gen = results["generation"]
    with pytest.raises(ValueError, match=r"no save 'nope'; the saves are \['logits', 'probe', 'prompt_resid'\]"):
        gen.to_html(values="nope")
    with pytest.raises(ValueError, match=r"save 'logits' has shape \(5, 2, 128\).*one number per step and row"):
        gen.to_html(values="logits")
    with pytest.raises(ValueError, match=r"values: expected one value per new token, shape \(2, n\)"):
        gen.to_html(values=np.zeros((2, 2)))


def test_save_html_writes_the_page_and_repr_html_frames_it(results, tmp_path):
    grid = results["patching_grid"]
    path = grid.save_html(tmp_path / "grid.html")
    assert path.read_text(encoding="utf-8") == grid.to_html()
    frame = grid._repr_html_()
    assert frame.startswith("<iframe srcdoc=\"") and 'sandbox="allow-scripts"' in frame
    assert "<script" not in frame  # the whole page is an escaped attribute value
    with pytest.raises(ValueError, match="does not exist"):
        grid.save_html(tmp_path / "missing" / "grid.html")


def test_a_generation_shows_its_view_only_once_it_has_run(tiny):
    gen = tiny.generate("ab", max_new_tokens=2)
    assert gen._repr_html_() is None and gen._rows is None  # showing it did not run it
    gen.run()
    assert gen._repr_html_().startswith("<iframe srcdoc=")


def test_every_static_file_is_installed_with_the_package():
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib (to read pyproject.toml) is in Python >= 3.11 only")
    repo = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mlxterp.views"]
    static = [p.relative_to(repo / "mlxterp" / "views").as_posix() for p in (repo / "mlxterp/views/static").iterdir()]
    assert static and all(any(fnmatch.fnmatch(name, g) for g in globs) for name in static), (static, globs)
