"""The ``mlxterp`` command line: ``demo``, ``logit-lens``, ``patch``, ``activations``, ``generate``, ``train-sae``,
``train-lens``, ``features``, ``models``.

Every subcommand is also reachable in-process: ``main(["logit-lens", "--model", M, "text"])`` returns the
exit status (0 ok, 1 runtime error, 2 usage error) instead of exiting. User errors (bad arguments, missing
files, unknown models / components / layers) print one line, ``mlxterp: error: ...``, on stderr; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Union

from .cli_args import (
    RunError,
    UsageError,
    call,
    check_layers,
    check_model_name,
    check_output_path,
    check_prompts_differ,
    check_store_dir,
    layers_arg,
    positions_arg,
    positive_int,
    read_prompts,
)

if TYPE_CHECKING:
    from .model import InterpretableModel

PROG = "mlxterp"
DEFAULT_MODEL = "smollm2-135m"
LAYER_SPEC_HELP = "comma-separated layer indices and inclusive ranges, e.g. '0,5,10', '0-10' or '0-3,8,-1'"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (``mlxterp: error: ...``) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


WEIGHTS = {"auto": {}, "float32": {"dtype": "float32"}, "quantized": {"quantized": True}}


def load(name: str, weights: str = "auto", prefix: str = "") -> Any:
    """Load ``name`` as an InterpretableModel and print one line saying how its weights are held, e.g.
    ``loading smollm2-135m ... done in 3.1s: 30 layers, weights float32, dequantized at load (auto: ...)``.
    Loader errors become RunError (exit 1)."""
    from . import InterpretableModel

    check_model_name(name)
    print(f"{prefix}loading {name} ... ", end="", flush=True)
    t0 = time.perf_counter()
    try:
        model = InterpretableModel(name, **WEIGHTS[weights])
    except (ValueError, OSError) as exc:
        print(flush=True)  # end the line before the error
        notes = " ".join(getattr(exc, "__notes__", []))
        raise RunError(f"could not load model {name!r}: {exc}" + (f" ({notes})" if notes else "")) from exc
    except BaseException:
        print(flush=True)
        raise
    print(f"done in {seconds(t0)}: {len(model.layers)} layers, weights {model.weight_form}", flush=True)
    return model


def token_text(model: InterpretableModel, token_id: int) -> str:
    return repr(model.token_to_str(int(token_id)))


def seconds(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f}s"


# ---------------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .loading import registered_models

    models = registered_models()
    width = max((len(n) for n in models), default=4)
    for name, description in models.items():
        print(f"{name:<{width}}  {description}")
    print("\nAlso accepted by --model: a .gguf file, an mlx-lm model folder, or a Hugging Face repo id.")
    return 0


def load_for(args: argparse.Namespace) -> tuple[Any, Optional[List[int]], Optional[Path], Optional[Path]]:
    """The common start of a subcommand: check --plot and --html, load --model, check --layers."""
    plot = check_output_path(args.plot, "--plot")
    html = check_output_path(args.html, "--html", ".html")
    model = load(args.model, args.weights)
    return model, check_layers(args.layers, len(model.layers)), plot, html


def write_html(result: Any, html: Optional[Path], **options: Any) -> None:
    """``--html PATH``: write ``result``'s interactive view (one self-contained file) and say so."""
    if html is not None:
        result.save_html(html, **options)
        print(f"wrote {html} (interactive view: open it in a browser)")


