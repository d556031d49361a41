"""``mlxterp generate``: a continuation, or a steered one beside the baseline."""

from __future__ import annotations

import argparse
import math
import shutil
import textwrap
import time
from typing import Any, List

from .cli import load, seconds, write_html
from .cli_args import UsageError, call, check_layers, check_output_path

EXAMPLES = ("  mlxterp generate 'Once upon a time'\n"
            "  mlxterp generate 'I think that' --steer-toward Love --steer-away Hate --layer 15 --alpha 6\n"
            "  mlxterp generate 'Tell me a story' --chat --max-new-tokens 60 --temperature 0.7 --seed 1\n"
            "  mlxterp generate --model path/to/mlx-model 'Hello' --steer-toward happy --steer-away sad\n"
            "  mlxterp generate 'Once upon a time' --html story.html")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", metavar="TEXT", help="the prompt")
    p.add_argument("--max-new-tokens", "-n", type=int, default=40, help="tokens to generate (default 40)")
    p.add_argument("--temperature", type=_float, default=0.0, help="0 is greedy (default); > 0 samples")
    p.add_argument("--seed", type=int, help="random seed for sampling")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--steer-toward", action="append", metavar="TEXT",
                   help="text to steer toward (repeat for several); needs --steer-away")
    p.add_argument("--steer-away", action="append", metavar="TEXT",
                   help="text to steer away from (repeat for several); needs --steer-toward")
    p.add_argument("--layer", type=int, help="layer whose output is steered (default: the middle layer)")
    p.add_argument("--alpha", type=_float, default=4.0,
                   help="multiple of the steering vector added at every position and step (default 4)")
    p.add_argument("--html", metavar="PATH",
                   help="also write the interactive view: the new tokens coloured by the probability each had when "
                        "it was chosen (hover for it)")


def run_generate(args: argparse.Namespace) -> int:
    steering = _check_steering(args)
    if args.max_new_tokens < 1:
        raise UsageError(f"argument --max-new-tokens: expected a positive integer, got {args.max_new_tokens}")
    html = check_output_path(args.html, "--html", ".html")
    model = load(args.model, args.weights)
    options = dict(temperature=args.temperature, seed=args.seed, chat=args.chat)
    if not steering:
        t1 = time.perf_counter()
        gen = _run(model, args.prompt, args.max_new_tokens, html, options)
        print(f"generated {len(gen.tokens)} tokens in {seconds(t1)} ({gen.mode})\n")
        print(args.prompt + gen.text)
        _write_view(gen, html)
        return 0
    layer = check_layers([len(model.layers) // 2 if args.layer is None else args.layer], len(model.layers))[0]
    vector = call(model.steering_vector, args.steer_toward, args.steer_away, layer, usage=True)
    print(f"steering vector: layer {layer}, toward {args.steer_toward} away {args.steer_away}, "
          f"norm {float(_norm(vector)):.3g}, alpha {args.alpha:g}")
    from . import interventions as iv

    t1 = time.perf_counter()
    # baseline and steered rows in one batch: row 0 adds 0 x v, row 1 adds alpha x v (every position, every step)
    steer = iv.add_vector(_alphas(args.alpha, vector.dtype) * vector)
    gen = _run(model, [args.prompt] * 2, args.max_new_tokens, html,
               dict(options, interventions={f"layers.{layer}": steer}))
    print(f"generated {max(len(t) for t in gen.tokens)} tokens x 2 rows in {seconds(t1)} ({gen.mode})\n")
    print(f"prompt: {args.prompt!r}\n")
    print_side_by_side(["baseline", f"steered (alpha {args.alpha:g})"], gen.text)
    _write_view(gen, html)
    return 0


def _run(model: Any, prompt: Any, max_new_tokens: int, html: Any, options: dict) -> Any:
    """The finished generation; with ``--html``, it also saves each step's last-position logits."""
    gen = call(model.generate, prompt, max_new_tokens, usage=True, **options)
    if html is None:
        return gen.run()
    with gen:
        model.output[:, -1].save("logits")
    return gen


def _write_view(gen: Any, html: Any) -> None:
    if html is not None:
        from .views.generation import token_probabilities

        result = gen.result()
        write_html(result, html, values=token_probabilities(result, "logits"), label="probability when chosen")


def _check_steering(args: argparse.Namespace) -> bool:
    toward, away = args.steer_toward, args.steer_away
    if bool(toward) != bool(away):
        given, missing = ("--steer-toward", "--steer-away") if toward else ("--steer-away", "--steer-toward")
        raise UsageError(f"argument {given} needs {missing} too: the steering vector is the difference between "
                         "the two texts' residuals")
    if not toward and args.layer is not None:
        raise UsageError("argument --layer: only used with --steer-toward/--steer-away")
    return bool(toward)


def _alphas(alpha: float, dtype: Any) -> Any:
    import mlx.core as mx

    return mx.array([0.0, alpha], dtype=dtype)[:, None, None]


def _norm(vector: Any) -> Any:
    import mlx.core as mx

    return mx.sqrt((vector.astype(mx.float32) ** 2).sum())


def print_side_by_side(titles: List[str], texts: List[str], width: int = 0) -> None:
    """Print texts in columns under their titles, wrapped to the terminal's width."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    column = max(20, (width - 3 * (len(texts) - 1)) // len(texts))
    wrapped = [textwrap.wrap(" ".join(t.split()), column) or [""] for t in texts]
    rows = [[title[:column] for title in titles], ["-" * column] * len(texts)]
    rows += [[w[i] if i < len(w) else "" for w in wrapped] for i in range(max(len(w) for w in wrapped))]
    for row in rows:
        print(" | ".join(cell.ljust(column) for cell in row).rstrip())
