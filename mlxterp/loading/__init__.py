"""Model loading: mlx-lm folders / Hugging Face ids, GGUF files, named models.

Example:
    >>> from mlxterp.loading import load_model, registered_models
    >>> model, tokenizer = load_model("smollm2-135m")  # doctest: +SKIP
"""

from .forms import WeightForm, apply_form
from .gguf import load_gguf
from .registry import load_model, register_model, registered_models

__all__ = ["WeightForm", "apply_form", "load_gguf", "load_model", "register_model", "registered_models"]
