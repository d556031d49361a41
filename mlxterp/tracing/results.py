"""Containers for a finished trace's results, and rebinding of saved handles in the caller's frame."""

from __future__ import annotations

import ctypes
import sys
import types
from typing import Any, Callable


class ActivationDict(dict):
    """Module outputs keyed by the seed's full path (``"model.model.layers.6"``); lookups also accept
    any form the model's name resolver does (``"layers.6"``, ``"layers.3.attn"``)."""

    def __init__(self, data: dict, resolve_key: Callable[[str], str | None]):
        super().__init__(data)
        self._resolve_key = resolve_key

    def _key(self, name: Any) -> Any:
        if dict.__contains__(self, name) or not isinstance(name, str):
            return name
        return self._resolve_key(name) or name

    def __getitem__(self, name: Any) -> Any:
        key = self._key(name)
        if not dict.__contains__(self, key):
            raise KeyError(f"no activation {name!r} was captured; captured keys include "
                           f"{', '.join(list(self)[:8])}{', ...' if len(self) > 8 else ''}")
        return dict.__getitem__(self, key)

    def get(self, name: Any, default: Any = None) -> Any:
        key = self._key(name)
        return dict.get(self, key, default)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, self._key(name))


class PendingActivations:
    """``trace.activations`` while the block is open: reading a module's activation records a save
    (the seed reads ``trace.activations["model.model.layers.6"]`` inside the block); the handle becomes
    the array when the block exits."""

    def __init__(self, trace: Any):
        self._trace = trace

    def __getitem__(self, name: str) -> Any:
        return self._trace.pending_activation(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self._trace.pending_activation(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._trace._owner._activation_key(name) is not None

    def __len__(self) -> int:
        return 0

    def __iter__(self):
        return iter(())

    def __repr__(self) -> str:
        return "<activations: available when the trace's block exits>"


def rebind_in_frame(frame: types.FrameType | None, replacements: dict[int, Any]) -> None:
    """Replace variables of ``frame`` that hold one of the given objects (by id) with their values.

    Module-level frames are plain dicts; function frames need ``PyFrame_LocalsToFast`` before Python 3.13
    (3.13+ ``f_locals`` writes through).
    """
    if frame is None or not replacements:
        return
    local_vars = frame.f_locals  # read once: each f_locals access re-syncs it from the fast locals
    is_function_frame = local_vars is not frame.f_globals
    changed = {name: replacements[id(v)] for name, v in list(local_vars.items()) if id(v) in replacements}
    if not changed:
        return
    for name, value in changed.items():
        local_vars[name] = value
    if is_function_frame and sys.version_info < (3, 13):
        ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
