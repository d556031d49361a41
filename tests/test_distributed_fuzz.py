"""Random sharded calls on two ring ranks against this process alone and against the hand-written forward.

Two ranks of :mod:`tests.distributed_server` start once for the module and receive every call:

- random trace programs of the reference fuzzer (``tests.fuzz``: saves, writes of
  numbers and vectors, slices, interventions, cross-layer reads; single prompts and right-padded batches)
  replayed as ``Program.batched(..., distributed=True)`` scans of ``K`` value sets: both ranks must return
  this process's ``distributed=False`` scan, and every variant must equal the forward written by hand
  (``tests/reference.py``) run with that variant's values;
- random arguments (layers, positions, heads, components, metrics, padded prompt lists, batch sizes) of
  every sharded sweep and activation call, in memory and into stores: both ranks must return this
  process's result;
- ranks given different arguments (prompts, their number, layers, positions, clean texts, metrics, scan
  vectors, store prompts): every rank must raise :class:`~mlxterp.distributed.DistributedMismatchError`
  naming what differs, before any work;
- the ranks writing one store are one writer: a store another process holds is refused on every rank, and
  their store's lost manifest is rebuilt from the shards both ranks wrote.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxterp import distributed as dist
from mlxterp.store.lock import WriterLock
from tests import distributed_server as server
from tests.fuzz import VOCAB, assert_close, programs, run_reference, values_for

REPO = Path(__file__).resolve().parents[1]
SWEEP_TOL = 1e-4  # recoveries (relative to their largest, at least 1 point; bit-identical on this CPU)
SCAN_TOL = 1e-5  # a scan's variants in one forward vs split over two ranks (relative, as above)

pytestmark = pytest.mark.skipif(not mx.distributed.is_available(),
                                reason="this MLX build has no distributed backend (mx.distributed.is_available())")


class Ranks:
    """Two server ranks; :meth:`call` sends both one command and returns each rank's reply and arrays."""

    def __init__(self, folder: Path, n: int = 2):
        self.folder, self.ids = folder, itertools.count()
        hostfile = dist.local_hostfile(folder / "hosts.json", n)
        self.logs = [open(folder / f"rank{r}.log", "w") for r in range(n)]
        self.procs = [subprocess.Popen([sys.executable, "-m", "tests.distributed_server", str(folder)], cwd=REPO,
                                       env={**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logs[r], text=True)
                      for r in range(n)]

    def call(self, op: str, args: dict, ranks: list | None = None, timeout: float = 120) -> list:
        if any(p.poll() is not None or p.stdin.closed for p in self.procs):
            pytest.fail(f"the ranks were stopped by an earlier failure: {self.log(0)} | {self.log(1)}")
        command = {"id": next(self.ids), "op": op, "args": args, "ranks": ranks}
        for p in self.procs:
            p.stdin.write(json.dumps(command) + "\n")
            p.stdin.flush()
        replies, deadline = [], time.monotonic() + timeout
        for r, p in enumerate(self.procs):
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = p.stdout.readline() if ready else ""
            if not line:
                self.close()
                pytest.fail(f"rank {r} gave no answer to {command} (timed out or died): {self.log(r)}")
            reply = json.loads(line)
            if "ok" in reply:
                reply["arrays"] = dict(np.load(self.folder / f"{command['id']}-rank{r}.npz"))
            replies.append(reply)
        return replies

    def ok(self, op: str, args: dict) -> list:
        """Both ranks' arrays; a failure of either rank fails the test with its traceback."""
        replies = self.call(op, args)
        failed = [r.get("trace", r) for r in replies if "ok" not in r]
        assert not failed, failed
        return [r["arrays"] for r in replies]

    def log(self, r: int) -> str:
        return (self.folder / f"rank{r}.log").read_text()[-3000:]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in self.logs:
            f.close()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    group = Ranks(tmp_path_factory.mktemp("ranks"))
    yield group
    group.close()


def assert_same(got: dict, want: dict, tol: float) -> None:
    """The same keys and shapes, values within ``tol`` times the largest magnitude (at least 1); 0: equal."""
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        scale = max(1.0, float(np.abs(want[key]).max(initial=0.0))) if want[key].dtype.kind == "f" else 1.0
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=tol * scale, err_msg=key)


