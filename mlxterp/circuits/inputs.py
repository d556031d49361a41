"""Argument checks of the circuit methods: prompts whose positions align, score metrics that read the logits.
Every error names the argument, what was expected and the valid choices, and is raised before any forward."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Tuple

import mlx.core as mx

from ..analysis.metrics import Metric
from ..analysis.programs import cached_program, keep_program
from ..analysis.validate import show_tokens, check_positive_int, resolve_metric
from ..inputs import is_int

if TYPE_CHECKING:
    from ..model import InterpretableModel

ABLATIONS = ("corrupted", "mean")
ALIGN = ("positions are matched one to one, so every prompt must encode to the same number of tokens: choose "
         "prompts of equal token length (e.g. names or cities of one token each), or pass (batch, seq) token id "
         "arrays aligned yourself")


def prompt_rows(model: InterpretableModel, text: Any, arg: str) -> mx.array:
    """Token ids ``(rows, seq)`` of one prompt or a list of prompts of one token length (no padding)."""
    if isinstance(text, (list, tuple)) and not text:
        raise ValueError(f"{arg}: expected a prompt or a list of prompts, got an empty list")
    try:
        batch = model._batch(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arg}: {e}") from None
    lengths = list(batch.lengths)
    if len(set(lengths)) > 1:
        raise ValueError(f"{arg}: the prompts encode to different numbers of tokens {lengths}; {ALIGN}")
    return batch.tokens.astype(mx.int32)


def prompt_pair(model: InterpretableModel, clean: Any, corrupted: Any, *, same_rows: bool = True,
                clean_arg: str = "clean", corrupted_arg: str = "corrupted") -> Tuple[mx.array, mx.array]:
    """Clean and corrupted token rows of one length. With ``same_rows``, a single corrupted row is repeated
    for every clean row, and otherwise the row counts must agree (row ``i`` of one is paired with row ``i``
    of the other)."""
    a = prompt_rows(model, clean, clean_arg)
    b = prompt_rows(model, corrupted, corrupted_arg)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{clean_arg} has {a.shape[1]} tokens {show_tokens(model, a)} and {corrupted_arg} has {b.shape[1]} "
                         f"{show_tokens(model, b)}; {ALIGN}")
    if same_rows and b.shape[0] != a.shape[0]:
        if b.shape[0] != 1:
            raise ValueError(f"{clean_arg} has {a.shape[0]} prompts and {corrupted_arg} {b.shape[0]}: give one "
                             f"corrupted prompt per clean prompt (row i pairs with row i), or a single one for all")
        b = mx.broadcast_to(b, a.shape)
    return a, b


def circuit_metric(model: InterpretableModel, metric: Any, clean: mx.array, corrupted: mx.array, target: Any,
                   foil: Any) -> Metric:
    """The score metric (see :func:`mlxterp.analysis.validate.resolve_metric`; by default ``target`` and
    ``foil`` are the first clean and corrupted prompts' predictions), checked to be one number per row that
    depends on the logits.

    Raises:
        ValueError: a distance metric (circuits need a score), a bad target/foil, or a metric whose value
            does not change with the logits (its gradient is zero).
    """
    pair = mx.concatenate([clean[:1], corrupted[:1]], axis=0)
    found = resolve_metric(model, metric, pair, target, foil)
    if found.kind != "score":
        raise ValueError(f"metric: circuit methods need a score of the logits, one number per prompt ('logit_diff', "
                         f"'logprob', 'prob', a Metric or a function logits -> score per row); {found.name!r} is a "
                         "distance from the clean logits")
    key = (found, int(clean.shape[0]))
    if cached_program(model, "circuits.metrics", key) is None:  # a gradient over the vocabulary: once per metric
        check_reads_logits(found, rows=key[1], vocab=_vocab(model))
        keep_program(model, "circuits.metrics", key, True)
    return found


def check_reads_logits(metric: Metric, rows: int, vocab: int) -> None:
    """A ValueError unless ``metric`` maps ``(rows, vocab)`` logits to ``(rows,)`` scores with a nonzero
    gradient (a metric that ignores the logits would make every attribution zero)."""
    logits = mx.random.normal((rows, vocab), key=mx.random.key(0))
    grad = mx.grad(lambda z: metric.score(z).sum())(logits)
    if not bool(mx.any(grad != 0).item()):
        raise ValueError(f"metric: {metric} does not depend on the logits (its gradient is zero everywhere), so "
                         "every attribution and every circuit would score 0; give a metric of the last position's "
                         "logits, e.g. lambda logits: logits[:, paris] - logits[:, rome]")


def _vocab(model: InterpretableModel) -> int:
    from ..analysis.unembed import find_unembedding

    head = find_unembedding(model)
    return int(model._index.modules[head.head_path].weight.shape[0])  # (vocab, ...) for a head or an embedding


def check_steps(steps: Any) -> int:
    """``steps`` of integrated gradients: a positive int."""
    return check_positive_int(steps, "steps")


def check_ablation(ablation: Any) -> str:
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation: expected one of {ABLATIONS} (an ablated edge carries the corrupted run's value, "
                         f"or its mean over the corrupted prompts), got {ablation!r}")
    return ablation


def check_sizes(sizes: Any, n_edges: int, unit: str = "edges") -> list:
    """Circuit sizes of a faithfulness curve: positive ints (each at most the number of edges, or of nodes)."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (list, tuple, range)) or not sizes:
        raise ValueError(f"sizes: expected a non-empty list of {unit[:-1]} counts, got {sizes!r}")
    out = []
    for s in sizes:
        if not is_int(s) or int(s) < 0:
            raise ValueError(f"sizes: {s!r} is not a non-negative int ({unit[:-1]} counts, at most {n_edges})")
        if int(s) > n_edges:
            raise ValueError(f"sizes: {int(s)} {unit} asked, but there are {n_edges} {unit}")
        out.append(int(s))
    return out
