"""The patching view: a layers x positions (or layers x heads, or one column per layer) heatmap of recovery,
diverging around 0; hover shows the cell's recovery. The header names the clean and corrupted prompts, the
metric, the component and the method.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .page import Page, origin_lines


def patching_page(grid: np.ndarray, layers: Sequence[int], columns: Sequence[str], column_titles: Sequence[str], *,
                  axis: str, title: str, details: List[Tuple[str, str]], provenance: Dict[str, Any]) -> Page:
    """A recovery heatmap page.

    Args:
        grid: ``(len(layers), len(columns))`` recovery (%).
        layers: the layer of each row.
        columns: each column's short label (a token, ``H3``).
        column_titles: each column's hover title (``position 3 ' Paris'``, ``head 3``).
        axis: what the columns are (``"position"``, ``"head"``, ``"component"``).
        title: the page title.
        details: header lines after the prompts (metric, component, ...).
        provenance: the result's provenance (model, prompts).
    """
    values = np.asarray(grid, dtype=np.float64)
    if values.shape != (len(layers), len(columns)):
        raise ValueError(f"grid: expected shape ({len(layers)}, {len(columns)}) (layers x columns), got {values.shape}")
    finite = values[np.isfinite(values)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    header = origin_lines(provenance, ("Clean", "Corrupted")) + list(details)
    rows = [[float(v) if math.isfinite(v) else None for v in row] for row in values.tolist()]
    return Page(title, header, "patching",
                {"grid": rows, "layers": [int(x) for x in layers], "columns": [str(c) for c in columns],
                 "columnTitles": [str(c) for c in column_titles], "axis": axis, "scale": scale},
                height=min(900, 300 + 23 * len(layers)))
