"""The direct-logit-attribution view: layers x (heads, MLP), each cell a component's contribution to the
attributed logit (difference) on a diverging scale around 0; hover shows the component, its contribution and
its share of the total. The header names the prompt, what is attributed, the total, the model's logit
difference, what no component carries and the embedding's share.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .page import Page, origin_lines

if TYPE_CHECKING:
    from ..circuits.dla import DirectLogitAttribution


def dla_page(dla: DirectLogitAttribution) -> Page:
    """The page of a :class:`~mlxterp.circuits.DirectLogitAttribution`."""
    g = dla.graph
    grid = np.concatenate([dla.heads, dla.mlps[:, None]], axis=1)
    finite = grid[np.isfinite(grid)]
    names = [[f"layers.{layer}.attn.heads.{h}" for h in range(g.n_heads)] + [f"layers.{layer}.mlp"]
             for layer in range(g.n_layers)]
    header = origin_lines(dla.provenance) + [
        ("Attributed", f"{dla.label} at the last position (the final norm's scale frozen at this run's value)"),
        ("Total", f"{dla.total:.6g} of the model's {dla.logit_diff:.6g} (error {dla.error:.3g}); the embedding "
                  f"{dla.embed:.6g}"),
    ]
    return Page("Direct logit attribution", header, "dla",
                {"grid": [[float(v) if math.isfinite(v) else None for v in row] for row in grid.tolist()],
                 "layers": list(range(g.n_layers)), "columns": [f"H{h}" for h in range(g.n_heads)] + ["MLP"],
                 "names": names, "scale": float(np.abs(finite).max()) if finite.size else 0.0, "total": dla.total},
                height=min(900, 300 + 23 * g.n_layers))
