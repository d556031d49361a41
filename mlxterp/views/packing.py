"""Large arrays in a page: values rounded to the digits a view shows, as bit-packed integers in base64.

A view shows a number to ``digits`` decimals, so it ships exactly that: ``q = rint(value * 10**digits)``,
offset by the smallest ``q`` and packed in as few bits as the range needs (10 bits for attention weights
to 3 decimals: 4.5x smaller than float32). The page shows ``(q + low) / 10**digits``, which is the
result's value rounded to ``digits`` decimals, exactly (``common.js``'s ``MX.unpack`` reads the bits back).
"""

from __future__ import annotations

import base64
from typing import Any, Dict

import numpy as np

MAX_BITS = 24  # the page unpacks through a 32-bit accumulator
_CHUNK = 1 << 18  # values packed at a time (bounds the bit array's memory)


def rounded(values: np.ndarray, digits: int) -> np.ndarray:
    """``rint(values * 10**digits)`` as int64 (``values`` finite)."""
    scaled = np.asarray(values, dtype=np.float64) * float(10 ** digits)
    return np.rint(scaled).astype(np.int64)


def pack(values: np.ndarray, digits: int) -> Dict[str, Any]:
    """``{"digits", "low", "bits", "n", "data"}``: ``values`` (flattened) rounded to ``digits`` decimals and
    bit-packed, little-endian, in base64.

    Raises:
        ValueError: a non-finite value, or a range needing more than :data:`MAX_BITS` bits at ``digits``.
    """
    flat = np.asarray(values).reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise ValueError("pack: values must be finite")
    q = rounded(flat, digits)
    low = int(q.min()) if q.size else 0
    span = int(q.max()) - low if q.size else 0
    bits = max(1, span.bit_length())
    if bits > MAX_BITS:
        raise ValueError(f"pack: values span {span} steps of 1e-{digits}, more than {MAX_BITS} bits hold")
    offset = (q - low).astype(np.uint32)
    shifts = np.arange(bits, dtype=np.uint32)
    parts = [np.packbits(((offset[i:i + _CHUNK, None] >> shifts) & 1).astype(np.uint8).reshape(-1),
                         bitorder="little") for i in range(0, offset.size, _CHUNK)]
    data = b"".join(p.tobytes() for p in parts)  # _CHUNK is a multiple of 8: each chunk fills whole bytes
    return {"digits": digits, "low": low, "bits": bits, "n": int(flat.size),
            "data": base64.b64encode(data).decode("ascii")}


def unpack(packed: Dict[str, Any]) -> np.ndarray:
    """The rounded values of :func:`pack` as float64 (what the page shows), for tests and checks."""
    raw = np.frombuffer(base64.b64decode(packed["data"]), dtype=np.uint8)
    bitarr = np.unpackbits(raw, bitorder="little")[: packed["n"] * packed["bits"]].reshape(packed["n"], packed["bits"])
    q = (bitarr.astype(np.int64) << np.arange(packed["bits"], dtype=np.int64)).sum(axis=1) + packed["low"]
    return q / float(10 ** packed["digits"])
