"""Persistent edits: a model whose every trace, program, sweep and generation carries some interventions
or some changed weights.

``model.edit({...})``, ``model.edit(dictionaries=[sae])`` and ``with model.edit() as ed:`` return a new :class:`~mlxterp.InterpretableModel`
sharing the model's module tree and weights; its edits are recorded at the start of every trace (before
``interventions=`` and the block's own code; in a trace with invokes, as each invoke begins, on its view),
so everything built on traces carries them: programs, the analysis sweeps, activation collection and
generation (every step, the prompt pass included).
``model.edit_weights({...})`` gives a model whose module tree is a copy-on-write of the model's along the
edited weights' paths (see :mod:`mlxterp.edits.weights`). ``edited.edits`` lists the edits; ``inplace=True`` edits the
model itself and ``clear_edits()`` undoes that.
"""

from .recorder import EditRecording
from .records import DictionaryEdit, EditError, InterventionEdit, RecordedEdit, WeightEdit

__all__ = ["DictionaryEdit", "EditError", "EditRecording", "InterventionEdit", "RecordedEdit", "WeightEdit"]
