"""What an adapter knows about a model family: where its parts are and how its residual stream adds up.

An :class:`Architecture` names, for one family (keyed by ``model_type``, as mlx-lm keys its model
classes), the token embedding, the layer list, the final norm and the output projection (paths from the
model root), and inside each layer the attention, the MLP (an MoE block counts as the MLP) and the norms
before them (paths relative to the layer), plus the :class:`Residual` form. Everything here is plain data
read from the model; nothing imports mlx-lm.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn

# Residual forms. ``x`` is the layer input, ``h`` the residual after the attention half:
SEQUENTIAL = "sequential"
"""``h = x + attn(ln1(x)); out = h + mlp(ln2(h))`` (norms around either half optional): llama, mistral, ..."""
PARALLEL = "parallel"
"""``out = x + attn(ln1(x)) + mlp(ln2(x))`` (GPT-J, NeoX, Cohere, Phi: often ``ln1`` is ``ln2``)."""
MIXERS = "mixers"
"""``h = x + attn(ln1(x)) + ssm(ln1(x)); out = h + mlp(ln2(h))`` (Falcon-H1)."""
SSM = "ssm"
"""``out = x + mixer(norm(x))`` (Mamba: no attention, no MLP)."""
FORMS = (SEQUENTIAL, PARALLEL, MIXERS, SSM)
"""Every residual form, the valid values of :attr:`Residual.form`."""

LAYER_MODULES = ("attn", "mlp", "ln1", "ln2")
"""Canonical names inside a layer that name modules (the adapter says which module each one is)."""
RESIDUAL_VALUES = ("resid_pre", "resid_mid", "resid_post")
"""Canonical names inside a layer that name values of the residual stream (readable and writable)."""
MODEL_MODULES = ("embed", "final_norm", "unembed")
"""Canonical names at the model's top level."""


@dataclasses.dataclass(frozen=True)
class Residual:
    """How a layer's residual stream adds up.

    Attributes:
        form: one of :data:`SEQUENTIAL`, :data:`PARALLEL`, :data:`MIXERS`, :data:`SSM`.
        attn_out_norm: a norm applied to the attention's output before it is added (Gemma 2/3, OLMo 2,
            GLM-4), relative to the layer; ``None`` if there is none.
        mlp_out_norm: the same for the MLP's output.
        scaled: whether the halves' outputs are multiplied by a constant before they are added (Granite's
            ``residual_multiplier``, MiniCPM's ``scale_depth``).
    """

    form: str = SEQUENTIAL
    attn_out_norm: Optional[str] = None
    mlp_out_norm: Optional[str] = None
    scaled: bool = False

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"residual form {self.form!r} is not one of {FORMS}")

    @property
    def adds_outputs(self) -> bool:
        """Whether a layer is ``out = (x + attn) + mlp`` with its attention's and MLP's outputs added as they
        are (what the patching sweeps' shortcut for the MLP relies on)."""
        return (self.form == SEQUENTIAL and self.attn_out_norm is None and self.mlp_out_norm is None
                and not self.scaled)

    @property
    def has_mid(self) -> bool:
        """Whether there is a residual between the attention half and the MLP half (``resid_mid``)."""
        return self.form in (SEQUENTIAL, MIXERS)


@dataclasses.dataclass(frozen=True)
class PositionLimit:
    """The longest input a model handles as trained.

    Attributes:
        kind: ``"learned"`` (absolute position embeddings: no position past ``limit`` exists),
            ``"rotary"`` (rotary or no position encoding: longer inputs run, untrained past ``limit``)
            or ``"none"`` (no limit known, e.g. a state-space model).
        limit: the number of positions, or ``None``.
        source: where the limit was read (``"model.wpe rows"``, ``"args.max_position_embeddings"``).
    """

    kind: str
    limit: Optional[int]
    source: str = ""


