"""``mlxterp demo``: the tour. Logit lens and activation patching on SmolLM2-135M, with timings and figures."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .cli import load, print_recovery, seconds
from .cli_args import RunError, call, check_output_dir, check_prompts_differ

DEFAULT_PROMPT = "The capital of France is"
DEFAULT_CORRUPTED = "The capital of Italy is"
LENS_TOP_K = 10  # enough to find the final prediction's rank in most layers


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="mlxterp-demo", metavar="DIR",
                   help="folder for the PNG figures and their HTML views (created if missing; default ./mlxterp-demo)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"clean prompt (default {DEFAULT_PROMPT!r})")
    p.add_argument("--corrupted", default=DEFAULT_CORRUPTED,
                   help=f"corrupted prompt, same token count as --prompt (default {DEFAULT_CORRUPTED!r})")
    p.add_argument("--component", default="mlp", help="component patched per layer (default mlp)")
    p.add_argument("--no-grid", action="store_true",
                   help="skip the layers x positions patching grid (the slowest step)")


def _step(n: int, total: int, text: str) -> None:
    print(f"\n[{n}/{total}] {text}", flush=True)


def _ranges(values: List[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out: List[List[int]] = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out) or "none"


def becomes_top(results: Dict[int, Any], target_id: int, position: int = -1) -> Optional[int]:
    """First layer from which ``target_id`` is the top-1 prediction at ``position`` in every later layer."""
    first = None
    for layer in sorted(results):
        if results[layer][position][0][0] == target_id:
            first = layer if first is None else first
        else:
            first = None
    return first


def run_demo(args: argparse.Namespace) -> int:
    out_dir = check_output_dir(args.out_dir, "--out-dir")
    total = 2 if args.no_grid else 3
    t_start = time.perf_counter()
    written: List[Path] = []
    model = load(args.model, args.weights, prefix="mlxterp demo (logit lens and activation patching): ")
    n_layers = len(model.layers)
    print(f"vocabulary {model.vocab_size}; figures go to {out_dir}")

    # 1. logit lens -------------------------------------------------------------------------------
    clean_ids = call(model.encode, args.prompt, usage=True)
    tokens = [model.token_to_str(t) for t in clean_ids]
    _step(1, total, f"logit lens of {args.prompt!r} ({len(clean_ids)} tokens: {' '.join(map(repr, tokens))})")
    t0 = time.perf_counter()
    lens_png = out_dir / "logit_lens.png"
    results = call(model.logit_lens, args.prompt, top_k=LENS_TOP_K, save_path=str(lens_png))
    written += [lens_png, results.save_html(lens_png.with_suffix(".html"))]
    final_id, final_p, final_tok = results[max(results)][-1][0]
    print(f"      last position ({tokens[-1]!r}), top prediction of each layer; rank of the model's final "
          f"prediction {final_tok!r} among each layer's top {LENS_TOP_K}:")
    print(f"      {'layer':>5}  {'top token':<14}{'prob':>7}   {final_tok!r} rank (prob)")
    for layer in sorted(results):
        top = results[layer][-1]
        ranks = [(r, p) for r, (tid, p, _) in enumerate(top, 1) if tid == final_id]
        rank = f"{ranks[0][0]:>2} ({ranks[0][1]:.1%})" if ranks else " -"
        print(f"      {layer:>5}  {top[0][2]!r:<14}{top[0][1]:>7.1%}   {rank}")
    first = becomes_top(results, final_id)
    print(f"      final prediction: {final_tok!r} ({final_p:.1%})")
    print(f"      {final_tok!r} becomes (and stays) the top prediction at layer {first} of {n_layers - 1}")
    print(f"      wrote {lens_png} and its interactive view {lens_png.with_suffix('.html').name}  ({seconds(t0)})",
          flush=True)

    # 2. activation patching per layer ------------------------------------------------------------
    _step(2, total, f"activation patching of {args.component!r}: clean {args.prompt!r} -> corrupted "
                    f"{args.corrupted!r}, all {n_layers} layers, metric l2")
    t0 = time.perf_counter()
    corrupted_ids = call(model.encode, args.corrupted, usage=True)
    if len(corrupted_ids) != len(clean_ids):
        print(f"mlxterp: warning: the prompts have different token counts (clean {len(clean_ids)}, corrupted "
              f"{len(corrupted_ids)}); patching needs equal lengths, so the patching steps are skipped. Choose a "
              "--corrupted prompt with as many tokens.", file=sys.stderr)
        return finish_figure(t_start, written)
    diff = check_prompts_differ(clean_ids, corrupted_ids, "--prompt", "--corrupted")
    shown = ", ".join(f"{i}: {tokens[i]!r} vs {model.token_to_str(corrupted_ids[i])!r}" for i in diff)
    print(f"      same token count ({len(clean_ids)}); they differ at position {shown}")
    bars_png = out_dir / f"patching_{args.component.replace('.', '_')}.png"
    recovery = call(model.activation_patching, args.prompt, args.corrupted, component=args.component,
                    metric="l2", progress=True, save_path=str(bars_png), usage=True)
    written += [bars_png, recovery.save_html(bars_png.with_suffix(".html"))]
    print_recovery(recovery, top=5, indent="      ")
    print(f"      wrote {bars_png} and {bars_png.with_suffix('.html').name}  ({seconds(t0)})", flush=True)

    # 3. layers x positions grid ------------------------------------------------------------------
    if not args.no_grid:
        if not hasattr(model, "patching_grid"):
            print("mlxterp: warning: this mlxterp has no patching_grid; skipping step 3", file=sys.stderr)
        else:
            positions = list(range(diff[0], len(clean_ids)))
            skipped = f"; positions 0-{diff[0] - 1} are identical in both prompts, so patching them changes nothing" \
                if diff[0] > 0 else ""
            _step(3, total, f"causal tracing grid: residual stream ('output') of every layer x positions "
                            f"{_ranges(positions)}{skipped}")
            t0 = time.perf_counter()
            grid_png = out_dir / "patching_grid.png"
            grid = call(model.patching_grid, args.prompt, args.corrupted, component="output", positions=positions,
                        metric="l2", progress=True, save_path=str(grid_png))
            written += [grid_png, grid.save_html(grid_png.with_suffix(".html"))]
            for j, pos in enumerate(grid.positions):
                strong = [layer for layer, row in zip(grid.layers, grid.grid) if row[j] > 50.0]
                note = ", differs" if pos in diff else ""
                print(f"      position {pos} ({tokens[pos]!r}{note}): recovery > 50% at layers {_ranges(strong)}")
            print(f"      wrote {grid_png} and {grid_png.with_suffix('.html').name}  ({seconds(t0)})", flush=True)
    return finish_figure(t_start, written)


def finish_figure(t_start: float, written: List[Path]) -> int:
    for path in written:
        if not path.is_file() or path.stat().st_size == 0:
            raise RunError(f"figure {str(path)!r} was not written")
    print(f"\ndone in {seconds(t_start)}; figures: {', '.join(str(p) for p in written)}")
    return 0
