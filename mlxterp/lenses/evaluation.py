"""How well a lens reads each layer, on held-out text: per-layer KL to the model's final distribution and
next-token cross-entropy, for the tuned lens and the logit lens side by side (Belrose et al. 2023, Fig. 2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from ..activations import token_rows, padded_batches
from ..dictionaries import sites as site_names
from ..dictionaries.sources import excluded_ids
from ..views.saving import Saveable, attach
from .objective import Target, lse_softmax, translate

ROWS = 256  # token rows per compiled readout (padded with masked rows: one compiled shape per run)


@dataclasses.dataclass
class LensEvaluation(Saveable):
    """Per-layer quality of a tuned lens and of the logit lens on the same tokens (nats per token).

    Attributes:
        layers: the layers evaluated.
        kl, kl_logit: ``(layers,)`` float64 mean ``KL(final || lens)`` of the tuned lens and of the logit lens, over
            every kept token.
        ce, ce_logit: ``(layers,)`` float64 mean next-token cross-entropy of each lens's prediction, over the kept
            tokens that have a next token; ``ce_model`` the model's own.
        tokens: tokens the KL averages over; ``predicted``: those the cross-entropies average over.

    Saves and loads (``save(path)``, ``LensEvaluation.load(path)``, :func:`mlxterp.views.load_result`) with the
    model's fingerprint, the prompts and the call's arguments.
    """

    kind = "lens_evaluation"

    layers: List[int]
    kl: np.ndarray
    kl_logit: np.ndarray
    ce: np.ndarray
    ce_logit: np.ndarray
    ce_model: float
    tokens: int
    predicted: int

    @property
    def improved(self) -> bool:
        """Whether the tuned lens's KL is below the logit lens's at every layer."""
        return bool(np.all(self.kl < self.kl_logit))

    def table(self) -> str:
        """One line per layer: KL and cross-entropy of both lenses."""
        lines = [f"{'layer':>5}  {'KL logit':>9}  {'KL tuned':>9}  {'CE logit':>9}  {'CE tuned':>9}"]
        for i, layer in enumerate(self.layers):
            lines.append(f"{layer:>5}  {self.kl_logit[i]:>9.3f}  {self.kl[i]:>9.3f}  {self.ce_logit[i]:>9.3f}  "
                         f"{self.ce[i]:>9.3f}")
        lines.append(f"model's own cross-entropy {self.ce_model:.3f} nats; {self.tokens} tokens "
                     f"({self.predicted} with a next token)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"LensEvaluation({len(self.layers)} layers, {self.tokens} tokens: mean KL {self.kl.mean():.3f} tuned vs "
                f"{self.kl_logit.mean():.3f} logit lens; tuned lower at every layer: {self.improved})")

    def plot(self, save_path: Optional[Union[str, Path]] = None, *, figsize: Tuple[float, float] = (11, 3.8)) -> Any:
        """KL and cross-entropy per layer, both lenses (log-scaled KL). Returns the matplotlib Figure; writes
        a PNG to ``save_path`` when given."""
        from ..plotting import require_matplotlib

        require_matplotlib()
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        for ax, (tuned, logit, title) in zip((left, right), ((self.kl, self.kl_logit, "KL(final || lens), nats"),
                                                             (self.ce, self.ce_logit, "next-token cross-entropy, nats"))):
            ax.plot(self.layers, logit, "o-", label="logit lens")
            ax.plot(self.layers, tuned, "o-", label="tuned lens")
            ax.set_xlabel("layer")
            ax.set_title(title)
        left.set_yscale("log")
        right.axhline(self.ce_model, color="grey", linestyle=":", label="model")
        right.legend(fontsize="small")
        if save_path is not None:
            fig.savefig(Path(save_path), dpi=150, bbox_inches="tight", format="png")
        return fig


def evaluate_lens(model: Any, lens: Any, prompts: Any, *, layers: Optional[Sequence[int]] = None, batch_size: int = 8,
                  exclude: Any = "special", context: Optional[int] = None, progress: bool = False) -> LensEvaluation:
    """Per-layer KL and cross-entropy of ``lens`` and of the logit lens on ``prompts`` (``lens.evaluate``).

    Args:
        model: the InterpretableModel the lens reads.
        lens: a :class:`~mlxterp.lenses.TunedLens`.
        prompts: texts or token-id lists (held-out text: not the training prompts).
        layers: layers to evaluate (None: the lens's).
        batch_size: prompts per forward.
        exclude: token ids left out of the averages (as in training: ``"special"``, a list, or None).
        context: keep at most this many tokens of each prompt.
        progress: show a progress bar.

    Raises:
        ValueError: a layer the lens does not read, or bad prompts.
    """
    chosen = list(lens.layers) if layers is None else [int(x) for x in layers]
    missing = [x for x in chosen if not lens.covers(x)]
    if missing or not chosen:
        raise ValueError(f"layers {missing or chosen}: this tuned lens reads layers {lens.layers} and the last "
                         f"({lens.n_layers - 1})")
    texts = [prompts] if isinstance(prompts, str) else list(prompts)  # a PromptFile is read once
    rows = token_rows(model, texts)
    rows = [r[:context] for r in rows] if context else rows
    excluded = np.array(sorted(excluded_ids(model, exclude)), dtype=np.int64)
    program = _program(model, [*chosen, lens.n_layers - 1])
    target_fn, layer_fn = _readouts(model)
    sums = np.zeros((4, len(chosen)))
    model_ce, counted, predicted = 0.0, 0, 0
    for ids, tokens, _ in tqdm(list(padded_batches(model, rows, batch_size)), desc="evaluating lens",
                               disable=not progress):
        out = program(tokens=mx.array(tokens))
        keep, has_next, nxt = _positions(tokens, [len(rows[i]) for i in ids], excluded)
        for start in range(0, len(keep), ROWS):
            part = slice(start, start + ROWS)
            marks = (_pad(has_next[part]), _pad(nxt[part]), _pad(np.ones(len(keep[part]), bool)))
            p, neg_entropy, ce = target_fn(_rows(out, lens.n_layers - 1, keep[part]), *marks[:2])
            model_ce += float(ce.item())
            for i, layer in enumerate(chosen):
                values = layer_fn(_rows(out, layer, keep[part]), *_translator(lens, layer), p, neg_entropy, *marks)
                sums[:, i] += np.array(values, dtype=np.float64)
        counted += len(keep)
        predicted += int(has_next.sum())
    result = LensEvaluation(chosen, sums[1] / counted, sums[0] / counted, sums[3] / max(predicted, 1),
                            sums[2] / max(predicted, 1), model_ce / max(predicted, 1), counted, predicted)
    return attach(result, model, texts, {"layers": chosen, "batch_size": batch_size, "exclude": exclude,
                                         "context": context, "lens_layers": list(lens.layers)})


def _program(model: Any, layers: List[int]) -> Any:
    """A program saving the outputs of ``layers`` (recorded once; it replays at any shape, stops after the last)."""
    probe = mx.zeros((1, site_names.PROBE_TOKENS), dtype=mx.int32)
    with model.trace(probe, capture="saved", compile=False) as tr:
        for layer in dict.fromkeys(layers):
            site_names.read(model, site_names.resolve(model, f"layers.{layer}.resid_post")).save(f"layer_{layer}")
    return tr.program()


def _positions(tokens: np.ndarray, lengths: List[int], excluded: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Flat indices of the kept positions, whether each has a next token, and that token (0 when none)."""
    width = tokens.shape[1]
    keep, has_next, nxt = [], [], []
    for r, n in enumerate(lengths):
        cols = np.flatnonzero(~np.isin(tokens[r, :n], excluded))
        keep.append(r * width + cols)
        has_next.append(cols + 1 < n)
        nxt.append(np.where(cols + 1 < n, tokens[r, np.minimum(cols + 1, n - 1)], 0))
    return np.concatenate(keep), np.concatenate(has_next), np.concatenate(nxt)


def _rows(out: Dict[str, mx.array], layer: int, index: np.ndarray) -> mx.array:
    """Layer ``layer``'s output at the flat positions ``index``, float32, padded to :data:`ROWS` rows."""
    value = out[f"layer_{layer}"]
    flat = value.reshape(-1, value.shape[-1])
    picked = mx.take(flat, mx.array(index.astype(np.int32)), axis=0).astype(mx.float32)
    if picked.shape[0] < ROWS:
        picked = mx.concatenate([picked, mx.zeros((ROWS - picked.shape[0], picked.shape[1]))])
    return picked


def _pad(values: np.ndarray) -> mx.array:
    out = np.zeros(ROWS, dtype=values.dtype)
    out[:len(values)] = values
    return mx.array(out.astype(np.int32) if values.dtype != bool else out)


def _translator(lens: Any, layer: int) -> Tuple[mx.array, mx.array]:
    """The translator's arrays for ``layer`` (zeros, the identity, for the last layer when it has none)."""
    if layer in lens.layers:
        i = lens.layers.index(layer)
        return lens.weight[i].astype(mx.float32), lens.bias[i].astype(mx.float32)
    return mx.zeros((lens.d_model, lens.d_model)), mx.zeros((lens.d_model,))


def _readouts(model: Any) -> Tuple[Callable, Callable]:
    """Compiled, for one chunk of rows: the target (``p``, ``sum p log p``, the sum of the model's own
    next-token cross-entropy) from the last layer's outputs; and per layer the sums of KL and next-token
    cross-entropy of the logit lens and the tuned lens (in that order)."""
    from ..analysis.unembed import find_unembedding

    unembed = find_unembedding(model)

    def target(final: mx.array, has_next: mx.array, nxt: mx.array) -> Tuple[mx.array, mx.array, mx.array]:
        z = unembed.logits(final).astype(mx.float32)
        lse, p = lse_softmax(z)
        return p, (p * z).sum(axis=-1) - lse, _cross_entropy(z, nxt, has_next, lse)

    def layer(h: mx.array, w: mx.array, b: mx.array, p: mx.array, neg_entropy: mx.array, has_next: mx.array,
              nxt: mx.array, real: mx.array) -> mx.array:
        t = Target(p, neg_entropy)
        out = []
        for state in (h, translate(h, w, b)):
            z = unembed.logits(state).astype(mx.float32)
            lse = lse_softmax(z)[0]
            out += [mx.where(real, t.kl(z, lse), 0).sum(), _cross_entropy(z, nxt, has_next, lse)]
        return mx.stack([out[0], out[2], out[1], out[3]])

    return mx.compile(target), mx.compile(layer)


def _cross_entropy(z: mx.array, nxt: mx.array, mask: mx.array, lse: Optional[mx.array] = None) -> mx.array:
    """The sum over the masked rows of ``-log softmax(z)[next token]``."""
    lse = lse_softmax(z)[0] if lse is None else lse
    picked = mx.take_along_axis(z, nxt[:, None], axis=-1)[:, 0]
    return mx.where(mask, lse - picked, 0).sum()
