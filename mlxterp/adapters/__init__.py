"""Architecture adapters: what each model family calls its parts, keyed by ``model_type``.

``architecture_for(raw_model)`` gives the :class:`Architecture` of a registered family (checked against
the model), or ``None`` (names are then guessed). ``register(model_type, architecture)`` adds a family.
"""

from .base import (
    FORMS,
    LAYER_MODULES,
    MIXERS,
    MODEL_MODULES,
    PARALLEL,
    RESIDUAL_VALUES,
    SEQUENTIAL,
    SSM,
    Architecture,
    PositionLimit,
    Residual,
)
from .registry import architecture_for, model_type_of, register, registered

__all__ = [
    "FORMS", "LAYER_MODULES", "MIXERS", "MODEL_MODULES", "PARALLEL", "RESIDUAL_VALUES", "SEQUENTIAL", "SSM",
    "Architecture", "PositionLimit", "Residual", "architecture_for", "model_type_of", "register", "registered",
]