def cmd_logit_lens(args: argparse.Namespace) -> int:
    lens_dir = _lens_dir(args.lens)
    model, layers, plot, html = load_for(args)
    lens = None
    if lens_dir is not None:
        from .lenses import TunedLens

        lens = call(TunedLens.load, lens_dir, usage=True)
        layers = layers if layers is not None else [*lens.layers, lens.n_layers - 1]
    n_tokens = len(call(model.encode, args.text, usage=True))
    if not -n_tokens <= args.position < n_tokens:
        raise UsageError(f"argument --position: {args.position} is outside the prompt, which has {n_tokens} tokens "
                         f"(valid: 0 to {n_tokens - 1}, or -{n_tokens} to -1)")
    t1 = time.perf_counter()
    results = call(model.logit_lens, args.text, top_k=args.top_k, layers=layers, usage=True, lens=lens,
                   **({"save_path": str(plot)} if plot else {}))
    ids = model.encode(args.text)
    pos = args.position % n_tokens
    print(f"{results.lens} of {args.text!r} at position {pos} (token {token_text(model, ids[pos])}), "
          f"{len(results)} layers, in {seconds(t1)}")
    print(f"{'layer':>5}  " + "   ".join(f"{'top-' + str(k + 1):<22}" for k in range(args.top_k)).rstrip())
    for layer, positions in results.items():
        cells = [f"{tok!r:<14}{prob:>8.1%}" for _, prob, tok in positions[pos]]
        print(f"{layer:>5}  " + "   ".join(cells))
    if plot:
        print(f"wrote {plot}")
    if lens is not None and html is not None:  # the logit lens beside the tuned lens
        plain = call(model.logit_lens, args.text, top_k=args.top_k, layers=layers, usage=True)
        write_html(plain, html, compare=results)
    else:
        write_html(results, html)
    return 0


def _lens_dir(path: Optional[str]) -> Optional[Path]:
    """``--lens``: a folder written by ``TunedLens.save`` (or a train-lens run folder), checked before loading."""
    if path is None:
        return None
    folder = Path(path).expanduser()
    for candidate in (folder, folder / "lens"):
        if (candidate / "config.json").is_file() and (candidate / "params.safetensors").is_file():
            return candidate
    raise UsageError(f"argument --lens: {path!r} holds no tuned lens (config.json and params.safetensors, as "
                     "TunedLens.save and train-lens write)")


def cmd_patch(args: argparse.Namespace) -> int:
    model, layers, plot, html = load_for(args)
    _precheck_patch(model, args.clean, args.corrupted, args.component, layers)
    t1 = time.perf_counter()
    tokens = {k: v for k, v in (("target", args.target), ("foil", args.foil)) if v is not None}
    recovery = call(model.activation_patching, args.clean, args.corrupted, component=args.component, layers=layers,
                    metric=args.metric, progress=True, **tokens, **({"save_path": str(plot)} if plot else {}))
    metric = args.metric if args.metric in ("l2", "cosine", "mse") else _metric_label(model, args)
    print(f"activation patching of {args.component!r} (metric {metric}) over {len(recovery)} layers "
          f"in {seconds(t1)}")
    print_recovery(recovery)
    if plot:
        print(f"wrote {plot}")
    write_html(recovery, html)
    return 0


def _token_arg(text: str) -> Union[int, str]:
    """A token given on the command line: digits are an id, anything else its text."""
    return int(text) if text.isdigit() else text


def _metric_label(model: InterpretableModel, args: argparse.Namespace) -> str:
    """The score metric with its tokens, as the patching functions resolved them."""
    from .analysis.validate import prompt_pair, resolve_metric

    tokens = prompt_pair(model, args.clean, args.corrupted)
    return str(resolve_metric(model, args.metric, tokens, args.target, args.foil))


def _precheck_patch(model: InterpretableModel, clean: str, corrupted: str, component: str, layers: Optional[List[int]]) -> None:
    """Report bad prompts / components as usage errors before the sweep (the library would say the same)."""
    from .analysis.components import resolve_sites
    from .analysis.validate import prompt_pair

    tokens = call(prompt_pair, model, clean, corrupted, usage=True)
    check_prompts_differ(tokens[0].tolist(), tokens[1].tolist(), "--clean", "--corrupted")
    call(resolve_sites, model, component, layers if layers is not None else list(range(len(model.layers))),
         tokens, usage=True)


def print_recovery(recovery: dict, top: int = 5, indent: str = "") -> None:
    """A per-layer table with text bars, then the top layers by recovery."""
    scale = max((abs(v) for v in recovery.values()), default=1.0) or 1.0
    print(f"{indent}{'layer':>5}  {'recovery':>9}")
    for layer, value in recovery.items():
        bar = ("+" if value >= 0 else "-") * int(round(abs(value) / scale * 30))
        print(f"{indent}{layer:>5}  {value:>8.1f}%  {bar}")
    ranked = sorted(recovery.items(), key=lambda kv: kv[1], reverse=True)[:top]
    print(f"{indent}top layers by recovery: " + ", ".join(f"{layer} ({value:+.1f}%)" for layer, value in ranked))


