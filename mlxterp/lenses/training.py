"""Training a tuned lens with the generic trainer (:func:`mlxterp.dictionaries.fit`): every translator from one
batch of every layer's residual output, live on the model's forwards or from an activation store."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .. import distributed as dist
from ..dictionaries import sites as site_names
from ..dictionaries.sources import ArraySource, LiveSource, Source, StoreSource, hash_array
from ..dictionaries.train import check_int, check_model, check_real, fit_settings
from ..dictionaries.trainer import fit
from .objective import TunedLensObjective
from .tuned import TunedLens

PathLike = Union[str, Path]


def train_lens(model: Any, data: Any, *, tokens: int, layers: Optional[Sequence[int]] = None, batch_size: int = 128,
               lr: float = 1.0, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 1e-3,
               warmup: float = 0.0, decay: float = 1.0, max_grad_norm: float = 1.0, seed: int = 0,
               out: Optional[PathLike] = None, resume: bool = True, checkpoint_every: Optional[int] = None,
               progress: bool = True, distributed: Any = "auto", exclude: Any = "special",
               context: Optional[int] = None, prompt_batch: int = 8, shuffle_batches: int = 8, compile: bool = True,
               until: Optional[int] = None) -> TunedLens:
    """Train a tuned lens for ``model`` (``TunedLens.train(model, data, tokens=...)``).

    Every translator trains on every batch: one forward (live), or one batch of a store, gives each row's
    output at every trained layer and at the last layer (the target); one compiled step updates them all.

    Args:
        model: the InterpretableModel (its final norm and unembedding read the translated states).
        data: prompts to train live on (a list of texts or token-id lists, a :class:`mlxterp.PromptFile`, one
            text), an :class:`~mlxterp.ActivationStore` (or its folder) collected from this model holding the
            trained layers' outputs and the last layer's (``collect_activations(model, prompts, out=...)`` with
            the default ``layers=None``), or ``{site: (rows, d_model) array}`` (sites ``layers.N.resid_post``).
        tokens: rows (tokens) to train on; the run takes ``tokens // batch_size`` steps.
        layers: layers to give a translator (None: all but the last).
        batch_size: rows per step (all processes together).
        lr: the peak learning rate: 1 for the paper's SGD (PyTorch's ``lr=0.1``, see
            :func:`mlxterp.dictionaries.optim.sgd_nesterov`), about 1e-3 for Adam.
        optimizer: ``"sgd"`` (the paper's: Nesterov momentum) or ``"adam"``.
        momentum: SGD's Nesterov momentum, in [0, 1).
        weight_decay: SGD's weight decay, towards the identity (``A = 0``, ``b = 0``).
        warmup: the fraction of the steps with a linear warm-up (default none).
        decay: the fraction of the steps with a linear decay to 0 (default all: the paper's linear decay).
        max_grad_norm: clip the global gradient norm (every translator together) to this (0: no clipping).
        seed: seed of the data order.
        out: a resumable run folder, as for :func:`mlxterp.train`; the trained lens is saved in ``out/lens``
            when the run is complete.
        resume: continue the run found in ``out`` (False: an existing run there is an error).
        checkpoint_every: write a checkpoint every this many steps (None: every 5 minutes); always at the end.
        progress: show a progress bar (tokens, rate, ETA, mean KL).
        distributed: data-parallel over ``mx.distributed``, as for :func:`mlxterp.train`.
        exclude: live training: token ids that are never rows (``"special"``, a list of ids, or None).
        context: live training: keep at most this many tokens of each prompt.
        prompt_batch: live training: prompts per forward.
        shuffle_batches: live training: batches per shuffled window of rows.
        compile: run each step compiled (False: eagerly, for debugging).
        until: pause once this many tokens are trained (with ``out=``, the same call with a later ``until``
            continues), as for :func:`mlxterp.train`.

    Returns:
        The trained :class:`TunedLens`; its ``history`` holds ``loss``, ``kl`` (mean over layers) and
        ``kl.<layer>`` per step, in nats per token.

    Raises:
        ValueError: before any work: bad arguments, a layer out of range, a store from another model or
            lacking a layer, data that are neither prompts nor a store.
    """
    check_model(model)
    lens = TunedLens.create(model, layers)
    settings = fit_settings(tokens, batch_size, lr, seed, warmup, decay, max_grad_norm, (0.9, 0.999))
    check_real("weight_decay", weight_decay)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    settings = dataclasses.replace(settings, optimizer=optimizer, momentum=float(momentum),
                                   weight_decay=float(weight_decay))
    check_int("until", until, batch_size, allow_none=True)
    group = dist.resolve_group(distributed)
    if group is not None and batch_size % group.size():
        raise ValueError(f"batch_size={batch_size} must be a multiple of the number of processes ({group.size()})")
    source, keys, final_key = _source(model, lens, data, exclude, context, prompt_batch, shuffle_batches)
    from ..analysis.unembed import find_unembedding

    objective = TunedLensObjective(lens, keys, final_key, find_unembedding(model), batch_size)
    identity = {"tuned_lens": {"layers": lens.layers, "d_model": lens.d_model,
                               "start": [hash_array(lens.weight), hash_array(lens.bias)]}}
    outcome = fit([objective], source, settings, out=out, identity=identity, resume=resume,
                  checkpoint_every=checkpoint_every, progress=progress, group=group, compile=compile,
                  desc="tuned lens", until=None if until is None else until // batch_size)
    lens.history = {k: list(v) for k, v in outcome.states[0].history.items()}
    lens.info = {"model": _model_info(model), "settings": settings.identity(), "source": source.identity(),
                 "tokens": outcome.end * batch_size}
    if out is not None and outcome.done and dist.rank(group) == 0:
        lens.save(Path(out).expanduser() / "lens")
    dist.barrier(group)
    return lens


def _model_info(model: Any) -> Dict[str, Any]:
    from ..store.manifest import model_identity

    identity = model_identity(model)
    return {"class": identity["class"], "fingerprint": identity["fingerprint"], "layers": len(model.layers)}


def _source(model: Any, lens: TunedLens, data: Any, exclude: Any, context: Any, prompt_batch: Any,
            shuffle_batches: Any) -> Tuple[Source, List[str], str]:
    """The batches' source, each translator's batch key (``lens.layers`` order) and the last layer's."""
    wanted = [f"layers.{layer}.resid_post" for layer in [*lens.layers, lens.n_layers - 1]]
    if isinstance(data, dict):
        by_key = {site_names.site_key(k): k for k in data}
        _require(wanted, by_key, "data=", ", ".join(map(repr, data)))
        source: Source = ArraySource({k: data[by_key[k]] for k in dict.fromkeys(wanted)})
    elif _is_store(data):
        source = _store_source(model, data, wanted)
    else:
        check_int("prompt_batch", prompt_batch, 1)
        check_int("shuffle_batches", shuffle_batches, 1)
        check_int("context", context, 1, allow_none=True)
        prompts = [data] if isinstance(data, str) else data
        sites = [site_names.resolve(model, name) for name in dict.fromkeys(wanted)]
        source = LiveSource(model, prompts, sites, exclude=exclude, context=context, prompt_batch=prompt_batch,
                            shuffle_batches=shuffle_batches)
    widths = {source.widths[k] for k in wanted}
    if widths != {lens.d_model}:
        raise ValueError(f"the data's rows have widths {sorted(widths)}; the model's residual width is {lens.d_model}")
    return source, wanted[:-1], wanted[-1]


def _is_store(data: Any) -> bool:
    from ..store import ActivationStore

    if isinstance(data, ActivationStore):
        return True
    return isinstance(data, (str, Path)) and Path(data).expanduser().is_dir()


def _store_source(model: Any, data: Any, wanted: List[str]) -> StoreSource:
    from ..store import ActivationStore
    from ..store.manifest import model_identity

    store = data if isinstance(data, ActivationStore) else ActivationStore(data)
    stored = (store.manifest.get("model") or {}).get("fingerprint")
    mine = model_identity(model)["fingerprint"]
    if stored != mine:
        raise ValueError(f"the activation store {str(store.path)!r} was collected from another model (fingerprint "
                         f"{stored}) than this one ({mine}); a tuned lens reads a model's activations with that "
                         "model's own unembedding (load the model as the store's collector did, weights included)")
    by_key = {site_names.site_key(k): k for k in store.keys}
    _require(wanted, by_key, f"the activation store {str(store.path)!r}", ", ".join(map(repr, store.keys)))
    return StoreSource(store, {k: by_key[k] for k in dict.fromkeys(wanted)})


def _require(wanted: List[str], by_key: Dict[str, str], where: str, holds: str) -> None:
    missing = [k for k in wanted if k not in by_key]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(map(repr, missing[:4]))}{' ...' if len(missing) > 4 else ''}: a "
                         f"tuned lens trains on every translated layer's output and the last layer's; it holds {holds} "
                         "(collect every layer: collect_activations(model, prompts, out=...) with layers=None)")

