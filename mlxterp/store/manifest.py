"""The activation store's manifest: what was collected (model, modules, positions, dtype, prompts) and
which shards hold it.

``manifest.json`` is the store's index: a reader accepts a shard file only when the manifest lists it
(and the shard passes the checks of :mod:`.integrity`), and the manifest is replaced atomically after the
shard it adds is on disk; when it is lost, the shards' own descriptions rebuild it. A rerun into the same
folder compares its own description with the stored one (:func:`check_match`) and refuses to continue a
store of another model, other modules or positions, another dtype or other prompts.

The model is identified by a fingerprint: the SHA-256 of every parameter's name, shape and dtype and of
every byte of its data, so that any edit of any weight (one MLP neuron zeroed, one embedding row changed)
gives another fingerprint. It is computed once per call, reading the weights in place (no copy), at the
speed of one thread of hashlib's SHA-256: on this project's CPU about 0.1 s for SmolLM2-135M quantized
(115 MB) and 0.5-0.65 s in float32 (538 MB) (``python -m benchmarks --only store_fingerprint``).
A model edited with ``model.edit`` (same weights, other activations) also has its edits in its fingerprint
(see :mod:`mlxterp.edits.identity`), and the model's record lists them.
Each prompt is identified by a 64-bit BLAKE2b hash of its text (or of its token ids); the store keeps
every prompt's hash in its shards and the manifest keeps the SHA-256 of the whole list and of each
shard's part.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..edits.identity import describe as describe_edits
from ..edits.identity import edits_digest
from .files import write_json_atomic

if TYPE_CHECKING:
    from ..core import WrappedModel

FORMAT = "mlxterp-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
TARGET_SHARD_BYTES = 64 << 20  # activation bytes per shard when shard_size is not given
FINGERPRINT_COVERS = "every parameter byte"


REQUIRED = ("format", "version", "kind", "model", "layers", "keys", "positions", "dtype", "row_shapes", "n_prompts",
            "prompts_sha256", "shard_size", "shards")  # keys every manifest has
SHARD_FIELDS = ("window", "file", "start", "stop", "rows", "bytes", "rank", "prompts_sha256")  # of a shard entry


class StoreMismatchError(ValueError):
    """A rerun's settings differ from those of the store it would continue."""


def model_identity(model: WrappedModel) -> Dict[str, Any]:
    """``{"class", "parameters", "fingerprint", "fingerprint_covers"}`` of an InterpretableModel's wrapped
    module (see the module docstring)."""
    params = tree_flatten(model.model.parameters())
    identity = {"class": type(model.model).__name__, "parameters": int(sum(v.size for _, v in params)),
                "fingerprint": weights_fingerprint(params), "fingerprint_covers": FINGERPRINT_COVERS}
    edits = getattr(model, "_edits", ())
    extra = edits_digest(edits)
    if extra is not None:  # an edited model computes something else with the same weights
        identity["fingerprint"] = hashlib.sha256(f"{identity['fingerprint']}|edits {extra}".encode()).hexdigest()[:32]
        identity["edits"] = describe_edits(edits)
    return identity


def weights_fingerprint(params: List[Tuple[str, mx.array]]) -> str:
    """SHA-256 (32 hex digits) over every ``(name, array)``: its name, shape, dtype and every data byte."""
    mx.eval([value for _, value in params])
    h = hashlib.sha256()
    for name, value in params:
        h.update(f"{name}|{tuple(value.shape)}|{value.dtype};".encode())
        h.update(_data(value))
    return h.hexdigest()[:32]


def _data(value: mx.array) -> Any:
    """The bytes of an evaluated array, without a copy where its buffer is contiguous."""
    view = memoryview(value.view(mx.uint16) if value.dtype == mx.bfloat16 else value)  # no numpy bfloat16
    return view if view.c_contiguous else np.ascontiguousarray(np.array(value)).tobytes()


