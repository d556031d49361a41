"""Lenses trained on a model's residual stream: the tuned lens (Belrose et al. 2023).

::

    lens = TunedLens.train(model, prompts, tokens=20_000)      # live: one forward feeds every translator
    lens = TunedLens.train(model, store, tokens=20_000)        # or a store of every layer's output
    model.logit_lens("The capital of France is", lens=lens)    # the logit lens's result, read through the lens
    lens.evaluate(model, heldout).table()                      # per-layer KL and cross-entropy vs the logit lens
    lens.save("lens"); lens = TunedLens.load("lens")

A :class:`TunedLens` holds one affine translator per layer, ``h + h @ A_l + b_l``, starting at the identity
(an untrained tuned lens is the logit lens). Training (:func:`.training.train_lens`) minimises
``KL(final || lens)`` summed over the layers, averaged over tokens (:mod:`.objective`), with the paper's
optimizer by default (SGD, Nesterov momentum 0.9, learning rate 1, weight decay 1e-3, linear decay), on the
generic trainer (:func:`mlxterp.dictionaries.fit`): compiled steps, resumable run folders, data-parallel
ranks and a progress bar.
"""

from .evaluation import LensEvaluation, evaluate_lens
from .training import train_lens
from .tuned import TunedLens

__all__ = ["LensEvaluation", "TunedLens", "evaluate_lens", "train_lens"]
