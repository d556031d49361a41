"""A dictionary's inference as pure functions of arrays: what :meth:`Dictionary.encode` and
:meth:`Dictionary.decode` compute, with the weights passed in.

:class:`Encoder` and :class:`Decoder` hold only what is *structure* (the architecture, ``k``, SAELens's
flags): two dictionaries of the same kind have equal (and equally hashing) encoders, so a traced program
that calls one keeps its compiled form when another dictionary of that kind, or new weights, take its place.
The weights are arguments (``{"W_enc", "b_enc", "W_dec", "b_dec", "threshold"?, "input_scale",
"output_scale"}``), which a trace lifts into its program's params.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import mlx.core as mx

from . import architectures as archs

Weights = Dict[str, mx.array]


@dataclasses.dataclass(frozen=True)
class Encoder:
    """``(x (..., d_in) raw activations, weights) -> features (..., d_sae)`` (see the module docstring).

    Attributes:
        architecture: ``"relu"``, ``"topk"``, ``"batchtopk"`` or ``"jumprelu"`` (JumpReLU inference for the
            last two).
        k: ``topk``'s latents per row (None for the others).
        apply_b_dec_to_input: subtract ``b_dec`` from the (normalized) input before encoding.
        rescale: SAELens's ``rescale_acts_by_decoder_norm``.
    """

    architecture: str
    k: Optional[int]
    apply_b_dec_to_input: bool
    rescale: bool

    def hidden_pre(self, x: mx.array, w: Weights) -> mx.array:
        """Pre-activations ``(..., d_sae)`` in the normalized space."""
        x = x.astype(w["W_enc"].dtype) * w["input_scale"]
        if self.apply_b_dec_to_input:
            x = x - w["b_dec"]
        pre = x @ w["W_enc"] + w["b_enc"]
        if self.rescale:
            pre = pre * decoder_norms(w)
        return pre

    def __call__(self, x: mx.array, w: Weights) -> mx.array:
        pre = self.hidden_pre(x, w)
        if self.architecture == "topk":
            return archs.topk(pre, int(self.k))
        if self.architecture in ("jumprelu", "batchtopk"):
            return archs.threshold_relu(pre, w["threshold"])
        return archs.relu(pre)


@dataclasses.dataclass(frozen=True)
class Decoder:
    """``(features (..., d_sae), weights) -> raw output activations (..., d_out)``."""

    rescale: bool

    def __call__(self, features: mx.array, w: Weights) -> mx.array:
        if self.rescale:
            features = features / decoder_norms(w)
        return (features @ w["W_dec"] + w["b_dec"]) / w["output_scale"]


def decoder_norms(w: Weights) -> mx.array:
    """The norm of each decoder row, ``(d_sae,)``."""
    return mx.linalg.norm(w["W_dec"], axis=-1)
