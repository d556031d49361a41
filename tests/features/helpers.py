"""Shared pieces of the feature tests: dictionaries with random weights on the tiny llama, their encoding
written out by hand in MLX from the weights (SAELens's formulas, sharing no code with the library), and the
hand-written reference forward (tests/reference.py) with dictionaries spliced in by hand."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import mlx.core as mx
import numpy as np

from mlxterp.dictionaries import SAE, DictionaryConfig, Transcoder
from tests.dictionaries.helpers import random_weights
from tests.reference import llama_forward

# library site name -> the reference forward's hook site
REF_SITES = {"resid_pre": "layer_in", "resid_mid": "resid_mid", "resid_post": "layer", "mlp": "mlp", "attn": "attn",
             "mlp.input": "mlp_in"}
K = 4


def ref_site(site: str) -> tuple:
    """``"layers.1.mlp"`` -> ``("mlp", 1)``."""
    _, layer, rest = site.split(".", 2)
    return REF_SITES[rest], int(layer)


def dictionary(arch: str, site: str, d_in: int, d_sae: int, *, seed: int = 0, site_out: Optional[str] = None,
               scales: tuple = (0.8, 1.25), threshold: float = 0.2) -> Any:
    """An SAE (or, with ``site_out``, a transcoder) with random float32 weights and normalization scalars
    ``scales`` (input, output) other than 1."""
    rng = np.random.default_rng(seed)
    weights = random_weights(rng, d_in, d_sae, threshold=threshold)
    kind = "sae" if site_out is None else "transcoder"
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if arch in ("jumprelu", "batchtopk") else ())
    config = DictionaryConfig(kind=kind, architecture=arch, d_in=d_in, d_sae=d_sae, d_out=d_in,
                              k={"topk": K, "batchtopk": float(K)}.get(arch), site=site, site_out=site_out,
                              apply_b_dec_to_input=kind == "sae")
    cls = SAE if kind == "sae" else Transcoder
    d = cls(config, {n: mx.array(weights[n].astype(np.float32)) for n in names})
    d.input_scale, d.output_scale = mx.array(scales[0]), mx.array(scales[1])
    return d


def hand_encode(d: Any, x: mx.array) -> mx.array:
    """Features of ``x``: ``pre = (s_in x - b_dec) W_enc + b_enc`` (SAEs; transcoders without ``- b_dec``), then
    ReLU, the ``k`` largest (rank found by sorting), or ReLU where ``pre > threshold``."""
    c = d.config
    xn = x.astype(mx.float32) * d.input_scale
    if c.apply_b_dec_to_input:
        xn = xn - d.b_dec
    pre = xn @ d.W_enc + d.b_enc
    relu = mx.maximum(pre, 0.0)
    if c.architecture == "topk":
        kth = mx.sort(pre, axis=-1)[..., -int(c.k)][..., None]
        return mx.where(pre >= kth, relu, 0.0)
    if c.architecture in ("jumprelu", "batchtopk"):
        return mx.where(pre > d.threshold, relu, 0.0)
    return relu


def hand_decode(d: Any, f: mx.array) -> mx.array:
    return (f @ d.W_dec + d.b_dec) / d.output_scale


Edit = Callable[[Dict[str, mx.array]], None]  # changes {"features", "reconstruction", "error"} in place


def spliced_reference(module: Any, tokens: mx.array, splices: Sequence[tuple], saves: Optional[dict] = None,
                      hook: Optional[Callable] = None) -> mx.array:
    """The hand-written forward with dictionaries spliced by hand. ``splices``: ``(dictionary, error, edit)``:
    at its site the features are encoded from the site's value (a transcoder's from its input site), ``edit``
    may change the parts (features first: the reconstruction is decoded from them), and the site becomes
    ``reconstruction + error`` (``error=False``: the reconstruction). ``saves`` receives each dictionary's parts
    as ``{(i, part): value}``; ``hook(site, value)`` runs at every site after the splices."""
    inputs: dict = {}

    def at(site: tuple, value: mx.array) -> mx.array:
        for i, (d, keep_error, edit) in enumerate(splices):
            if ref_site(d.site) == site:
                inputs[i] = value
            if ref_site(d.site_out) == site:
                parts = {"features": hand_encode(d, inputs[i])}
                parts["reconstruction"] = hand_decode(d, parts["features"])
                parts["error"] = value.astype(mx.float32) - parts["reconstruction"]
                if edit is not None:
                    before = parts["features"]
                    edit(parts)
                    if parts["features"] is not before:
                        parts["reconstruction"] = hand_decode(d, parts["features"])
                if saves is not None:
                    saves.update({(i, k): v for k, v in parts.items()})
                new = parts["reconstruction"] + (parts["error"] if keep_error else 0.0)
                value = new.astype(value.dtype)
        return value if hook is None else hook(site, value)

    return llama_forward(module, tokens, at)
