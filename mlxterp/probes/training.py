"""Training and scoring probes: data (a store, arrays) and labels (per row or per prompt) as batches for the
generic trainer, a held-out split by prompt, and the held-out score."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import mlx.core as mx
import numpy as np

from .. import distributed as dist
from ..dictionaries import sites as site_names
from ..dictionaries.sources import ArraySource, Source, StoreSource
from ..dictionaries.train import check_real, fit_settings
from ..dictionaries.trainer import fit
from .objective import KINDS, ProbeObjective, hits, row_losses
from .probe import Probe, ProbeScore

SCORE_ROWS = 4096  # rows scored at a time


@dataclasses.dataclass
class Rows:
    """Where a probe's rows come from: ``fetch(indices) -> (len(indices), d_in) float32``, how many there
    are, which prompt each belongs to, and the training source for given per-row arrays."""

    fetch: Callable[[np.ndarray], mx.array]
    count: int
    d_in: int
    groups: np.ndarray
    site: Optional[str]
    source: Callable[[dict], Source]


def train_probe(data: Any, labels: Any, *, site: Optional[str] = None, kind: str = "auto", holdout: float = 0.2,
                epochs: float = 20.0, batch_size: Optional[int] = None, lr: float = 1e-2, l2: float = 0.0, seed: int = 0,
                out: Optional[Union[str, Path]] = None, resume: bool = True, progress: bool = False,
                distributed: Any = "auto", compile: bool = True) -> Probe:
    """Train a linear probe (``Probe.train(store, labels, site="layers.12.resid_pre")``).

    Args:
        data: an :class:`~mlxterp.ActivationStore` (or its folder) holding ``site``, a ``(rows, d_in)`` array, or
            ``{site: (rows, d_in) array}``.
        labels: one per row, or (for a store) one per prompt, given to every row of that prompt: numbers for
            regression (``(rows,)`` or ``(rows, targets)``), or class labels (ints, bools, strings).
        site: the site to read (needed when a store or dict holds several); recorded on the probe.
        kind: ``"linear"`` (least squares), ``"logistic"`` (two classes), ``"softmax"`` (several), or ``"auto"``:
            float labels are regression, anything else classification (logistic for two classes).
        holdout: the fraction of prompts (of rows, for arrays) held out of training and scored at the end
            (``probe.heldout``); 0 trains on everything.
        epochs: passes over the training rows (the run takes ``ceil(epochs * rows / batch_size)`` steps).
        batch_size: rows per step (None: 256, or every training row when there are fewer).
        lr: Adam's learning rate, on standardised activations.
        l2: ridge penalty on the standardised weights.
        seed: seed of the held-out split and the data order.
        out: a resumable run folder, as for :func:`mlxterp.train`.
        resume: continue the run found in ``out`` (False: an existing run there is an error).
        progress: show a progress bar.
        distributed: data-parallel over ``mx.distributed``, as for :func:`mlxterp.train`.
        compile: run each step compiled (False: eagerly, for debugging).

    Returns:
        The trained :class:`~mlxterp.probes.Probe` (``history``: ``data_loss``, ``accuracy`` per step).

    Raises:
        ValueError: before any work: labels that do not match the rows or prompts, one class only, a site the
            data lack, bad numbers.
    """
    rows = resolve_rows(data, site)
    kind, targets, classes = _labels(labels, rows, kind)
    check_real("holdout", holdout)
    check_real("epochs", epochs, strict=True)
    check_real("l2", l2)
    weights, held = _split(rows.groups, holdout, seed)
    batch_size = min(256, int(weights.sum())) if batch_size is None else batch_size
    steps = max(1, math.ceil(epochs * int(weights.sum()) / batch_size))
    settings = fit_settings(steps * batch_size, batch_size, lr, seed, 0.01, 0.2, 1.0, (0.9, 0.999))
    group = dist.resolve_group(distributed)
    if group is not None and batch_size % group.size():
        raise ValueError(f"batch_size={batch_size} must be a multiple of the number of processes ({group.size()})")
    probe = Probe(kind, rows.d_in, targets.shape[1] if kind != "softmax" else len(classes), site=rows.site,
                  classes=classes)
    objective = ProbeObjective(probe, l2)
    source = rows.source({"label": targets, "weight": weights[:, None]})
    outcome = fit([objective], source, settings, out=out, identity={"probe": {"kind": kind, "l2": float(l2)}},
                  resume=resume, progress=progress, group=group, compile=compile, desc=objective.name)
    probe.history = {k: list(v) for k, v in outcome.states[0].history.items()}
    if held.size:
        probe.heldout = _score(probe, rows, targets, held)
    return probe


def score_probe(probe: Probe, data: Any, labels: Any, *, site: Optional[str] = None) -> ProbeScore:
    """``probe.score``: the probe on every row of ``data`` against ``labels``."""
    rows = resolve_rows(data, site if site is not None else probe.site)
    if rows.d_in != probe.d_in:
        raise ValueError(f"the data's rows have width {rows.d_in}; this probe reads width {probe.d_in}")
    _, targets, _ = _labels(labels, rows, probe.kind, probe.classes)
    return _score(probe, rows, targets, np.arange(rows.count))


# -- data ----------------------------------------------------------------------------------------------
def resolve_rows(data: Any, site: Optional[str]) -> Rows:
    """The :class:`Rows` of a store, an array or ``{site: array}``."""
    from ..store import ActivationStore

    if isinstance(data, ActivationStore) or (isinstance(data, (str, Path)) and Path(data).expanduser().is_dir()):
        return _store_rows(data if isinstance(data, ActivationStore) else ActivationStore(data), site)
    if isinstance(data, dict):
        by_key = {site_names.site_key(k): k for k in data}
        if site is None and len(data) != 1:
            raise ValueError(f"data holds {', '.join(map(repr, data))}: pass site= to choose one")
        key = next(iter(data)) if site is None else by_key.get(site_names.site_key(site))
        if key is None:
            raise ValueError(f"site {site!r} is not in data=, which holds {', '.join(map(repr, data))}")
        return _array_rows(data[key], site or str(key))
    return _array_rows(data, site)


def _array_rows(array: Any, site: Optional[str]) -> Rows:
    x = mx.array(array).astype(mx.float32) if not isinstance(array, mx.array) else array.astype(mx.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"probe data must be (rows, width) activations, got shape {tuple(x.shape)}")

    def fetch(index: np.ndarray) -> mx.array:
        return mx.take(x, mx.array(index.astype(np.int32)), axis=0)

    return Rows(fetch, int(x.shape[0]), int(x.shape[1]), np.arange(x.shape[0]), site,
                lambda extra: ArraySource({"x": x, **extra}))


def _store_rows(store: Any, site: Optional[str]) -> Rows:
    by_key = {site_names.site_key(k): k for k in store.keys}
    if site is None and len(store.keys) != 1:
        raise ValueError(f"the activation store {str(store.path)!r} holds {', '.join(map(repr, store.keys))}: pass "
                         "site= to choose one")
    key = store.keys[0] if site is None else by_key.get(site_names.site_key(site))
    if key is None:
        raise ValueError(f"site {site!r} is not in the activation store {str(store.path)!r}, which holds "
                         f"{', '.join(map(repr, store.keys))}")
    probe_source = StoreSource(store, {"x": key})
    groups = store.prompt_index()

    def fetch(index: np.ndarray) -> mx.array:
        return store.get(key, rows=index, dtype="float32")

    return Rows(fetch, probe_source.rows, probe_source.widths["x"], groups, site or key,
                lambda extra: StoreSource(store, {"x": key}, extra=extra))


# -- labels --------------------------------------------------------------------------------------------
def _labels(labels: Any, rows: Rows, kind: str, classes: Optional[List[Any]] = None
            ) -> Tuple[str, np.ndarray, Optional[List[Any]]]:
    """``(kind, (rows, width) float32 targets, classes)``: per-prompt labels spread to their rows, classes
    found (or given), ``auto`` resolved."""
    values = np.asarray(labels.tolist() if isinstance(labels, mx.array) else labels)
    prompts = int(rows.groups[-1]) + 1
    if values.shape[:1] == (rows.count,):
        per_row = values
    elif values.shape[:1] == (prompts,):
        per_row = values[rows.groups]
    else:
        raise ValueError(f"labels: {values.shape[0] if values.ndim else 'a scalar'} labels for {rows.count} rows "
                         f"of {prompts} prompts; give one label per row or one per prompt")
    if kind not in (*KINDS, "auto"):
        raise ValueError(f"kind must be 'auto' or one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if kind == "auto":
        kind = "linear" if np.issubdtype(per_row.dtype, np.floating) else "classes"
    if kind == "linear":
        if not np.issubdtype(per_row.dtype, np.number):
            raise ValueError(f"labels: a linear probe regresses numbers, got {per_row.dtype} labels")
        return kind, per_row.reshape(len(per_row), -1).astype(np.float32), None
    if per_row.ndim != 1:
        raise ValueError(f"labels: classification takes one label per row, got shape {per_row.shape}")
    found = [v.item() if hasattr(v, "item") else v for v in np.unique(per_row)]
    classes = found if classes is None else classes
    if len(classes) < 2:
        raise ValueError(f"labels: a classifier needs at least two classes, got only {classes}")
    kind = ("logistic" if len(classes) == 2 else "softmax") if kind == "classes" else kind
    if kind == "logistic" and len(classes) != 2:
        raise ValueError(f"labels: a logistic probe separates two classes, got {len(classes)}: {classes[:8]} (use "
                         "kind='softmax')")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [v for v in found if v not in index]
    if unknown:
        raise ValueError(f"labels: {unknown[:4]} are not among the probe's classes {classes}")
    ids = np.array([index[v.item() if hasattr(v, "item") else v] for v in per_row], dtype=np.float32)
    return kind, ids[:, None], classes


def _split(groups: np.ndarray, holdout: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-row training weights (0 for held-out rows) and the held-out row indices: ``holdout`` of the prompts."""
    prompts = int(groups[-1]) + 1
    n_held = int(round(holdout * prompts))
    if n_held >= prompts:
        raise ValueError(f"holdout={holdout} leaves no prompt to train on ({prompts} prompts)")
    held_prompts = np.random.default_rng([seed, 7]).permutation(prompts)[:n_held]
    held_rows = np.isin(groups, held_prompts)
    return (~held_rows).astype(np.float32), np.flatnonzero(held_rows)


# -- scoring -------------------------------------------------------------------------------------------
def _score(probe: Probe, rows: Rows, targets: np.ndarray, index: np.ndarray) -> ProbeScore:
    """The probe on rows ``index`` (raw units; R^2 against the mean of these rows' targets)."""
    loss = correct = 0.0
    sse = np.zeros(targets.shape[1])
    for start in range(0, len(index), SCORE_ROWS):
        part = index[start:start + SCORE_ROWS]
        z = probe.logits(rows.fetch(part))
        y = mx.array(targets[part])
        losses = row_losses(probe.kind, z, y)
        loss += float(losses.sum().item())
        correct += float(hits(probe.kind, z, y).sum().item())
        if probe.kind == "linear":
            sse += np.array(mx.square(y - z).sum(axis=0), dtype=np.float64)
    n = len(index)
    if probe.kind == "linear":
        picked = targets[index].astype(np.float64)
        sst = np.square(picked - picked.mean(axis=0)).sum()
        return ProbeScore(probe.kind, n, loss / n, r2=float(1 - sse.sum() / max(sst, 1e-30)))
    return ProbeScore(probe.kind, n, loss / n, accuracy=correct / n)
