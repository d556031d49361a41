"""Dictionaries on disk in SAELens's layout: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

Weights keep SAELens's names and shapes: ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``, ``W_dec (d_sae, d_out)``,
``b_dec (d_out,)``, ``threshold (d_sae,)`` (JumpReLU). ``cfg.json`` is SAELens 6's: ``architecture``, ``d_in``,
``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, ``k`` and ``rescale_acts_by_decoder_norm`` (TopK), ``d_out`` and
``hook_name_out`` (transcoders), and ``metadata`` (``sae_lens_version``, ``hook_name`` as a TransformerLens
hook name, ``model_name``, ...). Our own facts sit under the ``"mlxterp"`` key, which SAELens ignores.

Architectures: ``relu`` is SAELens's ``"standard"`` (``"transcoder"`` for a transcoder), ``topk`` is
``"topk"``, ``jumprelu`` is ``"jumprelu"`` (``"jumprelu_transcoder"``), and ``batchtopk`` is saved as
SAELens saves it, a ``"jumprelu"`` whose thresholds all equal the learned batch threshold. SAELens has no
TopK transcoder: one is written as ``"topk_transcoder"`` in the same layout (SAELens itself will refuse it).

Normalization chosen by training (``normalize="expected_average"``) is folded into the weights when saving
(``W_enc * s``, ``W_dec / s``, ``b_dec / s``: the same function on raw activations), so the folder says
``normalize_activations: "none"`` and records the constants under ``"mlxterp"``.

Read: SAELens 6 folders and the older flat format (``hook_point``, ``activation_fn_kwargs``, a boolean
``normalize_activations``); SAELens's training checkpoints of JumpReLU (``log_threshold``) and BatchTopK
(``topk_threshold``). Refused with the reason: other architectures (gated, skip transcoders, ...), per-token
normalizations (``constant_norm_rescale``, ``layer_norm``), ``hook_z`` reshaping, a fine-tuning scaling
factor other than 1, unknown or missing weights.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import mlx.core as mx

from ..store.files import remove_temporaries, write_json_atomic, write_safetensors_atomic
from . import sites
from .config import DictionaryConfig
from .dictionary import WEIGHTS, Dictionary, dictionary_class

CFG = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FORMAT_VERSION = "6.0.0"  # the SAELens config format written (read as "6.0 and later" by SAELens)
# ours -> SAELens architecture, per kind
SAVE_NAMES = {("sae", "relu"): "standard", ("sae", "topk"): "topk", ("sae", "jumprelu"): "jumprelu",
              ("sae", "batchtopk"): "jumprelu", ("transcoder", "relu"): "transcoder",
              ("transcoder", "topk"): "topk_transcoder", ("transcoder", "jumprelu"): "jumprelu_transcoder",
              ("transcoder", "batchtopk"): "jumprelu_transcoder"}
# SAELens architecture -> (kind, ours)
LOAD_NAMES = {"standard": ("sae", "relu"), "topk": ("sae", "topk"), "jumprelu": ("sae", "jumprelu"),
              "batchtopk": ("sae", "batchtopk"), "transcoder": ("transcoder", "relu"),
              "topk_transcoder": ("transcoder", "topk"), "jumprelu_transcoder": ("transcoder", "jumprelu")}
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


# -- saving --------------------------------------------------------------------------------------------
def save(dictionary: Dictionary, path: Union[str, Path]) -> Path:
    """Write ``dictionary`` to the folder ``path`` (created if needed; both files replaced atomically)."""
    folder = Path(path).expanduser()
    weights = folded_weights(dictionary)
    folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(folder)
    write_safetensors_atomic(folder / WEIGHTS_FILE, weights, {"format": "pt"})
    write_json_atomic(folder / CFG, config_dict(dictionary))
    return folder


def folded_weights(dictionary: Dictionary) -> Dict[str, mx.array]:
    """The inference weights with the normalization constants folded in (see the module docstring)."""
    c = dictionary.config
    w = dict(dictionary.weights())
    s_in, s_out = dictionary.input_scale, dictionary.output_scale
    if c.rescale_acts_by_decoder_norm and (s_in.item() != 1.0 or s_out.item() != 1.0):
        raise ValueError(f"{dictionary!r}: rescale_acts_by_decoder_norm with a normalization scale cannot be folded "
                         "into SAELens's layout (the decoder norms would change)")
    w["W_enc"] = w["W_enc"] * s_in.astype(w["W_enc"].dtype)
    w["W_dec"] = w["W_dec"] / s_out.astype(w["W_dec"].dtype)
    w["b_dec"] = w["b_dec"] / s_out.astype(w["b_dec"].dtype)
    mx.eval(w)
    return w


def config_dict(dictionary: Dictionary) -> Dict[str, Any]:
    """SAELens 6's ``cfg.json`` for ``dictionary``, with our facts under ``"mlxterp"``."""
    from .. import __version__

    c = dictionary.config
    key_in = sites.site_key(c.site) if c.site else None
    hook = sites.to_hook_name(key_in) if key_in else None
    metadata = {"sae_lens_version": FORMAT_VERSION, "sae_lens_training_version": None,
                "hook_name": hook or c.site, **{k: v for k, v in c.metadata.items() if k != "hook_name"}}
    cfg: Dict[str, Any] = {
        "architecture": SAVE_NAMES[(c.kind, c.architecture)], "d_in": c.d_in, "d_sae": c.d_sae, "dtype": c.dtype,
        "device": "cpu", "apply_b_dec_to_input": c.apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": metadata,
    }
    if c.architecture == "topk":
        cfg.update(k=int(c.k), rescale_acts_by_decoder_norm=c.rescale_acts_by_decoder_norm)
    if c.kind == "transcoder":
        key_out = sites.site_key(c.site_out) if c.site_out else None
        cfg.update(d_out=c.d_out, hook_name_out=(sites.to_hook_name(key_out) if key_out else None) or c.site_out)
    cfg["mlxterp"] = {"version": __version__, "config": c.to_dict(),
                      "input_scale": float(dictionary.input_scale.item()),
                      "output_scale": float(dictionary.output_scale.item()), "normalization_folded": True}
    return cfg


