"""The edit methods of InterpretableModel: ``edit``, ``edit_weights``, ``edits`` and ``clear_edits``."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import mlx.core as mx
import mlx.nn as nn

from mlxterp.compiler.locks import model_lock, share_lock

from ..tracing.source import user_source
from .records import DictionaryEdit, InterventionEdit
from .recorder import EditRecording
from .weights import edited_tree, plan


class EditMixin:
    """Mixed into InterpretableModel (see :mod:`mlxterp.edits`)."""

    def edit(self, edits: Optional[Dict[str, Callable]] = None, *, dictionaries: Optional[List[Any]] = None,
             inplace: bool = False) -> Any:
        """A model whose every trace, program, sweep and generation starts with these edits.

        ``model.edit({"layers.5.attn.heads": iv.zero_out_heads([2, 7])})`` takes ``{site: fn}`` as
        ``interventions=`` does; ``with model.edit() as ed:`` records writes with the trace syntax instead
        (no prompt: ``[:, -1]`` is each trace's own last position), and ``ed.model`` is the edited model.
        Edits apply first in every trace, before ``interventions=`` and the block's own writes (which see
        the edited values), and compose in order with the model's earlier edits.

        Args:
            edits: ``{module name: fn}`` (``fn(activation) -> activation``, called at the start of every trace),
                or ``None`` to record the edit in a ``with`` block.
            dictionaries: SAEs and transcoders spliced at their sites in every trace, after ``edits`` (as
                ``model.trace(dictionaries=...)`` splices them; ``mt.splice(d, error=False)`` for the
                reconstruction alone): every sweep, activation collection and generation of the edited
                model runs through them, and its traces read ``h.sae.features``.
            inplace: add the edits to this model instead of returning a new one (undo with
                :meth:`clear_edits`).

        Returns:
            With ``edits``: the edited model, a new :class:`~mlxterp.InterpretableModel` sharing this one's
            module tree and weights (no copy), with its own compiled programs; this model with
            ``inplace=True``. Without: an :class:`~mlxterp.edits.EditRecording` for ``with ... as ed:``.

        Raises:
            ModuleNameError: an unknown module name (the closest valid names are listed).
            TypeError: ``edits`` not a dict of callables.
        """
        _check_inplace(inplace)
        self._sync_tree()  # names resolve on the current module tree
        if edits is None and dictionaries is None:
            return EditRecording(self, inplace)
        if isinstance(edits, dict) and not edits:
            raise ValueError("edit() got an empty dict; pass {module name: fn}, or record the edit with "
                             "`with model.edit() as ed:`")
        source = user_source()
        checked = self._check_interventions(edits, kind="edit") if edits is not None else []
        splices = self._check_dictionaries(dictionaries)
        if dictionaries is not None and not splices:
            raise ValueError("edit(dictionaries=[]) splices nothing; pass the dictionaries to splice")
        records = tuple(InterventionEdit(name, site, fn, source) for site, fn, name in checked)
        return with_edits(self, records + tuple(DictionaryEdit(s, source) for s in splices), inplace)

    def edit_weights(self, weights: Dict[str, Union[mx.array, Callable[[mx.array], mx.array]]], *,
                     inplace: bool = False) -> Any:
        """A model with some weights replaced; every other weight and module is shared, not copied.

        Args:
            weights: ``{weight name: new}`` with names as ``"layers.10.mlp.down_proj.weight"`` and ``new`` an
                ``mx.array`` of the weight's shape and dtype, or a function of the old weight returning one
                (a linear layer's weight is ``(out_features, in_features)``, as in MLX; a rank-one update:
                ``lambda w: w + mx.outer(u, v)`` with ``u`` ``(out_features,)``, ``v`` ``(in_features,)``).
 A weight of a quantized layer is
                edited as the dequantized float matrix (in the layer's scales' dtype): in the edited model
                that layer becomes a float layer (``edits`` says so); the original stays quantized.
            inplace: edit this model (its ``model`` becomes the edited module tree; the tree it had is left
                unchanged, and :meth:`clear_edits` returns to it).

        Returns:
            The edited model (this model with ``inplace=True``); the model it was made from is unchanged.

        Raises:
            ModuleNameError: an unknown module (the closest valid names are listed).
            mlxterp.edits.EditError: an unknown weight of a known module (its weights are listed), or a new
                value of the wrong shape or dtype. Nothing is modified.
        """
        _check_inplace(inplace)
        self._sync_tree()
        planned = plan(self, weights, user_source())
        return with_edits(self, tuple(p.record for p in planned), inplace, edited_tree(self, planned))

    @property
    def edits(self) -> tuple:
        """This model's edits, in the order they apply (:class:`~mlxterp.edits.InterventionEdit`,
        :class:`~mlxterp.edits.RecordedEdit`, :class:`~mlxterp.edits.WeightEdit`)."""
        return self._edits

    def clear_edits(self) -> None:
        """Remove every edit of this model: its traces record no edit from now on, and weight edits are
        reverted (its module tree is the one it had before them)."""
        with model_lock(self.model):
            self._edits = ()
            if self.model is not self._root:
                _use_tree(self, self._root)
            else:
                _drop_programs(self)

    def _padding_safe(self) -> bool:
        """Whether prompts of different lengths may be right-padded into one batch and each still get what it
        gets alone. True without edits; an edit that may count positions from the end (``[:, -1]``) or mix
        positions would see the padded batch's columns instead, so the helpers that batch prompts (activation
        utilities, steering vectors) batch this model's prompts by exact length then."""
        return all(edit.padding_safe for edit in self._edits)

    def _positional_edit_after(self, events: Any, event: tuple) -> bool:
        """Whether an edit that may count positions from the end or mix positions reads or writes a module
        value computed after ``event`` (``(path, call, phase)``) in ``events`` (a probe's execution order): a
        helper that cuts a value's token axis to the last position there would move such an edit's
        positions (``[:, 0]`` of the logits would land on the last position)."""
        sites = {site for edit in self._edits if not edit.padding_safe for site in edit.sites}
        if not sites:
            return False
        events = list(events)
        later = events[events.index(event) + 1:] if event in events else events
        return not sites.isdisjoint(later)


def with_edits(model: Any, records: tuple, inplace: bool, tree: Optional[nn.Module] = None) -> Any:
    """``model`` with ``records`` appended to its edits: a new model on ``tree`` (default: ``model``'s module
    tree, shared), or ``model`` itself with ``inplace``."""
    if inplace:
        with model_lock(model.model):
            model._edits = model._edits + records
            if tree is not None:
                _use_tree(model, tree)
            else:
                _drop_programs(model)  # helpers' cached programs were recorded without the new edits
        return model
    if tree is None:
        tree = model.model
    else:
        share_lock(tree, model.model)
    edited = type(model)(tree, tokenizer=model.tokenizer, layer_attr=model.layer_attr)
    if tree is model.model:  # the same modules: one compile cache, whose keys (graph structures) hold the edits
        edited._executor.share_cache(model._executor)
    edited.weight_form = model.weight_form
    edited._edits = model._edits + records
    edited._root = model._root
    return edited


def _use_tree(model: Any, tree: nn.Module) -> None:
    """Make ``tree`` the module tree ``model`` runs (a tree change: its programs are lowered again)."""
    if tree is not model._root:
        share_lock(tree, model.model)
    model.model = tree
    model._executor.rebase(tree)  # calls model._tree_changed: index rebuilt, helpers' programs dropped


def _drop_programs(model: Any) -> None:
    for cache in model._program_caches.values():
        cache.clear()


def _check_inplace(inplace: Any) -> None:
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False, got {type(inplace).__name__} {inplace!r}")
