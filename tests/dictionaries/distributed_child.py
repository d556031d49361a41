"""One rank of the data-parallel training tests, and the runs they compare.

``python -m tests.dictionaries.distributed_child OUT``, started as one process of a ring group (``MLX_RANK``
+ ``MLX_HOSTFILE``), runs :data:`RUNS` with ``distributed=True`` and saves this rank's trained weights,
histories and the forwards it ran to ``OUT/rank<r>.npz``. The tests run the same calls with
``distributed=False``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np

from mlxterp import SAE, InterpretableModel, Transcoder, train
from tests.models import CharTokenizer, tiny_llama_module

PROMPTS = [f"rank test {i}: " + "uvwxyz"[: 1 + i % 6] * (1 + i % 3) for i in range(30)]
ROWS = np.random.default_rng(11).normal(size=(600, 16)).astype(np.float32)


def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=8), tokenizer=CharTokenizer())


def arrays_run(distributed: Any) -> Dict[str, np.ndarray]:
    dicts = [SAE.create("topk", d_sae=40, k=3, site="x", dead_tokens=64, seed=1),
             SAE.create("batchtopk", d_sae=40, k=3.0, site="x", seed=2),
             SAE.create("relu", d_sae=24, site="x", seed=3)]
    result = train(dicts, {"x": ROWS}, tokens=64 * 12, batch_size=64, lr=3e-3, seed=5, progress=False,
                   distributed=distributed)
    return _flat("arrays", dicts, result)


def live_run(m: InterpretableModel, distributed: Any) -> Dict[str, np.ndarray]:
    dicts = [SAE.create("topk", d_sae=48, k=4, site="layers.1.resid_pre", dead_tokens=40, seed=4),
             Transcoder.create("jumprelu", d_sae=32, site="layers.2.mlp", bandwidth=0.2, init_threshold=0.1, seed=5)]
    result = train(dicts, model=m, prompts=PROMPTS, tokens=32 * 8, batch_size=32, lr=3e-3, seed=6, prompt_batch=2,
                   shuffle_batches=2, progress=False, distributed=distributed)
    out = _flat("live", dicts, result)
    out["live.forwards"] = np.array(result.forwards)
    return out


def _flat(prefix: str, dicts: list, result: Any) -> Dict[str, np.ndarray]:
    out = {}
    for i, (d, history) in enumerate(zip(dicts, result.history)):
        for name, value in d.weights().items():
            out[f"{prefix}.{i}.{name}"] = np.array(value)
        for name, value in history.items():
            out[f"{prefix}.{i}.history.{name}"] = value
    return out


if __name__ == "__main__":
    import mlx.core as mx

    rank = mx.distributed.init().rank()
    results = {**arrays_run(True), **live_run(model(), True)}
    np.savez(Path(sys.argv[1]) / f"rank{rank}.npz", **results)