def cmd_activations(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompts)
    to_file = args.out.endswith(".safetensors")
    out = check_output_path(args.out, "--out") if to_file else check_store_dir(args.out, "--out")
    model = load(args.model, args.weights)
    layers = check_layers(args.layers, len(model.layers))
    positions: Any = args.positions[0] if len(args.positions) == 1 else args.positions
    options = dict(layers=layers, positions=positions, batch_size=args.batch_size, progress=True, dtype=args.dtype)
    t1 = time.perf_counter()
    if to_file:
        return _activations_to_file(model, list(prompts), out, options, args, t1)
    from .activations import batch_get_activations

    meta = {"model": args.model, "prompts_file": str(args.prompts)}
    try:
        store = call(batch_get_activations, model, prompts, out=str(out), shard_size=args.shard_size,
                     resume=args.resume, metadata=meta, usage=True, **options)
    except FileExistsError as exc:
        raise UsageError(f"argument --out: {exc}") from exc
    print(f"collected {len(prompts)} prompts x {len(store.keys)} layers in {seconds(t1)}")
    for key in store.keys:
        print(f"  {key}: {len(store)} rows of shape {store.row_shape(key)} {store.manifest['dtype']}")
    print(f"wrote {out} ({len(store.manifest['shards'])} shards + manifest.json)")
    return 0


