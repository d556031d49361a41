# %% [markdown]
# # Sweep 10,000 prompts on two machines
#
# Collect one layer's activations for 10,000 prompts into a disk-backed store, split between two processes
# with `mx.distributed`, then train a linear probe on them. On two real machines the same script runs
# under `mlx.launch --hostfile hosts.json`; here the two ranks run on this machine, started directly with
# `MLX_RANK` and a ring hostfile (on a small machine that avoids the launcher's busy-polling process).
#
# What makes it safe to run big: the store is written in shards, each renamed into place and listed in a
# manifest only when complete, so a run stopped at any point (even by `kill -9`) resumes where it stopped;
# both ranks check they were given the same arguments before any work; and every rank returns the same
# store.

# %%
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxterp import ActivationStore
from mlxterp.distributed import local_hostfile

MODEL = os.environ.get("MLXTERP_TUTORIAL_MODEL", "smollm2-135m")
N_PROMPTS = int(os.environ.get("MLXTERP_TUTORIAL_PROMPTS", "10000"))

# %% [markdown]
# ## The prompts
#
# Short reviews, half positive and half negative, written to `prompts.jsonl` (one JSON value per line, as
# `mlxterp activations --prompts` reads them too). The labels stay with us: the store keeps activations.

# %%
rng = np.random.default_rng(0)
things = ["food", "film", "hotel", "book", "concert", "service", "game", "trip", "class", "phone", "show", "meal"]
good = ["wonderful", "great", "excellent", "lovely", "delightful", "superb", "fantastic", "brilliant"]
bad = ["terrible", "awful", "dreadful", "horrible", "boring", "disappointing", "poor", "bad"]
templates = ["The {} was {}.", "I thought the {} was {}.", "Honestly, the {} was {}.", "Our {} was really {}."]
labels = rng.integers(0, 2, N_PROMPTS)
prompts = [templates[rng.integers(len(templates))].format(things[rng.integers(len(things))],
                                                          (good if y else bad)[rng.integers(8)]) for y in labels]
Path("prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
print(len(prompts), "prompts, e.g.", prompts[:3])

# %% [markdown]
# ## The script every rank runs
#
# It is an ordinary mlxterp script: `batch_get_activations(..., out="acts")` streams the activations of the
# last token at one layer into the store. With `distributed=True` it deals the prompts out round-robin over
# the ranks (and fails at once if there is no group); each rank writes its own shards, rank 0 the manifest.
# The forward stops after the layer it needs.

# %%
WORKER = '''
import os

import mlx.core as mx

from mlxterp import InterpretableModel, batch_get_activations
from mlxterp.store import PromptFile

model = InterpretableModel(os.environ.get("MLXTERP_TUTORIAL_MODEL", "smollm2-135m"))
layer = len(model.layers) // 3
store = batch_get_activations(model, PromptFile("prompts.jsonl"), layers=[layer], positions=-1, out="acts",
                              dtype="float16", batch_size=64, distributed=True, progress=False)
if mx.distributed.init().rank() == 0:
    print(store)
'''
Path("sweep.py").write_text(WORKER)

# %% [markdown]
# ## Two ranks
#
# `local_hostfile` writes a ring hostfile of free local ports, one per rank. On two machines, use
# `mlx.launch --backend ring --hostfile hosts.json python sweep.py` instead, with the prompts and the store
# folder on a file system both reach.

# %%
local_hostfile("ring.json", 2)
t0 = time.perf_counter()
ranks = [subprocess.Popen([sys.executable, "sweep.py"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": "ring.json"}) for r in range(2)]
outputs = [rank.communicate(timeout=3600)[0] for rank in ranks]
for r, (rank, out) in enumerate(zip(ranks, outputs)):
    if rank.returncode != 0:
        raise RuntimeError(f"rank {r} failed (exit {rank.returncode}):\n{out}")
seconds = time.perf_counter() - t0
print(outputs[0].strip())
print(f"2 ranks: {N_PROMPTS} prompts in {seconds:.0f} s ({N_PROMPTS / seconds:.0f} prompts/s, model loading included)")

# %% [markdown]
# ## Read the store
#
# `ActivationStore` opens the shards memory-mapped and checks each against the manifest. Rows are in prompt
# order, whichever rank wrote them.

# %%
store = ActivationStore("acts")
key = store.keys[0]  # "layer_10" on the default model
print(store, "one row:", store.row_shape(key))
x = np.array(store.get(key, dtype=mx.float32))  # (prompts, hidden): small enough to hold here
print(x.shape, x.dtype)

# %% [markdown]
# ## A linear probe
#
# Does this layer's last-token activation say whether the review is positive? A logistic regression on 80%
# of the prompts, tested on the rest.

# %%
split = int(0.8 * len(x))
mean, std = x[:split].mean(0), x[:split].std(0) + 1e-6
xs, ys = mx.array((x - mean) / std), mx.array(labels.astype(np.float32))
w, b = mx.zeros(x.shape[1]), mx.array(0.0)


def loss(w, b, xb, yb):
    z = xb @ w + b
    return mx.mean(mx.logaddexp(0.0, z) - yb * z) + 1e-3 * mx.sum(w * w)


step = mx.value_and_grad(loss, argnums=(0, 1))
for _ in range(200):
    value, (gw, gb) = step(w, b, xs[:split], ys[:split])
    w, b = w - 0.5 * gw, b - 0.5 * gb
accuracy = float(((xs[split:] @ w + b > 0) == (ys[split:] > 0.5)).mean())
print(f"train loss {float(value):.3f}, held-out accuracy {accuracy:.3f} on {len(x) - split} prompts")
