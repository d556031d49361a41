"""``python -m benchmarks.distributed``: sweeps on 2 processes of an ``mx.distributed`` ring vs 1 process.

Each side is a fresh set of processes (the ranks started directly with ``MLX_RANK`` and ``MLX_HOSTFILE``,
as ``mlx.launch`` starts them but without its busy-polling launcher process; the single process gets no
group and runs with ``distributed=False``). Every process builds the model, makes one untimed call (it
traces and compiles), then times ``--calls`` calls between barriers, gathering included. A round runs
both sides, the order alternating per round; the value is the median over rounds of
``single time / 2-process time`` (a throughput ratio), the min-ratio column the ratio of the fastest
calls. Cases:

``patching_grid``          ``model.patching_grid(component="output")`` over every layer x position of a
                           ``--seq``-token prompt pair (the analysis suite's).
``batch_get_activations``  ``batch_get_activations`` of every layer at the last token of ``--prompts``
                           prompts, in memory (every rank ends with all rows: the gather is timed).
``activation_store``       the same into an activation store folder (``out=``; each rank writes its shards).

The floor: what 2 processes on this machine give with no library coordination at all. Two processes each
run the single-process call (``distributed=False``) on their own half of the items (every other layer of
the grid, every other prompt), timed between the same barriers; ``single time / halves time`` is the
speed-up the cores, caches and memory bandwidth allow, printed beside the library's ratio (the
efficiency column is their quotient: 1.0 means the library adds nothing to what the machine costs).

Target: >= 1.7x throughput on 2 processes. Only meaningful when 2 cores are free: on a shared machine,
report the load (the report prints ``os.getloadavg()`` before and after). Every process is started in a
session of its own, as ``mlx.launch`` starts remote ranks (under Linux autogroup scheduling, processes of
one session share one session's CPU share). The CPU-time ratio (one
process's CPU seconds per call / the busiest rank's) shows how the work was split whatever the load: it
is the wall-clock ratio 2 free cores would give, less the waits on the other rank.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

TARGET = 1.7
CASES = ("patching_grid", "batch_get_activations", "activation_store")


# -- one process ---------------------------------------------------------------------------------------------
def _work(case: str, name: str, seq: int, n_prompts: int, base: Path,
          part: tuple = (0, 1)) -> Callable[[bool, int], Any]:
    """``fn(distributed, call_index)`` running ``case`` on model ``name``; ``part=(r, n)`` keeps every n-th
    item from the r-th (the floor's halves)."""
    from mlxterp import batch_get_activations

    from .models import load
    from .suite_analysis import _prompts, prompt_pair

    m = load(name)
    im = m.wrap()
    if case == "patching_grid":
        clean, corrupted = prompt_pair(m, seq)
        layers = list(range(len(im.layers)))[part[0]::part[1]]
        return lambda d, k: im.patching_grid(clean, corrupted, component="output", layers=layers, distributed=d)
    prompts = _prompts(m, n_prompts, seq)[part[0]::part[1]]
    if case == "batch_get_activations":
        return lambda d, k: batch_get_activations(im, prompts, progress=False, distributed=d)
    return lambda d, k: batch_get_activations(im, prompts, progress=False, out=base / f"store{k}", distributed=d)


def worker(case: str, name: str, calls: int, seq: int, n_prompts: int, base: Path, result: Path,
           halves: bool = False) -> None:
    """One process of a side: warm up, time ``calls`` calls between barriers; rank 0 writes the times.
    ``halves``: the floor, each rank running its half of the items alone (``distributed=False``)."""
    import mlx.core as mx

    from mlxterp import distributed as dist

    group = mx.distributed.init()
    synced = group.size() > 1
    d = synced and not halves
    part = (group.rank(), group.size()) if halves else (0, 1)
    fn = _work(case, name, seq, n_prompts, base / f"rank{group.rank()}" if halves else base, part)
    fn(d, -1)
    times, cpu = [], []
    for k in range(calls):
        dist.barrier(group if synced else None)
        t0, c0 = time.perf_counter(), time.process_time()
        fn(d, k)
        c1 = time.process_time()
        dist.barrier(group if synced else None)
        times.append(time.perf_counter() - t0)
        cpu.append(c1 - c0)
    import numpy as np

    cpu_max = np.max(np.stack(dist.gather(np.array(cpu), group if synced else None)), axis=0)  # the busiest rank
    if group.rank() == 0:
        result.write_text(json.dumps({"times": times, "cpu": cpu_max.tolist(), "size": group.size()}))


# -- the driver ------------------------------------------------------------------------------------------------
def run_side(n: int, case: str, args: argparse.Namespace, work: Path, halves: bool = False) -> Dict[str, List[float]]:
    """Start ``n`` processes (a ring of ``n``, or one alone; ``halves``: the floor's uncoordinated halves):
    rank 0's call times (``times``) and the busiest rank's CPU time per call (``cpu``)."""
    base = Path(tempfile.mkdtemp(dir=work))
    result = base / "result.json"
    command = [sys.executable, "-m", "benchmarks.distributed", "--worker", case, "--models", args.models[0],
               "--calls", str(args.calls), "--seq", str(args.seq), "--prompts", str(args.prompts),
               "--base", str(base), "--result", str(result)] + (["--halves"] if halves else [])
    env = dict(os.environ)
    if n > 1:
        from mlxterp.distributed import local_hostfile

        env["MLX_HOSTFILE"] = str(local_hostfile(base / "hosts.json", n))
    repo = Path(__file__).resolve().parents[1]
    # Each process in its own session: Linux autogroup scheduling shares the CPU between sessions, so the
    # two ranks of one session would together get one session's share on a busy machine (as one process).
    procs = [subprocess.Popen(command, cwd=repo, env={**env, "MLX_RANK": str(r)} if n > 1 else env,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for r in range(n)]
    errors = [p.communicate()[1] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a {n}-process run of {case} failed: " + " | ".join(e[-2000:] for e in errors))
    out = json.loads(result.read_text())
    shutil.rmtree(base, ignore_errors=True)
    return out


def measure(case: str, args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """Interleaved rounds of both sides; the throughput ratio and its parts."""
    sides: Dict[Any, List[Dict[str, List[float]]]] = {1: [], 2: [], "floor": []}
    order = (1, 2, "floor")
    for r in range(args.rounds):
        for side in (order if r % 2 == 0 else order[::-1]):
            sides[side].append(run_side(2 if side == "floor" else side, case, args, work, halves=side == "floor"))
    med = statistics.median
    ratios = [med(s["times"]) / med(d["times"]) for s, d in zip(sides[1], sides[2])]
    floors = [med(s["times"]) / med(h["times"]) for s, h in zip(sides[1], sides["floor"])]
    flat = {n: [t for run in runs for t in run["times"]] for n, runs in sides.items()}
    cpu = {n: [t for run in runs for t in run["cpu"]] for n, runs in sides.items()}
    return {"case": case, "model": args.models[0], "ratio": med(ratios), "ratios": ratios,
            "min_ratio": min(flat[1]) / min(flat[2]), "single_s": med(flat[1]), "dual_s": med(flat[2]),
            "cpu_ratio": med(cpu[1]) / med(cpu[2]), "floor": med(floors), "floors": floors}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases ({', '.join(CASES)})")
    parser.add_argument("--models", default="llama256", type=lambda s: s.split(","), help="benchmark model")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both sides")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process run")
    parser.add_argument("--seq", type=int, default=32, help="prompt tokens (patching) / longest prompt")
    parser.add_argument("--prompts", type=int, default=1000, help="prompts of the activation cases")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--halves", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.models[0], args.calls, args.seq, args.prompts, Path(args.base), Path(args.result),
               args.halves)
        return 0
    cases = [c for c in args.only.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    blas = os.environ.get("LD_PRELOAD", "") or "MLX's bundled BLAS"
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()} before; BLAS {blas}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"| case | model | 1 process (median s) | 2 processes (median s) | throughput ratio | min ratio | "
          f"per round | CPU-time ratio | floor: 2 halves | efficiency | target >= {TARGET}x |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory() as work:
        for case in cases:
            res = measure(case, args, Path(work))
            results.append(res)
            # Below the target, say whether the machine (the floor) or the library is what stops it.
            status = ("PASS" if res["ratio"] >= TARGET else
                      "FAIL (machine: floor < target)" if res["floor"] < TARGET else "FAIL")
            print(f"| {case} | {res['model']} | {res['single_s']:.3f} | {res['dual_s']:.3f} | {res['ratio']:.3f}x | "
                  f"{res['min_ratio']:.3f}x | {', '.join(f'{r:.2f}' for r in res['ratios'])} | "
                  f"{res['cpu_ratio']:.3f}x | {res['floor']:.3f}x | {res['ratio'] / res['floor']:.2f} | {status} |", flush=True)
    print(f"load {os.getloadavg()} after (a shared machine: other processes take cores from both sides)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["ratio"] >= TARGET for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
