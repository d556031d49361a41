"""Trainer additions for lenses and probes: SGD with Nesterov momentum (against PyTorch's update rule written in
numpy), runs paused with ``until=`` and continued (the weights of an uninterrupted run), and arrays served
beside a store's rows (labels aligned with their rows)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import SAE, collect_activations, train
from mlxterp.dictionaries import ArraySource, FitSettings, Objective, StoreSource, fit
from mlxterp.dictionaries.learner import Comm
from mlxterp.dictionaries.optim import optimizer_init, sgd_nesterov

ROWS = np.random.default_rng(0).normal(size=(256, 5)).astype(np.float32)
TARGET = (ROWS @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.7).astype(np.float32)[:, None]


class Regression(Objective):
    """Least squares of ``y`` on ``x``: this rank's sum over rows / the global batch."""

    name, keys = "regression", ("x", "y")

    def __init__(self, batch: int):
        self.batch = batch
        self.w, self.b = mx.zeros((5,)), mx.array(0.0)

    def init_params(self):
        return {"w": self.w, "b": self.b}

    def loss(self, params, state, batch, hyper, comm, variant):
        residual = batch["x"] @ params["w"] + params["b"] - batch["y"][:, 0]
        return mx.square(residual).sum() / self.batch, {}

    def write_back(self, params, state):
        self.w, self.b = params["w"], params["b"]


