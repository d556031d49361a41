"""How many token positions a model handles, and the check of an input's length against it.

A model with learned absolute position embeddings (GPT-2's ``wpe``) has no row for a position past its
last: MLX's gather then reads out of bounds (garbage; a crash at 5,000 tokens on a 1,024-position model).
That is an error. A rotary model runs past its configured context (``args.max_position_embeddings``) but was
never trained there: a warning, once per model.

:func:`position_limit` reads the limit from the model's modules and args. A family adapter (keyed by
``model_type``, :mod:`mlxterp.adapters`) supplies its own :class:`PositionLimit` instead; :class:`PositionGuard`
checks either.
"""

from __future__ import annotations

import warnings
from typing import Optional

import mlx.nn as nn

from .adapters.base import Architecture, PositionLimit
from .tracing.source import user_stacklevel

# Module names of learned absolute position embeddings in mlx-lm's families (GPT-2, GPTBigCode: ``wpe``).
LEARNED_NAMES = ("wpe", "embed_positions", "position_embeddings")
# ``args`` fields that give a model's configured context, in the order they are read.
CONTEXT_ARGS = ("max_position_embeddings", "n_positions", "n_ctx")


def position_limit(model: nn.Module, arch: Optional[Architecture] = None) -> PositionLimit:
    """The :class:`PositionLimit` of ``model``: its family adapter's, where ``arch`` says, else read from its
    modules (a learned position embedding's rows) or its ``args`` (:data:`CONTEXT_ARGS`)."""
    if arch is not None and arch.positions is not None:
        return arch.position_limit(model)
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] in LEARNED_NAMES and _rows(module) is not None:
            return PositionLimit("learned", _rows(module), f"{path} rows")
    args = getattr(model, "args", None)
    for name in CONTEXT_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return PositionLimit("rotary", value, f"args.{name}")
    return PositionLimit("none", None)


def _rows(module: nn.Module) -> Optional[int]:
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if getattr(weight, "ndim", 0) == 2 else None


class PositionGuard:
    """Checks input lengths against one model's :class:`PositionLimit` (warning once per model)."""

    def __init__(self, limit: PositionLimit):
        self.limit = limit
        self._warned = False

    @property
    def max_positions(self) -> Optional[int]:
        """The number of positions the model handles as trained, or ``None`` if unknown."""
        return self.limit.limit

    def check(self, n_tokens: int, what: str = "the input") -> None:
        """Raise ValueError if ``what`` (``n_tokens`` long) is past learned positions; warn (once) if it is
        past a rotary model's configured context."""
        limit = self.limit.limit
        if limit is None or n_tokens <= limit:
            return
        if self.limit.kind == "learned":
            raise ValueError(
                f"{what} has {n_tokens} tokens, but this model has learned position embeddings for {limit} "
                f"positions ({self.limit.source}): positions {limit} and later do not exist. Give at most "
                f"{limit} tokens (e.g. keep the last {limit})"
            )
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{what} has {n_tokens} tokens, more than the {limit} positions this model was configured for "
                f"({self.limit.source}); it was never trained on positions past {limit - 1}, so its outputs "
                "there may be unreliable (this warning is given once per model)",
                UserWarning, stacklevel=user_stacklevel(),
            )