def check_ranks(ranks: Ranks, op: str, args: dict, tol: float) -> list:
    """Both ranks return the same arrays, equal to this process's ``distributed=False`` call; or all three
    raise the same error (random arguments may be invalid: e.g. a metric whose clean and corrupted values
    coincide)."""
    replies = ranks.call(op, args)
    try:
        want = server.OPS[op](args, False)
    except ValueError as exc:
        assert [(r.get("error"), r.get("message")) for r in replies] == [(type(exc).__name__, str(exc))] * 2
        return []
    failed = [r.get("trace", r) for r in replies if "ok" not in r]
    assert not failed, failed
    got = [r["arrays"] for r in replies]
    assert_same(got[1], got[0], 0)  # every rank holds the whole result
    assert_same(got[0], want, tol)
    return got


FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


# -- random programs as sharded scans ---------------------------------------------------------------------
@st.composite
def token_rows(draw) -> list:
    """A single prompt, an equal-length batch, or a right-padded batch of prompts of different lengths."""
    lengths = draw(st.one_of(st.lists(st.integers(2, 6), min_size=1, max_size=1),
                             st.integers(2, 6).flatmap(lambda n: st.lists(st.just(n), min_size=2, max_size=2)),
                             st.lists(st.integers(2, 6), min_size=2, max_size=3).filter(lambda ls: len(set(ls)) > 1)))
    rng = np.random.default_rng(sum(lengths) * 31 + len(lengths))
    return [rng.integers(1, VOCAB, size=n).tolist() for n in lengths]


def padded(rows: list) -> mx.array:
    out = np.zeros((len(rows), max(map(len, rows))), dtype=np.int32)  # right padding with id 0, by hand
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return mx.array(out)


@settings(FUZZ, max_examples=30)
@given(program=programs(), rows=token_rows(), seeds=st.lists(st.integers(0, 999), min_size=2, max_size=5, unique=True))
def test_random_programs_scanned_on_two_ranks_match_one_process_and_the_hand_written_forward(ranks, program, rows,
                                                                                            seeds):
    args = {"program": [[list(s.site), s.kind, s.choice, s.mapped] for s in program], "tokens": rows, "seeds": seeds}
    got = check_ranks(ranks, "program_scan", args, SCAN_TOL)
    got = got[0] if got else {}
    if not got:
        return  # a program without values (saves and reads only) has no params to scan
    module = server.fuzz_model().model
    for k, seed in enumerate(seeds):
        logits, saves = run_reference(module, padded(rows), program, values_for(program, seed))
        where = f"variant {k} (seed {seed}) of program={program} on {rows}"
        assert_close(got["logits"][k], logits, "logits " + where)
        assert sorted(got) == sorted(["logits", *saves]), where
        for key, value in saves.items():
            assert_close(got[key][k], value, f"save {key} " + where)


# -- random sweep and activation arguments ---------------------------------------------------------------
TEXT = "abcdefghijklmnopqrstuvwxyz ."


@st.composite
def prompt_pair(draw) -> tuple:
    n = draw(st.integers(3, 9))
    clean = "".join(draw(st.lists(st.sampled_from(TEXT), min_size=n, max_size=n)))
    flip = draw(st.integers(0, n - 1))
    corrupted = clean[:flip] + ("x" if clean[flip] != "x" else "y") + clean[flip + 1:]
    return clean, corrupted


def subset(items: list) -> st.SearchStrategy:
    return st.lists(st.sampled_from(items), min_size=1, max_size=min(4, len(items)), unique=True)


LAYER_IDS = list(range(5))


@st.composite
def sweep_calls(draw) -> tuple:
    op = draw(st.sampled_from(["activation_patching", "patching_grid", "head_patching"]))
    clean, corrupted = draw(prompt_pair())
    args = {"clean": clean, "corrupted": corrupted, "layers": draw(subset(LAYER_IDS + [-1])),
            "metric": draw(st.sampled_from(["l2", "cosine", "logit_diff", "logprob"])),
            "batch_size": draw(st.sampled_from([None, 1, 3, 8]))}
    if op == "head_patching":
        args["heads"] = draw(st.one_of(st.none(), subset([0, 1, 2, 3])))
        args["layers"] = sorted({x % 5 for x in args["layers"]})
    else:
        args["component"] = draw(st.sampled_from(["output", "mlp", "self_attn", "mlp.down_proj"]))
    if op == "patching_grid":
        n = len(clean) + 1  # the character tokenizer's BOS, then one id per character
        args["positions"] = draw(st.one_of(st.none(), subset(list(range(n)) + [-1, -2])))
    return op, args


