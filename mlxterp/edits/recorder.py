"""``with model.edit() as ed:``: record edits with the trace syntax, without a prompt.

The block records reads, computations and writes as a trace does, but nothing runs: on exit the recorded
graph becomes a :class:`~.records.RecordedEdit`, replayed at the start of every trace of the edited model
(see :mod:`.replay`). What cannot be replayed is refused at the user's line:

- ``.save()`` (and ``trace.get_activation``): an edit has no run of its own to return a value from; save
  inside a trace of the edited model;
- a value's ``.shape`` or ``.dtype``: an edit has no prompt, so no shapes (each trace checks its own
  integer indices when the edit is replayed); an intervention that needs shapes goes in the dict form,
  ``model.edit({"layers.5": fn})``, which runs ``fn`` at the start of every trace;
- a block that writes nothing (it would change nothing).

Constants (arrays, Python numbers) and values saved by finished traces become constants of every trace,
hence params of its programs; ``mlxterp.param(name, default)`` declares a named one.
"""

from __future__ import annotations

import types
from typing import Any, Optional

import mlx.core as mx

from mlxterp.compiler import Op

from ..tracing import context
from ..tracing.source import format_source, user_source
from ..tracing.trace import Trace
from .records import EditError, RecordedEdit


class EditRecorder(Trace):
    """The trace that records an edit (see the module docstring). Its tokens are a one-token stand-in, used
    only to ask the model which attention internals exist; shapes are refused."""

    def __init__(self, owner: Any):
        stand_in = types.SimpleNamespace(tokens=mx.zeros((1, 1), dtype=mx.int32), lengths=(1,))
        super().__init__(owner, stand_in, None, "auto", "saved")

    def __enter__(self) -> "EditRecorder":
        context.push(self)  # no edits of the model replayed here: the new edit is replayed after them
        return self

    def abstract(self, node_id: int) -> Any:
        raise EditError(f"a value's shape or dtype was asked inside `with model.edit()` at "
                        f"{format_source(user_source())}: an edit has no prompt, so it knows no shapes. Write the "
                        "edit without them, or give a function that needs them in the dict form, "
                        "model.edit({'layers.5': fn}), which calls fn at the start of every trace")

    def _check_index(self, proxy: Any, index: Any) -> None:
        """Not here: integer indices are checked against each trace's shapes when the edit is replayed."""

    def save(self, proxy: Any, name: Optional[str]) -> None:
        raise EditError(f".save() inside `with model.edit()` at {format_source(user_source())}: an edit has no run "
                        "of its own to return values from. Save inside a trace of the edited model "
                        "(with ed.model.trace(prompt): ... .save())")

    def edit(self, source: Any) -> RecordedEdit:
        """The recorded edit (``source``: the ``with`` line)."""
        writes = tuple(f"{self._owner._index.short(n.target[0]) or '<model>'} {n.target[2]}"
                       for n in self.graph if n.op is Op.REPLACE)
        if not writes:
            raise EditError(f"the edit recorded at {format_source(source)} writes nothing, so it would change "
                            "nothing; write a module's value in the block (model.layers[3].output = ...)")
        return RecordedEdit(self.graph, tuple(dict.fromkeys(writes)), source)


class EditRecording:
    """``with model.edit() as ed:`` (returned by ``model.edit()`` without a dict). After the block,
    ``ed.model`` is the edited model (``model`` itself with ``inplace=True``) and ``ed.edit`` the record."""

    def __init__(self, owner: Any, inplace: bool):
        self._owner = owner
        self._inplace = inplace
        self._recorder: Optional[EditRecorder] = None
        self._model: Any = None
        self.edit: Optional[RecordedEdit] = None

    def __enter__(self) -> "EditRecording":
        if self._recorder is not None:
            raise RuntimeError("this edit recording was used already; call model.edit() again")
        self._source = user_source()
        self._recorder = EditRecorder(self._owner)
        self._recorder.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        recorder = self._recorder
        context.pop(recorder)
        recorder.finished = True
        if exc_type is not None:
            return False  # nothing was made or modified
        self.edit = recorder.edit(self._source)
        from .methods import with_edits

        self._model = with_edits(self._owner, (self.edit,), self._inplace)
        return False

    @property
    def model(self) -> Any:
        """The edited model (after the block)."""
        if self._model is None:
            raise RuntimeError("ed.model exists after the `with model.edit() as ed:` block has ended without error")
        return self._model


__all__ = ["EditRecorder", "EditRecording"]
