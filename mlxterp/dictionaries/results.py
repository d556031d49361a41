"""What :func:`mlxterp.train` returns: the trained dictionaries, their per-step history and latent densities."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .dictionary import Dictionary

METRICS = ("loss", "mse", "fve", "l0", "dead", "sparsity", "auxk", "grad_norm", "lr")


@dataclasses.dataclass
class TrainResult:
    """The outcome of a training run.

    Attributes:
        dictionaries: the trained dictionaries (the objects passed in, trained in place).
        history: one ``{metric: (steps,) float array}`` per dictionary: ``loss``, ``mse`` (squared error per
            row, normalized space), ``fve`` (fraction of variance explained), ``l0`` (active latents per
            row), ``dead`` (fraction of latents silent for ``dead_tokens`` tokens), ``sparsity`` and
            ``auxk`` (their loss terms), ``grad_norm`` (before clipping), ``lr``.
        density: one ``(d_sae,)`` array per dictionary: the fraction of training tokens on which each latent
            fired.
        steps: the steps trained (``steps * batch_size`` tokens): the run's length, or where ``until=``
            paused it.
        batch_size: rows (tokens) per step, over all processes together.
        start: the step this call started from (0, or where a resumed run stood).
        forwards: model forwards run by this call (live training), else None.
        seconds: wall time of this call's training.
        out: the run folder (None without one).
        saved: where each dictionary was saved in SAELens's layout, ``out/<index>-<site>-<architecture>``
            (empty without ``out``).
    """

    dictionaries: List[Dictionary]
    history: List[Dict[str, np.ndarray]]
    density: List[np.ndarray]
    steps: int
    batch_size: int
    start: int
    forwards: Optional[int]
    seconds: float
    out: Optional[Path]
    saved: List[Path] = dataclasses.field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Tokens (rows) the run trains on in all: ``steps * batch_size``."""
        return self.steps * self.batch_size

    def final(self) -> List[Dict[str, float]]:
        """Each dictionary's metrics at its last step."""
        return [{k: float(v[-1]) for k, v in h.items() if len(v)} for h in self.history]

    def __repr__(self) -> str:
        lines = [f"TrainResult({self.steps} steps x {self.batch_size} = {self.tokens:,} tokens"
                 + (f", resumed at step {self.start}" if self.start else "") + ")"]
        for d, last in zip(self.dictionaries, self.final()):
            lines.append(f"  {d.label}: FVE {last.get('fve', float('nan')):.3f}, "
                         f"L0 {last.get('l0', float('nan')):.1f}, dead {100 * last.get('dead', float('nan')):.1f}%")
        return "\n".join(lines)

    def plot(self, save_path: Optional[Union[str, Path]] = None, *, metrics: Sequence[str] = ("fve", "l0", "dead"),
             figsize: Tuple[float, float] = (12, 3.5)) -> Any:
        """Training curves: one panel per metric, one line per dictionary.

        Args:
            save_path: if given, write a PNG there.
            metrics: which of the history's metrics to draw.
            figsize: figure size in inches.

        Returns:
            The matplotlib Figure.
        """
        from ..plotting import require_matplotlib

        require_matplotlib()
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            for d, h in zip(self.dictionaries, self.history):
                ax.plot(np.arange(1, len(h[metric]) + 1) * self.batch_size, h[metric], label=d.label)
            ax.set_xlabel("tokens")
            ax.set_title(metric)
        axes[0].legend(fontsize="small")
        if save_path is not None:
            fig.savefig(Path(save_path), dpi=150, bbox_inches="tight", format="png")
        return fig


def histories(states: Sequence[Any]) -> List[Dict[str, np.ndarray]]:
    return [{k: np.array(v, dtype=np.float64) for k, v in st.history.items()} for st in states]