@settings(FUZZ, max_examples=40)
@given(call=sweep_calls())
def test_random_sweeps_on_two_ranks_match_one_process(ranks, call):
    op, args = call
    check_ranks(ranks, op, args, SWEEP_TOL)


STORES = itertools.count()


@st.composite
def activation_calls(draw) -> tuple:
    op = draw(st.sampled_from(["batch_get_activations", "collect_activations", "positions_store",
                               "tokens_store"]))
    prompts = draw(st.lists(st.text(TEXT, min_size=1, max_size=12), min_size=1, max_size=9))
    args = {"batch_size": draw(st.integers(1, 5))}
    if op in ("batch_get_activations", "positions_store"):
        shortest = min(len(p) for p in prompts) + 1
        args.update(prompts=prompts, layers=draw(subset(LAYER_IDS + [-1, "layers.2.resid_mid", "layers.0.attn.v"])),
                    positions=draw(st.one_of(st.integers(-shortest, shortest - 1),
                                             subset(list(range(-shortest, shortest))))))
    else:
        names = ["layers.0", "layers.2.mlp", "layers.4.self_attn", "layers.1.resid_mid", "layers.3.resid_pre",
                 "layers.1.self_attn.q"]
        args.update(inputs=prompts, layers=draw(subset(names)))
        if op == "collect_activations":
            del args["batch_size"]
    if op.endswith("store"):
        args.update(out="store", shard_size=draw(st.integers(1, 4)))  # a new folder per example (see the test)
    return op, args


@settings(FUZZ, max_examples=25)
@given(call=activation_calls())
def test_random_activation_calls_on_two_ranks_match_one_process(ranks, tmp_path_factory, call):
    op, args = call
    if "out" in args:  # the ranks write one store, this process another
        name = f"store-{next(STORES)}"
        args = {**args, "out": str(ranks.folder / name)}
        got = ranks.ok(op, args)
        want = server.OPS[op]({**args, "out": str(tmp_path_factory.mktemp("alone") / name)}, False)
        assert_same(got[1], got[0], 0)
        assert_same(got[0], want, 0)
    else:
        check_ranks(ranks, op, args, 0)


# -- ranks given different arguments ----------------------------------------------------------------------
CLEAN, CORRUPTED = "The cat sat on a mat", "The dog sat on a hat"
PROMPTS = [f"prompt {i}: " + "xyz"[: i % 4] * (1 + i % 5) for i in range(24)]
OTHER_PROMPTS = [f"other {i}: " + "abc"[: i % 4] * (1 + i % 5) for i in range(24)]
MISMATCHES = {  # what differs: (call, shared arguments, each rank's own, the argument the error names)
    "prompts": ("batch_get_activations", {"layers": [1], "positions": -1},
                [{"prompts": PROMPTS}, {"prompts": OTHER_PROMPTS}], "prompts"),
    "prompt count": ("batch_get_activations", {"layers": [1], "positions": -1},
                     [{"prompts": PROMPTS}, {"prompts": PROMPTS[:20]}], "prompts"),
    "layers": ("batch_get_activations", {"prompts": PROMPTS, "positions": -1}, [{"layers": [1]}, {"layers": [2]}],
               "layers"),
    "positions": ("batch_get_activations", {"prompts": PROMPTS, "layers": [1]},
                  [{"positions": -1}, {"positions": 0}], "positions"),
    "inputs": ("collect_activations", {"layers": ["layers.1"]}, [{"inputs": PROMPTS[:4]}, {"inputs": PROMPTS[4:8]}],
               "inputs"),
    "clean text": ("activation_patching", {"corrupted": CORRUPTED},
                   [{"clean": CLEAN}, {"clean": "The cow sat on a mat"}], "clean_text"),
    "metric": ("patching_grid", {"clean": CLEAN, "corrupted": CORRUPTED, "layers": [1, 2]},
               [{"metric": "l2"}, {"metric": "cosine"}], "metric"),
    "heads": ("head_patching", {"clean": CLEAN, "corrupted": CORRUPTED, "layers": [1]},
              [{"heads": [0, 1]}, {"heads": [2, 3]}], "heads"),
    "scan vectors": ("steering_scan", {"prompt": CLEAN, "layer": 2, "k": 4}, [{"seed": 0}, {"seed": 1}], "values"),
}


