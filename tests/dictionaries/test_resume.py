"""A training run killed with a real ``kill -9`` and run again ends with exactly the weights (and history) of
an uninterrupted run with the same seed: live data (the model's forwards on prompts), three architectures
with state (dead-latent counters driving AuxK, JumpReLU thresholds, BatchTopK's running threshold)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.dictionaries import train_child as child

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return child.model()


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    dicts = child.dictionaries()
    result = child.run(model, str(tmp_path_factory.mktemp("reference") / "run"), dicts)
    assert max(result.history[0]["auxk"]) > 0  # dead latents appeared: AuxK's state is part of the run
    return dicts, result


def start_child(out: Path, stop_at: str, n: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.dictionaries.train_child", str(out), stop_at, str(n)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_step(out: Path) -> int:
    path = out / "checkpoint.safetensors"
    if not path.is_file():
        return -1
    try:
        _, meta = mx.load(str(path), return_metadata=True)
        return json.loads(meta["mlxterp.checkpoint"])["step"]
    except (RuntimeError, ValueError, KeyError):
        return -1


def assert_same_run(model, out: Path, reference) -> None:
    """Run the same call again to the end; same weights bit for bit, same history, nothing left over."""
    want_dicts, want = reference
    dicts = child.dictionaries()
    got = child.run(model, str(out), dicts)
    assert got.start > 0
    for a, b in zip(dicts, want_dicts):
        for name, value in b.weights().items():
            assert mx.array_equal(a[name], value).item(), (a, name)
    for h_got, h_want in zip(got.history, want.history):
        assert sorted(h_got) == sorted(h_want)
        for key in h_want:
            np.testing.assert_array_equal(h_got[key], h_want[key], err_msg=key)
    assert not [p.name for p in out.iterdir() if ".tmp." in p.name]


@pytest.mark.parametrize("stop_at, n", [("ckpt-tmp", 2), ("ckpt-renamed", 3)])
def test_kill_9_inside_a_checkpoint_write_then_rerun(tmp_path, model, reference, stop_at, n):
    out = tmp_path / "run"
    proc = start_child(out, stop_at, n)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert checkpoint_step(out) == (2 * (n - 1) if stop_at == "ckpt-tmp" else 2 * n)
    assert_same_run(model, out, reference)


def test_kill_9_from_outside_at_a_random_moment_then_rerun(tmp_path, model, reference):
    out = tmp_path / "run"
    proc = start_child(out, "slow")
    deadline = time.monotonic() + 240
    while checkpoint_step(out) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.1))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert 4 <= checkpoint_step(out) < child.STEPS
    assert_same_run(model, out, reference)


def test_a_finished_run_trains_nothing_when_called_again(tmp_path, model, reference):
    out = tmp_path / "run"
    child.run(model, str(out))
    dicts = child.dictionaries()
    again = child.run(model, str(out), dicts)
    assert again.start == child.STEPS and again.forwards == 0
    for a, b in zip(dicts, reference[0]):
        assert mx.array_equal(a.W_dec, b.W_dec).item()
    saved = sorted(p.name for p in out.iterdir())
    assert saved == ["00-layers.1.resid_pre-topk", "01-layers.2.mlp-jumprelu", "02-layers.3.resid_post-batchtopk",
                     "checkpoint.safetensors", "run.json"]
