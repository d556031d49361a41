"""Crash-safe files for the activation store: atomic writes, and safetensors tensors read memory-mapped.

A file is written under a temporary name in the same folder, flushed to disk (``fsync``), renamed over
its final name (``os.replace``, atomic on POSIX) and the folder entry flushed too. A process killed at any
point leaves either the old file or the new one, complete; never a half-written file under the final name.
Temporary names start with ``.`` and contain ``.tmp.``: readers never open them and a resumed run
deletes them (:func:`remove_temporaries`).

Reading: safetensors is an 8-byte little-endian header size, a JSON header (dtype, shape and byte range of
each tensor, plus a ``__metadata__`` str -> str map), then the raw data. :func:`read_header` parses the
header and :func:`memmap_tensor` maps one tensor with ``numpy.memmap`` (nothing is read until sliced).
bfloat16 has no numpy dtype: it is mapped as uint16 and reinterpreted by :func:`to_mx`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import mlx.core as mx
import numpy as np

TMP_MARK = ".tmp."

# safetensors dtype code -> (numpy dtype used for the memory map, mlx dtype of the values)
DTYPES: Dict[str, Tuple[Any, Any]] = {
    "F32": (np.float32, mx.float32),
    "F16": (np.float16, mx.float16),
    "BF16": (np.uint16, mx.bfloat16),
    "F64": (np.float64, mx.float64),
    "I32": (np.int32, mx.int32),
    "I64": (np.int64, mx.int64),
    "U64": (np.uint64, mx.uint64),
    "U32": (np.uint32, mx.uint32),
    "U8": (np.uint8, mx.uint8),
    "BOOL": (np.bool_, mx.bool_),
}


def temporary_name(path: Path) -> Path:
    """A hidden temporary name beside ``path`` (keeps the suffix: ``mx.save_safetensors`` appends one)."""
    return path.with_name(f".{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Flush ``tmp``, rename it over ``path`` atomically, and flush the folder so the rename is durable."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (see the module docstring)."""
    tmp = temporary_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    commit(tmp, path)


def write_safetensors_atomic(path: Path, arrays: Mapping[str, mx.array], metadata: Mapping[str, str]) -> int:
    """Write ``arrays`` to the safetensors file ``path`` atomically; returns its size in bytes."""
    tmp = temporary_name(path)
    mx.save_safetensors(str(tmp), dict(arrays), metadata=dict(metadata))
    size = tmp.stat().st_size
    commit(tmp, path)
    return size


def remove_temporaries(folder: Path) -> int:
    """Delete the temporary files a killed writer left in ``folder``; returns how many."""
    removed = 0
    for path in folder.glob(f".*{TMP_MARK}*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def read_header(path: Path) -> Tuple[int, Dict[str, Any]]:
    """``(data offset, header)`` of a safetensors file; ValueError naming the file when it is malformed."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{str(path)!r} is not a safetensors file (shorter than its 8-byte header size)")
        (size,) = struct.unpack("<Q", head)
        if size > 100_000_000:
            raise ValueError(f"{str(path)!r} is not a safetensors file (header size {size} bytes)")
        raw = f.read(size)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a safetensors file (unreadable JSON header: {exc})") from exc
    return 8 + size, header


def memmap_tensor(path: Path, offset: int, entry: Mapping[str, Any]) -> np.ndarray:
    """One tensor of a safetensors file, memory-mapped read-only (bfloat16 as uint16)."""
    code = entry["dtype"]
    if code not in DTYPES:
        raise ValueError(f"{str(path)!r}: tensor dtype {code!r} is not supported; expected one of {sorted(DTYPES)}")
    np_dtype = DTYPES[code][0]
    shape = tuple(int(s) for s in entry["shape"])
    begin, end = (int(v) for v in entry["data_offsets"])
    if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize:
        raise ValueError(f"{str(path)!r}: tensor of shape {shape} {code} has {end - begin} bytes of data")
    if end == begin:
        return np.zeros(shape, dtype=np_dtype)
    return np.memmap(path, dtype=np_dtype, mode="r", offset=offset + begin, shape=shape)


def to_mx(values: np.ndarray, code: str, dtype: Optional[Any] = None) -> mx.array:
    """An ``mx.array`` of ``values`` read from a tensor stored as ``code``, cast to ``dtype`` if given."""
    out = mx.array(np.ascontiguousarray(values))
    if code == "BF16":
        out = out.view(mx.bfloat16)
    return out if dtype is None or out.dtype == dtype else out.astype(dtype)