@pytest.mark.parametrize("what", list(MISMATCHES))
def test_ranks_given_different_arguments_all_raise_naming_them(ranks, what):
    op, args, per_rank, name = MISMATCHES[what]
    replies = ranks.call(op, args, per_rank)
    for r, reply in enumerate(replies):
        assert reply.get("error") == "DistributedMismatchError", (r, reply)
        assert "ranks were given different arguments" in reply["message"]
        assert f"{name} differs (rank 0: " in reply["message"] and "; rank 1: " in reply["message"], reply
    assert replies[0]["message"] == replies[1]["message"]
    again = ranks.ok(op, {**args, **per_rank[0]})  # the group still works: the next call is served
    assert again[0].keys() == again[1].keys()


def test_a_store_of_ranks_given_different_prompts_is_refused_before_any_shard(ranks):
    out = ranks.folder / "mismatched-store"
    replies = ranks.call("positions_store", {"layers": [1], "positions": -1, "shard_size": 4, "out": str(out)},
                         [{"prompts": PROMPTS}, {"prompts": OTHER_PROMPTS}])
    assert [r.get("error") for r in replies] == ["DistributedMismatchError"] * 2
    assert not list(out.glob("shard-*")) and not (out / "manifest.json").exists()


def test_ranks_writing_one_store_with_different_models_all_raise(ranks):
    out = ranks.folder / "two-models"
    replies = ranks.call("positions_store", {"prompts": PROMPTS, "layers": [1], "positions": -1, "out": str(out)},
                         [{"model_seed": 5}, {"model_seed": 6}])
    for reply in replies:
        assert reply.get("error") == "DistributedMismatchError", reply
        assert "activation store: the 2 ranks were given different arguments" in reply["message"]
        assert "model differs (rank 0: {class: 'Model', parameters: " in reply["message"], reply["message"]
    assert not list(out.glob("shard-*"))


def test_a_function_metric_is_compared_by_its_code_and_captured_values():
    from mlxterp.digest import digest

    def score(target):
        return lambda logits: logits[:, target] - logits[:, 0]

    assert digest(score(3)) == digest(score(3))
    assert digest(score(3)) != digest(score(4))  # same name and code, another captured token
    assert digest(lambda x: x * 2) != digest(lambda x: x * 3)
    assert digest(np.arange(3.0)) != digest(np.arange(3.0).astype(np.float32))
    assert digest(mx.arange(3)) == digest(mx.arange(3)) != digest(mx.arange(4))


# -- one store, one writer group --------------------------------------------------------------------------
STORE_ARGS = {"prompts": PROMPTS, "layers": [1, 3], "positions": [0, -1], "shard_size": 3}


def test_ranks_writing_a_store_another_process_holds_all_raise_naming_it(ranks):
    out = ranks.folder / "locked-store"
    out.mkdir()
    with WriterLock(out):
        replies = ranks.call("positions_store", {**STORE_ARGS, "out": str(out)})
    for reply in replies:
        assert reply.get("error") == "StoreLockedError", reply
        assert f"being written by another process (pid {os.getpid()} on host" in reply["message"]
    assert not list(out.glob("shard-*"))
    got = ranks.ok("positions_store", {**STORE_ARGS, "out": str(out)})  # released: the group writes it now
    assert_same(got[0], server.OPS["positions_store"]({**STORE_ARGS, "out": str(ranks.folder / "alone")}, False), 0)


def test_a_store_of_two_ranks_with_a_lost_manifest_is_rebuilt_without_collecting_again(ranks):
    out = ranks.folder / "rebuilt-store"
    first = ranks.ok("positions_store", {**STORE_ARGS, "out": str(out)})
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["rank"] for e in manifest["shards"]} == {0, 1}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / "manifest.json").unlink()
    again = ranks.ok("positions_store", {**STORE_ARGS, "out": str(out)})
    assert_same(again[0], first[0], 0)
    assert json.loads((out / "manifest.json").read_text())["shards"] == manifest["shards"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == stamps  # no shard written again
