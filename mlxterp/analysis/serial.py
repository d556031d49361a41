"""Analysis helpers run holding their model's lock (:func:`mlxterp.compiler.locks.model_lock`).

They call the model's modules directly (the final norm and output projection of the logit lens, the token
embedding of a compiled program) besides their traces; another thread's traced forward must not run the
same model meanwhile (its hooks, or the placeholders ``mx.compile`` puts in the weights while it traces).
"""

from __future__ import annotations

from mlxterp.compiler.locks import serialised

holds_model_lock = serialised(lambda model: model.model)
"""Decorator for a helper whose first argument is an :class:`~mlxterp.InterpretableModel`."""
