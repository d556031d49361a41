"""Tests for mlxterp.plotting (headless, no pyplot state)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from mlxterp import plotting  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _predictions(n_layers: int = 4, tokens: tuple[str, ...] = (" The", " cat", " sat", "\n")):
    vocab = [" Paris", "$", "\n", "a_very_long_token", "ing"]
    return {
        layer: [
            [(pos, (layer + 1) / (n_layers + 1), vocab[(layer + pos) % len(vocab)]),
             (9, 0.01, "x")]
            for pos in range(len(tokens))
        ]
        for layer in range(n_layers)
    }, list(tokens)


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_logit_lens_renders_and_saves(tmp_path):
    preds, tokens = _predictions()
    out = tmp_path / "lens.png"
    fig = plotting.plot_logit_lens(preds, tokens, title="demo", save_path=str(out))
    _assert_png(out)
    ax = fig.axes[0]
    assert ax.get_title() == "demo" and ax.get_ylabel() == "Layer"
    texts = _texts(fig)
    assert len(texts) == 4 * 4
    assert "␣Paris" in texts and "\\n" in texts and "$" in texts
    assert all(len(t) <= 8 for t in texts)  # long tokens are truncated
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    assert xlabels[0] == "␣The [0]"


def test_logit_lens_keeps_last_positions_only():
    tokens = tuple(f"t{i}" for i in range(20))
    preds, tokens = _predictions(n_layers=2, tokens=tokens)
    fig = plotting.plot_logit_lens(preds, tokens, max_display_tokens=5)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "t15 [15]"
    assert ax.images[0].get_array().shape == (2, 5)


def test_logit_lens_non_probability_scores_use_score_label():
    preds = {0: [[(1, 12.5, "a")]], 1: [[(2, -3.0, "b")]]}
    fig = plotting.plot_logit_lens(preds, ["x"])
    assert fig.axes[-1].get_ylabel() == "Top-1 score"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"predictions": {}}, r"predictions: expected a non-empty dict .* got \{\}"),
        ({"predictions": {"a": [[(1, 0.5, "x")]]}}, r"predictions: expected int layer .*'a'"),
        ({"predictions": {0: [[]]}}, r"expected a non-empty list.*layer 0, position 0"),
        ({"predictions": {0: [[(1, 0.5, "x")]], 1: []}}, r"expected 1 positions .* 0 for layer 1"),
        ({"input_tokens": ["a", "b"]}, r"input_tokens: expected 1 token strings.*\['a', 'b'\]"),
        ({"max_display_tokens": 0}, r"max_display_tokens: expected a positive int, got 0"),
        ({"cmap": "not_a_cmap"}, r"cmap: expected a matplotlib colormap name, got 'not_a_cmap'"),
    ],
)
def test_logit_lens_bad_inputs(kwargs, match):
    args = {"predictions": {0: [[(1, 0.5, "x")]]}, "input_tokens": ["a"]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        plotting.plot_logit_lens(args.pop("predictions"), args.pop("input_tokens"), **args)


def test_patching_bars_renders_with_centred_colours(tmp_path):
    out = tmp_path / "bars.png"
    fig = plotting.plot_patching_bars({0: 80.0, 1: -40.0, 2: 0.0, 3: float("nan")},
                                      component="attn", save_path=out)
    _assert_png(out)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Layer" and ax.get_ylabel() == "Recovery (%)"
    assert "attn" in ax.get_title()
    bars = ax.patches
    assert len(bars) == 4
    assert "n/a" in _texts(fig)  # the NaN layer is marked, not silently blank
    pos, neg, zero = (bars[i].get_facecolor() for i in range(3))
    # RdBu_r: high values are red, low values blue, zero is the (near-white) centre.
    assert pos[0] > pos[2] and neg[2] > neg[0]
    assert min(zero[:3]) > 0.9
    # A zero line is drawn.
    assert any(list(line.get_ydata()) == [0, 0] for line in ax.lines)


@pytest.mark.parametrize(
    ("recovery", "match"),
    [
        ({}, r"recovery: expected a non-empty dict \{layer: recovery_percent\}, got \{\}"),
        ([1.0, 2.0], r"recovery: expected a non-empty dict .* got \[1.0, 2.0\]"),
        ({0: "high"}, r"recovery: expected a number at layer 0, got 'high'"),
        ({0: float("nan")}, r"recovery: expected finite values"),
        ({0: float("inf")}, r"recovery: expected finite values"),
    ],
)
def test_patching_bars_bad_inputs(recovery, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_patching_bars(recovery)


def test_patching_grid_renders_symmetric_scale(tmp_path):
    grid = np.array([[10.0, -30.0, 5.0], [np.nan, 20.0, 0.0]])
    out = tmp_path / "grid.png"
    fig = plotting.plot_patching_grid(grid, layer_labels=["L0", "L1"],
                                      position_labels=[" The", "$", "cat"], save_path=out)
    _assert_png(out)
    ax = fig.axes[0]
    assert ax.images[0].get_clim() == (-30.0, 30.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["␣The", "$", "cat"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L0", "L1"]
    assert fig.axes[-1].get_ylabel() == "Recovery (%)"


def test_patching_grid_all_zero_and_mlx_bfloat16():
    mx = pytest.importorskip("mlx.core")
    fig = plotting.plot_patching_grid(mx.zeros((2, 2), dtype=mx.bfloat16))
    vmin, vmax = fig.axes[0].images[0].get_clim()
    assert vmin < 0 < vmax and vmax == -vmin


@pytest.mark.parametrize(
    ("grid", "kwargs", "match"),
    [
        ([1.0, 2.0], {}, r"grid: expected a non-empty 2-D array .* got shape \(2,\)"),
        (np.zeros((2, 0)), {}, r"grid: expected a non-empty 2-D array .* got shape \(2, 0\)"),
        ([[1.0], [1.0, 2.0]], {}, r"grid: expected a rectangular 2-D array"),
        (np.full((2, 2), np.nan), {}, r"grid: expected finite values .* got only NaN"),
        ([[np.inf]], {}, r"grid: expected finite values .* got \+/-inf"),
        (np.ones((2, 3)), {"layer_labels": ["a"]}, r"layer_labels: expected 2 labels .* \['a'\]"),
        (np.ones((2, 3)), {"position_labels": "abc"}, r"position_labels: expected 3 labels"),
    ],
)
def test_patching_grid_bad_inputs(grid, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_patching_grid(grid, **kwargs)


def test_save_path_in_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        plotting.plot_patching_bars({0: 1.0}, save_path=tmp_path / "missing_dir" / "x.png")


def test_no_pyplot_figures_leak():
    pyplot = pytest.importorskip("matplotlib.pyplot")
    before = set(pyplot.get_fignums())
    plotting.plot_patching_bars({0: 1.0, 1: -1.0})
    plotting.plot_patching_grid([[1.0, -1.0]])
    assert set(pyplot.get_fignums()) == before


def test_format_token():
    assert plotting.format_token(" hello") == "␣hello"
    assert plotting.format_token("a\nb") == "a\\nb"
    assert plotting.format_token("") == "''"
    assert plotting.format_token("   ") == "␣␣␣"
    assert plotting.format_token("abcdefghijk", max_chars=5) == "abcd…"


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'mlxterp\[plot\]'"):
        plotting.require_matplotlib()
    with pytest.raises(ImportError, match="plotting needs matplotlib"):
        plotting.plot_patching_bars({0: 1.0})


def test_module_import_does_not_import_matplotlib():
    # Load the module files directly (not via the package __init__, owned elsewhere) in a
    # fresh interpreter and check that matplotlib stays unimported.
    root = str(Path(__file__).resolve().parents[1] / "mlxterp")
    code = (
        "import importlib.util, sys\n"
        "for name in ('plotting', 'activation_cache'):\n"
        f"    path = {root!r} + '/' + name + '.py'\n"
        "    spec = importlib.util.spec_from_file_location(name, path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "sys.exit(1 if 'matplotlib' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