def plain_logits(raw: nn.Module, head: Callable[[mx.array], mx.array], hidden: mx.array) -> mx.array:
    """The logits most families compute from the final norm's output: the output projection alone."""
    return head(hidden)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One family's layout (see the module docstring). Paths use the model's ``named_modules()`` names.

    Attributes:
        family: the adapter's name (``"llama"``, ``"gptj"``, ...).
        embed: path of the token embedding.
        layers: path of the layer list.
        final_norm: path of the norm after the last layer, or ``None``.
        head: path of the output projection, or ``None`` when the token embedding is always used
            transposed (tied weights, ``embed.as_linear``).
        tie_flag: the ``args`` field that, when true, makes the model use the tied embedding instead of
            ``head`` (``None``: ``head`` is used whenever the model has it).
        attn, mlp: the layer's attention and MLP (an MoE block counts as the MLP), relative to a layer;
            ``None`` where the family has none (Mamba).
        ln1, ln2: the norms before the attention and before the MLP, relative to a layer, or ``None``.
        residual: the :class:`Residual` form.
        logits: ``logits(raw_model, head, hidden)``: what the model computes from the final norm's
            output ``(..., hidden)``, the logits ``(..., vocab)``, including any scaling or soft-capping after
            the projection (Gemma 2, Cohere, Granite).

        positions: ``positions(raw_model) -> PositionLimit``.
        attention: how attention internals are computed: ``"sdpa"`` (the layer's attention calls
            mlx-lm's ``scaled_dot_product_attention``, which a traced layer replaces by an explicit one),
            another name registered with :mod:`mlxterp.adapters.attention`, or ``None`` (no attention).
        lacks: what the family lacks, said in errors (``"mamba layers have no attention ..."``).
    """

    family: str
    embed: str
    layers: str
    final_norm: Optional[str]
    head: Optional[str]
    attn: Optional[str]
    mlp: Optional[str]
    ln1: Optional[str]
    ln2: Optional[str]
    residual: Residual = Residual()
    tie_flag: Optional[str] = "tie_word_embeddings"
    logits: Callable[[nn.Module, Callable[[mx.array], mx.array], mx.array], mx.array] = plain_logits
    positions: Optional[Callable[[nn.Module], PositionLimit]] = None
    attention: Optional[str] = "sdpa"
    lacks: str = ""

    def layer_module(self, name: str) -> Optional[str]:
        """The layer-relative path of canonical module ``name`` (``"attn"``, ``"mlp"``, ``"ln1"``, ``"ln2"``)."""
        return getattr(self, name) if name in LAYER_MODULES else None

    def mid_module(self) -> Optional[str]:
        """Layer-relative path of the module whose input is ``resid_mid`` (the MLP half's first module)."""
        if not self.residual.has_mid:
            return None
        return self.ln2 or self.mlp

    def position_limit(self, raw: nn.Module) -> PositionLimit:
        """The model's :class:`PositionLimit`."""
        return self.positions(raw) if self.positions is not None else PositionLimit("none", None)


def arg(raw: nn.Module, name: str, default: Any = None) -> Any:
    """A field of the model's ``args`` (mlx-lm keeps its config there), or ``default``."""
    return getattr(getattr(raw, "args", None), name, default)


def rotary(*names: str) -> Callable[[nn.Module], PositionLimit]:
    """Positions of a rotary (or position-free) model: the first of the ``args`` fields ``names`` set."""

    def limit(raw: nn.Module) -> PositionLimit:
        for name in names:
            value = arg(raw, name)
            if isinstance(value, int) and value > 0:
                return PositionLimit("rotary", value, f"args.{name}")
        return PositionLimit("rotary", None, "")

    return limit


def learned(path: str) -> Callable[[nn.Module], PositionLimit]:
    """Positions of a model with a learned absolute position embedding at ``path``: one row each."""

    def limit(raw: nn.Module) -> PositionLimit:
        module = raw
        for part in path.split("."):
            module = getattr(module, part)
        return PositionLimit("learned", int(module.weight.shape[0]), f"{path} rows")

    return limit
