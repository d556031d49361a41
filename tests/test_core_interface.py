"""InterpretableModel provides every member of the WrappedModel seam, with matching signatures."""

import inspect

from mlxterp import InterpretableModel
from mlxterp.core import WrappedModel
from tests.models import tiny_llama_module


def _members(cls):
    annotated = set(getattr(cls, "__annotations__", {}))
    methods = {n for n, v in vars(cls).items() if inspect.isfunction(v) and not n.startswith("__")}
    return annotated, methods


def test_interpretable_model_implements_the_seam():
    model = InterpretableModel(tiny_llama_module())
    attributes, methods = _members(WrappedModel)
    for name in attributes:
        # Looked up, not read: some (``output``) may only be read inside a trace.
        assert name in vars(model) or any(name in vars(k) for k in type(model).__mro__), name
    for name in methods:
        implemented = getattr(InterpretableModel, name)
        assert callable(implemented), name
        wanted = list(inspect.signature(getattr(WrappedModel, name)).parameters)
        got = list(inspect.signature(implemented).parameters)
        assert got[: len(wanted)] == wanted, (name, got, wanted)
