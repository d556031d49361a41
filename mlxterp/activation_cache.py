"""A named container of captured activations that can be saved and reloaded.

``ActivationCache`` maps activation names (e.g. ``"layers.3.mlp"``) to
``mx.array`` values, carries an optional JSON-serialisable metadata dict, and
round-trips both through a single ``.safetensors`` file.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx

# safetensors metadata is a flat str -> str map, so the whole user metadata
# dict is JSON-encoded into this single entry.
METADATA_KEY = "mlxterp.metadata"

_SUFFIX = ".safetensors"


class ActivationCache:
    """Captured activations keyed by name, plus optional metadata.

    Args:
        activations: Mapping from activation name to ``mx.array`` (any shape and dtype; kept as given,
            e.g. a layer's ``(batch, seq, hidden)`` output).

        metadata: Optional JSON-serialisable dict describing the capture
            (model id, prompt, ...). Stored and restored verbatim.
        resolve: Optional callable mapping a user-given name to a stored key
            (e.g. ``"layers.3.attn" -> "layers.3.self_attn"``). It is only
            consulted when the exact name is absent.
    """

    def __init__(
        self,
        activations: Mapping[str, mx.array] | None = None,
        metadata: dict[str, Any] | None = None,
        resolve: Callable[[str], str] | None = None,
    ) -> None:
        activations = {} if activations is None else activations
        if not isinstance(activations, Mapping):
            raise TypeError(
                "activations: expected a mapping of str -> mx.array, "
                f"got {type(activations).__name__}"
            )
        _check_arrays(activations)
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(
                f"metadata: expected a dict or None, got {type(metadata).__name__}"
            )
        if resolve is not None and not callable(resolve):
            raise TypeError(
                f"resolve: expected a callable or None, got {type(resolve).__name__}"
            )
        self.activations: dict[str, mx.array] = dict(activations)
        """``{name: array}``: the captured activations, each as its module returned it."""
        self.metadata: dict[str, Any] | None = metadata
        """A JSON-serialisable dict describing the capture (model id, prompt, ...), or ``None``."""
        self.resolve: Callable[[str], str] | None = resolve

    # ------------------------------------------------------------------ lookup

    def _lookup_key(self, name: str) -> str | None:
        """Return the stored key for ``name``, or None when there is none.

        Args:
            name: User-given activation name.

        Returns:
            The exact key if stored, else the resolver's answer if that is
            stored, else None. A resolver error or a resolved key that is not
            stored yields None rather than a guess, so no wrong tensor is
            ever returned.
        """
        if name in self.activations:
            return name
        if self.resolve is None:
            return None
        try:
            resolved = self.resolve(name)
        except (KeyError, ValueError, LookupError):
            # Resolvers signal "unknown name" by raising; treat as absent.
            return None
        if isinstance(resolved, str) and resolved in self.activations:
            return resolved
        return None

    def get(self, name: str, default: Any = None) -> Any:
        """Return the activation stored under ``name`` (or its resolved key).

        Args:
            name: Activation name; tried exactly, then via ``resolve``.
            default: Value returned when no stored key matches.

        Returns:
            The stored ``mx.array`` (shaped as its module returned it, e.g. ``(batch, seq, hidden)``) or
            ``default``.
        """
        key = self._lookup_key(name)
        return default if key is None else self.activations[key]

    def close_matches(self, name: str, n: int = 5) -> list[str]:
        """Return up to ``n`` stored keys that look similar to ``name``.

        Args:
            name: The name that was not found.
            n: Maximum number of suggestions.

        Returns:
            Stored keys ordered by similarity (difflib), best first.
        """
        return difflib.get_close_matches(name, list(self.activations), n=n, cutoff=0.4)

    def __getitem__(self, name: str) -> mx.array:
        key = self._lookup_key(name)
        if key is None:
            raise KeyError(self._missing_message(name))
        return self.activations[key]

    def _missing_message(self, name: str) -> str:
        """Build a KeyError message that points at the likely intended keys."""
        close = self.close_matches(name)
        if close:
            hint = "closest available keys: " + ", ".join(repr(k) for k in close)
        elif self.activations:
            sample = list(self.activations)[:5]
            hint = "available keys include: " + ", ".join(repr(k) for k in sample)
        else:
            hint = "the cache is empty"
        return f"activation {name!r} not in cache; {hint}"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup_key(name) is not None

    # ------------------------------------------------------- mapping protocol

    def keys(self) -> list[str]:
        """Return the stored activation names, in insertion order."""
        return list(self.activations.keys())

    def items(self) -> list[tuple[str, mx.array]]:
        """Return ``(name, array)`` pairs, in insertion order."""
        return list(self.activations.items())

    def values(self) -> list[mx.array]:
        """Return the stored arrays, in insertion order."""
        return list(self.activations.values())

    def __len__(self) -> int:
        return len(self.activations)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.activations))

    def __repr__(self) -> str:
        shown = list(self.activations.items())[:4]
        parts = [f"{k!r}: {tuple(v.shape)} {v.dtype}" for k, v in shown]
        if len(self.activations) > len(shown):
            parts.append(f"... (+{len(self.activations) - len(shown)} more)")
        return f"ActivationCache({len(self)} activations: {{{', '.join(parts)}}})"

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write activations and metadata to a ``.safetensors`` file.

        Args:
            path: Destination file. A missing ``.safetensors`` suffix is
                appended (MLX would append it silently anyway; doing it here
                lets us report the real path).

        Returns:
            The path actually written.

        Raises:
            FileNotFoundError: If the parent directory does not exist.
            TypeError: If ``metadata`` is not JSON-serialisable or a value is not an mx.array.
            OSError: If the file cannot be written.
        """
        target = Path(path)
        if target.suffix != _SUFFIX:
            target = target.with_name(target.name + _SUFFIX)
        if not target.parent.is_dir():
            raise FileNotFoundError(
                f"cannot save ActivationCache to {str(target)!r}: "
                f"directory {str(target.parent)!r} does not exist"
            )
        try:
            encoded = json.dumps(self.metadata)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"metadata: expected a JSON-serialisable dict, got {self.metadata!r} "
                f"({err})"
            ) from err
        _check_arrays(self.activations)
        try:
            mx.save_safetensors(
                str(target), dict(self.activations), metadata={METADATA_KEY: encoded}
            )
        except (RuntimeError, ValueError) as err:
            raise OSError(f"failed to save ActivationCache to {str(target)!r}: {err}") from err
        return target

    @classmethod
    def load(
        cls, path: str | Path, resolve: Callable[[str], str] | None = None
    ) -> ActivationCache:
        """Read a cache written by :meth:`save`.

        Args:
            path: A ``.safetensors`` file.
            resolve: Optional name resolver for the loaded cache.

        Returns:
            A new ``ActivationCache`` with the same arrays (dtypes preserved)
            and metadata. Metadata goes through JSON, so tuples come back
            as lists and non-str dict keys as str.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file cannot be parsed or its metadata is corrupt.
        """
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"ActivationCache file not found: {str(source)!r}")
        try:
            arrays, raw_meta = mx.load(str(source), format="safetensors", return_metadata=True)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"could not read ActivationCache from {str(source)!r}: {err}"
            ) from err
        metadata = _decode_metadata(raw_meta, source)
        return cls(dict(arrays), metadata=metadata, resolve=resolve)


