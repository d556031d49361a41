"""One rank of the distributed tests, and the sweeps they compare.

``python -m tests.distributed_child OUT WORK[,WORK...]``, started as one process of a ring group (by
``mlx.launch`` or with ``MLX_RANK`` + ``MLX_HOSTFILE`` set), runs each named sweep of :data:`WORK` with
``distributed=True`` and saves this rank's results, plus how much of each sweep it ran itself, to
``OUT/rank<r>.npz``. The tests run the same sweeps in their own process with ``distributed=False``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict

import mlx.core as mx
import numpy as np

import mlxterp
from mlxterp import InterpretableModel, batch_get_activations, collect_activations
from tests.models import CharTokenizer, tiny_llama_module

CLEAN, CORRUPTED = "The cat sat on a mat", "The dog sat on a hat"
PROMPTS = [f"prompt {i}: " + "xyz"[: i % 4] * (1 + i % 5) for i in range(21)]


def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=5, layers=5), tokenizer=CharTokenizer())


def _array(acts: Dict[str, Any]) -> np.ndarray:
    return np.stack([np.array(acts[k]) for k in sorted(acts)])


def _store(store: Any) -> np.ndarray:
    return np.concatenate([np.array(store.get(k)).reshape(len(store), -1) for k in store.keys], axis=1)


def _program_scan(m: InterpretableModel, d: Any) -> np.ndarray:
    """A steering program's batched scan over 5 vectors and strengths (``Program.batched``)."""
    with m.trace(CLEAN, capture="saved") as tr:
        steer, alpha = mlxterp.param("steer", mx.zeros(64)), mlxterp.param("alpha", 1.0)
        m.layers[2].output[:, -1] = m.layers[2].output[:, -1] + alpha * steer
        m.output[:, -1].save("logits")
    vectors = mx.array(np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32))
    out = tr.program().batched(steer=vectors, alpha=np.linspace(-1, 1, 5), distributed=d)
    return np.array(out["logits"])


WORK: Dict[str, Callable[[InterpretableModel, Any, Path], np.ndarray]] = {
    "activation_patching": lambda m, d, out: np.array(list(m.activation_patching(
        CLEAN, CORRUPTED, component="mlp", batch_size=2, distributed=d).values())),
    "patching_grid": lambda m, d, out: m.patching_grid(
        CLEAN, CORRUPTED, component="output", batch_size=6, distributed=d).grid,
    "head_patching": lambda m, d, out: m.head_patching(
        CLEAN, CORRUPTED, layers=[0, 2, 4], distributed=d).grid,
    "patching_grid_attn": lambda m, d, out: m.patching_grid(
        CLEAN, CORRUPTED, component="self_attn", layers=[1, 3], positions=[4, 5, -1], distributed=d).grid,
    "program_scan": lambda m, d, out: _program_scan(m, d),
    "batch_get_activations": lambda m, d, out: _array(batch_get_activations(
        m, PROMPTS, layers=[0, 4], positions=[0, -1], batch_size=4, progress=False, distributed=d)),
    "collect_activations": lambda m, d, out: _array(collect_activations(
        m, PROMPTS[:5], layers=["layers.2", "layers.1.mlp"], distributed=d).activations),
    "positions_store": lambda m, d, out: _store(batch_get_activations(
        m, PROMPTS, layers=[1, 3], positions=-1, batch_size=4, out=out / "positions", shard_size=4,
        progress=False, distributed=d)),
    "tokens_store": lambda m, d, out: _store(collect_activations(
        m, PROMPTS, layers=["layers.0.mlp"], batch_size=4, out=out / "tokens", shard_size=5, progress=False,
        distributed=d)),
}


class Counter:
    """Counts the work this process takes itself: sweep cells run, and the items (prompts, store windows,
    scan variants) :func:`mlxterp.distributed.my_items` dealt it."""

    def __init__(self) -> None:
        from mlxterp import distributed as dist
        from mlxterp.analysis import patching

        self.cells = self.items = 0
        counter, real_sweep, real_items = self, patching.run_sweep, dist.my_items

        def run_sweep(model, tokens, sites, cells, *args, **kwargs):
            counter.cells += len(cells)
            return real_sweep(model, tokens, sites, cells, *args, **kwargs)

        def my_items(items, group):
            mine = real_items(items, group)
            counter.items += len(mine)
            return mine

        patching.run_sweep = run_sweep
        dist.my_items = my_items
        self.close = lambda: (setattr(patching, "run_sweep", real_sweep), setattr(dist, "my_items", real_items))


def main(out: Path, names: list) -> None:
    group = mx.distributed.init()
    counter = Counter()
    m = model()
    saved = {"size": np.array(group.size())}
    for name in names:
        cells, items = counter.cells, counter.items
        saved[name] = WORK[name](m, True, out)
        saved[f"cells_{name}"] = np.array(counter.cells - cells)
        saved[f"items_{name}"] = np.array(counter.items - items)
    np.savez(out / f"rank{group.rank()}.npz", **saved)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","))
