"""Values attached to a site: named objects reachable from a site's traced value (``h.sae`` for a dictionary
spliced at ``h``), whose own values are readable and writable like module values.

Whoever attaches an object (:mod:`mlxterp.features.splice`) records its values as ordinary graph nodes and
gives each a binding ``(path, call, Part)``: reads of such a value are its current version (as for a module's
output), writes (``part[...] = v``, or a whole assignment through the object) go to the object's
``write_part(trace, name, value)``, which records what the write means (for a dictionary, a new value of the
site). The tracer itself knows nothing of what an attached object is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class Part:
    """The phase of a value that belongs to an object attached to a site (the third item of its binding).

    Attributes:
        site_phase: the phase of the site it is attached to (``"output"``, ``"input"``, ``"resid_mid"``).
        owner: the attached object's name (``"sae"``).
        name: the value's name (``"features"``).
        width: the size of its last axis (its other axes are the site's).
        label: its default save key (``"layers.6.resid_pre.sae.features"``).
    """

    site_phase: str
    owner: str
    name: str
    width: int
    label: str

    def __str__(self) -> str:
        return self.label


class Attached(Protocol):
    """What the tracer asks of an attached object."""

    def write_part(self, trace: Any, name: str, value: Any) -> None:
        """Record a write of ``value`` (a traced value of the part's shape) to the part ``name``."""


def is_part(phase: Any) -> bool:
    """Whether a binding's phase is an attached object's value."""
    return type(phase) is Part


class SiteAttachments:
    """The trace's side of attached objects (a mixin of :class:`~mlxterp.tracing.trace.Trace`): which object
    is attached to which site under which name (``self._attached``: ``{site binding: {name: object}}``), and
    how a write to one of their values reaches the object."""

    _attached: dict
    _owner: Any

    def attach(self, binding: tuple, name: str, obj: Any) -> None:
        """Make ``obj`` reachable as ``value.<name>`` from the traced values bound to ``binding``
        (``(path, call, phase)`` of a site)."""
        at = self._attached.setdefault(binding, {})
        if name in at:
            raise ValueError(f"{self._site_name(binding)} already has {name!r} attached; give each dictionary at "
                             "one site its own name")
        at[name] = obj

    def attached(self, binding: tuple, name: str) -> Any:
        """The object attached as ``name`` to the site ``binding``, or ``None``."""
        found = self._attached.get(binding)
        return None if found is None else found.get(name)

    def attached_names(self) -> list[str]:
        """``"<site>.<name>"`` of every attached object (for error messages)."""
        return [f"{self._site_name(b)}.{n}" for b, names in self._attached.items() for n in names]

    def _site_name(self, binding: tuple) -> str:
        path, idx, phase = binding
        short = self._owner._index.short(path)
        if self._owner._index.is_layer(path) and phase in ("input", "output"):
            return f"{short}.{'resid_pre' if phase == 'input' else 'resid_post'}"
        return f"{short}.{phase}" if short else phase

    def _binding_name(self, binding: tuple) -> str:
        """``layers.3.mlp output`` (a module value) or ``layers.6.resid_pre.sae.features`` (an attached one)."""
        return str(binding[2]) if is_part(binding[2]) else f"{self._owner._index.short(binding[0])} {binding[2]}"

    def _write_part(self, path: str, call_idx: int, part: Part, value: Any) -> None:
        obj = self.attached((path, call_idx, part.site_phase), part.owner)
        obj.write_part(self, part.name, value)
