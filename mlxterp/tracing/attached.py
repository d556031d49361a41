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
