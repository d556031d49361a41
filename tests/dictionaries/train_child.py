"""A training run into a run folder, run as a subprocess by the resume tests; it can SIGKILL itself.

``python -m tests.dictionaries.train_child OUT STOP_AT N``: :func:`run` into ``OUT``, killing this process
with SIGKILL (``kill -9``) at the ``N``-th time it reaches ``STOP_AT``:

- ``ckpt-tmp``: a checkpoint is written under its temporary name, not yet renamed;
- ``ckpt-renamed``: a checkpoint has just been renamed to its final name;
- ``slow``: never; every step sleeps 40 ms so that the parent can kill the run from outside;
- ``none``: never.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from mlxterp import SAE, InterpretableModel, train
from mlxterp.dictionaries import trainer
from mlxterp.store import files
from tests.models import CharTokenizer, tiny_llama_module

PROMPTS = [f"resume {i}: " + "abcdefghij"[: 1 + i % 9] * (1 + i % 2) for i in range(40)]
STEPS, BATCH = 14, 24


def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=7), tokenizer=CharTokenizer())


def dictionaries() -> list:
    return [SAE.create("topk", d_sae=48, k=3, site="layers.1.resid_pre", dead_tokens=48, seed=1),
            SAE.create("jumprelu", d_sae=32, site="layers.2.mlp", bandwidth=0.2, init_threshold=0.1, seed=2),
            SAE.create("batchtopk", d_sae=32, k=2.0, site="layers.3", seed=3)]


def run(m: InterpretableModel, out: str, dicts: list = None):
    """The training every run of the resume tests makes (the same call, uninterrupted or not)."""
    return train(dicts if dicts is not None else dictionaries(), model=m, prompts=PROMPTS, tokens=STEPS * BATCH,
                 batch_size=BATCH, lr=5e-3, seed=3, out=out, checkpoint_every=2, prompt_batch=6, shuffle_batches=3,
                 progress=False)


def install_stop(stop_at: str, n: int) -> None:
    real_commit = files.commit
    seen = {"count": 0}

    def commit(tmp, path):
        if path.name == "checkpoint.safetensors":
            seen["count"] += 1
            if stop_at == "ckpt-tmp" and seen["count"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        real_commit(tmp, path)
        if path.name == "checkpoint.safetensors" and stop_at == "ckpt-renamed" and seen["count"] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    files.commit = commit
    if stop_at == "slow":
        real_step = trainer._Runner.run_step

        def slow(self, *args):
            time.sleep(0.04)
            return real_step(self, *args)

        trainer._Runner.run_step = slow


if __name__ == "__main__":
    out, stop_at, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    install_stop(stop_at, n)
    run(model(), out)
