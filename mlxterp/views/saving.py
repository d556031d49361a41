"""Results that save and load: ``to_dict()``, ``save(path)`` and the classmethod ``load(path)``.

A saved result is two files: ``NAME.json`` (the record: its kind, the mlxterp version, the model's
fingerprint, the prompts, the call's arguments and the result's data, with every array replaced by a
reference) and ``NAME.safetensors`` beside it (the arrays, bit for bit; absent when there are none). The
JSON names its side file and that file's SHA-256, so a side file from another save is refused. Both are
written atomically (a temporary file flushed and renamed), arrays first.

A result class adopts this with :class:`Saveable` and a ``kind`` (a dataclass needs nothing else; other
classes override :meth:`Saveable._record_fields` and :meth:`Saveable._from_record`). Analysis functions
record where a result came from with :func:`attach`.

Loading a result made by another mlxterp version, or (when ``model=`` is given) by another model than
``model``, warns with :class:`ResultMismatchWarning`; with ``strict=True`` it raises
:class:`ResultMismatchError` instead. A record of another kind, or of a newer format than this mlxterp
reads, is always an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
import weakref
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Type, TypeVar, Union

import numpy as np

from . import codec

FORMAT = "mlxterp-result"
VERSION = 1  # of the record's layout (format, kind, provenance, data); each kind has its own kind_version
PathLike = Union[str, Path]
T = TypeVar("T", bound="Saveable")

_KINDS: Dict[str, Type["Saveable"]] = {}  # filled as result classes are defined (Saveable.__init_subclass__)


class ResultMismatchError(ValueError):
    """A saved result was made by another model or mlxterp version than the one loading it asks for."""


class ResultMismatchWarning(UserWarning):
    """A saved result was made by another model or mlxterp version (see :class:`ResultMismatchError`)."""


class Saveable:
    """Mixin: ``to_dict()`` / ``from_dict()``, ``save(path)`` / ``load(path)`` for a result class.

    Subclasses set ``kind`` (unique, registered for :func:`load_result`) and bump ``kind_version`` when
    their fields change incompatibly.
    """

    kind: ClassVar[str] = ""
    kind_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            _KINDS[cls.kind] = cls

    # -- what a class provides (defaults for dataclasses) --------------------------------------
    def _record_fields(self) -> Dict[str, Any]:
        """The result's data: JSON values, numpy or mlx arrays, in dicts, lists and tuples."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def _from_record(cls: Type[T], data: Dict[str, Any]) -> T:
        """The result whose :meth:`_record_fields` are ``data``."""
        return cls(**data)

    # -- provenance --------------------------------------------------------------------------
    @property
    def provenance(self) -> Dict[str, Any]:
        """``{"model", "prompts", "arguments", "mlxterp"}`` of the call that made this result (empty for a
        result built by hand). ``model`` is ``{"class", "parameters", "fingerprint"}``: the fingerprint hashes
        every weight byte (a second or so on a 135M model), so it is taken when first asked for (by
        :meth:`save`, :meth:`to_dict` or here), from the model as it is then: save a result before editing
        the weights of the model that made it."""
        prov = getattr(self, "_provenance", None) or {}
        if prov and prov.get("model") is None and getattr(self, "_model_ref", None) is not None:
            model = self._model_ref()
            if model is not None:
                prov["model"] = _identity(model)
            self._model_ref = None
        return prov

    # -- the record --------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """The result as one record: ``{"format", "version", "kind", "kind_version", "module", "mlxterp",
        "model", "prompts", "arguments", "data"}`` (``module`` defines the kind's class); ``data`` holds the
        result's fields, arrays as numpy or mlx arrays (``save`` writes them to a side file). ``from_dict``
        inverts it."""
        from .. import __version__

        prov = self.provenance
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, "kind_version": self.kind_version,
                "module": type(self).__module__, "mlxterp": prov.get("mlxterp", __version__),
                "model": prov.get("model"), "prompts": prov.get("prompts"), "arguments": prov.get("arguments"),
                "data": self._record_fields()}

    @classmethod
    def from_dict(cls: Type[T], record: Dict[str, Any], *, model: Any = None, strict: bool = False) -> T:
        """The result of a :meth:`to_dict` record (see :meth:`load` for ``model`` and ``strict``)."""
        _check_record(record, cls, "the record")
        check_origin(record, model, strict, "the record")
        out = cls._from_record(record["data"])
        out._provenance = {k: record[k] for k in ("model", "prompts", "arguments", "mlxterp")}
        return out

    def save(self, path: PathLike) -> Path:
        """Write the result to ``path`` (a ``.json`` file) and its arrays to ``path`` with the suffix
        ``.safetensors`` (each array bit for bit: its library, numpy or MLX, its dtype, bfloat16 included, and
        its shape come back as they were); returns ``path``.


        Raises:
            ValueError: ``path`` does not end in ``.json``, or its folder does not exist.
        """
        target = _json_path(path)
        tree, arrays = codec.encode(self.to_dict())
        if arrays:
            side = target.with_suffix(".safetensors")
            _write_arrays(side, arrays)
            tree["arrays"] = {"file": side.name, "sha256": _sha256(side)}
        from ..store.files import write_json_atomic

        write_json_atomic(target, tree)
        return target

    @classmethod
    def load(cls: Type[T], path: PathLike, *, model: Any = None, strict: bool = False) -> T:
        """Read a result written by :meth:`save`.

        Args:
            path: the ``.json`` file.
            model: an InterpretableModel (or a saved ``{"fingerprint": ...}`` identity) to check the result
                against: made by another model, it warns (or raises with ``strict=True``).
            strict: raise :class:`ResultMismatchError` instead of warning when the result was made by another
                model than ``model`` or by another mlxterp version.

        Raises:
            ValueError: not a saved result, a result of another kind (the message names the class that
                reads it), a newer format, or a missing or foreign side file.
        """
        return cls.from_dict(read_record(path), model=model, strict=strict)


def attach(result: T, model: Any, prompts: List[Any], arguments: Dict[str, Any]) -> T:
    """Record on ``result`` the model (an InterpretableModel, whose identity is taken when first needed: see
    :attr:`Saveable.provenance`; or its identity as a dict), the prompts and the call's arguments (made
    JSON-able: arrays become lists, functions their names); returns ``result``."""
    from .. import __version__

    lazy = not isinstance(model, dict)
    result._model_ref = weakref.ref(model) if lazy else None
    result._provenance = {"model": None if lazy else model, "prompts": [_plain(p) for p in prompts],
                          "arguments": {k: _plain(v) for k, v in arguments.items()}, "mlxterp": __version__}
    return result


def derive(result: T, parent: Any, arguments: Dict[str, Any]) -> T:
    """Record on ``result``, made from the result ``parent`` (a circuit chosen from edge scores), ``parent``'s
    provenance with ``arguments`` added to its call's arguments; returns ``result`` (unchanged when ``parent``
    has no provenance)."""
    prov = getattr(parent, "_provenance", None)
    if prov:
        result._model_ref = getattr(parent, "_model_ref", None)
        result._provenance = dict(prov, arguments={**(prov.get("arguments") or {}),
                                                   **{k: _plain(v) for k, v in arguments.items()}})
    return result


def _plain(value: Any) -> Any:
    """A JSON value describing ``value`` (for provenance only: it is shown and compared, never re-run)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return getattr(value, "__qualname__", None) or str(value)


