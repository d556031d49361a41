"""Sweeps sharded over ``mx.distributed``: two local processes over the ring backend give the single-process
results on every rank, each doing its share; the ``distributed=`` switch and its errors.

The ranks are started directly with ``MLX_RANK`` and ``MLX_HOSTFILE`` (as ``mlx.launch`` does, without the
launcher's busy-polling process); one test goes through ``mlx.launch`` itself. Each rank runs
:mod:`tests.distributed_child`; this process runs the same sweeps with ``distributed=False``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import ActivationStore, batch_get_activations, collect_activations
from mlxterp import distributed as dist
from tests import distributed_child as child

REPO = Path(__file__).resolve().parents[1]
SWEEPS = ("activation_patching", "patching_grid", "patching_grid_attn", "head_patching")
FLOAT_TOL = {"program_scan": 1e-5}  # logits: one 5-variant batch vs batches of 3 and 2 (exact on this CPU)
needs_ring = pytest.mark.skipif(not mx.distributed.is_available(),
                                reason="this MLX build has no distributed backend (mx.distributed.is_available())")


def finish(procs: list, timeout: float = 240) -> None:
    """Wait for every process; on a failure or a timeout, kill the others and fail with their output."""
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the ranks did not finish in time: " + " | ".join(p.communicate()[1][-1500:] for p in procs))
    failed = [(p.returncode, err[-3000:]) for p, (_, err) in zip(procs, outputs) if p.returncode != 0]
    assert not failed, failed


def spawn_ranks(out: Path, work: list, n: int = 2) -> list:
    """Run :mod:`tests.distributed_child` on ``n`` ring ranks started directly; each rank's saved arrays."""
    hostfile = dist.local_hostfile(out / "hosts.json", n)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.distributed_child", str(out), ",".join(work)], cwd=REPO,
                              env={**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(n)]
    finish(procs)
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(n)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not mx.distributed.is_available():
        pytest.skip("this MLX build has no distributed backend (mx.distributed.is_available())")
    out = tmp_path_factory.mktemp("ranks")
    results = spawn_ranks(out, list(child.WORK))
    results[0]["folder"] = out
    return results


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same sweeps in this process alone, with the work each one did."""
    out = tmp_path_factory.mktemp("single")
    counter = child.Counter()
    try:
        m = child.model()
        results = {}
        for name, work in child.WORK.items():
            cells = counter.cells
            results[name] = (work(m, False, out), counter.cells - cells)
    finally:
        counter.close()
    return results


@needs_ring
@pytest.mark.parametrize("name", list(child.WORK))
def test_every_rank_returns_the_single_process_result(ranks, single, name):
    want = single[name][0]
    assert all(int(r["size"]) == 2 for r in ranks)
    assert np.array_equal(ranks[0][name], ranks[1][name])  # both ranks hold the same full result
    got = ranks[0][name]
    assert got.shape == want.shape
    # Chunking changes which rows share a forward; on this CPU the numbers come out bit-identical
    # (sweeps are compared to 1e-4 percentage points in case another BLAS sums in another order).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 if name in SWEEPS else FLOAT_TOL.get(name, 0))


@needs_ring
@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_cells_are_split_across_ranks(ranks, single, name):
    total = single[name][1]
    assert sorted(int(r[f"cells_{name}"]) for r in ranks) == [total // 2, total - total // 2]


@needs_ring
@pytest.mark.parametrize("name, total", [
    ("batch_get_activations", len(child.PROMPTS)),  # prompts
    ("collect_activations", 5),  # rows of the batch
    ("positions_store", 6),  # windows of 4 prompts
    ("tokens_store", 5),  # windows of 5 prompts
    ("program_scan", 5),  # variants
])
def test_activation_and_scan_items_are_split_across_ranks(ranks, name, total):
    assert [int(r[f"items_{name}"]) for r in ranks] == [total - total // 2, total // 2]  # rank 0: 0, 2, 4, ...


@needs_ring
def test_store_shards_come_from_both_ranks(ranks):
    store = ActivationStore(ranks[0]["folder"] / "positions")
    assert store.complete and {e["rank"] for e in store.manifest["shards"]} == {0, 1}
    np.testing.assert_array_equal(store.prompt_index(), np.arange(len(child.PROMPTS)))


@needs_ring
def test_mlx_launch_runs_the_same_script(tmp_path, single):
    launcher = Path(sys.executable).parent / "mlx.launch"
    if not launcher.is_file():
        pytest.skip(f"mlx.launch is not installed beside {sys.executable}")
    free = json.loads(dist.local_hostfile(tmp_path / "free.json", 1).read_text())
    port = free[0][0].rsplit(":", 1)[1]  # the launcher takes it and the next one
    # nice: the launcher busy-polls a core while the ranks run (see design.md)
    proc = subprocess.Popen([str(launcher), "--backend", "ring", "-n", "2", "--starting-port",
                             str(port), "--python", sys.executable, "--", "-m", "tests.distributed_child",
                             str(tmp_path), "activation_patching"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    finish([proc])
    for r in range(2):
        saved = np.load(tmp_path / f"rank{r}.npz")
        assert int(saved["size"]) == 2
        np.testing.assert_allclose(saved["activation_patching"], single["activation_patching"][0], rtol=0, atol=1e-4)


# -- the switch, in this single process ------------------------------------------------------------------
def test_resolve_group_alone():
    assert dist.resolve_group(False) is None and dist.resolve_group("auto") is None
    with pytest.raises(RuntimeError, match=r"distributed=True needs a distributed group .*mlx.launch --backend ring -n 2"):
        dist.resolve_group(True)
    with pytest.raises(ValueError, match="distributed must be True, False, 'auto' or an mx.distributed.Group"):
        dist.resolve_group("yes")


@pytest.mark.parametrize("call", [
    lambda m: m.activation_patching(child.CLEAN, child.CORRUPTED, distributed=True),
    lambda m: m.patching_grid(child.CLEAN, child.CORRUPTED, distributed=True),
    lambda m: m.head_patching(child.CLEAN, child.CORRUPTED, distributed=True),
    lambda m: batch_get_activations(m, child.PROMPTS, progress=False, distributed=True),
    lambda m: collect_activations(m, child.PROMPTS[:2], distributed=True),
    lambda m: child.WORK["program_scan"](m, True, None),
])
def test_distributed_true_without_a_group_is_an_error(call):
    with pytest.raises(RuntimeError, match="needs a distributed group of more than one process"):
        call(child.model())


class FakeGroup:
    def __init__(self, rank: int, size: int):
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


@pytest.mark.parametrize("n, size", [(10, 2), (7, 3), (2, 4), (0, 2)])
def test_my_items_and_assemble_are_inverse(n, size):
    items = list(range(n))
    parts = [np.array(dist.my_items(items, FakeGroup(r, size)), dtype=np.int64) for r in range(size)]
    assert sorted(np.concatenate(parts).tolist()) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    np.testing.assert_array_equal(dist.assemble(parts, n), np.arange(n))


def test_gather_alone_is_the_local_array():
    local = np.arange(6.0).reshape(3, 2)
    (got,) = dist.gather(local, None)
    np.testing.assert_array_equal(got, local)
    dist.barrier(None)  # no-op


def test_local_hostfile(tmp_path):
    path = dist.local_hostfile(tmp_path / "ring.json", 3)
    hosts = json.loads(path.read_text())
    assert len(hosts) == 3 and all(len(h) == 1 and h[0].startswith("127.0.0.1:") for h in hosts)
    assert len({h[0] for h in hosts}) == 3


def test_distributed_is_reserved_as_a_program_param_name():
    import mlxterp

    m = child.model()
    with pytest.raises(ValueError, match="other than 'tokens' and 'distributed'"):
        with m.trace(child.CLEAN, capture="saved"):
            mlxterp.param("distributed", 1.0)
