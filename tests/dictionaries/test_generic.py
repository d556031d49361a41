"""The trainer is generic: an Objective that is not a dictionary (here a logistic-regression probe, as the
probes and tuned lens built on this package will be) trains through ``fit`` with the same compiled step,
checkpoints and resume; and the results object plots."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from mlxterp import SAE, train
from mlxterp.dictionaries import ArraySource, FitSettings, Objective, fit

ROWS = np.random.default_rng(0).normal(size=(512, 6)).astype(np.float32)
LABELS = (ROWS @ np.array([1.0, -2.0, 0.5, 0.0, 0.0, 1.0]) > 0).astype(np.float32)[:, None]


class Probe(Objective):
    """Logistic regression of ``label`` on ``x``: the loss is this rank's sum over rows / the global batch."""

    name, keys = "probe", ("x", "label")

    def __init__(self, batch: int):
        self.batch = batch
        self.w = mx.zeros((6,))
        self.b = mx.array(0.0)

    def init_params(self):
        return {"w": self.w, "b": self.b}

    def loss(self, params, state, batch, hyper, comm, variant):
        logits = batch["x"] @ params["w"] + params["b"]
        y = batch["label"][:, 0]
        nll = mx.logaddexp(0.0, logits) - y * logits
        correct = ((logits > 0) == (y > 0.5)).sum()
        return nll.sum() / self.batch, {"correct": correct.astype(mx.float32)}

    def metrics(self, params, state, aux, comm):
        return {"accuracy": comm.sum(aux["correct"]) / self.batch}

    def write_back(self, params, state):
        self.w, self.b = params["w"], params["b"]


def test_a_probe_trains_through_the_generic_trainer_and_resumes(tmp_path):
    settings = FitSettings(steps=60, batch_size=64, lr=0.05, warmup=0.0, decay=0.0)
    source = ArraySource({"x": ROWS, "label": LABELS})
    probe = Probe(64)
    outcome = fit([probe], source, settings, out=tmp_path / "probe", checkpoint_every=7, progress=False)
    assert outcome.states[0].history["accuracy"][-1] > 0.9
    accuracy = ((ROWS @ np.array(probe.w) + probe.b.item() > 0) == (LABELS[:, 0] > 0.5)).mean()
    assert accuracy > 0.95
    again = Probe(64)
    done = fit([again], ArraySource({"x": ROWS, "label": LABELS}), settings, out=tmp_path / "probe", progress=False)
    assert done.start == 60 and mx.array_equal(again.w, probe.w).item()


def test_train_result_reports_and_plots(tmp_path):
    sae = SAE.create("topk", d_sae=12, k=2, site="x")
    result = train(sae, {"x": ROWS}, tokens=128, batch_size=64, progress=False)
    assert "topk@x: FVE" in repr(result) and result.tokens == 128 and len(result.history[0]["fve"]) == 2
    assert result.density[0].shape == (12,) and abs(result.density[0].sum() - 2.0) < 1e-6  # k latents per token
    fig = result.plot(tmp_path / "curves.png", metrics=("fve", "l0", "loss"))
    assert (tmp_path / "curves.png").stat().st_size > 0 and len(fig.axes) == 3