def read_record(path: PathLike) -> Dict[str, Any]:
    """The record (arrays in place) of a saved result; ValueError naming the file when it is not one."""
    source = Path(path)
    try:
        tree = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read a saved result from {str(source)!r}: {exc}") from exc
    _check_record(tree, None, repr(str(source)))
    arrays = _read_arrays(source, tree.pop("arrays", None), codec.names(tree))
    return codec.decode(tree, arrays)


def load_result(path: PathLike, *, model: Any = None, strict: bool = False) -> Saveable:
    """Read any saved result, as the class its record names (see :meth:`Saveable.load`)."""
    record = read_record(path)
    return result_class(record["kind"], record.get("module")).from_dict(record, model=model, strict=strict)


def result_class(kind: str, module: Optional[str] = None) -> Type[Saveable]:
    """The class that reads results of ``kind``, importing ``module`` (the one the record names, if it is one of
    mlxterp's: a file never makes another package load) when the kind is not known yet; ValueError listing the
    known kinds."""
    if kind not in _KINDS and isinstance(module, str) and (module == "mlxterp" or module.startswith("mlxterp.")):
        import importlib

        try:
            importlib.import_module(module)
        except ImportError:
            pass  # moved or removed: the error below lists the kinds this mlxterp knows
    if kind not in _KINDS:
        raise ValueError(f"unknown result kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))} (import the package "
                         "that defines it first)")
    return _KINDS[kind]


