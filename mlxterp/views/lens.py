"""The logit-lens view: layers x positions, each cell the layer's top token at that position coloured by its
probability; hover shows the top-k with probabilities. A second lens result (a tuned lens) can stand beside
the first (``compare=``): both panels share the prompt's positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .page import Page, origin_lines

if TYPE_CHECKING:
    from ..analysis.lens import LogitLensResult


def lens_page(result: LogitLensResult, *, compare: Optional[LogitLensResult] = None) -> Page:
    """The page of a :class:`~mlxterp.analysis.lens.LogitLensResult`, and of ``compare`` beside it.

    Args:
        result: the lens result (its ``lens`` names the panel).
        compare: another lens result of the same prompt (e.g. a tuned lens), shown to the right.

    Raises:
        ValueError: ``compare`` is not a lens result, or was made on another prompt.
    """
    results = [result] if compare is None else [result, compare]
    if compare is not None:
        _check_same_prompt(result, compare)
    vocab: Dict[int, int] = {}
    strings: List[str] = []
    panels = [_panel(r, vocab, strings) for r in results]
    k = max(int(r.ids.shape[-1]) for r in results)
    header = origin_lines(result.provenance) + [
        ("Lens", " | ".join(f"{r.lens}: {len(r.layers)} layers, top-{int(r.ids.shape[-1])}" for r in results)),
        ("Cells", "each layer's top token at each position, coloured by its probability; hover for the top "
                  f"{k}")]
    n_layers = max(len(r.layers) for r in results)
    return Page(" vs ".join(r.lens.capitalize() for r in results), header, "lens",
                {"tokens": list(result.input_tokens), "strings": strings, "panels": panels},
                height=min(900, 260 + 23 * n_layers))


def _panel(result: LogitLensResult, vocab: Dict[int, int], strings: List[str]) -> Dict[str, Any]:
    """One panel: its layers, and per layer and position the top-k as indices into ``strings`` (shared by
    the panels) and probabilities."""
    for token_id in sorted(result.strings):
        if token_id not in vocab:
            vocab[token_id] = len(strings)
            strings.append(result.strings[token_id])
    top = [[[vocab[int(i)] for i in pos] for pos in layer] for layer in result.ids.tolist()]
    return {"name": result.lens, "layers": list(result.layers), "top": top,
            "probs": [[[float(p) for p in pos] for pos in layer] for layer in result.probs.tolist()]}


def _check_same_prompt(result: Any, compare: Any) -> None:
    from ..analysis.lens import LogitLensResult

    if not isinstance(compare, LogitLensResult):
        raise ValueError(f"compare: expected a LogitLensResult (a logit or tuned lens), got {type(compare).__name__}")
    if list(compare.input_ids) != list(result.input_ids):
        raise ValueError(f"compare: made on another prompt ({len(compare.input_ids)} tokens "
                         f"{compare.input_tokens[:6]}...) than this result ({len(result.input_ids)} tokens "
                         f"{result.input_tokens[:6]}...); both panels share the positions")
