"""``mlxterp.train``: fit dictionaries to an activation store, or live to a model's forwards on prompts."""

from __future__ import annotations

import hashlib
import math
import numbers
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np

from .. import distributed as dist
from . import sites as site_names
from .dictionary import Dictionary
from .objective import DictionaryObjective
from .results import TrainResult, histories
from .sources import ArraySource, LiveSource, Source, StoreSource
from .trainer import FitSettings, fit

PathLike = Union[str, Path]


def train(dictionaries: Union[Dictionary, Sequence[Dictionary]], data: Any = None, *, model: Any = None,
          prompts: Any = None, tokens: int, batch_size: int = 4096, lr: float = 4e-4, seed: int = 0,
          out: Optional[PathLike] = None, warmup: float = 0.01, decay: float = 0.2, max_grad_norm: float = 1.0,
          betas: Tuple[float, float] = (0.9, 0.999), checkpoint_every: Optional[int] = None, resume: bool = True,
          progress: bool = True, distributed: Any = "auto", exclude: Any = "special", context: Optional[int] = None,
          prompt_batch: int = 8, shuffle_batches: int = 8, compile: bool = True,
          until: Optional[int] = None, skip_positions: int = 0) -> TrainResult:
    """Train dictionaries (SAEs, transcoders) on activations, one compiled step per batch.

    Args:
        dictionaries: a :class:`~mlxterp.SAE` / :class:`~mlxterp.Transcoder`, or a list of them; trained
            in place. Each reads its site(s) from every batch.
        data: an :class:`~mlxterp.ActivationStore` (or its folder) holding the dictionaries' sites (rows
            are shuffled across shards with ``seed``), or ``{site: (rows, width) array}`` in memory (rows
            reshuffled every epoch with ``seed``).
        model: instead of ``data``, with ``prompts``: train live on the forwards of this InterpretableModel.
            One forward, stopped after the last site, feeds every dictionary.
        prompts: live training's prompts: texts, token-id lists, or a :class:`~mlxterp.PromptFile` (one
            text is one prompt).
        tokens: tokens (rows) to train on; the run takes ``tokens // batch_size`` steps.
        batch_size: rows per step (over all processes together).
        lr: Adam's learning rate (betas ``betas``, eps 1e-8, bias-corrected).
        seed: seed of the data order.
        out: a run folder: checkpoints (resumable after any interruption, ``kill -9`` included: rerun the
            same call) and, when done, each dictionary saved in SAELens's layout in
            ``out/<index>-<site>-<architecture>/`` (``TrainResult.saved``).
        warmup: fraction of the steps with a linear learning-rate warm-up at the start.
        decay: fraction of the steps with a linear learning-rate decay to 0 at the end (``warmup + decay``
            at most 1).
        max_grad_norm: clip the global gradient norm to this (0: no clipping).
        checkpoint_every: write a checkpoint every this many steps (None: every 5 minutes); always at the end.
        resume: continue the run found in ``out`` (False: an existing run there is an error).
        progress: show a progress bar (tokens, rate, ETA, L0, FVE, dead fraction).
        distributed: data-parallel over ``mx.distributed``: ``"auto"`` when launched on several processes,
            ``True`` to require it, ``False`` for this process alone. Each rank computes its share of every
            batch; gradients are summed over the ranks, so the run equals the single-process one (up to
            float rounding). ``batch_size`` must divide evenly.
        exclude: live training: token ids that are never rows: ``"special"`` (BOS, EOS, padding and the
            tokenizer's other special tokens), a list of ids, or None. Padding is never a row.
        context: live training: keep at most this many tokens of each prompt.
        prompt_batch: live training: prompts per forward.
        shuffle_batches: live training: batches per shuffled window of rows.
        compile: run each step compiled (False: the same step eagerly, for debugging).
        skip_positions: leave out each prompt's first ``skip_positions`` tokens (live, or from a tokens
            store): on models without a BOS token the first token is an attention sink whose residual is
            orders of magnitude larger than any other (SmolLM2: norm ~23,000 against ~140 at layer 12), and
            would dominate the reconstruction loss and the variance FVE is measured against.
        until: pause this call once the run has trained this many tokens (whole steps; None: train to
            ``tokens``). With ``out=`` a checkpoint is written there and the same call with a later ``until``
            (or none) continues, ending with the weights of an uninterrupted run (the learning-rate schedule
            is always that of ``tokens``): train in segments and evaluate between them. The dictionaries
            are saved in ``out`` only when the run is complete.

    Returns:
        A :class:`~mlxterp.dictionaries.TrainResult` (history, densities, timings).

    Raises:
        TypeError: before any work: a dictionary that is not an SAE or a Transcoder, ``data`` that is not a
            store, its folder or a dict, ``model`` that is not an InterpretableModel.
        ValueError: before any work: bad arguments, a site the model or store lacks, a dictionary whose
            width differs from its site's, a run folder holding another run, a corrupt checkpoint; during
            training: NaN or infinite activations (the dictionary keeps its last good weights).
        FloatingPointError: the loss became NaN or infinite (too high a learning rate; the dictionary keeps
            its last good weights).
    """
    dicts = _check_dictionaries(dictionaries)
    settings = fit_settings(tokens, batch_size, lr, seed, warmup, decay, max_grad_norm, betas)
    group = dist.resolve_group(distributed)
    if group is not None and batch_size % group.size():
        raise ValueError(f"batch_size={batch_size} must be a multiple of the number of processes ({group.size()}), "
                         "so that every rank gets the same share of each batch")
    check_int("checkpoint_every", checkpoint_every, 1, allow_none=True)
    check_int("until", until, batch_size, allow_none=True)
    check_int("skip_positions", skip_positions, 0)
    source, keys = _source(dicts, data, model, prompts, exclude, context, prompt_batch, shuffle_batches,
                           skip_positions)
    objectives = [DictionaryObjective(d, k_in, k_out, batch_size) for d, (k_in, k_out) in zip(dicts, keys)]
    identity = {"dictionaries": [dict(d.config.identity(), weights=_weights_digest(d)) for d in dicts]}
    outcome = fit(objectives, source, settings, out=out, identity=identity, resume=resume,
                  checkpoint_every=checkpoint_every, progress=progress, group=group, compile=compile,
                  desc="training " + ", ".join(o.name for o in objectives[:3]) + ("..." if len(dicts) > 3 else ""),
                  until=None if until is None else until // batch_size)
    trained = max(1, outcome.end) * batch_size
    density = [np.array(st.state["fires"]) / trained for st in outcome.states]
    saved = _save_all(dicts, Path(out).expanduser(), group) if out is not None and outcome.done else []
    return TrainResult(dicts, histories(outcome.states), density, outcome.end, batch_size, outcome.start,
                       outcome.forwards, outcome.seconds, Path(out).expanduser() if out is not None else None, saved)


# -- arguments -----------------------------------------------------------------------------------------
def _check_dictionaries(dictionaries: Any) -> List[Dictionary]:
    items = [dictionaries] if isinstance(dictionaries, Dictionary) else dictionaries
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"dictionaries must be an SAE/Transcoder or a non-empty list of them, got {dictionaries!r}")
    for i, d in enumerate(items):
        if not isinstance(d, Dictionary):
            raise TypeError(f"dictionaries[{i}] is a {type(d).__name__}; expected an mlxterp SAE or Transcoder "
                            "(mlxterp.SAE.create(...))")
        if d.site is None or d.site_out is None:
            raise ValueError(f"dictionaries[{i}] ({d!r}) has no site: create it with site='layers.N.resid_pre' (or "
                             "another site) so the trainer knows which activations it learns")
    if len({id(d) for d in items}) != len(items):
        raise ValueError("the same dictionary object is listed twice; each dictionary is trained once per run")
    return list(items)


