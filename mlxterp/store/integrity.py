"""Trusting a store's files: every listed shard is checked against the manifest before it is read or
resumed, and a lost manifest is rebuilt from the shards' own descriptions.

A shard is accepted only when its file is the one its window names, its size is the one listed, its
header's tensors lie inside the file with the manifest's dtype and row shapes, its metadata names the
same window and prompt range, and the prompt hashes it carries are the ones listed for that window. So
shards exchanged or copied between stores, a truncated file, or a window listed twice are caught (the
reader raises :class:`StoreIntegrityError` naming the file and what is wrong; a resumed collection drops
such a shard and collects its prompts again).

Every shard's metadata (``mlxterp.shard``) holds its window, prompt range, row count, the SHA-256 of its
prompt hashes and the manifest it was written for (without the shard list). When ``manifest.json`` is
lost, :func:`rebuild_manifest` lists the shards from that, so a rerun continues the store instead of
starting over.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .files import DTYPES, memmap_tensor, read_header
from .manifest import SHARD_FIELDS, digest, shard_name, windows

log = logging.getLogger(__name__)

SHARD_KEY = "mlxterp.shard"  # safetensors metadata entry describing a shard (JSON)
HASH_KEY = "_prompt_hash"  # each shard's (prompts,) uint64 prompt hashes
LENGTHS_KEY = "_lengths"  # each token-level shard's (prompts,) int32 prompt lengths
CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # stored dtype -> safetensors code


class StoreIntegrityError(ValueError):
    """A store file is not what the manifest says it is (exchanged, truncated, listed twice, ...)."""


def shard_header(manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The part of a manifest each shard keeps in its metadata (everything but the shard list)."""
    return {k: v for k, v in manifest.items() if k != "shards"}


def shard_metadata(manifest: Dict[str, Any], entry: Dict[str, Any]) -> Dict[str, str]:
    """The safetensors metadata of the shard listed as ``entry``."""
    info = {**{k: entry[k] for k in ("window", "start", "stop", "rows", "rank", "prompts_sha256")},
            "manifest": shard_header(manifest)}
    return {SHARD_KEY: json.dumps(info)}


def verify_shard(folder: Path, entry: Dict[str, Any], manifest: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    """Check the shard listed as ``entry`` (see the module docstring); returns its ``(data offset, header)``.

    Raises:
        FileNotFoundError: the shard file is missing.
        StoreIntegrityError: anything else that does not match (the message names the file and what).
    """
    spans = windows(manifest)
    w = entry["window"]
    path = folder / str(entry["file"])
    where = f"activation store {str(folder)!r}: shard {entry['file']!r}"
    if not (isinstance(w, int) and 0 <= w < len(spans)) or entry["file"] != shard_name(w):
        raise StoreIntegrityError(f"{where} is listed for window {w!r}, which the store (of {len(spans)} windows) "
                                  "does not name so")
    if (entry["start"], entry["stop"]) != spans[w][1:]:
        raise StoreIntegrityError(f"{where} is listed for prompts {entry['start']}..{entry['stop']}, but window {w} "
                                  f"holds prompts {spans[w][1]}..{spans[w][2]}")
    if not path.is_file():
        raise FileNotFoundError(f"{where} is listed in the manifest but missing; rerun the collection to write it "
                                "again")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise StoreIntegrityError(f"{where} has {size} bytes, the manifest lists {entry['bytes']} (truncated or "
                                  "replaced); rerun the collection to write it again")
    offset, header = read_header(path)
    _check_tensors(where, header, offset, size, entry, manifest)
    _check_info(where, header, entry)
    hashes = memmap_tensor(path, offset, header[HASH_KEY])
    if digest(hashes) != entry["prompts_sha256"]:
        raise StoreIntegrityError(f"{where} holds the activations of other prompts than the manifest lists for "
                                  f"window {w} (its prompt hashes differ): a shard of another store or window")
    return offset, header


def _check_tensors(where: str, header: Dict[str, Any], offset: int, size: int, entry: Dict[str, Any],
                   manifest: Dict[str, Any]) -> None:
    """Every stored key with the manifest's dtype and row shape, the hashes (and lengths), inside the file."""
    prompts, code = entry["stop"] - entry["start"], CODES.get(manifest["dtype"])
    wanted = {k: (code, [entry["rows"], *manifest["row_shapes"][k]]) for k in manifest["keys"]}
    wanted[HASH_KEY] = ("U64", [prompts])
    if manifest["kind"] == "tokens":
        wanted[LENGTHS_KEY] = ("I32", [prompts])
    end = 0
    for key, (dtype, shape) in wanted.items():
        tensor = header.get(key)
        if not isinstance(tensor, dict):
            raise StoreIntegrityError(f"{where} has no tensor {key!r} (it holds {sorted(header)})")
        if tensor.get("dtype") != dtype or list(tensor.get("shape", ())) != shape:
            raise StoreIntegrityError(f"{where}: tensor {key!r} is {tensor.get('dtype')} of shape "
                                      f"{tensor.get('shape')}; the manifest expects {dtype} of shape {shape}")
        begin, stop = tensor["data_offsets"]
        if stop - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype][0]).itemsize:
            raise StoreIntegrityError(f"{where}: tensor {key!r} has {stop - begin} bytes of data for shape {shape}")
        end = max(end, stop)
    if offset + end > size:
        raise StoreIntegrityError(f"{where} is truncated: its tensors need {offset + end} bytes, the file has {size}")