def check_origin(record: Dict[str, Any], model: Any, strict: bool, where: str) -> None:
    """Warn (or raise when ``strict``) when ``record`` was made by another mlxterp version or by another
    model than ``model`` (not checked when ``model`` is None)."""
    from .. import __version__

    problems = []
    if record.get("mlxterp") != __version__:
        problems.append(f"it was saved by mlxterp {record.get('mlxterp')}, this is mlxterp {__version__}")
    if model is not None:
        want = model if isinstance(model, dict) else _identity(model)
        have = record.get("model") or {}
        if have.get("fingerprint") != want.get("fingerprint"):
            problems.append(f"it was made by {_describe(have)}, not by the given model ({_describe(want)})")
    if not problems:
        return
    message = f"{where} ({record.get('kind')} result): " + "; ".join(problems)
    if strict:
        raise ResultMismatchError(message)
    warnings.warn(message + " (strict=True makes this an error)", ResultMismatchWarning, stacklevel=4)


def _identity(model: Any) -> Dict[str, Any]:
    from ..store.manifest import model_identity

    return model_identity(model)


def _describe(identity: Dict[str, Any]) -> str:
    if not identity.get("fingerprint"):
        return "an unrecorded model"
    return (f"{identity.get('class')} ({identity.get('parameters')} parameters, fingerprint "
            f"{identity['fingerprint'][:12]})")


def _check_record(tree: Any, cls: Optional[Type[Saveable]], where: str) -> None:
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise ValueError(f"{where} is not a saved mlxterp result (no format {FORMAT!r})")
    if not isinstance(tree.get("version"), int) or tree["version"] > VERSION:
        raise ValueError(f"{where} has result format version {tree.get('version')!r}; this mlxterp reads "
                         f"versions up to {VERSION}: upgrade mlxterp")
    kind = tree.get("kind")
    if cls is not None and kind != cls.kind:
        reader = _KINDS.get(kind)
        hint = f"{reader.__name__}.load" if reader is not None else "mlxterp.views.load_result"
        raise ValueError(f"{where} holds a {kind!r} result, not {cls.kind!r} ({cls.__name__}); read it with {hint}")
    reader = _KINDS.get(kind) if cls is None else cls
    if reader is not None and tree.get("kind_version", 0) > reader.kind_version:
        raise ValueError(f"{where} holds a {kind!r} result of version {tree.get('kind_version')}; this mlxterp "
                         f"reads versions up to {reader.kind_version}: upgrade mlxterp")


def _json_path(path: PathLike) -> Path:
    target = Path(path).expanduser()
    if target.suffix != ".json":
        raise ValueError(f"path: expected a file name ending in .json (the arrays go beside it in a "
                         f".safetensors file), got {str(path)!r}")
    if not target.parent.is_dir():
        raise ValueError(f"path: folder {str(target.parent)!r} of {str(path)!r} does not exist")
    return target


def _write_arrays(side: Path, arrays: Dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    from ..store.files import commit, temporary_name

    tmp = temporary_name(side)
    tmp.write_bytes(save(arrays, metadata={"format": FORMAT}))  # (save_file would make it private: mode 0600)
    commit(tmp, side)


def _read_arrays(source: Path, entry: Any, wanted: List[str]) -> Dict[str, np.ndarray]:
    if not wanted:
        return {}
    if not isinstance(entry, dict) or "file" not in entry:
        raise ValueError(f"{str(source)!r} refers to arrays but names no array file")
    side = source.parent / Path(str(entry["file"])).name
    if not side.is_file():
        raise ValueError(f"the array file {str(side)!r} of {str(source)!r} is missing (a saved result is the "
                         ".json file and the .safetensors file beside it)")
    if _sha256(side) != entry.get("sha256"):
        raise ValueError(f"the array file {str(side)!r} does not belong to {str(source)!r} (its SHA-256 differs "
                         "from the one recorded at save time: was it overwritten by another save?)")
    from safetensors.numpy import load_file

    arrays = load_file(str(side))
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise ValueError(f"the array file {str(side)!r} lacks arrays {missing} that {str(source)!r} refers to")
    return arrays


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