# -- loading -------------------------------------------------------------------------------------------
def load(path: Union[str, Path], *, site: Optional[str] = None, site_out: Optional[str] = None) -> Dictionary:
    """The dictionary saved in ``path`` (see the module docstring for what is read and refused)."""
    folder = Path(path).expanduser()
    cfg = _read_cfg(folder)
    weights = _read_weights(folder)
    ours = cfg.get("mlxterp")
    config = _config_from_ours(ours, folder) if isinstance(ours, dict) else _config_from_saelens(cfg, folder)
    if site is not None:
        config.site = site
        config.site_out = site if config.kind == "sae" else config.site_out
    if site_out is not None:
        if config.kind == "sae" and site_out != config.site:
            raise ValueError(f"{str(folder)!r} holds an SAE, which reconstructs its own site: site_out is for transcoders")
        config.site_out = site_out
    weights = _inference_weights(weights, config, folder)
    dtype = DTYPES[config.dtype]
    return dictionary_class(config.kind)(config, {n: v.astype(dtype) for n, v in weights.items()})


def _read_cfg(folder: Path) -> Dict[str, Any]:
    path = folder / CFG
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a saved dictionary: it has no {CFG} (a SAELens folder holds "
                                f"{CFG} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON ({exc}); the folder's config is corrupt") from exc
    if not isinstance(cfg, dict) or "d_sae" not in cfg or "d_in" not in cfg:
        raise ValueError(f"{str(path)!r} is not a SAELens config: it needs at least 'd_in' and 'd_sae' "
                         f"(found keys: {sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__})")
    return cfg


def _read_weights(folder: Path) -> Dict[str, mx.array]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has {CFG} but no {WEIGHTS_FILE}")
    try:
        weights = mx.load(str(path))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({exc}); the weights are corrupt") from exc
    if not isinstance(weights, dict):
        raise ValueError(f"{str(path)!r} does not hold named tensors")
    return weights


