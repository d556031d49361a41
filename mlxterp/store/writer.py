"""Streaming activations into a store folder, shard by shard, resumably, on one process or several.

The prompts are cut into fixed windows of ``shard_size`` prompts (fixed when the store is created, so a
rerun sees the same windows). Each window is computed in memory, written as one safetensors shard
(temporary name, fsync, rename) and then added to the manifest (rewritten atomically the same way), so
memory holds one window at a time and a run killed at any point loses at most the windows in flight. A
rerun with the same settings deletes what a killed run left unlisted (temporary files, a shard renamed but
not yet listed), collects again the listed shards that fail their checks (:mod:`.integrity`), skips the
others and computes the rest: every prompt ends up in the store once. A lost manifest is rebuilt from the
shards' own descriptions first. The writer holds the store's lock (:mod:`.lock`) from before it reads the
manifest until it returns.

On several processes (:mod:`mlxterp.distributed`) the ranks first check that they collect the same thing
with the same model; rank 0 then locks, reads (or rebuilds) and prepares the store while the others wait
(its errors are raised on every rank). The windows still to do are dealt out in rounds, one per rank per
round; each rank writes its own shards, the ranks' records are gathered after each round and rank 0 alone
writes the manifest. The folder must be one that every rank can reach (a shared file system across
hosts).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from .. import distributed as dist
from .files import remove_temporaries, write_safetensors_atomic
from .integrity import HASH_KEY, StoreIntegrityError, rebuild_manifest, shard_metadata, verify_shard
from .lock import StoreLockedError, WriterLock
from .manifest import (StoreMismatchError, auto_shard_size, check_match, digest, new_manifest, prompt_hashes,
                       read_manifest, shard_name, windows, write_manifest)

log = logging.getLogger(__name__)

CHECK_CHUNK = 4096  # prompts tokenized at a time by the up-front check
ROUNDS = 4  # on several ranks, auto-sized shards give every rank at least this many windows
# what rank 0's start of a store may raise, raised as the same class on the other ranks
LEADER_ERRORS = (StoreLockedError, StoreMismatchError, StoreIntegrityError, FileExistsError, ValueError)


@dataclasses.dataclass
class Collection:
    """What a store holds and how one window of it is computed.

    Attributes:
        spec: the manifest's description of the rows (kind, model, layers, keys, positions, dtype,
            row_shapes).
        check: ``check(prompts, first_index) -> token counts``: tokenizes and validates prompts (raises a
            ValueError naming the bad prompt by its index in the whole list), keeping nothing.
        compute: ``compute(prompts, first_index, bar) -> {name: array}`` for one window: the stored keys
            (cast to the store's dtype here) plus :data:`.integrity.LENGTHS_KEY` for token-level rows.
        bytes_per_token: activation bytes one token adds (token-level rows), else 0.
        bytes_per_prompt: activation bytes one prompt adds (position rows), else 0.
    """

    spec: Dict[str, Any]
    check: Callable[[Sequence[Any], int], np.ndarray]
    compute: Callable[[Sequence[Any], int, Any], Dict[str, mx.array]]
    bytes_per_token: int = 0
    bytes_per_prompt: int = 0


def write_store(collection: Collection, prompts: Sequence[Any], out: Any, *, batch_size: int,
                shard_size: Optional[int], resume: bool, progress: bool, group: Optional[Any],
                metadata: Optional[Dict[str, Any]]) -> Path:
    """Collect ``prompts`` into the store folder ``out`` (see the module docstring); returns the folder.

    Raises:
        FileExistsError: ``out`` holds a store and ``resume`` is False, or ``out`` is a file.
        StoreLockedError: another process is writing the store (it is named).
        StoreMismatchError: ``out`` holds a store collected with other settings (each difference named).
        StoreIntegrityError: shards in ``out`` that cannot be trusted or rebuilt from (see :mod:`.integrity`).
        DistributedMismatchError: ranks with different models or collections.
        ValueError: a prompt that cannot be collected (its index named), before any forward runs.
    """
    folder = _folder(out)
    hashes = prompt_hashes(prompts)
    spec = dict(collection.spec)
    dist.check_same_call(group, "activation store", model=spec.pop("model"), collection=spec, prompts=digest(hashes))
    wanted = new_manifest(collection.spec, hashes, shard_size or 1, batch_size, metadata)
    lock = WriterLock(folder, dist.size(group)) if dist.rank(group) == 0 else None
    try:  # rank 0 locks, reads (or rebuilds) and prepares the store; the others start once it has
        dist.run_on_leader(group, lambda: _start(lock, collection, prompts, folder, wanted, shard_size is not None,
                                                 resume, dist.size(group)), errors=LEADER_ERRORS)
        _run(collection, prompts, hashes, folder, read_manifest(folder), progress, group)
        dist.barrier(group)
    finally:
        if lock is not None:
            lock.release()
    return folder


def _start(lock: WriterLock, collection: Collection, prompts: Sequence[Any], folder: Path, wanted: Dict[str, Any],
           shard_size_given: bool, resume: bool, world: int) -> None:
    """Rank 0, holding the lock: the store to continue (its manifest, or one rebuilt from its shards when
    the manifest is lost) checked against this run, the prompts still to do checked, the folder prepared."""
    lock.acquire()
    stored, rebuilt = read_manifest(folder), False
    if stored is None:
        stored = rebuild_manifest(folder)
        rebuilt = stored is not None
    if rebuilt:
        log.warning("activation store %s: manifest.json was missing; rebuilt it from %d shard(s)", folder,
                    len(stored["shards"]))
    if stored is not None and not resume:
        raise FileExistsError(f"{str(folder)!r} already holds an activation store ({len(stored['shards'])} "
                              "shards); pass resume=True to continue it, or give another folder")
    if stored is not None:
        check_match(stored, wanted, folder, shard_size_given)
    done = {e["window"] for e in stored["shards"]} if stored else set()
    todo = [(s, e) for w, s, e in windows(stored) if w not in done] if stored else [(0, wanted["n_prompts"])]
    tokens = _check_prompts(collection, prompts, todo)
    if stored is None and not shard_size_given:
        wanted["shard_size"] = _auto_size(collection, tokens, world)
    _prepare(folder, stored or wanted, write=stored is None or rebuilt)


def _folder(out: Any) -> Path:
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"out={str(out)!r} is a file; an activation store is a folder (give a folder path)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check_prompts(collection: Collection, prompts: Sequence[Any], ranges: List[tuple]) -> np.ndarray:
    """Token counts of the prompts in ``ranges``, each checked (see :attr:`Collection.check`)."""
    counts = []
    for start, stop in ranges:
        for first in range(start, stop, CHECK_CHUNK):
            counts.append(collection.check(prompts[first:min(first + CHECK_CHUNK, stop)], first))
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def _auto_size(collection: Collection, tokens: np.ndarray, world: int) -> int:
    """About TARGET_SHARD_BYTES per shard; on several ranks at most ``1 / (ROUNDS * world)`` of the prompts,
    so that every rank gets windows (a window is the unit of work dealt out)."""
    per_prompt = collection.bytes_per_prompt + collection.bytes_per_token * float(np.mean(tokens))
    size = auto_shard_size(per_prompt)
    return size if world == 1 else max(1, min(size, -(-len(tokens) // (ROUNDS * world))))


def _prepare(folder: Path, manifest: Dict[str, Any], write: bool) -> None:
    """Rank 0, before any shard is written: listed shards that fail their checks (missing, truncated,
    exchanged, listed twice) dropped so they are collected again, what a killed run left unlisted deleted,
    and the manifest written when it is new or changed."""
    kept: List[Dict[str, Any]] = []
    for entry in sorted(manifest["shards"], key=lambda e: e["window"]):
        try:
            if kept and kept[-1]["window"] == entry["window"]:
                raise StoreIntegrityError(f"window {entry['window']} is listed twice")
            verify_shard(folder, entry, manifest)
            kept.append(entry)
        except (OSError, ValueError) as exc:
            log.warning("activation store %s: collecting the prompts of listed shard %s again: %s", folder,
                        entry["file"], exc)
    removed = remove_temporaries(folder)
    listed = {e["file"] for e in kept}
    for path in folder.glob("shard-*.safetensors"):
        if path.name not in listed:
            path.unlink()
            removed += 1
    if removed:
        log.info("activation store %s: removed %d unfinished file(s) of an interrupted run", folder, removed)
    if write or len(kept) != len(manifest["shards"]):
        write_manifest(folder, {**manifest, "shards": kept})


def _run(collection: Collection, prompts: Sequence[Any], hashes: np.ndarray, folder: Path,
         manifest: Dict[str, Any], progress: bool, group: Optional[Any]) -> None:
    """Compute and write every window not yet listed, one per rank per round; rank 0 lists them."""
    done = {e["window"] for e in manifest["shards"]}
    todo = [w for w in windows(manifest) if w[0] not in done]
    mine, leader = dist.my_items(todo, group), dist.rank(group) == 0  # every size-th window
    initial = int(sum(e["stop"] - e["start"] for e in manifest["shards"]))
    with tqdm(total=manifest["n_prompts"], initial=initial, unit="prompt", desc="activations",
              disable=not (progress and leader), dynamic_ncols=True) as bar:
        for k in range(-(-len(todo) // dist.size(group))):  # rounds: every rank joins each round's gather
            record = np.array([[-1, 0, 0]], dtype=np.int64)
            if k < len(mine):
                record = _write_window(collection, prompts, hashes, folder, manifest, mine[k], dist.rank(group),
                                       bar if leader else None)
            records = np.concatenate(dist.gather(record, group))
            if leader:
                _list(folder, manifest, records, hashes, bar)


def _write_window(collection: Collection, prompts: Sequence[Any], hashes: np.ndarray, folder: Path,
                  manifest: Dict[str, Any], window: tuple, rank: int, bar: Any) -> np.ndarray:
    """Compute one window and write its shard (describing itself: see :mod:`.integrity`); returns its
    record ``[[window, rows, bytes]]``."""
    w, start, stop = window
    arrays = collection.compute(prompts[start:stop], start, bar)
    arrays[HASH_KEY] = mx.array(hashes[start:stop])
    rows = int(arrays[collection.spec["keys"][0]].shape[0])
    entry = {"window": w, "start": start, "stop": stop, "rows": rows, "rank": rank,
             "prompts_sha256": digest(hashes[start:stop])}
    size = write_safetensors_atomic(folder / shard_name(w), arrays, shard_metadata(manifest, entry))
    return np.array([[w, rows, size]], dtype=np.int64)


def _list(folder: Path, manifest: Dict[str, Any], records: np.ndarray, hashes: np.ndarray, bar: Any) -> None:
    """Rank 0: add a round's shards to the manifest (rewritten atomically) and to the progress bar."""
    spans = {w: (s, e) for w, s, e in windows(manifest)}
    added = 0
    for r, (w, rows, size) in enumerate(records.tolist()):
        if w < 0:
            continue
        start, stop = spans[w]
        manifest["shards"].append({"window": w, "file": shard_name(w), "start": start, "stop": stop, "rows": rows,
                                   "bytes": size, "rank": r, "prompts_sha256": digest(hashes[start:stop])})
        added += stop - start if r else 0  # rank 0's own prompts were counted batch by batch
    manifest["shards"].sort(key=lambda e: e["window"])
    write_manifest(folder, manifest)
    bar.update(added)
