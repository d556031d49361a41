"""Headless matplotlib figures of the feature results (optional extra, imported when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]


def figure(figsize: Tuple[float, float], rows: int = 1, cols: int = 1) -> Tuple[Any, Any]:
    """A display-free Figure (Agg canvas) and its ``rows x cols`` axes (a 2-D array)."""
    from ..plotting import require_matplotlib

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def finish(fig: Any, save_path: Optional[PathLike]) -> Any:
    from ..plotting import finish_figure

    return finish_figure(fig, save_path)


def density_histogram(ax: Any, density: np.ndarray, label: str) -> None:
    """``log10`` of each feature's firing density, dead features (density 0) counted apart in the title."""
    alive = density[density > 0]
    dead = int(np.sum(density == 0))
    if alive.size:
        ax.hist(np.log10(alive), bins=40, color="#4c72b0")
    ax.set_xlabel("log10 density (fraction of tokens active)")
    ax.set_ylabel("features")
    ax.set_title(f"{label}: {dead} dead of {density.size}", fontsize="small")


def bars(ax: Any, labels: Sequence[str], values: Sequence[float], title: str, colors: Optional[List[str]] = None,
         ) -> None:
    """Horizontal bars, one per label (largest at the top when the values were sorted so)."""
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=colors or "#4c72b0")
    ax.set_yticks(y, [str(s) for s in labels], fontsize="small")
    ax.axvline(0, color="#888", linewidth=0.8)
    ax.set_title(title, fontsize="small")
