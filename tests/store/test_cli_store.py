"""``mlxterp activations --prompts FILE.jsonl --out DIR``: a resumable activation store from the command line
(in-process ``main(argv)`` on the real tiny llama stories260K)."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from mlxterp import ActivationStore, InterpretableModel, batch_get_activations
from mlxterp.cli import main
from mlxterp.store.lock import LOCK_FILE
from tests.models import STORIES
from tests.test_cli import assert_one_line_error, needs_stories

PROMPTS = ["Once upon a time", {"text": "there was a little girl"}, "who liked cats", {"prompt": "The end."}]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in PROMPTS) + "\n\n")
    return path


def test_help_mentions_the_store_options(capsys):
    code, out, _ = run(capsys, "activations", "--help")
    assert code == 0
    for option in ("--out DIR", "--dtype", "--shard-size", "--resume", "--no-resume", ".jsonl"):
        assert option in out


def test_bad_jsonl_line_is_a_usage_error(capsys, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"ok"\n{"body": 1}\n')
    code, _, err = run(capsys, "activations", "--model", "smollm2-135m", "--prompts", path, "--layers", "0",
                       "--out", tmp_path / "acts")
    assert code == 2
    assert_one_line_error(err, "--prompts", "line 2", "'text'")


@needs_stories
def test_store_end_to_end_then_rerun_and_mismatch(capsys, tmp_path, prompts_file):
    out = tmp_path / "acts"
    argv = ["activations", "--model", STORIES, "--prompts", prompts_file, "--layers", "0,-1", "--positions=0,-1",
            "--batch-size", "2", "--shard-size", "3", "--dtype", "float16", "--out", out]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert f"wrote {out} (2 shards + manifest.json)" in stdout
    assert "prompt/s" in err or "s/prompt" in err  # the tqdm bar shows a rate (and an ETA)
    store = ActivationStore(out)
    model = InterpretableModel(str(STORIES))
    texts = [p if isinstance(p, str) else next(iter(p.values())) for p in PROMPTS]
    memory = batch_get_activations(model, texts, layers=[0, -1], positions=[0, -1], batch_size=2, progress=False)
    assert store.keys == ["layer_0", "layer_4"] and store.manifest["metadata"]["model"] == str(STORIES)
    for key, value in memory.items():
        assert mx.array_equal(store.get(key), value.astype(mx.float16)).item(), key
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != LOCK_FILE}
    code, _, err = run(capsys, *argv)  # the same command again: nothing left to do (only the lock is taken)
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != LOCK_FILE} == before
    code, _, err = run(capsys, *argv[:-6], "--layers", "1", "--out", out)
    assert code == 2
    assert_one_line_error(err, "layers: the store has [0, 4], this run [1]")
    code, _, err = run(capsys, *argv, "--no-resume")
    assert code == 2
    assert_one_line_error(err, "--out", "already holds an activation store")
