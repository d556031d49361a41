"""The seam between a wrapped model and the code built on it.

The tracer (traces, programs, module proxies, guards), generation, the activation utilities and the
analysis helpers use a wrapped model only through :class:`WrappedModel`: the recording API (``trace``,
``layers``, ``output``), the module index, the executor, the probe, input normalisation, the program
caches and the naming of captured activations.
:class:`~mlxterp.InterpretableModel` implements it; a test checks that it provides every member.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

import mlx.core as mx
import mlx.nn as nn

if TYPE_CHECKING:
    from .compiler import Executor, Probe
    from .inputs import TokenBatch
    from .names import ModuleIndex
    from .positions import PositionGuard
    from .tracing.module_proxy import LayerListProxy, ModuleProxy
    from .tracing.trace import Trace


class WrappedModel(Protocol):
    """What the tracer and the helpers built on it need of a wrapped model (see the module docstring)."""

    model: nn.Module
    tokenizer: Any
    layers: "LayerListProxy"  # model.layers[i]: the layers' proxies
    output: Any  # the final output inside a trace (read, save, assign)
    _index: "ModuleIndex"  # module paths, name resolution, layers, the family adapter
    _executor: "Executor"  # the compile cache and its statistics
    _positions: "PositionGuard"  # the model's position limit
    _save_names: dict  # default save keys by (path, call, phase), shared by every trace
    _embedding_rows: Optional[int]  # rows of the token embedding (the valid token ids)
    edits: tuple  # the model's edits (mlxterp.edits), in order: each .apply(trace) records itself

    def trace(self, inputs: Any = None, interventions: Optional[dict] = None, compile: Any = "auto",
              capture: Any = "all", *, dictionaries: Any = None) -> "Trace":
        """A tracing context: saves and interventions recorded inside ``with`` run on exit."""

    def _sync_tree(self) -> None:
        """Notice a replaced module (rebuilding the index and dropping every program built on the old tree)."""

    def _probe(self, tokens: mx.array) -> "Probe":
        """Execution order and shapes for inputs of this shape (one lazy forward, cached)."""

    def _batch(self, inputs: Any) -> "TokenBatch":
        """Inputs as right-padded, range-checked token ids."""

    def _check_length(self, lengths: Sequence[int]) -> None:
        """Refuse prompts past a learned position limit (warn past a rotary context)."""

    def _vocab_rows(self) -> Optional[int]:
        """Rows of the token embedding, or ``None`` without one."""

    def _pad_id(self) -> int:
        """The id right padding uses."""

    def _program_cache(self, kind: str) -> collections.OrderedDict:
        """The LRU cache of programs an analysis helper keeps, by kind."""

    def _capture_spec(self, capture: Any) -> Any:
        """A trace's ``capture=`` argument as graph captures."""

    def _check_interventions(self, interventions: Any, kind: str = "interventions") -> list:
        """An ``interventions=`` dict as checked ``((path, phase), fn, key)`` entries."""

    def _check_dictionaries(self, dictionaries: Any) -> tuple:
        """A ``dictionaries=`` argument as checked splices, each with ``apply(trace)``."""

    def _padding_safe(self) -> bool:
        """Whether right-padding prompts together keeps each one exact under the model's edits."""

    def _positional_edit_after(self, events: Any, event: tuple) -> bool:
        """Whether an edit reads or writes position-dependently a module value computed after ``event``."""

    def _activation_name(self, captured: str) -> str:
        """The ``trace.activations`` key of a module path."""

    def _activation_key(self, name: str) -> Optional[str]:
        """The ``trace.activations`` key of any accepted module name, or ``None``."""

    def module(self, name: str) -> "ModuleProxy":
        """A proxy of any module by name."""
