"""The evaluation metrics of a dictionary, accumulated over batches of tokens in float64.

Over the evaluated tokens ``t`` (``N`` of them; special tokens and padding excluded), with ``x_t`` the site's
value (a transcoder's target, the MLP's output), ``x_hat_t`` the reconstruction and ``f_t`` the features:

- ``mse = sum_t ||x_t - x_hat_t||^2 / N`` (the squared error of a token, averaged over tokens);
- ``fve = 1 - sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean(x)||^2``, the mean per dimension over all ``N``
  tokens (the fraction of variance explained; SAELens and SAEBench fixed both this formula and the MSE's);
- ``cosine``: the mean over tokens of ``cos(x_t, x_hat_t)``; ``shrinkage``: the mean of ``||x_hat_t|| / ||x_t||``
  (below 1: the reconstruction is shrunk);
- ``l0``: the mean number of active (non-zero) features per token; per feature, its ``density``: the fraction
  of tokens it is active on; ``dead``: the fraction of features never active; ``dense``: the fraction active
  on more than ``dense`` of the tokens;
- cross-entropy of the next token, ``ce_clean`` (the model), ``ce_spliced`` (the site replaced by the
  reconstruction alone) and ``ce_zero`` (the site zero-ablated), and ``ce_recovered = (ce_zero - ce_spliced)
  / (ce_zero - ce_clean)``; the KL divergence of the clean next-token distribution to the spliced and the
  ablated ones, ``kl_spliced``, ``kl_zero``, and ``kl_recovered = (kl_zero - kl_spliced) / kl_zero``. These
  are averaged over the positions whose token is evaluated and whose next token is a real one.

The total variance is combined across batches from each batch's count, mean and centered sum of squares
(Chan et al.'s parallel formula), so it is the variance about the mean of every token, without the
cancellation of ``E[x^2] - E[x]^2``.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np


@dataclasses.dataclass
class Moments:
    """Count, mean and centered sum of squares ``sum_t ||x_t - mean||^2`` of vectors, combined batch by batch."""

    n: float = 0.0
    mean: np.ndarray = None  # type: ignore[assignment]
    m2: float = 0.0

    def add(self, n: float, total: np.ndarray, m2: float) -> None:
        """Add a batch of ``n`` vectors whose sum is ``total`` and whose sum of squares about their own mean
        is ``m2``."""
        if n <= 0:
            return
        mean_b = np.asarray(total, dtype=np.float64) / n
        if self.n == 0:
            self.n, self.mean, self.m2 = float(n), mean_b, float(m2)
            return
        both = self.n + n
        delta = mean_b - self.mean
        self.m2 += float(m2) + float(delta @ delta) * self.n * n / both
        self.mean = self.mean + delta * (n / both)
        self.n = both


@dataclasses.dataclass
class Tally:
    """One dictionary's sums over the evaluated tokens (see the module docstring)."""

    d_sae: int
    tokens: float = 0.0
    squared_error: float = 0.0
    cosine: float = 0.0
    ratio: float = 0.0
    active: float = 0.0
    moments: Moments = dataclasses.field(default_factory=Moments)
    fires: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.fires is None:
            self.fires = np.zeros(self.d_sae, dtype=np.float64)

    def add(self, scalars: np.ndarray, total: np.ndarray, fires: np.ndarray) -> None:
        """One batch: ``scalars = [tokens, squared error, m2 about the batch's mean, cosine sum, norm-ratio
        sum, active features]``, ``total`` the sum of the site's values, ``fires`` each feature's count."""
        n, sq, m2, cos, ratio, active = (float(v) for v in np.asarray(scalars, dtype=np.float64))
        self.tokens += n
        self.squared_error += sq
        self.cosine += cos
        self.ratio += ratio
        self.active += active
        self.moments.add(n, total, m2)
        self.fires += np.asarray(fires, dtype=np.float64)

    def metrics(self, dense: float) -> Dict[str, float]:
        n = self.tokens
        density = self.fires / n if n else np.full(self.d_sae, np.nan)
        return {"tokens": int(n), "l0": self.active / n if n else np.nan,
                "fve": fve(self.squared_error, self.moments.m2), "mse": self.squared_error / n if n else np.nan,
                "cosine": self.cosine / n if n else np.nan, "shrinkage": self.ratio / n if n else np.nan,
                "dead": float(np.mean(density == 0)), "dense": float(np.mean(density > dense))}


def fve(squared_error: float, total_variance: float) -> float:
    """``1 - squared_error / total_variance`` (NaN when the values do not vary)."""
    return 1.0 - squared_error / total_variance if total_variance > 0 else float("nan")


def recovered(zero: float, spliced: float, clean: float) -> float:
    """``(zero - spliced) / (zero - clean)``: 1 when splicing keeps the clean loss, 0 when it is as bad as
    ablating the site (NaN when ablating changes nothing)."""
    gap = zero - clean
    return (zero - spliced) / gap if gap != 0 else float("nan")


def loss_metrics(ce: np.ndarray, kl: np.ndarray, positions: float) -> Dict[str, float]:
    """``ce``/``kl``: sums over the positions, for the clean, spliced and zero-ablated rows."""
    ce_clean, ce_spliced, ce_zero = (float(v) / positions for v in ce)
    _, kl_spliced, kl_zero = (float(v) / positions for v in kl)
    return {"ce_clean": ce_clean, "ce_spliced": ce_spliced, "ce_zero": ce_zero,
            "ce_recovered": recovered(ce_zero, ce_spliced, ce_clean), "kl_spliced": kl_spliced, "kl_zero": kl_zero,
            "kl_recovered": recovered(kl_zero, kl_spliced, 0.0)}
