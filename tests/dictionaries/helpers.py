"""Shared pieces of the dictionary tests: random weights and data, and the library's loss as a function."""

from __future__ import annotations

from typing import Any, Dict, Optional

import mlx.core as mx
import numpy as np

from mlxterp.dictionaries import SAE, DictionaryConfig, Transcoder
from mlxterp.dictionaries.learner import Comm
from mlxterp.dictionaries.objective import DictionaryObjective

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
K = {"topk": 4, "batchtopk": 4.0}


def random_weights(rng: np.random.Generator, d_in: int, d_sae: int, d_out: Optional[int] = None,
                   threshold: float = 0.2) -> Dict[str, np.ndarray]:
    d_out = d_in if d_out is None else d_out
    w_dec = rng.normal(size=(d_sae, d_out))
    return {"W_enc": rng.normal(size=(d_in, d_sae)) * 0.4, "b_enc": rng.normal(size=d_sae) * 0.1,
            "W_dec": w_dec / np.linalg.norm(w_dec, axis=-1, keepdims=True) * rng.uniform(0.5, 1.5, size=(d_sae, 1)),
            "b_dec": rng.normal(size=d_out) * 0.1, "threshold": rng.uniform(0.5, 1.0, size=d_sae) * threshold * 5}


def make(arch: str, weights: Dict[str, np.ndarray], *, kind: str = "sae", **options: Any) -> Any:
    """A dictionary holding ``weights`` (float32)."""
    d_in, d_sae = weights["W_enc"].shape
    d_out = weights["W_dec"].shape[1]
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if arch in ("jumprelu", "batchtopk") else ())
    options.setdefault("normalize", "none")
    options.setdefault("b_dec_init", "zeros")
    if kind == "transcoder":
        options.setdefault("apply_b_dec_to_input", False)
    config = DictionaryConfig(kind=kind, architecture=arch, d_in=d_in, d_sae=d_sae, d_out=d_out, k=K.get(arch),
                              site="layers.1.resid_pre", site_out="layers.1.mlp" if kind == "transcoder" else None,
                              **options)
    cls = SAE if kind == "sae" else Transcoder
    return cls(config, {n: mx.array(weights[n].astype(np.float32)) for n in names})


def objective(d: Any, batch: int) -> DictionaryObjective:
    key_out = "x" if d.config.kind == "sae" else "y"
    return DictionaryObjective(d, "x", key_out, batch)


def library_loss(obj: DictionaryObjective, params: Dict[str, mx.array], x: np.ndarray, y: Optional[np.ndarray] = None,
                 dead: Optional[np.ndarray] = None, coef: float = 1.0) -> tuple:
    """``(loss, aux)`` of the library's objective on one batch (eagerly, one process)."""
    state = obj.init_state()
    if dead is not None:
        state["since_fired"] = mx.array(np.where(dead, obj.config.dead_tokens, 0).astype(np.int32))
    batch = {"x": mx.array(x.astype(np.float32))}
    if y is not None:
        batch["y"] = mx.array(y.astype(np.float32))
    variant = obj.variant(state)
    return obj.loss(params, state, batch, {"coef": mx.array(coef)}, Comm(None), variant)


def as_numpy(params: Dict[str, mx.array]) -> Dict[str, np.ndarray]:
    return {k: np.array(v).astype(np.float64) for k, v in params.items()}
