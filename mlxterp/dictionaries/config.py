"""A dictionary's configuration: its architecture, sizes, sites and training coefficients, checked once."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Dict, Optional

from .architectures import ARCHITECTURES, architecture

NORMALIZE = ("expected_average", "none")
B_DEC_INIT = ("mean", "zeros")
KINDS = ("sae", "transcoder")


@dataclasses.dataclass
class DictionaryConfig:
    """Everything that defines a dictionary except its weights (see :meth:`mlxterp.SAE.create`).

    Attributes:
        kind: ``"sae"`` (reconstructs its input) or ``"transcoder"`` (predicts another site from it).
        architecture: one of ``"relu"``, ``"topk"``, ``"batchtopk"``, ``"jumprelu"``.
        d_sae: the number of latents.
        d_in: the input width; None until the dictionary is bound to a model or a store.
        d_out: the output width (``d_out == d_in`` for an SAE); None until bound.
        site: where the input is read.
        site_out: the site the output stands for (``site`` for an SAE).
        k: latents per row (``topk``), or on average per row over a batch (``batchtopk``).
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding (SAEs only).
        rescale_acts_by_decoder_norm: SAELens's TopK variant that scales pre-activations by the decoder
            row norms (read from SAELens folders; never set by training here).
        l1_coefficient: ``relu``'s L1 penalty (weighted by decoder norms).
        l0_coefficient: ``jumprelu``'s L0 penalty.
        bandwidth: the width of ``jumprelu``'s straight-through rectangle kernel.
        init_threshold: ``jumprelu``'s initial threshold (every latent's).
        aux_k: AuxK (``topk``/``batchtopk``): dead latents used per row (None: ``d_in // 2``); at most
            ``d_sae`` are used.
        aux_coefficient: the AuxK loss's weight (Gao et al.'s 1/32).
        dead_tokens: how many training tokens without firing make a latent dead (Gao et al.'s 10M); the
            ``dead`` metric counts those latents for every architecture.
        threshold_lr: ``batchtopk``'s running-average rate for its inference threshold (SAELens's 0.01).
        sparsity_warmup: fraction of the training steps over which the L1/L0 coefficient ramps up linearly
            to its full value (0: full from the first step).
        normalize: ``"expected_average"`` scales inputs (and a transcoder's targets) by one constant so
            that their mean norm is ``sqrt(width)`` (estimated on the first batch, folded into the
            weights when saved); ``"none"`` trains on raw activations.
        b_dec_init: ``"mean"`` starts ``b_dec`` at the mean of the first batch's targets, ``"zeros"`` at 0.
        seed: seed of the weight initialization.
        dtype: the weights' dtype name (``"float32"``).
        metadata: free-form facts kept in the saved config (model name, where it came from).
    """

    kind: str
    architecture: str
    d_sae: int
    d_in: Optional[int] = None
    d_out: Optional[int] = None
    site: Optional[str] = None
    site_out: Optional[str] = None
    k: Optional[float] = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    bandwidth: float = 0.001
    init_threshold: float = 0.001
    aux_k: Optional[int] = None
    aux_coefficient: float = 1.0 / 32
    dead_tokens: int = 10_000_000
    threshold_lr: float = 0.01
    sparsity_warmup: float = 0.0
    normalize: str = "expected_average"
    b_dec_init: str = "mean"
    seed: int = 0
    dtype: str = "float32"
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        arch = architecture(self.architecture)
        _check_int("d_sae", self.d_sae, 1)
        for name in ("d_in", "d_out", "aux_k"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        _check_int("dead_tokens", self.dead_tokens, 1)
        _check_int("seed", self.seed, 0)
        self._check_k(arch.name)
        for name in ("l1_coefficient", "l0_coefficient", "aux_coefficient", "sparsity_warmup"):
            _check_number(name, getattr(self, name), low=0.0)
        for name in ("bandwidth", "init_threshold", "threshold_lr"):
            _check_number(name, getattr(self, name), low=0.0, strict=True)
        if self.sparsity_warmup > 1:
            raise ValueError(f"sparsity_warmup is a fraction of the training steps (0 to 1), got {self.sparsity_warmup}")
        _check_choice("normalize", self.normalize, NORMALIZE)
        _check_choice("b_dec_init", self.b_dec_init, B_DEC_INIT)
        if self.kind == "sae":
            if self.site_out not in (None, self.site):
                raise ValueError(f"an SAE reconstructs its own site; site_out={self.site_out!r} is for a Transcoder")
            self.site_out = self.site
            if self.d_out is not None and self.d_in is not None and self.d_out != self.d_in:
                raise ValueError(f"an SAE's d_out equals its d_in; got d_in={self.d_in}, d_out={self.d_out}")
            self.d_out = self.d_in if self.d_out is None else self.d_out
            self.d_in = self.d_out if self.d_in is None else self.d_in
        elif self.apply_b_dec_to_input:
            raise ValueError("a Transcoder cannot subtract b_dec (its output bias) from its input: "
                             "apply_b_dec_to_input must be False")

    def _check_k(self, arch: str) -> None:
        if arch == "topk":
            _check_int("k", self.k, 1)
            if self.k > self.d_sae:
                raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}: a TopK dictionary keeps k of its "
                                 "d_sae latents per row")
        elif arch == "batchtopk":
            _check_number("k", self.k, low=0.0, strict=True)
            if self.k > self.d_sae:
                raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        elif self.k is not None:
            raise ValueError(f"k is for the 'topk' and 'batchtopk' architectures; a {arch!r} dictionary has no k "
                             f"(its sparsity comes from {'l1_coefficient' if arch == 'relu' else 'l0_coefficient'})")

    @property
    def bound(self) -> bool:
        """Whether the widths are known (the weights can exist)."""
        return self.d_in is not None and self.d_out is not None

    @property
    def effective_aux_k(self) -> int:
        """AuxK's dead latents per row: ``aux_k``, else ``d_in // 2`` (SAELens's heuristic), at most ``d_sae``."""
        k = self.aux_k if self.aux_k is not None else max(1, (self.d_in or 2) // 2)
        return min(k, self.d_sae)

    def to_dict(self) -> Dict[str, Any]:
        """Every field as a JSON-able dict (what a saved folder's ``cfg.json`` keeps under ``"mlxterp"``)."""
        return dataclasses.asdict(self)

    def identity(self) -> Dict[str, Any]:
        """The fields that define a training run's dictionary (``metadata`` left out)."""
        out = self.to_dict()
        out.pop("metadata")
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DictionaryConfig":
        """The config :meth:`to_dict` gave (fields left out take their defaults).

        Raises:
            ValueError: an unknown field (the valid ones are listed), or a value the config refuses.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown dictionary config fields {unknown}; valid: {sorted(names)}")
        return cls(**data)


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_number(name: str, value: Any, low: float, strict: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


__all__ = ["ARCHITECTURES", "DictionaryConfig"]
