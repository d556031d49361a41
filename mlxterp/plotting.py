"""Headless matplotlib plots for logit-lens and activation-patching results.

matplotlib is an optional extra (``pip install 'mlxterp[plot]'``), imported only when a plot
function runs. Figures use the object-oriented API (``Figure`` + ``FigureCanvasAgg``), not
pyplot, so they render without a display and never enter pyplot's global figure list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

_INSTALL_HINT = "pip install 'mlxterp[plot]'  (or: pip install matplotlib)"
# Smallest half-range of a diverging scale, so an all-zero grid still normalises.
_EPS = 1e-9


def require_matplotlib() -> Any:
    """Import matplotlib lazily.

    Returns:
        The ``matplotlib`` module.

    Raises:
        ImportError: If matplotlib is not installed; the message says how to install it.
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            f"mlxterp plotting needs matplotlib, which is not installed; install it with: "
            f"{_INSTALL_HINT}"
        ) from err
    return matplotlib


def format_token(token: str, max_chars: int = 8) -> str:
    """Make a token readable as a plot label.

    Args:
        token: Raw token text.
        max_chars: Maximum label length; longer labels are cut and end in '…'.

    Returns:
        The label, with leading/trailing spaces shown as '␣' and newlines/tabs escaped.
    """
    text = str(token)
    if text == "":
        return "''"
    core = text.strip(" ")
    lead = len(text) - len(text.lstrip(" "))
    trail = len(text) - len(text.rstrip(" ")) if core else 0
    text = "␣" * lead + core + "␣" * trail
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return text if len(text) <= max_chars else text[: max(1, max_chars - 1)] + "…"


def new_axes(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """Create a display-free Figure (Agg canvas) with one Axes."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _get_cmap(cmap: str | Colormap) -> Colormap:
    """Resolve a colormap name; Colormap objects pass through."""
    if not isinstance(cmap, str):
        return cmap
    try:
        return require_matplotlib().colormaps[cmap]
    except (KeyError, ValueError) as err:
        raise ValueError(f"cmap: expected a matplotlib colormap name, got {cmap!r}") from err


def finish_figure(fig: Figure, save_path: str | Path | None) -> Figure:
    """Write ``fig`` as a PNG when ``save_path`` is given; return it."""
    if save_path is not None:
        target = Path(save_path)
        if not target.parent.is_dir():
            raise FileNotFoundError(
                f"save_path: directory {str(target.parent)!r} does not exist "
                f"(got {str(save_path)!r})"
            )
        fig.savefig(target, dpi=150, bbox_inches="tight", format="png")
    return fig


def _set_ticks(ax: Axes, axis: str, labels: list[str], rotate: bool = False) -> None:
    """Label ticks, thinning them to at most 40 so labels do not collide."""
    idx = list(range(0, len(labels), max(1, math.ceil(len(labels) / 40))))
    shown = [labels[i] for i in idx]
    # parse_math=False: token strings like "$" must not be read as mathtext.
    if axis == "x":
        ax.set_xticks(idx)
        extra = {"rotation": 45, "ha": "right", "rotation_mode": "anchor"} if rotate else {}
        ax.set_xticklabels(shown, parse_math=False, **extra)
    else:
        ax.set_yticks(idx)
        ax.set_yticklabels(shown, parse_math=False)


def _layer_keys(name: str, mapping: Any, expected: str) -> list[int]:
    """Validate a non-empty {int layer: ...} dict and return its sorted layers."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"{name}: expected a non-empty dict {expected}, got {mapping!r}")
    for key in mapping:
        if isinstance(key, bool) or not isinstance(key, Integral):
            raise ValueError(f"{name}: expected int layer indices as keys, got {key!r}")
    return sorted(int(k) for k in mapping)


def _as_float(name: str, value: Any, where: str) -> float:
    """Convert a Python/numpy/0-d array number to float, or raise naming ``where``."""
    if hasattr(value, "item") and getattr(value, "size", None) == 1:
        value = value.item()  # 0-d mx/np arrays and numpy scalars
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name}: expected a number at {where}, got {value!r}")
    return float(value)


def _top1(predictions: Mapping[int, Any], layers: list[int]) -> tuple[np.ndarray, list[list[str]]]:
    """Return the top-1 score matrix (layers x positions) and top-1 token strings."""
    n_pos = len(predictions[layers[0]])
    scores = np.full((len(layers), n_pos), np.nan)
    tokens: list[list[str]] = []
    for row, layer in enumerate(layers):
        per_pos = predictions[layer]
        if len(per_pos) != n_pos:
            raise ValueError(f"predictions: expected {n_pos} positions for every layer, "
                             f"got {len(per_pos)} for layer {layer}")
        for pos, entries in enumerate(per_pos):
            if not entries or len(entries[0]) < 3:
                raise ValueError("predictions: expected a non-empty list of (token_id, score, "
                                 f"token_str) at layer {layer}, position {pos}, got {entries!r}")
            scores[row, pos] = _as_float("predictions", entries[0][1], f"layer {layer}, pos {pos}")
        tokens.append([str(entries[0][2]) for entries in per_pos])
    return scores, tokens


