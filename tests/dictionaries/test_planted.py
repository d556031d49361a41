"""Planted features: activations made of sparse combinations of known unit directions; a trained SAE must
find them. 32 random directions in 16 dimensions (no basis to fall back on), about 3 active per row with
magnitudes in [0.5, 1.5]; success is >= 90% of the true directions matched by a decoder row at cosine
>= 0.9. An untrained SAE of the same shape matches none: the test cannot pass by accident."""

from __future__ import annotations

import numpy as np
import pytest

from mlxterp import SAE, train

N_FEATURES, D, ROWS, BATCH, K = 32, 16, 16384, 256, 3


def planted(seed: int):
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(N_FEATURES, D))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    active = rng.random((ROWS, N_FEATURES)) < K / N_FEATURES
    x = (active * rng.uniform(0.5, 1.5, size=(ROWS, N_FEATURES))) @ directions
    return directions, x.astype(np.float32)


def recovered(directions: np.ndarray, sae: SAE) -> float:
    rows = np.array(sae.W_dec)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return float(((directions @ rows.T).max(axis=1) >= 0.9).mean())


@pytest.mark.parametrize("arch, steps, options", [
    ("topk", 300, {"k": K}),
    ("relu", 800, {"l1_coefficient": 2.0}),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_trained_sae_recovers_the_planted_directions(arch, steps, options, seed):
    directions, x = planted(seed)
    sae = SAE.create(arch, d_in=D, d_sae=2 * N_FEATURES, site="planted", seed=seed, **options)
    assert recovered(directions, sae) < 0.1  # the random start matches (almost) nothing
    lr = 3e-2 if arch == "topk" else 1e-2
    result = train(sae, {"planted": x}, tokens=BATCH * steps, batch_size=BATCH, lr=lr, seed=seed, progress=False)
    assert recovered(directions, sae) >= 0.9
    assert result.final()[0]["fve"] > 0.7