def torch_sgd(params, grads_per_step, lr, mu, wd):
    """``torch.optim.SGD(lr=lr * (1 - mu), momentum=mu, nesterov=True, weight_decay=wd)``, by its documented
    update: ``g += wd p; buf = mu buf + g (buf = g at the first step); p -= lr' (g + mu buf)``."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    buf = None
    for step, grads in enumerate(grads_per_step):
        g = {k: grads[k] + wd * p[k] for k in p}
        buf = g if buf is None else {k: mu * buf[k] + g[k] for k in p}
        p = {k: p[k] - lr[step] * (1 - mu) * (g[k] + mu * buf[k]) for k in p}
    return p


def test_sgd_nesterov_is_pytorchs_sgd_with_the_learning_rate_scaled():
    rng = np.random.default_rng(1)
    params = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(5)]
    lrs = [1.0, 0.8, 0.6, 0.4, 0.2]
    mine = {k: mx.array(v) for k, v in params.items()}
    state = optimizer_init("sgd", mine)
    for g, lr in zip(grads, lrs):
        mine, state = sgd_nesterov(mine, {k: mx.array(v.astype(np.float32)) for k, v in g.items()}, state,
                                   mx.array(lr), 0.9, 1e-3)
    ref = torch_sgd(params, grads, lrs, 0.9, 1e-3)
    assert state["v"] == {} and set(state["m"]) == {"a", "b"}
    for k in params:
        np.testing.assert_allclose(np.array(mine[k]), ref[k], rtol=1e-5, atol=1e-6)


def test_fit_with_sgd_solves_least_squares():
    settings = FitSettings(steps=200, batch_size=64, lr=0.5, warmup=0.0, decay=1.0, optimizer="sgd",
                           weight_decay=0.0, max_grad_norm=0.0)
    reg = Regression(64)
    fit([reg], ArraySource({"x": ROWS, "y": TARGET}), settings, progress=False)
    np.testing.assert_allclose(np.array(reg.w), [1.0, -2.0, 0.5, 0.0, 3.0], atol=2e-3)
    assert abs(reg.b.item() - 0.7) < 2e-3
    assert "optimizer" in settings.identity() and "optimizer" not in FitSettings(steps=1, batch_size=1, lr=1.0).identity()
    with pytest.raises(ValueError, match="optimizer must be one of 'adam', 'sgd'"):
        FitSettings(steps=1, batch_size=1, lr=1.0, optimizer="rmsprop")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_paused_run_continues_to_the_uninterrupted_weights(tmp_path, optimizer):
    settings = FitSettings(steps=12, batch_size=32, lr=0.05, optimizer=optimizer)
    whole = Regression(32)
    fit([whole], ArraySource({"x": ROWS, "y": TARGET}), settings, out=tmp_path / "a", progress=False)
    part = Regression(32)
    outcome = fit([part], ArraySource({"x": ROWS, "y": TARGET}), settings, out=tmp_path / "b", until=5,
                  progress=False)
    assert outcome.end == 5 and not outcome.done and len(outcome.states[0].history["loss"]) == 5
    rest = Regression(32)
    outcome = fit([rest], ArraySource({"x": ROWS, "y": TARGET}), settings, out=tmp_path / "b", progress=False)
    assert outcome.start == 5 and outcome.done
    assert mx.array_equal(rest.w, whole.w).item() and mx.array_equal(rest.b, whole.b).item()


def test_train_until_pauses_and_saves_only_the_finished_dictionary(tmp_path):
    data = {"x": ROWS}
    a = SAE.create("topk", d_sae=16, k=2, site="x")
    train(a, data, tokens=256, batch_size=32, out=tmp_path / "a", progress=False)
    b = SAE.create("topk", d_sae=16, k=2, site="x")
    paused = train(b, data, tokens=256, batch_size=32, out=tmp_path / "b", until=100, progress=False)
    assert paused.steps == 3 and paused.saved == [] and len(paused.history[0]["fve"]) == 3
    c = SAE.create("topk", d_sae=16, k=2, site="x")
    done = train(c, data, tokens=256, batch_size=32, out=tmp_path / "b", progress=False)
    assert done.start == 3 and done.steps == 8 and len(done.saved) == 1
    assert all(mx.array_equal(getattr(c, n), getattr(a, n)).item() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    with pytest.raises(ValueError, match="until must be an int >= 32"):
        train(SAE.create("topk", d_sae=16, k=2, site="x"), data, tokens=256, batch_size=32, until=8)


def test_extra_arrays_come_with_their_store_rows(model, tmp_path):
    prompts = [f"row {i} of the store" for i in range(9)]
    store = collect_activations(model, prompts, layers=["layers.1"], out=tmp_path / "acts", shard_size=4,
                                progress=False)
    rows = len(np.concatenate([np.arange(n) for n in store.lengths()]))
    everything = np.array(store.get(store.keys[0], rows=np.arange(rows), dtype="float32"))
    source = StoreSource(store, {"x": store.keys[0]}, extra={"index": np.arange(rows)})
    assert source.widths == {"x": 64, "index": 1}
    seen = []
    batches = source.batches(16, 3, Comm(None))
    for _ in range(2 * rows // 16):
        batch, _ = next(batches)
        index = np.array(batch["index"][:, 0]).astype(int)
        np.testing.assert_array_equal(np.array(batch["x"]), everything[index])
        seen.extend(index.tolist())
    assert sorted(seen[:rows]) == list(range(rows))  # the first epoch visits every row once
    with pytest.raises(ValueError, match=f"one row per row of the activation store .*: \\({rows},\\)"):
        StoreSource(store, {"x": store.keys[0]}, extra={"label": np.zeros(rows + 1)})


def test_skip_positions_leaves_out_each_prompts_first_tokens(model, tmp_path):
    from mlxterp.dictionaries.sources import LiveSource
    from mlxterp.dictionaries.train import positions_from
    from mlxterp.dictionaries import sites

    prompts = [f"prompt {i}: " + "xyz"[: i % 3 + 1] for i in range(10)]
    store = collect_activations(model, prompts, layers=["layers.1"], out=tmp_path / "acts", shard_size=4,
                                progress=False)
    lengths = store.lengths()
    position = np.concatenate([np.arange(n) for n in lengths])
    use = positions_from(store, 2)
    source = StoreSource(store, {"x": store.keys[0]}, extra={"index": np.arange(len(position))}, use=use)
    assert source.rows == int((position >= 2).sum())
    batch, _ = next(source.batches(source.rows, 0, Comm(None)))
    served = np.array(batch["index"][:, 0]).astype(int)
    assert sorted(served) == list(np.flatnonzero(position >= 2))
    live = LiveSource(model, prompts, [sites.resolve(model, "layers.1")], exclude=None, skip=1)
    assert [len(live._kept(i)) for i in range(10)] == [n - 1 for n in lengths] and live.identity()["skip"] == 1
    sae = SAE.create("topk", d_sae=16, k=2, site="layers.1")
    run = train(sae, store, tokens=64, batch_size=32, skip_positions=1, progress=False)
    assert run.steps == 2
    with pytest.raises(ValueError, match="skip_positions needs prompts"):
        train(SAE.create("topk", d_sae=16, k=2, site="x"), {"x": ROWS}, tokens=64, batch_size=32, skip_positions=1)
