"""A tiny llama with a planted one-dimensional causal variable, built by hand.

The last token of a prompt is a *value* token of sign ``+1`` (ids 4-7) or ``-1`` (ids 8-11); the others are
fillers. Embeddings write ``sign * STRENGTH * u`` along a fixed random unit vector ``u`` of the residual
stream, plus token-specific noise orthogonal to ``u``; fillers carry noise only. The layers are random with
their output projections scaled down (they perturb the residual stream a little and never flip the sign
along ``u``), and the output head reads ``u`` alone: token ``X`` (2) gets logit ``+u . h``, token ``Y`` (3)
``-u . h``, every other token 0. So the model predicts ``X`` after a ``+1`` value and ``Y`` after a ``-1``,
and the variable "sign" lives along ``u`` at the last position of every residual value: DAS at such a site
should find ``u``, and interchanging it from a source prompt makes the model predict the source's answer.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_lm.models import llama

from mlxterp import InterpretableModel

HIDDEN, VOCAB, SEQ = 16, 32, 5
X, Y = 2, 3
POSITIVE, NEGATIVE = tuple(range(4, 8)), tuple(range(8, 12))
FILLERS = tuple(range(12, VOCAB))
STRENGTH, NOISE, LAYER_SCALE = 3.0, 2.0, 0.05


def planted_direction(seed: int = 0) -> np.ndarray:
    """The unit vector ``u`` the variable is written along."""
    u = np.random.default_rng(seed).normal(size=HIDDEN)
    return u / np.linalg.norm(u)


def planted_model(seed: int = 0) -> InterpretableModel:
    """The model of the module docstring (deterministic for a seed)."""
    rng = np.random.default_rng(seed + 1)
    u = planted_direction(seed)
    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=HIDDEN, num_hidden_layers=2, intermediate_size=32,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=VOCAB,
                           tie_word_embeddings=False)
    module = llama.Model(args)
    noise = rng.normal(size=(VOCAB, HIDDEN))
    noise -= np.outer(noise @ u, u)  # orthogonal to u
    noise *= NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    sign = np.zeros(VOCAB)
    sign[list(POSITIVE)], sign[list(NEGATIVE)] = 1.0, -1.0
    embed = noise + STRENGTH * sign[:, None] * u[None]
    head = np.zeros((VOCAB, HIDDEN))
    head[X], head[Y] = u, -u
    weights = {"model.embed_tokens.weight": embed, "lm_head.weight": head}
    for i, layer in enumerate(module.model.layers):
        weights[f"model.layers.{i}.self_attn.o_proj.weight"] = np.array(layer.self_attn.o_proj.weight) * LAYER_SCALE
        weights[f"model.layers.{i}.mlp.down_proj.weight"] = np.array(layer.mlp.down_proj.weight) * LAYER_SCALE
    module.load_weights([(k, mx.array(v.astype(np.float32))) for k, v in weights.items()], strict=False)
    mx.eval(module.parameters())
    return InterpretableModel(module)


def planted_pairs(n: int, seed: int) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """``n`` (base, source, label) triples: random fillers then a random value token; the label is the source's
    answer (``X`` for a positive source value, ``Y`` for a negative one)."""
    rng = np.random.default_rng(seed)
    values = POSITIVE + NEGATIVE

    def prompt() -> list[int]:
        return [1] + rng.choice(FILLERS, SEQ - 2).tolist() + [int(rng.choice(values))]

    base = [prompt() for _ in range(n)]
    source = [prompt() for _ in range(n)]
    labels = [X if s[-1] in POSITIVE else Y for s in source]
    return base, source, labels