def _check_arrays(activations: Mapping[Any, Any]) -> None:
    """Raise TypeError naming the first non-str key or non-``mx.array`` value."""
    for key, value in activations.items():
        if not isinstance(key, str):
            raise TypeError(f"activations: expected str keys, got {key!r} ({type(key).__name__})")
        if not isinstance(value, mx.array):
            raise TypeError(
                f"activations: expected mx.array values, got {type(value).__name__} for {key!r}"
            )


def _decode_metadata(raw: Mapping[str, str], source: Path) -> dict[str, Any] | None:
    """Decode the JSON metadata entry written by ``save``.

    Args:
        raw: The file's safetensors metadata (str -> str).
        source: File path, used in error messages.

    Returns:
        The metadata dict, or None when absent. Files written by other tools
        (no mlxterp entry) yield their raw str -> str metadata, or None if empty.
    """
    if METADATA_KEY not in raw:
        return dict(raw) or None
    try:
        decoded = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(
            f"corrupt metadata in {str(source)!r}: entry {METADATA_KEY!r} is not JSON ({err})"
        ) from err
    if decoded is not None and not isinstance(decoded, dict):
        raise ValueError(
            f"corrupt metadata in {str(source)!r}: expected a JSON object, "
            f"got {type(decoded).__name__}"
        )
    return decoded
