"""A probe's training objective, for the generic trainer.

Rows ``x`` (and, for regression, targets ``y``) are standardised with constants fixed from the first global
batch (per-feature mean and one overall scale), so one learning rate fits residual streams of any norm; the
weights learn in that space and are folded back when written (the probe then takes raw activations). Each
row carries a weight ``w`` (1 for a training row, 0 for a held-out one). With ``z = x_n @ W + b``:

- ``linear``: ``sum w ||y_n - z||^2 / sum w`` (least squares);
- ``logistic``: ``sum w (softplus(z) - y z) / sum w`` (``y`` in {0, 1});
- ``softmax``: ``sum w (logsumexp(z) - z_y) / sum w`` (``y`` a class index);

plus ``l2 * ||W||^2`` (counted once over the ranks). Sums run over the global batch (``comm.sum``).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import mlx.core as mx

from ..dictionaries.learner import Comm, Objective
from ..dictionaries.optim import Tree

KINDS = ("linear", "logistic", "softmax")
"""The probe kinds: ``linear`` (least-squares regression), ``logistic`` (two classes), ``softmax`` (several)."""


def outputs(kind: str, z: mx.array) -> mx.array:
    """What a probe gives for logits ``z (..., d_out)``: the prediction (linear), P(positive) (logistic,
    the last axis dropped) or class probabilities (softmax)."""
    if kind == "logistic":
        return mx.sigmoid(z[..., 0])
    if kind == "softmax":
        return mx.softmax(z, axis=-1)
    return z[..., 0] if z.shape[-1] == 1 else z


def row_losses(kind: str, z: mx.array, y: mx.array) -> mx.array:
    """Each row's loss (see the module docstring); ``y`` is ``(rows, d_out)`` for linear, ``(rows, 1)`` else."""
    if kind == "linear":
        return mx.square(y - z).sum(axis=-1)
    if kind == "logistic":
        return mx.logaddexp(0.0, z[:, 0]) - y[:, 0] * z[:, 0]
    picked = mx.take_along_axis(z, y.astype(mx.int32), axis=-1)[:, 0]
    return mx.logsumexp(z, axis=-1) - picked


def hits(kind: str, z: mx.array, y: mx.array) -> mx.array:
    """1 per correctly classified row (classification), else 0."""
    if kind == "logistic":
        return ((z[:, 0] > 0) == (y[:, 0] > 0.5)).astype(mx.float32)
    if kind == "softmax":
        return (mx.argmax(z, axis=-1) == y[:, 0].astype(mx.int32)).astype(mx.float32)
    return mx.zeros((z.shape[0],))


