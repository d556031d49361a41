"""One rank of a long-lived distributed test group: it runs many sharded calls, one per command.

``python -m tests.distributed_server OUT``, started as one process of a ring group (``MLX_RANK`` +
``MLX_HOSTFILE``), reads commands from stdin, one JSON object per line::

    {"id": 3, "op": "patching_grid", "args": {...}, "ranks": [{...}, {...}]}

runs ``OPS[op](args merged with ranks[rank], distributed=True)`` and saves the arrays it returns to
``OUT/<id>-rank<r>.npz``, then answers one JSON line on stdout: ``{"id": 3, "ok": true}`` or
``{"id": 3, "error": "ClassName", "message": "..."}``. The tests send every rank the same command
(``ranks`` gives per-rank differences, to test that they are refused) and run ``OPS[op](args,
distributed=False)`` in their own process to compare. Starting the ranks once per test module and sending
them many commands keeps a fuzzer of sharded calls within seconds.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Dict

import mlx.core as mx
import numpy as np

from mlxterp import InterpretableModel, batch_get_activations, collect_activations
from tests.models import CharTokenizer, tiny_llama_module
from tests.fuzz import Step, fuzz_module, run_trace, values_for

_MODELS: Dict[str, InterpretableModel] = {}


def sweep_model(seed: int = 5) -> InterpretableModel:
    """The model of the sweeps and activation calls (5 layers, a character tokenizer; ``seed``: its weights)."""
    if f"sweep{seed}" not in _MODELS:
        _MODELS[f"sweep{seed}"] = InterpretableModel(tiny_llama_module(seed=seed, layers=5), tokenizer=CharTokenizer())
    return _MODELS[f"sweep{seed}"]


def fuzz_model() -> InterpretableModel:
    """The reference fuzzer's model (``tests.fuzz``)."""
    if "fuzz" not in _MODELS:
        _MODELS["fuzz"] = InterpretableModel(fuzz_module())
    return _MODELS["fuzz"]


# -- random trace programs as batched scans ---------------------------------------------------------------
def steps_of(program: list) -> list:
    """A fuzzer program from its JSON form ``[[site, kind, choice, mapped], ...]``."""
    return [Step(tuple(site), kind, int(choice), bool(mapped)) for site, kind, choice, mapped in program]


def record(model: InterpretableModel, inputs: Any, program: list, values: list) -> Any:
    """Record ``program`` with ``values`` (as the reference fuzzer's tracer side does, saving the logits)
    and return the finished trace."""
    return run_trace(model, inputs, program, values, compile=False).trace


def program_scan(args: Dict[str, Any], distributed: Any) -> Dict[str, np.ndarray]:
    """A random program recorded with the first seed's values, replayed by ``Program.batched`` with every
    seed's values as its ``K`` variants. Each variant's values are read off a recording of that variant
    (same structure, so the same param names)."""
    model, program, inputs = fuzz_model(), steps_of(args["program"]), args["tokens"]
    programs = [record(model, inputs, program, values_for(program, seed)).program() for seed in args["seeds"]]
    prog = programs[0]
    if not prog.params:
        return {}
    stacked = {name: mx.stack([mx.array(p.params[name].default) for p in programs]) for name in prog.params}
    out = prog.batched(**stacked, distributed=distributed)
    return {k: np.array(v) for k, v in out.items()}


# -- sweeps and activations ----------------------------------------------------------------------------------
def _grid(result: Any) -> np.ndarray:
    return np.asarray(result.grid if hasattr(result, "grid") else list(result.values()), dtype=np.float64)


def _acts(acts: Dict[str, Any]) -> Dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in acts.items()}


def _store(store: Any) -> Dict[str, np.ndarray]:
    out = {k: np.array(store.get(k)) for k in store.keys}
    out["_hashes"] = store.prompt_hashes().view(np.int64)
    return out


def _patching(name: str) -> Callable[[Dict[str, Any], Any], Dict[str, np.ndarray]]:
    def run(args: Dict[str, Any], distributed: Any) -> Dict[str, np.ndarray]:
        kwargs = dict(args)
        clean, corrupted = kwargs.pop("clean"), kwargs.pop("corrupted")
        return {"grid": _grid(getattr(sweep_model(), name)(clean, corrupted, distributed=distributed, **kwargs))}
    return run


def _activations(args: Dict[str, Any], distributed: Any) -> Dict[str, np.ndarray]:
    return _acts(batch_get_activations(sweep_model(), progress=False, distributed=distributed, **args))


def _collect(args: Dict[str, Any], distributed: Any) -> Dict[str, np.ndarray]:
    cache = collect_activations(sweep_model(), distributed=distributed, **args)
    return _acts(cache.activations)


def _positions_store(args: Dict[str, Any], distributed: Any) -> Dict[str, np.ndarray]:
    args = dict(args)
    model = sweep_model(args.pop("model_seed", 5))
    return _store(batch_get_activations(model, progress=False, distributed=distributed, **args))


def _tokens_store(args: Dict[str, Any], distributed: Any) -> Dict[str, np.ndarray]:
    return _store(collect_activations(sweep_model(), progress=False, distributed=distributed, **args))


def _steering_scan(args: Dict[str, Any], distributed: Any) -> Dict[str, np.ndarray]:
    """A steering program of the sweep model scanned over vectors (``args["seed"]`` draws them)."""
    import mlxterp

    m = sweep_model()
    with m.trace(args["prompt"], capture="saved") as tr:
        steer = mlxterp.param("steer", mx.zeros(64))
        m.layers[args["layer"]].output[:, -1] = m.layers[args["layer"]].output[:, -1] + steer
        m.output[:, -1].save("logits")
    vectors = np.random.default_rng(args["seed"]).normal(size=(args["k"], 64)).astype(np.float32)
    return _acts(tr.program().batched(steer=vectors, distributed=distributed))


OPS: Dict[str, Callable[[Dict[str, Any], Any], Dict[str, np.ndarray]]] = {
    "program_scan": program_scan,
    "steering_scan": _steering_scan,
    "activation_patching": _patching("activation_patching"),
    "patching_grid": _patching("patching_grid"),
    "head_patching": _patching("head_patching"),
    "batch_get_activations": _activations,
    "collect_activations": _collect,
    "positions_store": _positions_store,
    "tokens_store": _tokens_store,
}


def serve(out: Path) -> None:
    group = mx.distributed.init()
    rank = group.rank()
    for line in sys.stdin:
        command = json.loads(line)
        args = {**command.get("args", {}), **(command.get("ranks") or [{}] * group.size())[rank]}
        try:
            result = OPS[command["op"]](args, True)
        except Exception as exc:  # reported to the test, which decides whether it was expected
            reply = {"id": command["id"], "error": type(exc).__name__, "message": str(exc),
                     "trace": traceback.format_exc()[-3000:]}
        else:
            np.savez(out / f"{command['id']}-rank{rank}.npz", **result)
            reply = {"id": command["id"], "ok": True}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
