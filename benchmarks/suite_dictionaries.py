"""Dictionary training: the compiled step against the dense matmuls it cannot avoid, and live training of
K dictionaries against one forward plus the K steps.

``dictionary_step``   one training step of an SAE (``d_in`` 576, ``d_sae`` 4608, ``k`` 32, batch 4096: SmolLM2's
                      residual with 8x latents) against its floor: the encoder's and decoder's dense matmuls,
                      forward and backward, compiled (``value_and_grad`` of ``||(x @ W_enc) @ W_dec - x||^2``
                      with respect to both: 5 matmuls of ``batch x d_in x d_sae``). The step is the trainer's
                      own compiled function (forward, backward, Adam, unit-norm decoder, dead-latent counters,
                      metrics) with no dead latents; the rows marked ``+AuxK`` have every 16th latent dead (288:
                      the AuxK term then works on 512 latents, dead ones first). Target for TopK and BatchTopK:
                      <= 1.5x.
``live_training``     ``mlxterp.train`` of K = 3 TopK SAEs at 3 sites of llama256, live on 64-token prompts,
                      against the work it cannot avoid, measured in the same run: the program forward (saving
                      the 3 sites, stopped after the last) over the same prompt chunks, plus the K compiled
                      steps on batches of the same size. Target <= 1.1x. The notes give the forwards ``train``
                      ran per batch (one forward serves every dictionary).

Clocks: values in process CPU time (``time.process_time``: the Python thread and MLX's evaluation thread),
which other processes on a shared machine do not inflate; wall-clock ratios are in the notes. On the
``tiny`` smoke model the shapes shrink (``d_in`` 32, ``d_sae`` 128, batch 64).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List

import mlx.core as mx

from mlxterp import SAE, train
from mlxterp.dictionaries import sites
from mlxterp.dictionaries.learner import Comm, make_step
from mlxterp.dictionaries.objective import DictionaryObjective
from mlxterp.dictionaries.optim import adam_init
from mlxterp.dictionaries.sources import LiveSource

from .context import Context
from .harness import Row, Target, compare, ratio_row, rotating

SUITE = "dictionaries"
DESCRIPTION = "SAE training step vs its dense-matmul floor; live training of K dictionaries vs 1 forward + K steps"

STEP_TARGET = Target("<=", 1.5)
LIVE_TARGET = Target("<=", 1.1)
FULL = {"d_in": 576, "d_sae": 4608, "k": 32, "batch": 4096}
SMOKE = {"d_in": 32, "d_sae": 128, "k": 4, "batch": 64}
LIVE_SITES = ("layers.{a}.resid_pre", "layers.{b}.resid_mid", "layers.{c}.mlp")


def _smoke(ctx: Context) -> bool:
    return "tiny" in ctx.settings.models


def _cpu_compare(ctx: Context, baseline: Any, candidate: Any) -> tuple:
    s = ctx.settings
    repeats = max(3, s.repeats // 2) if not _smoke(ctx) else s.repeats
    return compare(baseline, candidate, repeats=repeats, warmup=s.warmup, min_time=0.0, clock=time.process_time)


# -- the step ----------------------------------------------------------------------------------------------
def _floor(x: mx.array, w_enc: mx.array, w_dec: mx.array) -> Any:
    fn = mx.compile(lambda a, b: mx.value_and_grad(lambda a, b: mx.square((x @ a) @ b - x).sum(),
                                                   argnums=(0, 1))(a, b))
    return lambda: mx.eval(fn(w_enc, w_dec))


def _step(arch: str, size: Dict[str, int], x: mx.array, aux: bool) -> Any:
    k = size["k"] if arch == "topk" else (float(size["k"]) if arch == "batchtopk" else None)
    sae = SAE.create(arch, d_in=size["d_in"], d_sae=size["d_sae"], k=k, site="bench")
    obj = DictionaryObjective(sae, "x", "x", size["batch"])
    params, state = obj.init_params(), obj.init_state()
    moments = adam_init(params)
    if aux and obj.arch.dead_latents:  # every 16th latent dead
        state["since_fired"] = mx.where(mx.arange(size["d_sae"]) % 16 == 0, obj.config.dead_tokens, 0).astype(mx.int32)
    variant = obj.variant(state)
    step = make_step(obj, Comm(None), variant, (0.9, 0.999), 1e-8, 1.0)
    hyper = {"lr": mx.array(1e-4), "t": mx.array(1.0), "coef": mx.array(1.0)}
    return lambda: mx.eval(step(params, moments, state, {"x": x}, hyper))


def dictionary_step(ctx: Context) -> Iterator[Row]:
    """The compiled training step vs the dense matmuls of the same shapes."""
    size = SMOKE if _smoke(ctx) else FULL
    x = mx.random.normal((size["batch"], size["d_in"]), key=mx.random.key(0))
    w_enc = mx.random.normal((size["d_in"], size["d_sae"]), key=mx.random.key(1)) * size["d_in"] ** -0.5
    w_dec = mx.random.normal((size["d_sae"], size["d_in"]), key=mx.random.key(2)) * size["d_sae"] ** -0.5
    mx.eval(x, w_enc, w_dec)
    floor = _floor(x, w_enc, w_dec)
    shape = f"{size['d_in']}x{size['d_sae']} k{size['k']} b{size['batch']}"
    for arch, aux in (("topk", False), ("batchtopk", False), ("topk", True), ("batchtopk", True), ("relu", False),
                      ("jumprelu", False)):
        ctx.log(f"  dictionary_step {arch}{' +AuxK' if aux else ''}")
        timings = _cpu_compare(ctx, floor, _step(arch, size, x, aux))
        judged = arch in ("topk", "batchtopk") and not aux
        wall = _wall_ratio(floor, _step(arch, size, x, aux))
        yield ratio_row(SUITE, "dictionary_step", arch + (" +AuxK" if aux else ""), shape,
                        "dense enc+dec matmuls fwd+bwd (floor)", "compiled training step", timings,
                        STEP_TARGET if judged else None, note=f"cpu time; wall-clock ratio {wall:.3f}x")


def _wall_ratio(baseline: Any, candidate: Any, rounds: int = 2) -> float:
    base, cand = rotating([baseline, candidate], rounds, [True, True])
    return min(cand) / min(base)


# -- live training ---------------------------------------------------------------------------------------
def live_training(ctx: Context) -> Iterator[Row]:
    """``train`` of 3 dictionaries live vs one forward per batch plus the 3 compiled steps."""
    name = "tiny" if _smoke(ctx) else "llama256"
    if name not in ctx.available((name,)):
        yield Row(SUITE, "live_training", name, "", "1 forward + K steps", "train", float("nan"),
                  skipped=ctx.missing((name,)).get(name, "unavailable"))
        return
    m = ctx.model(name)
    model = m.wrap()
    layers = m.layers
    site_names = [s.format(a=layers // 4, b=layers // 2, c=3 * layers // 4) for s in LIVE_SITES]
    batch, steps, window = (64, 8, 2) if _smoke(ctx) else (1024, 24, 4)
    d_sae = 4 * m.hidden
    prompts = [m.tokens(1, 64, seed=i).tolist()[0] for i in range((batch * steps) // 64 + 1)]

    def dicts() -> List[SAE]:
        return [SAE.create("topk", d_sae=d_sae, k=16, site=s, seed=i) for i, s in enumerate(site_names)]

    def candidate() -> Any:
        return train(dicts(), model=model, prompts=prompts, tokens=batch * steps, batch_size=batch, exclude=None,
                     prompt_batch=16, shuffle_batches=window, progress=False)

    forward, run_steps = _live_baseline(model, prompts, site_names, batch, steps, window, dicts())
    ctx.log("  live_training")
    result = candidate()  # warm: the kernels of every shape compiled once
    timings = compare(lambda: (forward(), run_steps()), candidate, repeats=2 if not _smoke(ctx) else 1, warmup=0,
                      clock=time.process_time)
    note = (f"K=3 sites {', '.join(site_names)}; {steps} steps of {batch} tokens; forwards per batch "
            f"{result.forwards / steps:.2f} (each serves all 3); cpu time, wall-clock ratio "
            f"{_wall_ratio(lambda: (forward(), run_steps()), candidate, rounds=1):.3f}x")
    yield ratio_row(SUITE, "live_training", name, f"K3 b{batch} x{steps}", "1 forward + K steps per batch",
                    "train(..., model=, prompts=)", timings, LIVE_TARGET, note=note)


def _live_baseline(model: Any, prompts: list, site_names: List[str], batch: int, steps: int, window: int,
                   dicts: List[SAE]) -> tuple:
    """The unavoidable work: the forwards over the prompt chunks ``train`` runs, and the K compiled steps."""
    resolved = [sites.resolve(model, s) for s in site_names]
    source = LiveSource(model, prompts, resolved, exclude=None, prompt_batch=16, shuffle_batches=window)
    chunks, cursor = [], {"window": 0, "epoch": 0, "prompt": 0, "offset": 0}
    for _ in range(steps // window):
        pieces, cursor = source._plan({**cursor}, batch * window)
        chunks += source._chunks([p for p, _, _ in pieces])
        cursor["window"] = 0
    program = source._program_for()
    tokens = [mx.array(t) for _, t in chunks]

    def forward() -> None:
        for t in tokens:
            mx.eval(program(tokens=t))

    width = resolved[0].width
    x = mx.random.normal((batch, width), key=mx.random.key(3))
    mx.eval(x)
    runners = []
    for d, site in zip(dicts, resolved):
        d.bind(width)
        obj = DictionaryObjective(d, site.key, site.key, batch)
        params, state = obj.init_params(), obj.init_state()
        moments = adam_init(params)
        step = make_step(obj, Comm(None), None, (0.9, 0.999), 1e-8, 1.0)
        runners.append((step, params, moments, state, site.key))
    hyper = {"lr": mx.array(1e-4), "t": mx.array(1.0), "coef": mx.array(1.0)}

    def run_steps() -> None:
        for _ in range(steps):
            mx.eval([step(p, mo, st, {key: x}, hyper) for step, p, mo, st, key in runners])

    forward()
    run_steps()
    return forward, run_steps


CASES = {"dictionary_step": dictionary_step, "live_training": live_training}
