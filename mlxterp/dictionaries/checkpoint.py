"""A training run's folder: ``run.json`` (what the run is) and ``checkpoint.safetensors`` (where it stands).

The checkpoint is one safetensors file holding every trained array (each objective's parameters, Adam's
moments, its state and its metric history) and, in its metadata, the step, the data cursor and a digest of
``run.json``. It is written as the activation store writes its shards (:mod:`mlxterp.store.files`): under
a temporary name, flushed, then renamed over the old one, so a run killed at any moment (``kill -9``)
leaves the previous checkpoint or the new one, complete. A rerun of the same call continues from it; a
rerun of a finished run trains nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import mlx.core as mx

from ..store.files import remove_temporaries, write_json_atomic, write_safetensors_atomic

FORMAT = "mlxterp-training-run"
VERSION = 1
RUN = "run.json"
CHECKPOINT = "checkpoint.safetensors"
META_KEY = "mlxterp.checkpoint"
GROUPS = ("params", "m", "v", "state", "history")


class RunMismatchError(ValueError):
    """A rerun's settings differ from those of the run folder it would continue."""


def digest(identity: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def prepare_folder(folder: Path, identity: Dict[str, Any], resume: bool, write: bool) -> bool:
    """Check (and on the writing rank create) the run folder; True when it already describes this run.

    Raises:
        RunMismatchError: the folder holds another run (every differing setting is named), or any run
            when ``resume=False``.
        ValueError: ``run.json`` is not a run description.
    """
    path = folder / RUN
    if path.is_file():
        stored = _read_run(path)
        if not resume:
            raise RunMismatchError(f"{str(folder)!r} already holds a training run; pass resume=True to continue it "
                                   "or give another out= folder")
        _check_match(stored, identity, folder)
        if write:
            remove_temporaries(folder)
        return True
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        remove_temporaries(folder)
        write_json_atomic(path, {"format": FORMAT, "version": VERSION, "identity": identity})
    return False


def _read_run(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a training run description ({exc}); delete the folder or give "
                         "another out=") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an mlxterp training run (no format {FORMAT!r}); give another out=")
    if data.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} is a training run of format version {data.get('version')!r}; this mlxterp "
                         f"reads version {VERSION}")
    return data["identity"]


def _check_match(stored: Dict[str, Any], wanted: Dict[str, Any], folder: Path) -> None:
    diffs = []
    for key in sorted(set(stored) | set(wanted)):
        if json.dumps(stored.get(key), sort_keys=True, default=str) != json.dumps(wanted.get(key), sort_keys=True,
                                                                                   default=str):
            diffs.append(f"{key}: the folder has {_short(stored.get(key))}, this run {_short(wanted.get(key))}")
    if diffs:
        raise RunMismatchError(f"the training run in {str(folder)!r} was started with other settings; "
                               + "; ".join(diffs) + ". Give another out= folder, or rerun with that run's settings "
                               "to continue it")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def save(folder: Path, step: int, cursor: Dict[str, Any], run_digest: str, done: bool,
         arrays: List[Dict[str, Dict[str, mx.array]]]) -> None:
    """Write the checkpoint (``arrays[i][group][name]`` for objective ``i``) atomically."""
    flat = {f"{i}.{group}.{name}": value for i, groups in enumerate(arrays)
            for group, tree in groups.items() for name, value in tree.items()}
    meta = {"format": FORMAT, "version": VERSION, "step": step, "cursor": cursor, "run": run_digest, "done": done,
            "objectives": len(arrays)}
    write_safetensors_atomic(folder / CHECKPOINT, flat, {META_KEY: json.dumps(meta)})


def load(folder: Path, run_digest: str, n_objectives: int) -> Optional[Dict[str, Any]]:
    """The checkpoint of ``folder`` (None when there is none yet): ``{"step", "cursor", "done", "arrays"}``.

    Raises:
        ValueError: the file is corrupt, not a checkpoint of this library, or of another run.
    """
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    try:
        flat, metadata = mx.load(str(path), return_metadata=True)
        meta = json.loads(metadata[META_KEY])
    except (RuntimeError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable training checkpoint ({type(exc).__name__}: {exc}); it is "
                         "corrupt or not mlxterp's: delete it to start the run over") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} is not an mlxterp training checkpoint of version {VERSION}")
    if meta.get("run") != run_digest or meta.get("objectives") != n_objectives:
        raise ValueError(f"{str(path)!r} belongs to another run than {str(folder / RUN)!r} describes; delete it to "
                         "start the run over")
    arrays: List[Dict[str, Dict[str, mx.array]]] = [{g: {} for g in GROUPS} for _ in range(n_objectives)]
    for key, value in flat.items():
        index, group, name = key.split(".", 2)
        arrays[int(index)][group][name] = value
    return {"step": int(meta["step"]), "cursor": meta["cursor"], "done": bool(meta["done"]), "arrays": arrays}
