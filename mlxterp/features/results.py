"""The result of :func:`mlxterp.evaluate`: one row of metrics per dictionary, and each feature's density."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..views.saving import Saveable
from . import plots

COLUMNS = ("tokens", "l0", "fve", "mse", "cosine", "shrinkage", "dead", "dense", "ce_clean", "ce_spliced", "ce_zero",
           "ce_recovered", "kl_spliced", "kl_zero", "kl_recovered")


@dataclasses.dataclass
class EvaluationReport(Saveable):
    """Per dictionary (in the order given): ``label`` and the metrics of :mod:`mlxterp.features.tally`
    (``report[0]["fve"]``, ``report["topk@layers.6.resid_pre"]["ce_recovered"]``); ``density[i]`` is each
    feature's firing density ``(d_sae,)`` float32 (the fraction of evaluated tokens it is active on).

    The metrics' units: ``tokens`` a count; ``l0`` features per token; ``fve``, ``cosine``, ``shrinkage``,
    ``ce_recovered``, ``kl_recovered`` ratios where 1 is perfect (``shrinkage`` below 1: the reconstruction
    is shrunk);
    ``dead`` and ``dense`` fractions of the features; ``mse`` squared units of the site's values per token;
    ``ce_*`` and ``kl_*`` nats per token.

    Saves and loads (``save(path)``, ``EvaluationReport.load(path)``); ``plot()`` draws the key metrics and the
    density histograms; ``top(metric)`` ranks the dictionaries.
    """

    kind = "dictionary_evaluation"

    rows: List[Dict[str, Any]]
    density: List[np.ndarray]
    dense: float

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Union[int, str]) -> Dict[str, Any]:
        if isinstance(key, str):
            found = [r for r in self.rows if r["label"] == key]
            if not found:
                raise KeyError(f"no dictionary {key!r} in this report; it has {[r['label'] for r in self.rows]}")
            return found[0]
        return self.rows[key]

    def top(self, metric: str = "ce_recovered", k: Optional[int] = None) -> List[Tuple[str, float]]:
        """``(label, value)`` of the ``k`` dictionaries (all by default) with the largest ``metric``."""
        if metric not in COLUMNS:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(COLUMNS)}")
        ranked = sorted(((r["label"], float(r[metric])) for r in self.rows),
                        key=lambda lv: -math.inf if math.isnan(lv[1]) else lv[1], reverse=True)
        return ranked[:k]

    def table(self, columns: Tuple[str, ...] = ("l0", "fve", "mse", "cosine", "shrinkage", "dead", "ce_clean",
                                                  "ce_spliced", "ce_zero", "ce_recovered", "kl_spliced")) -> str:
        """The metrics as a text table, one line per dictionary."""
        width = max([len("dictionary")] + [len(r["label"]) for r in self.rows])
        head = "dictionary".ljust(width) + "".join(f" {c:>12}" for c in columns)
        lines = [head] + [r["label"].ljust(width) + "".join(f" {_fmt(r[c]):>12}" for c in columns) for r in self.rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        tokens = self.rows[0]["tokens"] if self.rows else 0
        return f"EvaluationReport({len(self.rows)} dictionaries, {tokens} tokens)\n{self.table()}"

    def plot(self, save_path: Any = None, *, figsize: Tuple[float, float] = (12, 3.5)) -> Any:
        """FVE, CE-loss recovered and L0 per dictionary, and each dictionary's density histogram.

        Returns:
            The matplotlib Figure (written as a PNG to ``save_path`` if given).
        """
        n = len(self.rows)
        fig, axes = plots.figure((figsize[0], figsize[1] * (1 + math.ceil(n / 3))), 1 + math.ceil(n / 3), 3)
        labels = [r["label"] for r in self.rows]
        for ax, metric in zip(axes[0], ("fve", "ce_recovered", "l0")):
            plots.bars(ax, labels, [float(r[metric]) for r in self.rows], metric)
        for i, ax in enumerate(axes[1:].ravel()):
            if i < n:
                plots.density_histogram(ax, np.asarray(self.density[i]), labels[i])
            else:
                ax.set_axis_off()
        return plots.finish(fig, save_path)


def _fmt(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.4g}"
