"""Independent references for the family runner: forwards of the raw mlx-lm model with a module's output
changed by a plain wrapper module swapped in (no tracer), and each family's residual halves written by hand
from mlx-lm's source (not from the adapters)."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict

import mlx.core as mx
import mlx.nn as nn
import numpy as np


# The attention's output projection (its input is the heads, concatenated), where it is not "o_proj".
OUT_PROJ = {"phi": "dense", "gpt_neox": "dense", "gptj": "out_proj", "exaone": "out_proj", "gpt2": "c_proj",
            "gpt_bigcode": "c_proj", "internlm2": "wo"}


class _Tap(nn.Module):
    """Calls the wrapped module and passes its output through ``fn`` (its first argument through ``before``)."""

    def __init__(self, inner: nn.Module, fn: Callable[[mx.array], mx.array],
                 before: Callable[[mx.array], mx.array] = lambda x: x):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "before", before)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            args = (self.before(args[0]),) + args[1:]
        else:  # called with keywords (GPT-J): the first one is the input
            first = next(iter(kwargs))
            kwargs = dict(kwargs, **{first: self.before(kwargs[first])})
        return self.fn(self.inner(*args, **kwargs))


def _parent(raw: nn.Module, path: str) -> tuple[Any, str]:
    head, _, last = path.rpartition(".")
    parent: Any = raw
    for part in head.split(".") if head else []:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    return parent, last


def forward_with(raw: nn.Module, tokens: mx.array, taps: Dict[str, Callable[[mx.array], mx.array]],
                 inputs: bool = False) -> mx.array:
    """``raw(tokens)`` with each module at ``path`` (a ``named_modules()`` path) wrapped: ``taps[path]`` maps its
    output (its input with ``inputs=True``)."""
    swapped = []
    try:
        for path, fn in taps.items():
            parent, name = _parent(raw, path)
            inner = parent[int(name)] if name.isdigit() else getattr(parent, name)
            wrapper = _Tap(inner, lambda y: y, fn) if inputs else _Tap(inner, fn)
            if name.isdigit():
                parent[int(name)] = wrapper
            else:
                setattr(parent, name, wrapper)
            swapped.append((parent, name, inner))
        out = raw(tokens)
        mx.eval(out)
        return out
    finally:
        for parent, name, inner in reversed(swapped):
            if name.isdigit():
                parent[int(name)] = inner
            else:
                setattr(parent, name, inner)


def recovery_loop(raw: nn.Module, clean: mx.array, corrupted: mx.array, paths: Dict[int, str]) -> Dict[int, float]:
    """activation_patching (l2, last position) as 2 + len(paths) plain forwards with wrapper modules."""
    acts: Dict[str, mx.array] = {}

    def keep(path: str) -> Callable[[mx.array], mx.array]:
        return lambda out: acts.setdefault(path, out)

    def last(logits: mx.array) -> np.ndarray:
        return np.array(logits[0, -1].astype(mx.float32), dtype=np.float64)

    clean_logits = last(forward_with(raw, clean, {p: keep(p) for p in paths.values()}))
    d0 = np.linalg.norm(last(raw(corrupted)) - clean_logits)
    out = {}
    for layer, path in paths.items():
        patched = last(forward_with(raw, corrupted, {path: lambda _, a=acts[path]: a}))
        out[layer] = (d0 - np.linalg.norm(patched - clean_logits)) / d0 * 100
    return out


def _scale(layer: nn.Module, family: str) -> float:
    if family == "granite":
        return layer.residual_multiplier
    if family == "minicpm":
        return layer.scale_depth / math.sqrt(layer.num_hidden_layers)
    return 1.0


def attention_added(family: str, layer: nn.Module, attn_out: mx.array, mixer_out: Any = None) -> mx.array:
    """What a sequential layer adds to its input before its MLP half, from its attention's output."""
    if family in ("gemma2", "gemma3_text", "olmo2"):
        return layer.post_attention_layernorm(attn_out)
    if family == "glm4":
        return layer.post_self_attn_layernorm(attn_out)
    if family == "falcon_h1":
        return mixer_out + attn_out
    return attn_out * _scale(layer, family)


def mlp_half(family: str, layer: nn.Module, h: mx.array) -> mx.array:
    """What a sequential layer adds to its mid residual ``h``."""
    if family in ("gemma2", "gemma3_text"):
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    if family == "glm4":
        return layer.post_mlp_layernorm(layer.mlp(layer.post_attention_layernorm(h)))
    if family == "olmo2":
        return layer.post_feedforward_layernorm(layer.mlp(h))
    if family == "mixtral":
        return layer.block_sparse_moe(layer.post_attention_layernorm(h))
    if family == "internlm2":
        return layer.feed_forward(layer.ffn_norm(h))
    if family == "llama4_text":
        return layer.feed_forward(layer.post_attention_layernorm(h))
    if family == "falcon_h1":
        return layer.feed_forward(layer.pre_ff_layernorm(h))
    if family in ("gpt2", "gpt_bigcode", "exaone"):
        return layer.mlp(layer.ln_2(h))
    return layer.mlp(layer.post_attention_layernorm(h)) * _scale(layer, family)


def head_recovery_loop(raw: nn.Module, clean: mx.array, corrupted: mx.array, out_proj: Dict[int, str],
                       heads: int) -> np.ndarray:
    """Head patching (l2, last position) as ``2 + layers * heads`` plain forwards: the clean run's input of
    each attention's output projection (the heads, concatenated) is captured, and each patched run gives
    one layer's projection one head's clean columns."""
    acts: Dict[str, mx.array] = {}
    paths = list(out_proj.values())

    def last(logits: mx.array) -> np.ndarray:
        return np.array(logits[0, -1].astype(mx.float32), dtype=np.float64)

    clean_logits = last(forward_with(raw, clean, {p: (lambda x, p=p: acts.setdefault(p, x)) for p in paths}, True))
    d0 = np.linalg.norm(last(raw(corrupted)) - clean_logits)
    grid = np.zeros((len(paths), heads))
    for i, path in enumerate(paths):
        width = acts[path].shape[-1] // heads
        for h in range(heads):
            mask = mx.arange(acts[path].shape[-1]) // width == h
            patched = last(forward_with(raw, corrupted, {path: lambda x, a=acts[path], m=mask: mx.where(m, a, x)},
                                        True))
            grid[i, h] = (d0 - np.linalg.norm(patched - clean_logits)) / d0 * 100
    return grid
