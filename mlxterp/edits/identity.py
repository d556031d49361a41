"""What an edited model's fingerprint adds to its weights': its activation edits, as values.

A saved result or an activation store names the model that made it by a fingerprint of every weight byte
(:func:`mlxterp.store.manifest.model_identity`). A model edited with ``edit`` has its base's weights but
computes something else, so its fingerprint also covers its edits: each function (by its code and data,
see :mod:`mlxterp.digest`), each recorded edit's nodes with their constants, and each spliced dictionary
(its weights, name, sites and whether it keeps its error term). Where an edit was written
(its source line) does not count. Weight edits need nothing here: they are in the weights.
"""

from __future__ import annotations

from typing import Optional

from mlxterp.compiler import Op
from mlxterp.compiler.ir import Node, map_refs

from ..digest import digest
from .records import DictionaryEdit, InterventionEdit, RecordedEdit


def edits_digest(edits: tuple) -> Optional[str]:
    """A hex digest of the activation edits among ``edits`` (in order), or ``None`` when there are none."""
    parts = []
    for edit in edits:
        if isinstance(edit, InterventionEdit):
            parts.append(("function", edit.site, edit.fn))
        elif isinstance(edit, RecordedEdit):
            parts.append(("recorded", [_node(n) for n in edit.graph]))
        elif isinstance(edit, DictionaryEdit):
            s = edit.splice
            d = s.dictionary
            parts.append(("dictionary", s.name, s.error, s.site_in.key, s.site_out.key, d.encoder, d.decoder,
                          sorted(d.inference_weights().items())))
    return f"{digest(parts):016x}" if parts else None


def _node(node: Node) -> tuple:
    if node.op is Op.CONSTANT:
        return ("constant", node.meta["value"], node.meta.get("weak", False), node.meta.get("name"))
    wiring = map_refs((node.args, node.kwargs), lambda ref: ("ref", ref.id))
    return (node.op.value, node.target, wiring, bool(node.meta.get("fill")))


def describe(edits: tuple) -> list[str]:
    """One line per edit (for a manifest or a saved result's record)."""
    return [repr(edit) for edit in edits]


__all__ = ["describe", "edits_digest"]