def _check_info(where: str, header: Dict[str, Any], entry: Dict[str, Any]) -> None:
    """The shard's own description names the window and prompt range it is listed for."""
    info = shard_info(header)
    if info is None:
        return  # written before shards described themselves: the hashes below still identify its prompts
    got = (info.get("window"), info.get("start"), info.get("stop"))
    if got != (entry["window"], entry["start"], entry["stop"]):
        raise StoreIntegrityError(f"{where} was written for window {got[0]} (prompts {got[1]}..{got[2]}) but is "
                                  f"listed for window {entry['window']} (prompts {entry['start']}..{entry['stop']}): "
                                  "shard files were exchanged or renamed")


def shard_info(header: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``mlxterp.shard`` description in a shard's header, or None when it has none."""
    raw = (header.get("__metadata__") or {}).get(SHARD_KEY)
    try:
        info = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def rebuild_manifest(folder: Path) -> Optional[Dict[str, Any]]:
    """The manifest of a store whose ``manifest.json`` is lost, listed from its shards' own descriptions;
    None when the folder holds no shards. Shards that fail :func:`verify_shard` are left out (a rerun
    collects their prompts again).

    Raises:
        StoreIntegrityError: shards that do not describe their collection (written by an older mlxterp), or
            shards of different collections in one folder.
    """
    found = []
    for path in sorted(folder.glob("shard-*.safetensors")):
        try:
            info = shard_info(read_header(path)[1])
        except (OSError, ValueError):  # not a readable safetensors file: no shard of anyone's
            continue
        if info is None or not isinstance(info.get("manifest"), dict):
            raise StoreIntegrityError(f"{str(folder)!r} has no manifest.json, and shard {path.name!r} does not "
                                      "describe its collection (written by an older mlxterp), so the store cannot "
                                      "be rebuilt; collect into another folder, or move the shard files away")
        found.append((path, info))
    if not found:
        return None
    header = found[0][1]["manifest"]
    for path, info in found[1:]:
        if info["manifest"] != header:
            raise StoreIntegrityError(f"{str(folder)!r} has no manifest.json, and its shards {found[0][0].name!r} "
                                      f"and {path.name!r} belong to different collections; move one of them away")
    manifest = {**header, "shards": []}
    for path, info in found:
        entry = {**{k: info.get(k) for k in SHARD_FIELDS}, "file": path.name, "bytes": path.stat().st_size}
        try:
            verify_shard(folder, entry, manifest)
        except (OSError, ValueError) as exc:
            log.warning("rebuilding %s: shard %s left out (%s)", folder, path.name, exc)
            continue
        manifest["shards"].append(entry)
    manifest["shards"].sort(key=lambda e: e["window"])
    return manifest


def check_listing(folder: Path, manifest: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The manifest's shard entries sorted by window; StoreIntegrityError for a window listed twice."""
    entries = sorted(manifest["shards"], key=lambda e: e["window"])
    for a, b in zip(entries, entries[1:]):
        if a["window"] == b["window"]:
            raise StoreIntegrityError(f"activation store {str(folder)!r}: window {a['window']} is listed twice in "
                                      f"its manifest ({a['file']!r} and {b['file']!r}), so its prompts would be read "
                                      "twice; rerun the collection to repair the manifest")
    return entries
