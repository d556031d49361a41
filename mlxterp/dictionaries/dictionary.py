"""Dictionaries as MLX modules: :class:`SAE` (reconstructs a site) and :class:`Transcoder` (predicts one
site from another), with SAELens's parameter names and layout.

Parameters: ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``, ``W_dec (d_sae, d_out)``, ``b_dec (d_out,)``, and
``threshold (d_sae,)`` for JumpReLU inference (``jumprelu`` and ``batchtopk``). ``input_scale`` and
``output_scale`` (scalars, frozen) are the normalization constants training chose: the weights live in the
normalized space, and :meth:`Dictionary.encode` / :meth:`Dictionary.decode` take and give raw activations.

A dictionary created without ``d_in`` (a Transcoder whose sites fix its widths) has no weights until it is
bound: :meth:`Dictionary.bind` (or training with ``model=`` or a store) reads the widths from the data and
initializes the weights from ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import mlx.core as mx
import mlx.nn as nn

from . import architectures as archs
from .config import DictionaryConfig
from .functional import Decoder, Encoder

WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")
RELU_DECODER_NORM = 0.1  # Anthropic's April 2024 update: decoder rows start at norm 0.1 under an L1 penalty


class Parts(NamedTuple):
    """One pass of a dictionary: ``features (..., d_sae)``, ``reconstruction (..., d_out)`` and
    ``error (..., d_out)`` = target - reconstruction (the target is the input for an SAE)."""

    features: mx.array
    reconstruction: mx.array
    error: mx.array


class Dictionary(nn.Module):
    """The common base of :class:`SAE` and :class:`Transcoder` (see the module docstring).

    Args:
        config: the :class:`~mlxterp.dictionaries.DictionaryConfig`.
        weights: ``{name: array}`` to use instead of a fresh initialization (loading).
    """

    def __init__(self, config: DictionaryConfig, weights: Optional[dict] = None):
        super().__init__()
        self.config = config
        self.input_scale = mx.array(1.0)
        self.output_scale = mx.array(1.0)
        self.freeze(keys=["input_scale", "output_scale"], strict=False)
        # Freshly initialized weights take their normalization and b_dec from the first batches when trained;
        # given (loaded) weights are kept as they are.
        self.fresh = weights is None
        if weights is not None:
            self._set_weights(weights)
        elif config.bound:
            self._initialize()

    # -- description -------------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        """``"relu"``, ``"topk"``, ``"batchtopk"`` or ``"jumprelu"``."""
        return self.config.architecture

    @property
    def d_in(self) -> Optional[int]:
        """The input width (the last axis of ``x`` in :meth:`encode`); None until bound."""
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        """The number of latents (the last axis of the features)."""
        return self.config.d_sae

    @property
    def d_out(self) -> Optional[int]:
        """The output width (the last axis of :meth:`decode`'s result; ``d_in`` for an SAE); None until bound."""
        return self.config.d_out

    @property
    def k(self) -> Optional[float]:
        """Latents kept per row (``topk``, an int), or per row on average over a batch (``batchtopk``); None for
        ``relu`` and ``jumprelu``."""
        return self.config.k

    @property
    def site(self) -> Optional[str]:
        """The site the input is read from."""
        return self.config.site

    @property
    def site_out(self) -> Optional[str]:
        """The site the output stands for (the input's site for an SAE)."""
        return self.config.site_out

    @property
    def name(self) -> str:
        """What a trace calls this dictionary where it is spliced (``h.sae.features``): ``"sae"`` or
        ``"transcoder"`` unless set (``sae.name = "res6"``; a Python identifier). Not saved with the weights."""
        found = getattr(self, "_name", None)
        return found if found is not None else self.config.kind

    @name.setter
    def name(self, value: str) -> None:
        from ..features.splice import check_name

        object.__setattr__(self, "_name", check_name(value))

    @property
    def has_weights(self) -> bool:
        """Whether the weights exist (False for a dictionary created without its widths, until it is bound)."""
        return "W_enc" in self

    @property
    def label(self) -> str:
        """``architecture@site`` (``architecture@site->site_out`` for a transcoder), for tables and plots."""
        c = self.config
        return f"{c.architecture}@{c.site}" + (f"->{c.site_out}" if c.kind == "transcoder" else "")

    def __repr__(self) -> str:
        c = self.config
        k = f", k={c.k:g}" if c.k is not None else ""
        sites = f"site={c.site!r}" + (f" -> {c.site_out!r}" if c.kind == "transcoder" else "")
        dims = f"d_in={c.d_in}, d_sae={c.d_sae}" + (f", d_out={c.d_out}" if c.kind == "transcoder" else "")
        state = "" if self.has_weights else ", unbound: no weights yet"
        return f"{type(self).__name__}({c.architecture!r}, {dims}{k}, {sites}{state})"

    # -- weights -----------------------------------------------------------------------------------
    def bind(self, d_in: int, d_out: Optional[int] = None) -> "Dictionary":
        """Fill in the widths the data has and initialize the weights (from the config's ``seed``) if there are
        none yet.

        Args:
            d_in: the input site's width.
            d_out: the output site's width (ignored for an SAE, whose ``d_out`` is ``d_in``).

        Returns:
            The dictionary itself.

        Raises:
            ValueError: a width differs from the dictionary's (the site, both widths and the fix are named).
        """
        d_out = d_in if self.config.kind == "sae" else d_out
        for name, have, got, site in (("d_in", self.config.d_in, d_in, self.site),
                                      ("d_out", self.config.d_out, d_out, self.site_out)):
            if have is not None and got is not None and have != got:
                raise ValueError(f"{self!r}: its {name} is {have}, but its site {site!r} holds vectors of width "
                                 f"{got}; create it with {name}={got}, or give the site whose width is {have}")
        self.config.d_in = self.config.d_in if self.config.d_in is not None else d_in
        self.config.d_out = self.config.d_out if self.config.d_out is not None else d_out
        if not self.has_weights and self.config.bound:
            self._initialize()
        return self

    def _initialize(self) -> None:
        """Seeded initialization: random decoder rows (unit norm, or 0.1 under an L1 penalty), the encoder
        its transpose (an SAE) or independent unit columns (a transcoder), biases at 0."""
        c = self.config
        arch = archs.architecture(c.architecture)
        dtype = getattr(mx, c.dtype)
        dec_key, enc_key = mx.random.split(mx.random.key(c.seed))
        w_dec = _unit_rows(mx.random.normal((c.d_sae, c.d_out), key=dec_key))
        w_dec = w_dec if arch.unit_norm else w_dec * RELU_DECODER_NORM
        if c.kind == "sae":
            w_enc = w_dec.T
        else:
            w_enc = _unit_rows(mx.random.normal((c.d_sae, c.d_in), key=enc_key)).T
        # Row-major copies: a transposed view would keep its layout through training, and a matmul's rounding
        # depends on the layout (a resumed run, whose weights come back row-major, must compute the same bits).
        w_enc = mx.contiguous(w_enc)
        weights = {"W_enc": w_enc, "b_enc": mx.zeros((c.d_sae,)), "W_dec": w_dec, "b_dec": mx.zeros((c.d_out,))}
        if arch.has_threshold:
            start = c.init_threshold if c.architecture == "jumprelu" else 0.0
            weights["threshold"] = mx.full((c.d_sae,), start)
        self._set_weights({n: v.astype(dtype) for n, v in weights.items()})

    def _set_weights(self, weights: dict) -> None:
        arch = archs.architecture(self.config.architecture)
        names = WEIGHTS + (("threshold",) if arch.has_threshold else ())
        missing = [n for n in names if n not in weights]
        if missing:
            raise ValueError(f"{type(self).__name__} {self.config.architecture!r} weights are missing {missing}; "
                             f"expected {list(names)}")
        c = self.config
        shapes = {"W_enc": (c.d_in, c.d_sae), "b_enc": (c.d_sae,), "W_dec": (c.d_sae, c.d_out),
                  "b_dec": (c.d_out,), "threshold": (c.d_sae,)}
        for name in names:
            got = tuple(weights[name].shape)
            if got != shapes[name]:
                raise ValueError(f"weight {name!r} has shape {got}; this {c.architecture} dictionary needs "
                                 f"{shapes[name]} (d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.d_out})")
            setattr(self, name, weights[name])

    def weights(self) -> dict:
        """``{name: array}`` of the inference weights (SAELens's names; normalization not folded), in the
        dictionary's dtype (``config.dtype``, float32 by default): ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``,
        ``W_dec (d_sae, d_out)``, ``b_dec (d_out,)``, and ``threshold (d_sae,)`` for ``jumprelu`` and
        ``batchtopk``."""
        self._require_weights("weights")
        return {n: self[n] for n in WEIGHTS + ("threshold",) if n in self}

    def _require_weights(self, what: str) -> None:
        if not self.has_weights:
            raise ValueError(f"{self!r} has no weights yet, so {what} cannot run: its widths were not given. Pass "
                             "d_in=/d_out= to create(), call .bind(d_in, d_out), or train it (train(..., model=) "
                             "or an activation store reads the widths from its sites)")

    # -- computing ---------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """This dictionary's encoding as a pure function of ``(x, weights)`` (see :mod:`.functional`)."""
        c = self.config
        k = int(c.k) if c.architecture == "topk" else None
        return Encoder(c.architecture, k, bool(c.apply_b_dec_to_input), bool(c.rescale_acts_by_decoder_norm))

    @property
    def decoder(self) -> Decoder:
        """This dictionary's decoding as a pure function of ``(features, weights)``."""
        return Decoder(bool(self.config.rescale_acts_by_decoder_norm))

    def inference_weights(self) -> dict:
        """``{name: array}`` that :attr:`encoder` and :attr:`decoder` take: the inference weights and the
        normalization scalars ``input_scale``/``output_scale``."""
        self._require_weights("inference")
        return dict(self.weights(), input_scale=self.input_scale, output_scale=self.output_scale)

    def hidden_pre(self, x: mx.array) -> mx.array:
        """Pre-activations ``(..., d_sae)`` of raw inputs ``x (..., d_in)`` (in the normalized space)."""
        self._require_weights("hidden_pre")
        self._check_width(x, self.config.d_in, "input")
        return self.encoder.hidden_pre(x, self.inference_weights())

    def encode(self, x: mx.array) -> mx.array:
        """Features ``(..., d_sae)`` of raw activations ``x (..., d_in)``: TopK per row for ``topk``, a JumpReLU
        with the learned thresholds for ``jumprelu`` and ``batchtopk`` (whose batch selection is for
        training only), ReLU for ``relu``. ``x`` (any float dtype) is cast to the weights' dtype (float32 by
        default), which the features have; they are non-negative, and 0 for an inactive feature.

        Raises:
            ValueError: no weights yet, or ``x``'s last axis is not ``d_in``.
        """
        self._require_weights("encode")
        self._check_width(x, self.config.d_in, "input")
        return self.encoder(x, self.inference_weights())

    def decode(self, features: mx.array) -> mx.array:
        """Raw output activations ``(..., d_out)`` of ``features (..., d_sae)``, in the weights' dtype (float32
        by default), on the scale of the site's own values (the input normalization undone).

        Raises:
            ValueError: no weights yet, or ``features``' last axis is not ``d_sae``.
        """
        self._require_weights("decode")
        self._check_width(features, self.config.d_sae, "features")
        return self.decoder(features, self.inference_weights())

    def __call__(self, x: mx.array) -> mx.array:
        """The reconstruction (SAE) or prediction (transcoder) of ``x``: ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def parts(self, x: mx.array, target: Optional[mx.array] = None) -> Parts:
        """Features, reconstruction and error of ``x``; ``target`` is the site value the output stands for
        (required for a transcoder, the input itself for an SAE)."""
        if target is None:
            if self.config.kind == "transcoder":
                raise ValueError(f"{self!r}: a transcoder's error needs target= (the value at {self.site_out!r})")
            target = x
        features = self.encode(x)
        reconstruction = self.decode(features)
        return Parts(features, reconstruction, target.astype(reconstruction.dtype) - reconstruction)

    def _check_width(self, x: mx.array, width: int, what: str) -> None:
        if not isinstance(x, mx.array):
            raise TypeError(f"{type(self).__name__} takes an mx.array, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != width:
            raise ValueError(f"{self!r}: {what} must have last axis {width}, got shape {tuple(x.shape)}")

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> Path:
        """Write SAELens's layout to the folder ``path``: ``cfg.json`` + ``sae_weights.safetensors`` (see
        :mod:`mlxterp.dictionaries.saelens`). Returns the folder."""
        from .saelens import save

        return save(self, path)

    @classmethod
    def load(cls, path: Union[str, Path], *, site: Optional[str] = None, site_out: Optional[str] = None) -> "Dictionary":
        """Read a folder in SAELens's layout (written by :meth:`Dictionary.save` or by SAELens).

        Args:
            path: the folder (``cfg.json`` + ``sae_weights.safetensors``).
            site: the input site (an SAE's output site too), instead of the one recorded there (SAELens
                records TransformerLens hook names; ``blocks.N.hook_resid_pre`` and the other usual ones are
                translated to site names, others kept as they are).
            site_out: a transcoder's output site, instead of the recorded one.

        Returns:
            An :class:`SAE` or a :class:`Transcoder`, as the folder says.

        Raises:
            FileNotFoundError: the folder has no ``cfg.json`` or no ``sae_weights.safetensors``.
            ValueError: a corrupt or unsupported folder (the reason is named), ``site_out`` for an SAE, or a
                folder holding the other kind than the class it is loaded with (``Dictionary.load`` takes
                either).
        """
        from .saelens import load

        loaded = load(path, site=site, site_out=site_out)
        if cls is not Dictionary and not isinstance(loaded, cls):
            other = type(loaded).__name__
            raise ValueError(f"{str(path)!r} holds a {other}; load it with mlxterp.{other}.load (or Dictionary.load)")
        return loaded


class SAE(Dictionary):
    """A sparse autoencoder: ``decode(encode(x))`` reconstructs ``x`` at its site."""

    @classmethod
    def create(cls, architecture: str, *, d_sae: int, d_in: Optional[int] = None, k: Optional[float] = None,
               site: Optional[str] = None, **options: Any) -> "SAE":
        """A new SAE.

        Args:
            architecture: ``"topk"``, ``"batchtopk"``, ``"jumprelu"`` or ``"relu"``.
            d_sae: number of latents.
            d_in: input width (None: read from the site when trained or bound).
            k: latents per row (``topk``), or per row on average over a batch (``batchtopk``).
            site: the site it reads and reconstructs (``"layers.12.resid_pre"``, ``"layers.8.mlp"``, ...).
            **options: any other :class:`~mlxterp.dictionaries.DictionaryConfig` field (``l1_coefficient``,
                ``aux_k``, ``normalize``, ``seed``, ...).
        """
        config = DictionaryConfig(kind="sae", architecture=architecture, d_sae=d_sae, d_in=d_in, k=k, site=site,
                                  **options)
        return cls(config)


class Transcoder(Dictionary):
    """A transcoder: ``decode(encode(x))`` predicts the value at ``site_out`` from ``x`` at ``site``
    (e.g. an MLP's output from its input)."""

    @classmethod
    def create(cls, architecture: str, *, d_sae: int, site: Optional[str] = None, site_in: Optional[str] = None,
               site_out: Optional[str] = None, d_in: Optional[int] = None, d_out: Optional[int] = None,
               k: Optional[float] = None, **options: Any) -> "Transcoder":
        """A new transcoder.

        Args:
            architecture: ``"topk"``, ``"batchtopk"``, ``"jumprelu"`` or ``"relu"``.
            d_sae: number of latents.
            site: a module: the transcoder reads its input and predicts its output (``"layers.8.mlp"``).
            site_in: the input site, for any other pair (with ``site_out``, instead of ``site``).
            site_out: the site whose value it predicts.
            d_in: the input width (None: read from the site when trained or bound).
            d_out: the output width (None: likewise).
            k: as for :meth:`SAE.create`.
            **options: other :class:`~mlxterp.dictionaries.DictionaryConfig` fields.
        """
        if site is not None and (site_in is not None or site_out is not None):
            raise ValueError("give either site= (a module: its input -> its output) or site_in= and site_out=")
        if site is not None:
            site_in, site_out = f"{site}.input", site
        options.setdefault("apply_b_dec_to_input", False)
        config = DictionaryConfig(kind="transcoder", architecture=architecture, d_sae=d_sae, d_in=d_in, d_out=d_out,
                                  k=k, site=site_in, site_out=site_out, **options)
        return cls(config)


def _unit_rows(w: mx.array) -> mx.array:
    return w / mx.maximum(mx.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


def dictionary_class(kind: str) -> type:
    return SAE if kind == "sae" else Transcoder
