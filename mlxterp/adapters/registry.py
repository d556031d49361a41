"""The registry of architectures, keyed by ``model_type`` (as mlx-lm keys its model classes), and the
lookup that binds one to a model: the adapter's paths are checked against the model's modules, and a
model they do not fit falls back to name guessing with a warning."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Dict, List, Optional, Union

import mlx.nn as nn

from . import gpt2, llama, parallel, postnorm, ssm
from .base import Architecture, arg

Describer = Union[Architecture, Callable[[nn.Module], Architecture]]

_REGISTRY: Dict[str, Describer] = {}
for _family in (llama, postnorm, parallel, gpt2, ssm):
    _REGISTRY.update(_family.ARCHITECTURES)


def register(model_type: str, architecture: Describer) -> None:
    """Register (or replace) the architecture of ``model_type``.

    Args:
        model_type: the ``model_type`` of the models it describes (``model.model_type`` or
            ``model.args.model_type``, as in the checkpoint's config).
        architecture: an :class:`Architecture`, or a function ``raw_model -> Architecture`` for families
            whose layout depends on their config.
    """
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"model_type: expected a non-empty str, got {model_type!r}")
    if not (isinstance(architecture, Architecture) or callable(architecture)):
        raise TypeError(f"architecture: expected an Architecture or a function model -> Architecture, "
                        f"got {type(architecture).__name__}")
    _REGISTRY[model_type] = architecture


def registered() -> List[str]:
    """Every registered ``model_type``, sorted."""
    return sorted(_REGISTRY)


def model_type_of(raw: nn.Module) -> Optional[str]:
    """The model's ``model_type`` (``model.model_type`` or ``model.args.model_type``), or ``None``."""
    found = getattr(raw, "model_type", None) or arg(raw, "model_type")
    return found if isinstance(found, str) else None


def lookup(raw: nn.Module) -> Optional[Architecture]:
    """The registered architecture for this model's ``model_type`` (else for the mlx-lm module its class
    comes from, ``mlx_lm.models.<name>``: mlx-lm maps model types such as ``mistral`` onto one), unbound."""
    module = type(raw).__module__
    keys = [model_type_of(raw)]
    if module.startswith("mlx_lm.models."):
        keys.append(module.rsplit(".", 1)[-1])
    for key in keys:
        found = _REGISTRY.get(key) if key else None
        if found is not None:
            return found if isinstance(found, Architecture) else found(raw)
    return None


def architecture_for(raw: nn.Module) -> Optional[Architecture]:
    """The architecture of ``raw`` with its paths checked and its output projection decided (``head`` is
    ``None`` when the model uses its tied embedding), or ``None`` for an unregistered model or one the
    registered adapter does not fit (warned)."""
    arch = lookup(raw)
    if arch is None:
        return None
    modules = dict(raw.named_modules())
    missing = _missing(arch, raw, modules)
    if missing:
        warnings.warn(f"mlxterp: the {arch.family!r} adapter does not fit this {type(raw).__name__} (missing "
                      f"{', '.join(missing)}); module roles are guessed from their names instead", stacklevel=3)
        return None
    tied = arch.head is None or arch.head not in modules or (arch.tie_flag is not None and arg(raw, arch.tie_flag))
    return dataclasses.replace(arch, head=None) if tied and arch.head is not None else arch


def _missing(arch: Architecture, raw: nn.Module, modules: Dict[str, nn.Module]) -> List[str]:
    """Paths the architecture names that the model does not have."""
    missing = [p for p in (arch.embed, arch.final_norm) if p is not None and p not in modules]
    layers = _layer_list(raw, arch.layers)
    if not layers:
        return missing + [f"{arch.layers} (a list of layers)"]
    parts = [arch.attn, arch.mlp, arch.ln1, arch.ln2, arch.residual.attn_out_norm, arch.residual.mlp_out_norm]
    for i in range(len(layers)):
        missing += [f"{arch.layers}.{i}.{p}" for p in parts if p is not None and f"{arch.layers}.{i}.{p}" not in modules]
    return missing[:6]


def _layer_list(raw: nn.Module, path: str) -> list:
    value: object = raw
    for part in path.split("."):
        value = getattr(value, part, None)
    return list(value) if isinstance(value, (list, tuple)) else []