class ProbeObjective(Objective):
    """Trains one :class:`~mlxterp.probes.Probe` on batches holding ``x``, ``label`` and ``weight``.

    Args:
        probe: the probe (its standardisation is fixed by :meth:`prepare` unless already set).
        l2: the ridge coefficient on the (standardised) weights.
    """

    keys = ("x", "label", "weight")

    def __init__(self, probe: Any, l2: float = 0.0):
        self.probe, self.l2 = probe, float(l2)
        self.name = f"{probe.kind} probe"
        self.shift: Dict[str, mx.array] = {}

    def prepare(self, batch: Dict[str, mx.array], comm: Comm) -> None:
        """The standardisation from the first global batch's rows (training rows only)."""
        w = batch["weight"][:, 0]
        count = mx.maximum(comm.sum(w.sum()), 1.0)
        x = batch["x"]
        mean = comm.sum((x * w[:, None]).sum(axis=0)) / count
        var = comm.sum((mx.square(x - mean) * w[:, None]).sum()) / count / x.shape[-1]
        self.shift = {"x_mean": mean, "x_scale": mx.maximum(mx.sqrt(var), 1e-6)}
        if self.probe.kind == "linear":
            y = batch["label"]
            y_mean = comm.sum((y * w[:, None]).sum(axis=0)) / count
            y_var = comm.sum((mx.square(y - y_mean) * w[:, None]).sum()) / count / y.shape[-1]
            self.shift.update(y_mean=y_mean, y_scale=mx.maximum(mx.sqrt(y_var), 1e-6))

    def init_params(self) -> Tree:
        """``{"W": (d_in, d_out), "b": (d_out,)}`` float32 zeros (in the standardised space)."""
        d_in, d_out = self.probe.d_in, self.probe.d_out
        return {"W": mx.zeros((d_in, d_out)), "b": mx.zeros((d_out,))}

    def init_state(self) -> Tree:
        """The standardisation (placeholders of the right shapes until :meth:`prepare` ran: a resumed run reads
        the real ones from its checkpoint)."""
        d_in, d_out = self.probe.d_in, self.probe.d_out
        state = {"x_mean": mx.zeros((d_in,)), "x_scale": mx.array(1.0)}
        if self.probe.kind == "linear":
            state.update(y_mean=mx.zeros((d_out,)), y_scale=mx.array(1.0))
        state.update(self.shift)
        return state

    def loss(self, params: Tree, state: Tree, batch: Dict[str, mx.array], hyper: Dict[str, mx.array],
             comm: Comm, variant: Any) -> Tuple[mx.array, Dict[str, mx.array]]:
        """The weighted mean loss of the global batch (see the module docstring) plus the ridge term, a float32
        scalar, and ``aux``: the data loss, the weighted hit count, the total weight and whether ``x`` is
        finite.

        Args:
            params: ``{"W", "b"}``.
            state: the standardisation (:meth:`init_state`).
            batch: ``x (rows, d_in)``, ``label (rows, d_out)`` (regression) or ``(rows, 1)`` (class indices as
                float32, or 0/1 for logistic), ``weight (rows, 1)`` (1 for a training row, 0 held out).
            hyper: the step's hyperparameters (unused).
            comm: sums over the ranks.
            variant: unused (the trainer's common signature).
        """
        kind = self.probe.kind
        x = (batch["x"] - state["x_mean"]) / state["x_scale"]
        y = batch["label"]
        if kind == "linear":
            y = (y - state["y_mean"]) / state["y_scale"]
        w = batch["weight"][:, 0]
        total = mx.maximum(comm.sum(w.sum()), 1.0)
        z = x @ params["W"] + params["b"]
        data = (w * row_losses(kind, z, y)).sum() / total
        ridge = self.l2 * mx.square(params["W"]).sum() / comm.size
        aux = {"data": mx.stop_gradient(data), "hits": (w * hits(kind, z, y)).sum(), "total": total,
               "finite": mx.isfinite(batch["x"]).all()}
        return data + ridge, aux

    def metrics(self, params: Tree, state: Tree, aux: Dict[str, mx.array], comm: Comm) -> Dict[str, mx.array]:
        """Per step: ``data_loss`` (the loss without the ridge term; squared error in standardised units, or
        nats), ``finite`` (1.0 while the activations are finite) and, for classification, ``accuracy`` (the
        fraction of the batch's training rows classified right)."""
        out = {"data_loss": comm.sum(aux["data"]), "finite": comm.min(aux["finite"].astype(mx.float32))}
        if self.probe.kind != "linear":
            out["accuracy"] = comm.sum(aux["hits"]) / aux["total"]
        return out

    def postfix(self, history: Dict[str, list]) -> str:
        """The progress bar's text: the last step's loss (and accuracy)."""
        loss = history.get("data_loss", [float("nan")])[-1]
        accuracy = history.get("accuracy")
        return f"loss {loss:.4f}" + (f" accuracy {accuracy[-1]:.3f}" if accuracy else "")

    def write_back(self, params: Tree, state: Tree) -> None:
        """Fold the standardisation into the weights: the probe takes raw activations (and, for regression,
        predicts raw targets)."""
        W = params["W"] / state["x_scale"]
        b = params["b"] - state["x_mean"] @ W
        if self.probe.kind == "linear":
            W, b = W * state["y_scale"], b * state["y_scale"] + state["y_mean"]
        self.probe.weight, self.probe.bias = W, b
