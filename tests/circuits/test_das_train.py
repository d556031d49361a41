"""Training DAS: it finds a planted causal variable (IIA and the direction), keeps its rotation orthogonal,
trains several sites together exactly as each alone, runs one compiled step, and leaves the model as it was
even when a step fails or is interrupted."""

from __future__ import annotations

import signal

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp.circuits import das_program, das_train
from mlxterp.circuits.das_data import interchange_pairs, site_on
from mlxterp.circuits.das_train import Trainer
from mlxterp.compiler import NodeExecutionError
from tests.circuits.planted import planted_direction, planted_model, planted_pairs
from tests.tracing.test_restoration import assert_restored, snapshot


@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def train_pairs():
    return planted_pairs(64, seed=0)


@pytest.fixture(scope="module")
def heldout_pairs():
    return planted_pairs(64, seed=1)


def orthogonality_error(das: mt.DAS) -> float:
    basis = das.rotation
    return float(mx.abs(basis.T @ basis - mx.eye(das.dim)).max())


def test_finds_the_planted_variable(planted, train_pairs, heldout_pairs):
    das = mt.DAS("layers.0.resid_post", position=-1, dim=1)
    losses = das.train(planted, *train_pairs, steps=60, batch_size=16)
    assert losses.shape == (60,) and losses[-10:].mean() < losses[:10].mean()
    assert das.iia(planted, *heldout_pairs) >= 0.95
    assert abs(float(np.array(das.direction) @ planted_direction())) >= 0.95
    assert orthogonality_error(das) <= 1e-5


def test_several_sites_trained_together_find_it_where_it_is(planted, train_pairs, heldout_pairs):
    sites = ["layers.0.resid_pre", "layers.1.resid_mid", "layers.1.resid_post", "layers.0.attn"]
    dases = [mt.DAS(site, -1, dim) for site, dim in zip(sites, [1, 1, 2, 1])]
    losses = mt.DAS.train_many(dases, planted, *train_pairs, steps=60, batch_size=16)
    assert losses.shape == (60, 4)
    iia = mt.DAS.iia_many(dases, planted, *heldout_pairs)
    assert np.all(iia[:3] >= 0.95)
    assert iia[3] < 0.8  # the attention output carries no copy of the variable: no subspace there makes it work
    for das in dases[:2]:
        assert abs(float(np.array(das.direction) @ planted_direction())) >= 0.95
    basis = np.array(dases[2].rotation)  # dim 2: the planted direction lies in the learned plane
    assert np.linalg.norm(basis.T @ planted_direction()) >= 0.95
    assert max(orthogonality_error(d) for d in dases) <= 1e-5
    assert [float(x) for x in iia] == [dases[j].iia(planted, *heldout_pairs) for j in range(4)]


def random_pairs(n: int = 12, seq: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(2, 100, (n, seq)).tolist(), rng.integers(2, 100, (n, seq)).tolist(),
            rng.integers(2, 100, n).tolist())


def test_training_together_equals_training_each_alone(model):
    pairs = random_pairs()
    specs = [("layers.1.resid_post", -1, 2), ("layers.2.mlp", [3, 5], 1), ("layers.1.resid_post", -2, 1)]
    together = [mt.DAS(s, p, d, seed=j) for j, (s, p, d) in enumerate(specs)]
    losses = mt.DAS.train_many(together, model, *pairs, steps=6, batch_size=4, seed=3)
    for j, (site, position, dim) in enumerate(specs):
        alone = mt.DAS(site, position, dim, seed=j)
        np.testing.assert_allclose(alone.train(model, *pairs, steps=6, batch_size=4, seed=3), losses[:, j], rtol=1e-4)
        np.testing.assert_allclose(np.array(alone.vectors), np.array(together[j].vectors), atol=1e-4)
        assert together[j].steps == 6


def test_the_shared_prefix_changes_no_number(model):
    pairs = interchange_pairs(model, *random_pairs())
    sites = [site_on(model, "layers.2.resid_mid", (-1,), 2, pairs.base)]
    runs = []
    for share in (True, False):
        import mlx.optimizers as optim

        trainer = Trainer(model, sites, pairs, optim.Adam(learning_rate=0.01), share_prefix=share)
        assert trainer.base.prefix_len == (5 if share else 0)
        vectors = {"site_0": mx.random.normal((2, 64), key=mx.random.key(0))}
        losses = []
        for _ in range(4):
            per_site, vectors = trainer.step(vectors, pairs.take(np.arange(8)))
            losses.append(per_site.item())
        runs.append((losses, vectors["site_0"]))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    np.testing.assert_allclose(np.array(runs[0][1]), np.array(runs[1][1]), atol=1e-5)


def test_one_compiled_step_traced_once(model):
    das = mt.DAS("layers.1.resid_post", -1, 1)
    pairs = random_pairs()
    before = model.compile_stats()["traces"]
    das.train(model, *pairs, steps=5, batch_size=4)
    assert model.compile_stats()["traces"] - before == 1  # forward, backward and update: one function, one trace
    das.train(model, *pairs, steps=5, batch_size=4)  # continues from the trained subspace
    assert das.steps == 10


def test_a_failing_step_leaves_the_model_and_the_subspace_as_they_were(model, tokens, monkeypatch):
    before, raw = snapshot(model), model.model(tokens)

    def explode(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(das_program, "interchange_rows", explode)  # recorded into the (fresh) program
    das = mt.DAS("layers.1.resid_post", -1, 1)
    with pytest.raises(NodeExecutionError, match="boom"):
        das.train(model, *random_pairs(), steps=3, batch_size=4)
    assert das.steps == 0 and das.width is None
    assert_restored(model, before, tokens, raw)


def test_ctrl_c_is_taken_between_steps(model, tokens, monkeypatch):
    before, raw = snapshot(model), model.model(tokens)
    step, calls = das_train.Trainer.step, []

    def step_then_interrupt(self, vectors, batch):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # arrives inside the step: deferred to its end
        return step(self, vectors, batch)

    monkeypatch.setattr(das_train.Trainer, "step", step_then_interrupt)
    das = mt.DAS("layers.1.resid_post", -1, 1)
    with pytest.raises(KeyboardInterrupt):
        das.train(model, *random_pairs(), steps=10, batch_size=4)
    assert das.steps == 3 and das.width == 64  # the interrupted step finished and was kept
    assert_restored(model, before, tokens, raw)


def test_progress_bar(model, capsys):
    mt.DAS("layers.1.resid_post").train(model, *random_pairs(), steps=3, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "DAS" in err and "3/3" in err
