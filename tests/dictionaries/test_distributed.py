"""Data-parallel training over ``mx.distributed``: two ring ranks (started directly with ``MLX_RANK`` and
``MLX_HOSTFILE``) end with the single-process weights up to float rounding, on arrays (TopK with AuxK,
BatchTopK's batch-wide selection, ReLU) and live (the forwards split between the ranks); the switch's
errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import SAE, train
from mlxterp import distributed as dist
from tests.dictionaries import distributed_child as child

REPO = Path(__file__).resolve().parents[2]
needs_ring = pytest.mark.skipif(not mx.distributed.is_available(),
                                reason="this MLX build has no distributed backend (mx.distributed.is_available())")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not mx.distributed.is_available():
        pytest.skip("this MLX build has no distributed backend (mx.distributed.is_available())")
    out = tmp_path_factory.mktemp("ranks")
    hostfile = dist.local_hostfile(out / "hosts.json", 2)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.dictionaries.distributed_child", str(out)], cwd=REPO,
                              env={**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        outputs = [p.communicate(timeout=400) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the ranks did not finish in time")
    failed = [err[-3000:] for p, (_, err) in zip(procs, outputs) if p.returncode != 0]
    assert not failed, failed
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


@pytest.fixture(scope="module")
def single():
    return {**child.arrays_run(False), **child.live_run(child.model(), False)}


@needs_ring
def test_two_ranks_train_the_single_process_weights(ranks, single):
    for key, want in single.items():
        if key == "live.forwards":
            continue
        for r, got in enumerate(ranks):
            assert got[key].shape == want.shape, key
            np.testing.assert_allclose(got[key], want, atol=2e-5, rtol=2e-4, err_msg=f"rank {r}: {key}")
    for key in ranks[0]:  # the ranks hold identical copies
        if key != "live.forwards":
            np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)


@needs_ring
def test_the_forwards_are_split_between_the_ranks(ranks, single):
    mine = [int(r["live.forwards"]) for r in ranks]
    assert sum(mine) == int(single["live.forwards"]) and min(mine) > 0


def test_distributed_true_without_a_group_is_an_error():
    with pytest.raises(RuntimeError, match="needs a distributed group of more than one process"):
        train(SAE.create("topk", d_sae=8, k=2, site="x"), {"x": child.ROWS}, tokens=64, batch_size=64,
              distributed=True)
