"""Dictionaries fitted to activations (sparse autoencoders and transcoders), and the one compiled trainer
that fits them and anything else learned on activations (tuned lens, probes).

Making and using a dictionary (:mod:`.dictionary`)::

    sae = SAE.create("topk", d_in=576, d_sae=4608, k=32, site="layers.12.resid_pre")  # relu, batchtopk, jumprelu
    tc = Transcoder.create("topk", site="layers.8.mlp", d_sae=4608, k=32)  # MLP input -> MLP output; widths
                                                                           # read from the data when trained
    f = sae.encode(x)              # (..., d_in) raw activations -> (..., d_sae) features
    x_hat = sae.decode(f)          # -> (..., d_out) raw activations
    f, x_hat, err = sae.parts(x)   # features, reconstruction, error (tc.parts(x, target=y) for a transcoder)
    sae.save("sae12"); sae = SAE.load("sae12")  # SAELens's layout: cfg.json + sae_weights.safetensors

A dictionary is an ``mlx.nn.Module`` with SAELens's parameters ``W_enc (d_in, d_sae)``, ``b_enc``,
``W_dec (d_sae, d_out)``, ``b_dec`` and, for JumpReLU inference (``jumprelu``, ``batchtopk``), ``threshold``;
plus the frozen scalars ``input_scale``/``output_scale`` (training's normalization: the weights work in the
normalized space, ``encode``/``decode`` take and give raw activations; ``save`` folds them in).
``hidden_pre(x)`` gives the pre-activations, ``weights()`` the arrays by name, ``config`` the
:class:`DictionaryConfig`; ``site`` (input) and ``site_out`` (what the output stands for) are site names
(:mod:`.sites`); ``bind(d_in, d_out)`` fills in widths and initializes an unbound dictionary.

Training (:func:`mlxterp.train`)::

    run = train(sae, store, tokens=2_000_000, batch_size=4096, lr=4e-4, seed=0, out="runs/sae12")  # resumable
    run = train([sae, tc], model=model, prompts=PromptFile("corpus.jsonl"), tokens=2_000_000)     # live
    run = train(sae, store, tokens=2_000_000, out="runs/sae12", until=250_000)  # pause; the same call continues
    run.history[0]["fve"], run.density[0], run.plot()

Data is an :class:`~mlxterp.ActivationStore` (rows shuffled across shards with the seed, memory bounded by
the shards a batch touches), ``{site: array}`` in memory, or live: one traced forward per prompt chunk (a
program whose saves are every dictionary's sites, stopped after the last of them) feeds all dictionaries.
Each step is one compiled function (forward, backward, Adam) of arrays only; ``out=`` checkpoints
atomically and a rerun continues to the same weights as an uninterrupted run; ``distributed=`` splits
every batch over ``mx.distributed`` ranks and sums the gradients.

Building on it:

- Splicing a dictionary into a trace: ``sites.resolve(model, d.site)`` gives the module path and phase a
  trace reads and writes (``sites.read(model, site)`` is the traced value); ``d.encode``/``d.decode``/
  ``d.parts`` are plain MLX functions of arrays, usable inside ``mlxterp.apply`` and programs.
- Anything else trained on activations (tuned lens, probes) subclasses :class:`Objective` (its parameters,
  state, a loss written as this rank's sum over rows divided by a global normalizer, metrics, write-back)
  and calls :func:`fit` with a :class:`Source` (:class:`StoreSource`, with per-row ``extra`` arrays such as
  labels; :class:`LiveSource` over any sites; :class:`ArraySource`; or its own) and :class:`FitSettings`
  (Adam, or ``optimizer="sgd"``: Nesterov momentum, weight decay): it gets the same compiled step,
  checkpoints, resume (``until=`` pauses), distribution and progress bar (``Objective.postfix``). The tuned
  lens (:mod:`mlxterp.lenses`) and probes (:mod:`mlxterp.probes`) are built this way.
"""

from . import architectures, sites
from .config import DictionaryConfig
from .dictionary import SAE, Dictionary, Parts, Transcoder
from .learner import Comm, Objective
from .objective import DictionaryObjective
from .results import TrainResult
from .sources import ArraySource, LiveSource, Source, StoreSource
from .train import train
from .trainer import FitOutcome, FitSettings, fit

__all__ = [
    "ArraySource", "Comm", "Dictionary", "DictionaryConfig", "DictionaryObjective", "FitOutcome", "FitSettings",
    "LiveSource", "Objective", "Parts", "SAE", "Source", "StoreSource", "TrainResult", "Transcoder",
    "architectures", "fit", "sites", "train",
]