def fit_settings(tokens: Any, batch_size: Any, lr: Any, seed: Any, warmup: Any, decay: Any, max_grad_norm: Any,
              betas: Any) -> FitSettings:
    check_int("batch_size", batch_size, 1)
    check_int("tokens", tokens, 1)
    check_int("seed", seed, 0)
    if tokens < batch_size:
        raise ValueError(f"tokens={tokens} is less than one batch (batch_size={batch_size}); the run takes "
                         "tokens // batch_size steps")
    check_real("lr", lr, strict=True)
    check_real("max_grad_norm", max_grad_norm)
    for name, value in (("warmup", warmup), ("decay", decay)):
        check_real(name, value)
        if value > 1:
            raise ValueError(f"{name} is a fraction of the steps (0 to 1), got {value}")
    if warmup + decay > 1:
        raise ValueError(f"warmup + decay must be at most 1 (fractions of the steps), got {warmup} + {decay}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    return FitSettings(steps=tokens // batch_size, batch_size=batch_size, lr=float(lr), seed=seed, warmup=float(warmup),
                       decay=float(decay), max_grad_norm=float(max_grad_norm), betas=(float(betas[0]), float(betas[1])))


def check_int(name: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{' or None' if allow_none else ''}, got {value!r}")


def check_real(name: str, value: Any, strict: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (strict and value == 0):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {value!r}")


# -- data ----------------------------------------------------------------------------------------------
def _source(dicts: List[Dictionary], data: Any, model: Any, prompts: Any, exclude: Any, context: Any,
            prompt_batch: Any, shuffle_batches: Any, skip: int = 0) -> Tuple[Source, List[Tuple[str, str]]]:
    """The batches' source and each dictionary's ``(input key, target key)``; binds unbound dictionaries."""
    live = model is not None or prompts is not None
    if (data is None) == (not live) or (live and (model is None or prompts is None)):
        raise ValueError("give the training data either as data= (an ActivationStore or its folder) or as model= and "
                         "prompts= (live training on the model's forwards), not both")
    if isinstance(data, dict):
        if skip:
            raise ValueError("skip_positions needs prompts (live training or a tokens store); data= arrays are rows "
                             "without positions")
        return _array_source(dicts, data)
    if not live:
        return _store_source(dicts, data, skip)
    check_int("prompt_batch", prompt_batch, 1)
    check_int("shuffle_batches", shuffle_batches, 1)
    check_int("context", context, 1, allow_none=True)
    check_model(model)
    keys, resolved = [], []
    for d in dicts:
        s_in, s_out = site_names.resolve(model, d.site), site_names.resolve(model, d.site_out)
        d.bind(s_in.width, s_out.width)
        keys.append((s_in.key, s_out.key))
        resolved += [s_in, s_out]
    prompts = [prompts] if isinstance(prompts, str) else prompts
    return LiveSource(model, prompts, resolved, exclude=exclude, context=context, prompt_batch=prompt_batch,
                      shuffle_batches=shuffle_batches, skip=skip), keys


def check_model(model: Any) -> None:
    from ..model import InterpretableModel

    if not isinstance(model, InterpretableModel):
        raise TypeError(f"model must be an mlxterp.InterpretableModel, got {type(model).__name__}")


def _store_source(dicts: List[Dictionary], data: Any, skip: int = 0) -> Tuple[Source, List[Tuple[str, str]]]:
    from ..store import ActivationStore

    store = data if isinstance(data, ActivationStore) else None
    if store is None:
        if not isinstance(data, (str, Path)):
            raise TypeError(f"data must be an ActivationStore or the path of its folder, got {type(data).__name__}")
        store = ActivationStore(data)
    by_key = {site_names.site_key(k): k for k in store.keys}
    mapping: Dict[str, str] = {}
    keys = []
    for d in dicts:
        pair = []
        for site in (d.site, d.site_out):
            key = site_names.site_key(site)
            if key not in by_key:
                raise ValueError(f"{d!r}: its site {site!r} is not in the activation store {str(store.path)!r}, which "
                                 f"holds {', '.join(map(repr, store.keys))}; collect that site "
                                 "(collect_activations(..., layers=[...], out=...)) or train live with model=")
            mapping[key] = by_key[key]
            pair.append(key)
        keys.append(tuple(pair))
    source = StoreSource(store, mapping, use=positions_from(store, skip) if skip else None)
    for d, (k_in, k_out) in zip(dicts, keys):
        d.bind(source.widths[k_in], source.widths[k_out])
    return source, keys


def positions_from(store: Any, first: int) -> np.ndarray:
    """A mask over a tokens store's rows: True for every token at position ``first`` or later of its prompt."""
    if store.kind != "tokens":
        raise ValueError(f"skip_positions needs a tokens store (one row per token); {str(store.path)!r} holds chosen "
                         "positions of each prompt")
    lengths = store.lengths()
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum())) - starts >= first


