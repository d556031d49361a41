"""Finding a model's final norm and output projection (unembedding), and applying them.

A model whose family has an adapter (:mod:`mlxterp.adapters`) gets both from it, with what the family does
after the projection (Gemma 2's soft-capping, Cohere's ``logit_scale``, Granite's ``logits_scaling``, ...),
so the last layer through :meth:`Unembedding.logits` gives exactly the model's logits. Otherwise they are
found by name: mlx-lm models end with ``norm(h)`` followed by either an ``lm_head`` linear layer or, when the
input and output embeddings are tied, ``embed_tokens.as_linear(h)`` (GPT-2: ``ln_f`` and
``wte.as_linear``). Quantized heads and embeddings are used as they are: ``QuantizedLinear`` runs a
quantized matmul, and ``QuantizedEmbedding.as_linear`` calls ``mx.quantized_matmul`` on the packed
weight, so no dequantized copy of the vocabulary matrix is ever made.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn

if TYPE_CHECKING:
    from ..model import InterpretableModel

NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "final_norm")
HEAD_NAMES = ("lm_head", "output", "embed_out")
EMBED_NAMES = ("embed_tokens", "wte", "tok_embeddings", "word_embeddings", "embed_in", "embeddings")
_EMBED_TYPES = (nn.Embedding, nn.QuantizedEmbedding)
_LINEAR_TYPES = (nn.Linear, nn.QuantizedLinear)


class UnembeddingError(ValueError):
    """The model's final norm or output projection could not be found."""


@dataclasses.dataclass(frozen=True)
class Unembedding:
    """A model's final norm (``None`` if it has none) and output projection.

    Attributes:
        norm: the final norm module, or ``None``.
        norm_path: its canonical path (``"model.norm"``), or ``None``.
        head: ``hidden -> logits`` (``lm_head.__call__`` or ``embedding.as_linear``, with the family's
            scaling or soft-capping of the logits when its adapter has one).
        head_path: canonical path of the module providing ``head``.
        tied: whether ``head`` is the input embedding used transposed.
        hidden_size: width of the hidden states the head accepts.
    """

    norm: Optional[nn.Module]
    norm_path: Optional[str]
    head: Callable[[mx.array], mx.array]
    head_path: str
    tied: bool
    hidden_size: int

    @functools.cached_property
    def vocab_size(self) -> int:
        """How many logits ``head`` gives per position (read off the shape of a graph that is never evaluated)."""
        return int(self.head(mx.zeros((1, self.hidden_size))).shape[-1])

    def logits(self, hidden: mx.array, apply_norm: bool = True) -> mx.array:
        """``head(norm(hidden))`` (or ``head(hidden)`` with ``apply_norm=False``), in the model's dtype."""
        if apply_norm and self.norm is not None:
            hidden = self.norm(hidden)
        return self.head(hidden)


def find_unembedding(model: InterpretableModel) -> Unembedding:
    """Discover the final norm and output projection of an :class:`InterpretableModel`.

    Args:
        model: the InterpretableModel (its ``model`` is the raw ``nn.Module``, ``_index`` its names).

    Returns:
        The :class:`Unembedding`.

    Raises:
        UnembeddingError: if no output projection is found (names tried are listed).
    """
    raw, modules = model.model, model._index.modules
    if model._index.arch is not None:
        return _from_architecture(raw, modules, model._index.arch)
    parent = model._index.container.rsplit(".", 1)[0] if "." in model._index.container else ""
    norm_path = _first_child(modules, parent, NORM_NAMES)
    head_path, tied = _find_head(raw, modules, parent)
    head_module = modules[head_path]
    head = head_module.as_linear if tied else head_module
    return Unembedding(modules[norm_path] if norm_path else None, norm_path, head, head_path, tied,
                       _hidden_size(head_module, modules.get(norm_path) if norm_path else None))


def _from_architecture(raw: nn.Module, modules: dict, arch: Any) -> Unembedding:
    """The adapter's final norm and head (the tied embedding when ``arch.head`` is None)."""
    tied = arch.head is None
    head_path = arch.embed if tied else arch.head
    module = modules[head_path]
    projection = module.as_linear if tied else module
    head = functools.partial(arch.logits, raw, projection)
    norm = modules[arch.final_norm] if arch.final_norm else None
    return Unembedding(norm, arch.final_norm, head, head_path, tied, _hidden_size(module, norm))


def _first_child(modules: dict, parent: str, names: tuple) -> Optional[str]:
    for name in names:
        path = f"{parent}.{name}" if parent else name
        if path in modules:
            return path
    return None


def _tie_flag(raw: nn.Module) -> Optional[bool]:
    args = getattr(raw, "args", None)
    flag = getattr(args, "tie_word_embeddings", None)
    return None if flag is None else bool(flag)


def _find_head(raw: nn.Module, modules: dict, parent: str) -> tuple[str, bool]:
    """Path of the output projection and whether it is a tied embedding."""
    tie = _tie_flag(raw)
    head = None if tie else _first_child(modules, "", HEAD_NAMES)
    if head is not None and isinstance(modules[head], _LINEAR_TYPES):
        return head, False
    embed = _first_child(modules, parent, EMBED_NAMES) or _first_child(modules, "", EMBED_NAMES)
    if embed is None or not isinstance(modules[embed], _EMBED_TYPES):
        embeds = [p for p, m in modules.items() if isinstance(m, _EMBED_TYPES)]
        embed = max(embeds, key=lambda p: modules[p].weight.shape[0]) if embeds else None
    if embed is None:
        raise UnembeddingError(
            "could not find the model's output projection: expected a linear head named one of "
            f"{', '.join(HEAD_NAMES)} or an (optionally quantized) embedding named one of "
            f"{', '.join(EMBED_NAMES)} whose as_linear gives the logits"
        )
    return embed, True


def _hidden_size(head: nn.Module, norm: Optional[nn.Module]) -> int:
    weight = getattr(norm, "weight", None) if norm is not None else None
    if isinstance(weight, mx.array) and weight.ndim == 1:
        return int(weight.shape[0])
    if isinstance(head, nn.QuantizedEmbedding):
        return int(head.dims)
    if isinstance(head, nn.QuantizedLinear):
        return int(head.weight.shape[1] * 32 // head.bits)
    return int(head.weight.shape[1])