def prompt_hash(prompt: Any) -> int:
    """64-bit hash of one prompt: its UTF-8 text, or its token ids as int64."""
    if isinstance(prompt, str):
        data = b"s:" + prompt.encode("utf-8")
    else:
        data = b"t:" + np.asarray(prompt, dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def prompt_hashes(prompts: Sequence[Any]) -> np.ndarray:
    """``(len(prompts),)`` uint64 hashes (see :func:`prompt_hash`)."""
    return np.fromiter((prompt_hash(p) for p in prompts), dtype=np.uint64, count=len(prompts))


def digest(hashes: np.ndarray) -> str:
    """SHA-256 (hex) of a run of prompt hashes."""
    return hashlib.sha256(np.ascontiguousarray(hashes, dtype="<u8").tobytes()).hexdigest()


def auto_shard_size(bytes_per_prompt: float) -> int:
    """Prompts per shard so a shard holds about :data:`TARGET_SHARD_BYTES` of activations."""
    return int(max(1, min(1 << 20, TARGET_SHARD_BYTES // max(1.0, bytes_per_prompt))))


def new_manifest(spec: Dict[str, Any], hashes: np.ndarray, shard_size: int, batch_size: int,
                 metadata: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A manifest with no shards yet for ``spec`` (kind, model, keys, layers, positions, dtype, row shapes)."""
    from .. import __version__

    return {"format": FORMAT, "version": VERSION, "mlxterp": __version__, **spec,
            "n_prompts": int(len(hashes)), "prompts_sha256": digest(hashes), "shard_size": int(shard_size),
            "batch_size": int(batch_size), "metadata": metadata, "shards": []}


def read_manifest(folder: Path) -> Optional[Dict[str, Any]]:
    """The manifest in ``folder``, or None when there is none; ValueError when it is not a store's."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the activation store manifest {str(path)!r}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an mlxterp activation store manifest (no format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} has store format version {manifest.get('version')!r}; this mlxterp "
                         f"reads version {VERSION}")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ValueError(f"the activation store manifest {str(path)!r} is missing the keys {', '.join(missing)} "
                         f"(a manifest has {', '.join(REQUIRED)}); it was edited or damaged: delete it and rerun the "
                         "collection, which rebuilds it from the shards")
    for entry in manifest["shards"]:
        lacking = [key for key in SHARD_FIELDS if key != "rank" and key not in (entry if isinstance(entry, dict) else {})]
        if lacking:
            raise ValueError(f"the activation store manifest {str(path)!r} lists a shard without "
                             f"{', '.join(lacking)}: {str(entry)[:120]}; delete the manifest and rerun the collection, "
                             "which rebuilds it from the shards")
    return manifest


def write_manifest(folder: Path, manifest: Dict[str, Any]) -> None:
    write_json_atomic(folder / MANIFEST, manifest)


def windows(manifest: Dict[str, Any]) -> List[Tuple[int, int, int]]:
    """``(window, start, stop)`` prompt ranges of every shard the store will have, done or not."""
    n, size = manifest["n_prompts"], manifest["shard_size"]
    return [(w, start, min(start + size, n)) for w, start in enumerate(range(0, n, size))]


def shard_name(window: int) -> str:
    return f"shard-{window:06d}.safetensors"


def check_match(stored: Dict[str, Any], wanted: Dict[str, Any], folder: Path, shard_size_given: bool) -> None:
    """Raise :class:`StoreMismatchError` naming every setting in which a rerun differs from its store."""
    what = "layers" if stored.get("kind") == "positions" else "modules"
    fields = [("kind", None, "kind of rows"), ("model", "fingerprint", "model"), ("layers", None, what),
              ("positions", None, "positions"), ("dtype", None, "dtype"), ("n_prompts", None, "number of prompts"),
              ("prompts_sha256", None, "prompts")]
    if shard_size_given:
        fields.append(("shard_size", None, "shard_size"))
    diffs = []
    for field, sub, label in fields:
        old, new = stored.get(field), wanted.get(field)
        if sub is not None:
            old, new = (old or {}).get(sub), (new or {}).get(sub)
        if old != new:
            diffs.append(f"{label}: the store has {_show(stored, field)}, this run {_show(wanted, field)}")
    if diffs:
        raise StoreMismatchError(f"the activation store in {str(folder)!r} was collected with other settings; "
                                 + "; ".join(diffs) + ". Give another output folder, or rerun with the store's "
                                 "settings to continue it")


def _show(manifest: Dict[str, Any], field: str) -> str:
    value = manifest.get(field)
    if field == "model":
        scheme = "" if value.get("fingerprint_covers") == FINGERPRINT_COVERS else (
            ", a fingerprint of 64 sampled values per parameter by an older mlxterp, which cannot be compared "
            "with this one: collect into a new folder")
        edited = f", {len(value['edits'])} edit(s)" if value.get("edits") else ""
        return (f"{value['class']} ({value['parameters']} parameters{edited}, fingerprint "
                f"{value['fingerprint'][:12]}{scheme})")
    if field == "prompts_sha256":
        return f"prompt list sha256 {value[:12]}"
    return repr(value)