def _array_source(dicts: List[Dictionary], data: Dict[Any, Any]) -> Tuple[Source, List[Tuple[str, str]]]:
    by_key = {site_names.site_key(k): k for k in data}
    keys = []
    for d in dicts:
        pair = tuple(site_names.site_key(s) for s in (d.site, d.site_out))
        missing = [s for s, k in zip((d.site, d.site_out), pair) if k not in by_key]
        if missing:
            raise ValueError(f"{d!r}: its site {missing[0]!r} is not in data=, which holds "
                             f"{', '.join(map(repr, data))}")
        keys.append(pair)
    source = ArraySource({k: data[by_key[k]] for pair in keys for k in pair})
    for d, (k_in, k_out) in zip(dicts, keys):
        d.bind(source.widths[k_in], source.widths[k_out])
    return source, keys


def _weights_digest(d: Dictionary) -> str:
    """A digest of a dictionary's starting weights (a resumed run must start from the same ones)."""
    h = hashlib.sha256()
    for name, value in sorted(d.weights().items()):
        h.update(name.encode())
        h.update(np.array(value.astype(mx.float32)).tobytes())
    h.update(np.array([d.input_scale.item(), d.output_scale.item()], dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


def _save_all(dicts: List[Dictionary], folder: Path, group: Any) -> List[Path]:
    """Each dictionary in SAELens's layout under the run folder (rank 0 writes)."""
    paths = []
    for i, d in enumerate(dicts):
        path = folder / f"{i:02d}-{site_names.site_key(d.site)}-{d.architecture}"
        if dist.rank(group) == 0:
            d.save(path)
        paths.append(path)
    dist.barrier(group)
    return paths
