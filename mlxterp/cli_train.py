"""``mlxterp train-sae`` and ``mlxterp train-lens``: train a dictionary or a tuned lens live on a file of prompts,
resumably (rerun the same command after an interruption), with a progress bar."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any, Optional

from . import cli
from .cli_args import (
    UsageError,
    call,
    check_layers,
    check_output_dir,
    check_output_path,
    layers_arg,
    positive_int,
    read_prompts,
)

SAE_EXAMPLES = ("  mlxterp train-sae --prompts corpus.jsonl --site layers.12.resid_pre --arch topk --k 32 "
                "--latents 4608 --tokens 2M --out runs/sae12\n"
                "  mlxterp train-sae --prompts p.txt --site layers.8.mlp --arch jumprelu --latents 2304 --tokens 500k "
                "--out runs/sae8 --lr 3e-4")
LENS_EXAMPLES = ("  mlxterp train-lens --prompts corpus.jsonl --tokens 20k --out runs/lens --eval heldout.jsonl\n"
                 "  mlxterp train-lens --prompts p.txt --tokens 8k --layers 0-10 --out runs/lens --plot lens.png "
                 "--eval heldout.txt")
ARCHS = ("topk", "batchtopk", "jumprelu", "relu")
_COUNT = re.compile(r"(\d+(?:\.\d+)?)([kKmM]?)")


def token_count(text: str) -> int:
    """``"2M"``, ``"500k"``, ``"2000000"``, ``"2_000_000"`` -> a positive number of tokens."""
    match = _COUNT.fullmatch(text.replace("_", "").strip())
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()] if match else 0
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a token count such as 2000000, 500k or 2M, got {text!r}")
    return int(value)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_common(p: argparse.ArgumentParser, batch: int, lr: float) -> None:
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help=".jsonl file (one JSON string, token-id list or {\"text\": ...} per line) or text file")
    p.add_argument("--tokens", required=True, type=token_count, help="tokens to train on: 2000000, 500k, 2M")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the run folder: checkpoints (rerun the same command to continue) and the result")
    p.add_argument("--batch-size", type=positive_int, default=batch, help=f"tokens per step (default {batch})")
    p.add_argument("--lr", type=positive_float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order (default 0)")
    p.add_argument("--context", type=positive_int, help="keep at most this many tokens of each prompt")
    p.add_argument("--prompt-batch", type=positive_int, default=8, help="prompts per forward (default 8)")


def add_sae_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, 4096, 4e-4)
    p.add_argument("--site", required=True,
                   help="where the SAE reads: layers.N.resid_pre / resid_mid / resid_post, layers.N.mlp, ...")
    p.add_argument("--arch", choices=ARCHS, default="topk", help="architecture (default topk)")
    p.add_argument("--k", type=positive_float, help="active latents per token (topk, batchtopk; default 32)")
    p.add_argument("--latents", type=positive_int, help="number of latents (default 8x the site's width)")


def add_lens_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, 128, 1.0)
    p.add_argument("--layers", type=layers_arg, help=f"layers to give a translator ({cli.LAYER_SPEC_HELP}); default: "
                                                     "all but the last")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd: the paper's (Nesterov momentum 0.9, weight decay 1e-3; default); adam (use --lr 1e-3)")
    p.add_argument("--eval", metavar="FILE", help="held-out prompts: print per-layer KL and cross-entropy against the "
                                                  "logit lens")
    p.add_argument("--plot", metavar="PNG", help="with --eval: write the per-layer curves to this PNG")


# -- train-sae -----------------------------------------------------------------------------------------
def run_train_sae(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompts)
    out = check_output_dir(args.out, "--out")
    k = _check_k(args)
    if args.tokens < args.batch_size:
        raise UsageError(f"argument --tokens: {args.tokens} is less than one batch (--batch-size {args.batch_size})")
    model = cli.load(args.model, args.weights)
    site = _site(model, args.site, "--site")
    latents = args.latents or 8 * site.width
    if k is not None and k > latents:
        raise UsageError(f"argument --k: {k:g} is more than --latents {latents}")
    import mlxterp as mt

    sae = call(mt.SAE.create, args.arch, d_sae=latents, k=k, site=args.site, usage=True)
    t0 = time.perf_counter()
    run = call(mt.train, sae, model=model, prompts=prompts, tokens=args.tokens, batch_size=args.batch_size,
               lr=args.lr, seed=args.seed, out=str(out), context=args.context, prompt_batch=args.prompt_batch,
               progress=True, usage=True)
    last = run.final()[0]
    print(f"trained {sae.label} ({latents} latents) on {run.tokens:,} tokens in {cli.seconds(t0)}"
          + (f" (resumed at step {run.start})" if run.start else ""))
    print(f"  FVE {last.get('fve', float('nan')):.3f}, L0 {last.get('l0', float('nan')):.1f}, "
          f"dead {100 * last.get('dead', float('nan')):.1f}% (training batches)")
    for path in run.saved:
        print(f"wrote {path} (SAELens layout: mlxterp.SAE.load)")
    return 0


def _check_k(args: argparse.Namespace) -> Optional[float]:
    if args.arch in ("topk", "batchtopk"):
        k = 32.0 if args.k is None else args.k
        if args.arch == "topk" and k != int(k):
            raise UsageError(f"argument --k: topk keeps a whole number of latents per token, got {args.k:g}")
        return int(k) if args.arch == "topk" else k
    if args.k is not None:
        raise UsageError(f"argument --k: only topk and batchtopk take --k, not {args.arch}")
    return None


def _site(model: Any, name: str, option: str) -> Any:
    from .dictionaries import sites
    from .names import ModuleNameError

    try:
        return sites.resolve(model, name)
    except (ModuleNameError, TypeError) as exc:
        raise UsageError(f"argument {option}: {exc}") from exc


# -- train-lens ----------------------------------------------------------------------------------------
def run_train_lens(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompts)
    held_out = read_prompts(args.eval, "--eval") if args.eval else None
    if args.plot and held_out is None:
        raise UsageError("argument --plot: draws the evaluation, so it needs --eval FILE (held-out prompts)")
    plot = check_output_path(args.plot, "--plot")
    out = check_output_dir(args.out, "--out")
    if args.tokens < args.batch_size:
        raise UsageError(f"argument --tokens: {args.tokens} is less than one batch (--batch-size {args.batch_size})")
    model = cli.load(args.model, args.weights)
    layers = check_layers(args.layers, len(model.layers))
    import mlxterp as mt

    t0 = time.perf_counter()
    lens = call(mt.TunedLens.train, model, prompts, tokens=args.tokens, layers=layers, batch_size=args.batch_size,
                lr=args.lr, optimizer=args.optimizer, seed=args.seed, out=str(out), context=args.context,
                prompt_batch=args.prompt_batch, progress=True, usage=True)
    kl = lens.history["kl"]
    print(f"trained {lens!r} on {lens.info['tokens']:,} tokens in {cli.seconds(t0)}: training KL {kl[0]:.3f} -> "
          f"{kl[-1]:.3f} nats (mean over layers)")
    print(f"wrote {Path(out) / 'lens'} (mlxterp.TunedLens.load; model.logit_lens(text, lens=lens))")
    if held_out is not None:
        result = call(lens.evaluate, model, held_out, context=args.context, progress=True, usage=True)
        print(result.table())
        if plot:
            result.plot(plot)
            print(f"wrote {plot}")
    return 0