def _config_from_ours(ours: Dict[str, Any], folder: Path) -> DictionaryConfig:
    try:
        return DictionaryConfig.from_dict(dict(ours["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{str(folder / CFG)!r}: its 'mlxterp' entry is not a dictionary config ({exc})") from exc


def _config_from_saelens(cfg: Dict[str, Any], folder: Path) -> DictionaryConfig:
    """Our config for a folder written by SAELens (format 6, or the older flat one)."""
    where = str(folder / CFG)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    if _major_version(cfg) < 6:  # the flat pre-6 layout
        meta = {**cfg, **meta}
        meta.setdefault("hook_name", cfg.get("hook_point"))
    name = cfg.get("architecture", "standard")
    if name not in LOAD_NAMES:
        raise ValueError(f"{where}: architecture {name!r} is not supported; mlxterp reads "
                         f"{', '.join(sorted(LOAD_NAMES))}")
    kind, arch = LOAD_NAMES[name]
    _check_supported(cfg, where)
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch in ("topk", "batchtopk") and k is None:
        raise ValueError(f"{where}: a {name!r} config needs k (or activation_fn_kwargs.k)")
    site_in = sites.from_hook_name(meta.get("hook_name")) or meta.get("hook_name")
    site_out = sites.from_hook_name(cfg.get("hook_name_out")) or cfg.get("hook_name_out") or site_in
    extra = {k_: v for k_, v in meta.items() if k_ in ("model_name", "hook_name", "hook_layer", "prepend_bos",
                                                        "context_size", "dataset_path", "sae_lens_version")}
    return DictionaryConfig(
        kind=kind, architecture=arch, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]),
        d_out=int(cfg.get("d_out", cfg["d_in"])), site=site_in, site_out=site_out if kind == "transcoder" else site_in,
        k=(int(k) if arch == "topk" else float(k)) if k is not None and arch in ("topk", "batchtopk") else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)) and kind == "sae",
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)) and arch == "topk",
        dtype=_dtype_name(cfg.get("dtype", "float32"), where), metadata={**extra, "source": "SAELens"})


def _major_version(cfg: Dict[str, Any]) -> int:
    """SAELens's major version that wrote ``cfg`` (0 when it says none: the oldest, flat layout)."""
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    text = cfg.get("sae_lens_version") or (meta.get("sae_lens_version") if isinstance(meta, dict) else None)
    head = str(text or "0").split(".")[0]
    return int(head) if head.isdigit() else 0


def _check_supported(cfg: Dict[str, Any], where: str) -> None:
    norm = cfg.get("normalize_activations", "none")
    norm = {False: "none", True: "expected_average_only_in", None: "none"}.get(norm, norm)
    if norm in ("constant_norm_rescale", "layer_norm"):
        raise ValueError(f"{where}: normalize_activations={norm!r} (a per-token normalization) is not supported; "
                         "mlxterp reads 'none' and 'expected_average_only_in'")
    if norm == "expected_average_only_in":
        warnings.warn(f"{where}: normalize_activations='expected_average_only_in' but the folder holds no scaling "
                      "factor; the dictionary runs on unscaled activations, as SAELens's load_from_disk does",
                      stacklevel=4)
    elif norm != "none":
        raise ValueError(f"{where}: unknown normalize_activations {norm!r}")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{where}: reshape_activations={cfg['reshape_activations']!r} (per-head hook_z SAEs) is not "
                         "supported; mlxterp's sites are (batch, seq, width) values")


def _dtype_name(text: Any, where: str) -> str:
    name = str(text).replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"{where}: dtype {text!r} is not supported; expected one of {sorted(DTYPES)}")
    return name


def _inference_weights(weights: Dict[str, mx.array], config: DictionaryConfig, folder: Path) -> Dict[str, mx.array]:
    """SAELens's state dict as our inference weights: training forms converted, unknown names refused."""
    where = str(folder / WEIGHTS_FILE)
    w = dict(weights)
    scaling = w.pop("scaling_factor", None)
    if scaling is not None and not bool(mx.all(scaling == 1).item()):
        raise ValueError(f"{where}: a fine-tuning scaling_factor other than 1 is not supported")
    if "log_threshold" in w and "threshold" not in w:  # SAELens's JumpReLU training checkpoint
        w["threshold"] = mx.exp(w.pop("log_threshold"))
    if "topk_threshold" in w:  # SAELens's BatchTopK training checkpoint: one threshold for every latent
        w["threshold"] = mx.full((config.d_sae,), w.pop("topk_threshold").astype(mx.float32).item())
    wanted = set(WEIGHTS) | ({"threshold"} if config.architecture in ("jumprelu", "batchtopk") else set())
    unknown, missing = sorted(set(w) - wanted), sorted(wanted - set(w))
    if unknown or missing:
        raise ValueError(f"{where} does not hold a {config.architecture} {config.kind}'s weights: "
                         + (f"unknown {unknown}" if unknown else "") + ("; " if unknown and missing else "")
                         + (f"missing {missing}" if missing else "") + f" (expected {sorted(wanted)})")
    return w