def _annotate(ax: Axes, image: Any, scores: np.ndarray, tokens: list[list[str]],
              figsize: tuple[float, float]) -> None:
    """Write each cell's top-1 token, sized to its cell, in a contrasting colour."""
    n_rows, n_cols = scores.shape
    # Approximate cell size in points, assuming the axes take ~80% of the figure.
    cell_w, cell_h = (figsize[0] * 58 / n_cols, figsize[1] * 58 / n_rows)
    fontsize = float(np.clip(min(cell_h * 0.45, cell_w / 5.5), 4, 11))
    for (row, col), value in np.ndenumerate(scores):
        color = "black"
        if not np.isnan(value):
            r, g, b = image.to_rgba(value)[:3]
            color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        ax.text(col, row, format_token(tokens[row][col]), ha="center", va="center",
                fontsize=fontsize, color=color, parse_math=False)


def plot_logit_lens(
    predictions: Mapping[int, Sequence[Sequence[Any]]],
    input_tokens: Sequence[str],
    *,
    max_display_tokens: int = 15,
    figsize: tuple[float, float] = (16, 10),
    cmap: str | Colormap = "viridis",
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Heatmap of each layer's top-1 logit-lens prediction at each input position.

    Args:
        predictions: ``{layer: [[(token_id, score, token_str), ...] per position]}``;
            entry 0 of each position's list is the top-1 prediction.
        input_tokens: Input token strings, one per position.
        max_display_tokens: Show only this many trailing positions.
        figsize: Figure size in inches.
        cmap: Colormap for the top-1 score (fixed to [0, 1] when scores are probabilities).
        title: Figure title; a default is used when None.
        save_path: If given, write a PNG there.

    Returns:
        The matplotlib Figure.
    """
    layers = _layer_keys("predictions", predictions, "{layer: per-position top-k lists}")
    if not isinstance(max_display_tokens, Integral) or max_display_tokens < 1:
        raise ValueError(f"max_display_tokens: expected a positive int, got {max_display_tokens!r}")
    scores, tokens = _top1(predictions, layers)
    n_pos = scores.shape[1]
    if n_pos == 0:
        raise ValueError("predictions: expected at least one position per layer, got none")
    if isinstance(input_tokens, str) or len(input_tokens) != n_pos:
        raise ValueError(f"input_tokens: expected {n_pos} token strings (one per position in "
                         f"predictions), got {input_tokens!r}")
    start = max(0, n_pos - max_display_tokens)
    scores, tokens = scores[:, start:], [row[start:] for row in tokens]
    known = scores[~np.isnan(scores)]
    is_prob = bool(np.all((known >= 0) & (known <= 1)))

    fig, ax = new_axes(figsize)
    limits = {"vmin": 0.0, "vmax": 1.0} if is_prob else {}
    image = ax.imshow(scores, cmap=_get_cmap(cmap), aspect="auto", origin="lower", **limits)
    _annotate(ax, image, scores, tokens, figsize)
    shown = list(input_tokens)[start:]
    columns = [f"{format_token(t, 12)} [{start + i}]" for i, t in enumerate(shown)]
    _set_ticks(ax, "x", columns, rotate=True)
    _set_ticks(ax, "y", [str(layer) for layer in layers])
    ax.set_xlabel("Input token [position]")
    ax.set_ylabel("Layer")
    fig.colorbar(image, ax=ax, label="Top-1 probability" if is_prob else "Top-1 score")
    ax.set_title(title or "Logit lens: top-1 prediction per layer and position")
    return finish_figure(fig, save_path)


def plot_patching_bars(
    recovery: Mapping[int, float],
    *,
    component: str = "mlp",
    figsize: tuple[float, float] = (12, 8),
    cmap: str | Colormap = "RdBu_r",
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Bar chart of per-layer patching recovery, coloured on a scale centred at 0.

    Colours follow matplotlib's low-to-high order, so with ``RdBu_r`` negative bars are blue
    and positive bars red (pass ``"RdBu"`` for the reverse). NaN layers get an 'n/a' mark.

    Args:
        recovery: ``{layer: recovery_percent}``.
        component: Patched component, used in the default title.
        figsize: Figure size in inches.
        cmap: Diverging colormap.
        title: Figure title; a default is used when None.
        save_path: If given, write a PNG there.

    Returns:
        The matplotlib Figure.
    """
    layers = _layer_keys("recovery", recovery, "{layer: recovery_percent}")
    values = np.array([_as_float("recovery", recovery[k], f"layer {k}") for k in layers])
    if np.isnan(values).all() or np.isinf(values).any():
        raise ValueError(f"recovery: expected finite values (NaN allowed for some layers), "
                         f"got {recovery!r}")
    limit = max(float(np.nanmax(np.abs(values))), _EPS)
    # Map [-limit, limit] onto [0, 1] so that 0 sits at the colormap's centre.
    colors = _get_cmap(cmap)((np.nan_to_num(values) / limit + 1.0) / 2.0)

    fig, ax = new_axes(figsize)
    ax.bar(np.arange(len(layers)), values, color=colors, edgecolor="black", linewidth=0.4)
    ax.axhline(0.0, color="black", linewidth=0.8)
    # Mark NaN layers so they are not mistaken for a zero effect.
    for idx in np.flatnonzero(np.isnan(values)):
        ax.text(idx, 0.0, "n/a", ha="center", va="bottom", fontsize=8, color="dimgrey")
    _set_ticks(ax, "x", [str(layer) for layer in layers])
    ax.set_xlabel("Layer")
    ax.set_ylabel("Recovery (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"Activation patching recovery by layer ({component})")
    return finish_figure(fig, save_path)


def _as_grid(grid: Any) -> np.ndarray:
    """Convert an array-like (incl. bfloat16 mx arrays) to a validated float64 matrix."""
    try:
        data = np.asarray(grid, dtype=np.float64)
    except (TypeError, ValueError):
        try:
            # bfloat16 mx arrays cannot cross the buffer protocol; go through lists.
            data = np.asarray(grid.tolist(), dtype=np.float64)
        except (AttributeError, TypeError, ValueError) as err:
            raise ValueError("grid: expected a rectangular 2-D array of numbers (layers x "
                             f"positions), got {type(grid).__name__}") from err
    if data.ndim != 2 or 0 in data.shape:
        raise ValueError(f"grid: expected a non-empty 2-D array (layers x positions), "
                         f"got shape {data.shape}")
    if np.isnan(data).all() or np.isinf(data).any():
        kind = "+/-inf entries" if np.isinf(data).any() else "only NaN"
        raise ValueError(f"grid: expected finite values (NaN allowed for some cells), got {kind} "
                         f"in shape {data.shape}")
    return data


def _labels(name: str, labels: Sequence[Any] | None, n: int, fmt: bool) -> list[str]:
    """Validate optional axis labels against the grid size; default to indices."""
    if labels is None:
        return [str(i) for i in range(n)]
    if isinstance(labels, str) or len(labels) != n:
        raise ValueError(f"{name}: expected {n} labels to match the grid, got {labels!r}")
    return [format_token(label, 12) if fmt else str(label) for label in labels]


def plot_patching_grid(
    grid: Any,
    *,
    layer_labels: Sequence[Any] | None = None,
    position_labels: Sequence[Any] | None = None,
    figsize: tuple[float, float] = (12, 8),
    cmap: str | Colormap = "RdBu_r",
    title: str | None = None,
    colorbar_label: str = "Recovery (%)",
    save_path: str | Path | None = None,
    xlabel: str = "Position",
) -> Figure:
    """Heatmap of patching results, layers (rows) by positions or heads (columns), centred at 0.

    The colour scale is symmetric (±max|grid|); NaN cells are drawn light grey.

    Args:
        grid: 2-D array-like of shape (n_layers, n_positions).
        layer_labels: Row labels; defaults to row indices.
        position_labels: Column labels, e.g. token strings; defaults to column indices.
        figsize: Figure size in inches.
        cmap: Diverging colormap.
        title: Figure title; a default is used when None.
        colorbar_label: Colorbar caption.
        save_path: If given, write a PNG there.
        xlabel: Caption of the columns (``"Position"``; ``"head"`` for head patching).

    Returns:
        The matplotlib Figure.
    """
    data = _as_grid(grid)
    rows = _labels("layer_labels", layer_labels, data.shape[0], fmt=False)
    cols = _labels("position_labels", position_labels, data.shape[1], fmt=True)
    limit = max(float(np.nanmax(np.abs(data))), _EPS)
    colormap = _get_cmap(cmap).with_extremes(bad="lightgrey")

    fig, ax = new_axes(figsize)
    image = ax.imshow(data, cmap=colormap, vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    _set_ticks(ax, "x", cols, rotate=True)
    _set_ticks(ax, "y", rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Layer")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_title(title or "Activation patching: layer x position")
    return finish_figure(fig, save_path)
