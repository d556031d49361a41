"""Command line: ``python -m benchmarks [--quick] [--only NAME,...] [--repeats N] [--json out.json]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Optional, Sequence

from . import env, registry
from .context import Context, Settings, shape_text
from .harness import Row, format_table, summary
from .models import MODELS


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"1x16,8x128"`` -> ``((1, 16), (8, 128))``."""
    try:
        return tuple(tuple(int(v) for v in part.split("x")) for part in text.split(","))  # type: ignore[misc]
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes must look like 1x16,8x128 (batch x sequence), got {text!r}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a pass of about a minute: fewer shapes and repeats")
    p.add_argument("--only", type=_names, default=(), help="comma-separated suites or cases (see --list)")
    p.add_argument("--models", type=_names, help=f"comma-separated models, of: {', '.join(MODELS)}")
    p.add_argument("--shapes", type=_shapes, help="comma-separated batch x sequence, e.g. 1x16,8x128")
    p.add_argument("--repeats", type=int, help="minimum timed calls per side of each comparison")
    p.add_argument("--warmup", type=int, help="untimed calls per side before timing")
    p.add_argument("--min-time", type=float, help="seconds each comparison runs at least (repeats grow)")
    p.add_argument("--sweep", type=int, help="traces in the steering sweep (default 100)")
    p.add_argument("--scan", type=int, help="steering vectors in the batched-program scan (default 100)")
    p.add_argument("--retrace-sweep", type=int, help="traces in the zero-retrace check (default 1000)")
    p.add_argument("--analysis-seq", type=int, help="tokens per prompt in the analysis suite (default 32)")
    p.add_argument("--prompts", type=int, help="prompts in the batch_get_activations case (default 1000)")
    p.add_argument("--gen-tokens", type=int, help="new tokens per generation in the generate suite (default 48)")
    p.add_argument("--gguf", metavar="MODEL", help="GGUF model of the gguf suite: a registered name or a .gguf "
                                                   "path (default smollm2-135m)")
    p.add_argument("--json", metavar="PATH", help="also write environment and rows as JSON")
    p.add_argument("--list", action="store_true", help="list suites and cases, then exit")
    p.add_argument("--profile", nargs="?", const="micro4", metavar="MODEL",
                   help="instead of benchmarking, profile compiled traces (cache hits) with cProfile on MODEL "
                        "(default micro4, whose forward is nearly free; b1 s4, or the first --shapes)")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """The preset (quick or full) with the command line's overrides."""
    s = Settings.quick_preset() if args.quick else Settings.full()
    overrides = {"models": args.models, "shapes": args.shapes, "repeats": args.repeats, "warmup": args.warmup,
                 "min_time": args.min_time, "sweep": args.sweep, "scan": args.scan,
                 "retrace_sweep": args.retrace_sweep, "analysis_seq": args.analysis_seq, "prompts": args.prompts,
                 "gen_tokens": args.gen_tokens, "generate_models": args.models, "circuit_models": args.models,
                 "gguf": args.gguf}
    unknown = [m for m in (args.models or ()) if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return dataclasses.replace(s, **{k: v for k, v in overrides.items() if v is not None})


def run_benchmarks(settings: Settings, only: Sequence[str] = (), verbose: bool = True) -> list[Row]:
    """Run the selected cases and return their rows (progress goes to stderr when ``verbose``)."""
    ctx = Context(settings, verbose)
    rows: list[Row] = []
    for suite, case, fn in registry.select(only):
        start = time.perf_counter()
        ctx.log(f"[{suite}] {case} ...")
        for row in fn(ctx):
            ctx.log(f"    {row.model:12} {row.shape:9} {row.value_text():>12}  {row.status}")
            rows.append(row)
        ctx.log(f"    ({time.perf_counter() - start:.1f} s)")
    return rows


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _list() -> str:
    lines = []
    for name in registry.SUITES:
        module = registry.suite(name)
        lines.append(f"{name}: {module.DESCRIPTION}")
        lines += [f"  {case}" for case in module.CASES]
    return "\n".join(lines)


def report(info: dict, settings: Settings, rows: list[Row], seconds: float) -> str:
    """The printed report: environment, settings, table, summary."""
    shapes = ", ".join(shape_text(b, s) for b, s in settings.shapes)
    return "\n".join([
        env.format_env(info),
        f"settings: {'quick' if settings.quick else 'full'}; models {', '.join(settings.models)}; shapes {shapes}; "
        f"repeats >= {settings.repeats} (interleaved with the baseline); sweep {settings.sweep}; "
        f"retrace sweep {settings.retrace_sweep}; analysis prompts {settings.analysis_seq} tokens; "
        f"{settings.prompts} prompts for batch_get_activations; generation: {settings.gen_tokens} new tokens on "
        f"{', '.join(settings.generate_models)}; circuits on {', '.join(settings.circuit_models)}; "
        f"GGUF model {settings.gguf}",
        "value: median over back-to-back pairs of candidate time / baseline time (unless a unit is given); "
        "base/cand ms: median times; min ratio: fastest candidate / fastest baseline",
        "",
        format_table(rows),
        "",
        summary(rows) + f"; total {seconds:.0f} s; load average {_load():.2f} at the end",
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        print(_list())
        return 0
    settings = settings_from(args)
    if args.profile:
        from .profile import profile_overhead

        if args.profile not in MODELS:
            raise SystemExit(f"unknown model {args.profile!r} for --profile; choose from {', '.join(MODELS)}")
        shape = args.shapes[0] if args.shapes else (1, 4)
        print(profile_overhead(args.profile, shape))
        return 0
    info = env.describe()
    print(f"BLAS: {info['blas']['blas']} (the full report follows the run)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    rows = run_benchmarks(settings, args.only)
    seconds = time.perf_counter() - start
    print(report(info, settings, rows, seconds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": info, "settings": dataclasses.asdict(settings), "seconds": seconds,
                       "rows": [r.as_dict() for r in rows]}, f, indent=2, default=str)
    return 0