def _activations_to_file(model: InterpretableModel, prompts: List[Any], out: Path, options: dict, args: argparse.Namespace,
                         t1: float) -> int:
    """``--out X.safetensors``: collect in memory and write one file."""
    from .activation_cache import ActivationCache
    from .activations import batch_get_activations

    acts = call(batch_get_activations, model, prompts, usage=True, **options)
    print(f"collected {len(prompts)} prompts x {len(acts)} layers in {seconds(t1)}")
    meta = {"model": args.model, "prompts_file": str(args.prompts), "n_prompts": len(prompts),
            "layers": options["layers"], "positions": options["positions"]}
    written = ActivationCache(acts, metadata=meta).save(out)
    for key, value in acts.items():
        print(f"  {key}: shape {tuple(value.shape)} {value.dtype}")
    print(f"wrote {written}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .cli_demo import run_demo

    return run_demo(args)


def cmd_generate(args: argparse.Namespace) -> int:
    from .cli_generate import run_generate

    return run_generate(args)


def cmd_train_sae(args: argparse.Namespace) -> int:
    from .cli_train import run_train_sae

    return run_train_sae(args)


def cmd_train_lens(args: argparse.Namespace) -> int:
    from .cli_train import run_train_lens

    return run_train_lens(args)


def cmd_features(args: argparse.Namespace) -> int:
    from .cli_features import run_features

    return run_features(args)


# ---------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------
def model_options() -> argparse.ArgumentParser:
    """The options of every subcommand that loads a model (a parent parser): --model and --weights."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--model", "-m", default=DEFAULT_MODEL,
                         help=f"registered name (see 'mlxterp models'), .gguf file, mlx-lm folder or Hugging Face "
                              f"id (default {DEFAULT_MODEL})")
    options.add_argument("--weights", choices=tuple(WEIGHTS), default="auto",
                         help="how to hold a quantized model's weights: float32 (dequantized at load, exact), "
                              "quantized (as stored) or auto (default: the fastest that fits; the first line of "
                              "output says which)")
    return options


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks for errors")
    loads = model_options()
    parser = _Parser(prog=PROG, formatter_class=_formatter, parents=[common],
                     description="mlxterp: mechanistic interpretability for MLX models.",
                     epilog="examples:\n  mlxterp demo\n  mlxterp models\n"
                            "  mlxterp logit-lens --model smollm2-135m 'The capital of France is' --layers 20-29\n"
                            "  mlxterp <command> --help")
    parser.set_defaults(debug=False)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, func: Callable, help_: str, description: str, examples: str,
            model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description, epilog="examples:\n" + examples,
                           formatter_class=_formatter, parents=[common, loads] if model else [common])
        p.set_defaults(func=func)
        return p

    from .cli_demo import add_demo_arguments

    add_demo_arguments(add("demo", cmd_demo, "the tour: logit lens and activation patching on SmolLM2-135M",
                           "Load a small model, show the logit lens of 'The capital of France is' layer by layer "
                           "(where does ' Paris' appear?), then patch MLP outputs from that clean prompt into the "
                           "corrupted 'The capital of Italy is' to find the layers that carry the fact. Prints "
                           "tables and timings; writes PNG figures and their interactive HTML views into --out-dir.",
                           "  mlxterp demo\n  mlxterp demo --out-dir figs --no-grid\n"
                           "  mlxterp demo --prompt 'The capital of Japan is' --corrupted 'The capital of Spain is'"))

    p = add("logit-lens", cmd_logit_lens, "what each layer predicts at one position",
            "Project every layer's residual stream through the final norm and unembedding and print the top-k "
            "predictions (with probabilities) at one token position, one row per layer.",
            "  mlxterp logit-lens --model smollm2-135m 'The capital of France is'\n"
            "  mlxterp logit-lens --model smollm2-135m 'The capital of France is' --layers 20-29 --top-k 3\n"
            "  mlxterp logit-lens --model path/to/mlx-model 'Once upon a time' --position 2 --plot lens.png\n"
            "  mlxterp logit-lens 'The capital of France is' --top-k 5 --html lens.html")
    p.add_argument("text", metavar="TEXT", help="the prompt")
    p.add_argument("--layers", type=layers_arg, help=f"layers to show ({LAYER_SPEC_HELP}); default: all")
    p.add_argument("--top-k", type=positive_int, default=1, help="predictions per layer (default 1)")
    p.add_argument("--position", type=int, default=-1, help="token position to show (default -1, the last)")
    p.add_argument("--lens", metavar="DIR", help="read the layers through this tuned lens (a TunedLens.save folder or "
                                                 "a train-lens run); --html then shows the logit lens beside it")
    p.add_argument("--plot", metavar="PNG", help="also write the layers x positions heatmap to this PNG")
    p.add_argument("--html", metavar="PATH",
                   help="also write the interactive view (layers x positions, hover for the top-k) to this HTML file")

    p = add("patch", cmd_patch, "activation patching: which layers restore the clean behaviour",
            "Run the clean and corrupted prompts, patch one component's clean output into the corrupted run at "
            "each layer, and print how much of the clean last-position logits each layer recovers (%).",
            "  mlxterp patch --model smollm2-135m --clean 'The capital of France is' "
            "--corrupted 'The capital of Italy is'\n"
            "  mlxterp patch --model smollm2-135m --clean A --corrupted B --component self_attn --layers 0-9 "
            "--metric cosine --plot patch.png --html patch.html\n"
            "  mlxterp patch --model smollm2-135m --clean 'The capital of France is' "
            "--corrupted 'The capital of Italy is' --component attn --metric logit_diff --target ' Paris' "
            "--foil ' Rome'")
    p.add_argument("--clean", required=True, metavar="TEXT", help="the clean prompt")
    p.add_argument("--corrupted", required=True, metavar="TEXT",
                   help="the corrupted prompt (same number of tokens as --clean)")
    p.add_argument("--component", default="mlp",
                   help="layer component to patch: mlp (default), self_attn/attn, output (whole layer), "
                        "mlp.down_proj, self_attn.o_proj, ...")
    p.add_argument("--layers", type=layers_arg, help=f"layers to patch ({LAYER_SPEC_HELP}); default: all")
    p.add_argument("--metric", choices=("l2", "cosine", "mse", "logit_diff", "logprob", "prob"), default="l2",
                   help="l2, cosine, mse: distance between the last position's logits (default l2); logit_diff: "
                        "target minus foil logit; logprob, prob: of the target token")
    p.add_argument("--target", metavar="TOKEN", type=_token_arg,
                   help="target token of logit_diff/logprob/prob, as text (' Paris') or an id (digits); default: "
                        "the clean prompt's prediction")
    p.add_argument("--foil", metavar="TOKEN", type=_token_arg,
                   help="foil token of logit_diff (text or id); default: the corrupted prompt's prediction")
    p.add_argument("--plot", metavar="PNG", help="write the recovery bar chart to this PNG")
    p.add_argument("--html", metavar="PATH", help="write the interactive view (recovery per layer) to this HTML file")

    p = add("activations", cmd_activations, "collect layer activations for a file of prompts",
            "Run every prompt of --prompts in batches and save the chosen layers' outputs at the chosen token "
            "positions (keys 'layer_<i>', one row per prompt: (hidden,) for one position, (positions, hidden) "
            "for several). --out DIR streams them to an activation store folder (safetensors shards + "
            "manifest.json, read with mlxterp.ActivationStore): memory stays bounded, and rerunning the same "
            "command after an interruption continues where it stopped. --out FILE.safetensors collects in "
            "memory and writes one file. --prompts is a .jsonl file (one JSON string, token-id list or "
            "{\"text\": ...} object per line) or a text file (one prompt per line); blank lines are skipped.",
            "  mlxterp activations --model smollm2-135m --prompts prompts.jsonl --layers 10,20 --out acts/\n"
            "  mlxterp activations --model smollm2-135m --prompts p.txt --layers 0-29 --positions 0,-1 "
            "--batch-size 16 --dtype bfloat16 --out acts/\n"
            "  mlxterp activations --model smollm2-135m --prompts p.txt --layers 10 --out acts.safetensors")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help=".jsonl file (one prompt per line as JSON) or text file (one prompt per line)")
    p.add_argument("--layers", type=layers_arg, required=True, help=LAYER_SPEC_HELP)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="activation store folder (or a .safetensors file: collected in memory, one file)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="stored dtype (default: the model's)")
    p.add_argument("--shard-size", type=positive_int, default=None,
                   help="prompts per shard of a store (default: about 64 MiB of activations per shard)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue the store already in --out (the default); --no-resume refuses an existing store")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward (default 8)")
    p.add_argument("--positions", type=positions_arg, default=[-1],
                   help="token positions, comma-separated; negative ones count from each prompt's end "
                        "(default -1, the last token; write --positions=-2,-1 for a list starting with '-')")

    from .cli_generate import EXAMPLES, add_generate_arguments

    add_generate_arguments(add("generate", cmd_generate, "generate text, or a steered continuation beside the baseline",
                               "Generate a continuation of TEXT (greedy unless --temperature > 0). With "
                               "--steer-toward/--steer-away, compute a steering vector (the mean residual at --layer "
                               "over the --steer-toward texts' last tokens minus that over --steer-away's), add --alpha times it to that layer's output at "
                               "every position and step, and print the baseline and steered continuations side "
                               "by side (both rows run in one batch).", EXAMPLES))

    from .cli_features import EXAMPLES as FEATURE_EXAMPLES, add_features_arguments
    from .cli_train import LENS_EXAMPLES, SAE_EXAMPLES, add_lens_arguments, add_sae_arguments

    add_sae_arguments(add("train-sae", cmd_train_sae, "train a sparse autoencoder live on a file of prompts",
                          "Train a sparse autoencoder (TopK, BatchTopK, JumpReLU or ReLU) on the activations at "
                          "--site of every token of --prompts, one compiled step per batch, the forward stopped after "
                          "the site. --out is a run folder: rerunning the same command after an interruption "
                          "continues it; when done, the SAE is saved there in SAELens's layout.", SAE_EXAMPLES))
    add_lens_arguments(add("train-lens", cmd_train_lens, "train a tuned lens live on a file of prompts",
                           "Train a tuned lens (an affine translator per layer, read by the model's own final norm "
                           "and unembedding, fitted to the model's final distribution) on every token of --prompts. "
                           "--out is a resumable run folder; the lens is saved in --out/lens. With --eval, print "
                           "per-layer KL and cross-entropy on held-out prompts against the logit lens.",
                           LENS_EXAMPLES))
    add_features_arguments(add("features", cmd_features, "a trained dictionary's top features and their contexts",
                               "Run --prompts through the model, encode the activations at the dictionary's site, "
                               "and print the most often active features (or --features), each with the contexts "
                               "where it fires hardest ([[token]] marks the token); --plot writes the histogram of "
                               "feature densities.", FEATURE_EXAMPLES))

    add("models", cmd_models, "list the registered model names",
        "List the model names that --model accepts besides paths and Hugging Face ids.", "  mlxterp models",
        model=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 runtime error, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0) if not isinstance(exc.code, str) else 2
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except (UsageError, RunError) as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
