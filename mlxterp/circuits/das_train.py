"""Interchange-intervention training of DAS subspaces, and their accuracy (IIA), as compiled functions.

One training step is one compiled function of the Householder vectors, the optimizer's state and a batch of
pairs: the source program, the intervened base program (``K`` sites, ``K`` variants of one forward), the
cross-entropy of the last position's logits on the labels, its gradient (``mx.value_and_grad`` through the
program) and the optimizer's update. Each site's loss depends on its own vectors only (variant ``j``
intervenes at site ``j`` alone), so training ``K`` sites together gives each what training it alone gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxterp.compiler import StateCompiled

from ..analysis.programs import cached_program, keep_program
from ..interrupts import at_step_end
from .das_data import Pairs, Site, batch_indices
from .das_program import InterchangeProgram, SourceProgram
from .das_rotation import householder

if TYPE_CHECKING:
    from ..model import InterpretableModel

PROGRAM_KIND = "das"


def source_program(model: "InterpretableModel", sites: Sequence[Site], tokens: mx.array) -> SourceProgram:
    """The source program of ``sites`` for prompts of ``tokens``' length, cached on the model (it replays on
    any batch size)."""
    key = ("source", tuple(sites), int(tokens.shape[1]))
    found = cached_program(model, PROGRAM_KIND, key)
    return found if found is not None else keep_program(model, PROGRAM_KIND, key, SourceProgram(model, sites, tokens))


def interchange_program(model: "InterpretableModel", sites: Sequence[Site], tokens: mx.array,
                        share_prefix: bool = True) -> InterchangeProgram:
    """The intervened base program of ``sites`` for prompts of ``tokens``' length, cached on the model."""
    key = ("base", tuple(sites), int(tokens.shape[1]), share_prefix)
    found = cached_program(model, PROGRAM_KIND, key)
    if found is None:
        found = keep_program(model, PROGRAM_KIND, key, InterchangeProgram(model, sites, tokens, share_prefix))
    return found


def site_losses(base_program: InterchangeProgram, vectors: dict, pairs: tuple, sources: Sequence[mx.array]) -> tuple:
    """``(sum, per site)``: the mean cross-entropy of each variant's last-position logits on the labels."""
    base, labels = pairs
    rotations = [householder(vectors[name]) for name in sorted(vectors, key=_site_index)]
    logits = base_program.logits(base, rotations, sources).astype(mx.float32)  # (K, batch, vocab)
    targets = mx.broadcast_to(labels[None], logits.shape[:2])
    per_site = nn.losses.cross_entropy(logits, targets).mean(axis=1)
    return per_site.sum(), per_site


class Trainer:
    """The compiled training step of ``K`` DAS sites (see the module docstring).

    Args:
        model: the InterpretableModel.
        sites: the resolved sites.
        pairs: the training pairs (their length fixes the programs).
        optimizer: an ``mlx.optimizers`` optimizer (its state is threaded through the compiled step).
    """

    def __init__(self, model: "InterpretableModel", sites: Sequence[Site], pairs: Pairs, optimizer: Any,
                 share_prefix: bool = True):
        self.source = source_program(model, sites, pairs.source)
        self.base = interchange_program(model, sites, pairs.base, share_prefix)
        self.optimizer = optimizer
        self._initialized = False
        self._step = StateCompiled(self._pure_step, model.model, model._executor.stats)

    def _pure_step(self, vectors: dict, state: dict, base: mx.array, source: mx.array, labels: mx.array) -> tuple:
        sources = [mx.stop_gradient(a) for a in self.source(source)]
        (_, per_site), grads = mx.value_and_grad(
            lambda v: site_losses(self.base, v, (base, labels), sources))(vectors)
        self.optimizer.state = state
        vectors = self.optimizer.apply_gradients(grads, vectors)
        return per_site, vectors, self.optimizer.state

    def step(self, vectors: dict, batch: Pairs) -> tuple[mx.array, dict]:
        """One step on ``batch``: each site's loss before the update ``(K,)`` and the updated vectors."""
        if not self._initialized:
            self.optimizer.init(vectors)
            self._initialized = True
        per_site, vectors, state = self._step(vectors, self.optimizer.state, batch.base, batch.source, batch.labels)
        self.optimizer.state = state
        return per_site, vectors


def fit(trainer: Trainer, vectors: dict, pairs: Pairs, steps: int, batch_size: int, seed: Optional[int],
        on_step: Any, progress: bool) -> np.ndarray:
    """Train for ``steps`` steps on batches of ``pairs``; ``on_step(vectors)`` after every finished step (Ctrl-C
    is taken between steps). Returns each step's per-site losses ``(steps, K)``."""
    from tqdm.auto import tqdm

    batches: Iterator[np.ndarray] = batch_indices(len(pairs), batch_size, seed)
    losses = []
    with tqdm(total=steps, desc="DAS", unit="step", disable=not progress) as bar:
        for _ in range(steps):
            with at_step_end():
                per_site, vectors = trainer.step(vectors, pairs.take(next(batches)))
                mx.eval(per_site, vectors, trainer.optimizer.state)
                on_step(vectors)
            losses.append(np.array(per_site, dtype=np.float64))
            bar.update(1)
    return np.stack(losses)


def predictions(model: "InterpretableModel", sites: Sequence[Site], rotations: Sequence[mx.array], pairs: Pairs,
                batch_size: int) -> np.ndarray:
    """Each site's top-1 prediction after its interchange on every pair, ``(K, n)`` token ids. Pairs run in
    batches of ``batch_size`` (the last one filled up with repeats of pair 0, dropped after), compiled."""
    source, base = source_program(model, sites, pairs.source), interchange_program(model, sites, pairs.base)
    key = ("predict", tuple(sites), pairs.seq_len)
    predict = cached_program(model, PROGRAM_KIND, key)
    if predict is None:
        def pure(rotations: list, base_tokens: mx.array, source_tokens: mx.array) -> mx.array:
            return mx.argmax(base.logits(base_tokens, rotations, source(source_tokens)), axis=-1)

        predict = keep_program(model, PROGRAM_KIND, key, StateCompiled(pure, model.model, model._executor.stats))
    n, out = len(pairs), []
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size)
        index[index >= n] = 0
        chunk = pairs.take(index)
        out.append(np.array(predict(list(rotations), chunk.base, chunk.source))[:, :min(batch_size, n - start)])
    return np.concatenate(out, axis=1)


def _site_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])
