"""An independent float32 reference for GGUF llama files: bytes read with numpy, blocks dequantized by hand.

Nothing here uses ``mx.load`` or mlxterp's loader. The header is parsed from the GGUF specification
(key-value pairs, tensor infos, an aligned data section); Q4_0 / Q4_1 / Q8_0 blocks are expanded from
llama.cpp's ``block_q4_0`` / ``block_q4_1`` / ``block_q8_0`` layouts (a float16 scale ``d``, Q4_1's float16
minimum ``m``, then the quants; a Q4 byte ``j`` holds value ``j`` in its low nibble and value ``j + 16`` in
its high one) in float32: ``(q - 8) * d``, ``q * d + m``, ``q * d``. :func:`reference_model` builds an
mlx-lm llama in float32 from them, with llama.cpp's q/k row permutation undone so that it runs with the
usual (non-interleaved) RoPE, unlike mlxterp's loader.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Dict, Tuple

import mlx.core as mx
import numpy as np
from mlx_lm.models import llama

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# GGML type id -> (name, bytes per block, values per block)
_TYPES = {0: ("F32", 4, 1), 1: ("F16", 2, 1), 2: ("Q4_0", 18, 32), 3: ("Q4_1", 20, 32), 8: ("Q8_0", 34, 32)}


class GGUFReference:
    """A GGUF file read with numpy: ``metadata`` (Python values), ``tensors`` (name -> (type, shape,
    offset)), and :meth:`float32` to dequantize one tensor from its raw bytes."""

    def __init__(self, path: str | Path):
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        raw = self.data
        assert bytes(raw[:4]) == b"GGUF", "not a GGUF file"
        _, n_tensors, n_kv = struct.unpack_from("<IQQ", raw, 4)
        pos, self.metadata = 24, {}
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (vtype,) = struct.unpack_from("<I", raw, pos)
            self.metadata[key], pos = self._value(pos + 4, vtype)
        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", raw, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", raw, pos + 4)
            ttype, offset = struct.unpack_from("<IQ", raw, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, ttype, tuple(reversed(dims)), offset))
        align = self.metadata.get("general.alignment", 32)
        start = (pos + align - 1) // align * align
        self.tensors = {name: (ttype, shape, start + off) for name, ttype, shape, off in infos}

    def _string(self, pos: int) -> Tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self.data, pos)
        return bytes(self.data[pos + 8:pos + 8 + n]).decode("utf-8"), pos + 8 + n

    def _value(self, pos: int, vtype: int) -> Tuple[Any, int]:
        if vtype == _STRING:
            return self._string(pos)
        if vtype == _ARRAY:
            etype, count = struct.unpack_from("<IQ", self.data, pos)
            pos += 12
            values = []
            for _ in range(count):
                value, pos = self._value(pos, etype)
                values.append(value)
            return values, pos
        fmt = _SCALARS[vtype]
        return struct.unpack_from(fmt, self.data, pos)[0], pos + struct.calcsize(fmt)

    def float32(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized to float32 from its raw GGML blocks (shape outermost-first)."""
        ttype, shape, offset = self.tensors[name]
        kind, block_bytes, block_values = _TYPES[ttype]
        count = int(np.prod(shape))
        raw = np.asarray(self.data[offset:offset + count // block_values * block_bytes])
        if kind == "F32":
            return raw.view(np.float32).reshape(shape).copy()
        if kind == "F16":
            return raw.view(np.float16).astype(np.float32).reshape(shape)
        blocks = raw.reshape(-1, block_bytes)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
        if kind == "Q8_0":
            values = blocks[:, 2:].copy().view(np.int8).astype(np.float32) * d
        else:
            quants = blocks[:, block_bytes - 16:]
            q = np.concatenate([quants & 0x0F, quants >> 4], axis=1).astype(np.float32)  # values 0-15, 16-31
            if kind == "Q4_0":
                values = (q - 8.0) * d
            else:
                m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
                values = q * d + m
        return values.reshape(shape)


_BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's conversion of HF q/k rows to the interleaved RoPE layout."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def reference_weights(ref: GGUFReference) -> Dict[str, np.ndarray]:
    """mlx-lm llama parameter name -> float32 weight in HF layout (q/k rows un-permuted)."""
    meta = ref.metadata
    heads = meta["llama.attention.head_count"]
    kv_heads = meta.get("llama.attention.head_count_kv", heads)
    out = {}
    for name in ref.tensors:
        w = ref.float32(name)
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = w
            continue
        _, layer, kind, suffix = name.split(".")
        if kind == "attn_q":
            w = unpermute(w, heads)
        elif kind == "attn_k":
            w = unpermute(w, kv_heads)
        out[f"model.layers.{layer}.{_BLOCK_NAMES[kind]}.{suffix}"] = w
    return out


def reference_model(path: str | Path) -> llama.Model:
    """An mlx-lm llama holding the GGUF file's weights dequantized to float32 by :class:`GGUFReference`."""
    ref = GGUFReference(path)
    meta = ref.metadata
    weights = reference_weights(ref)
    hidden, heads = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    args = llama.ModelArgs(
        model_type="llama", hidden_size=hidden, num_hidden_layers=meta["llama.block_count"],
        intermediate_size=meta["llama.feed_forward_length"], num_attention_heads=heads,
        num_key_value_heads=meta.get("llama.attention.head_count_kv", heads),
        rms_norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
        vocab_size=weights["model.embed_tokens.weight"].shape[0],
        rope_theta=meta.get("llama.rope.freq_base", 10000.0), rope_traditional=False,
        tie_word_embeddings="lm_head.weight" not in weights)
    model = llama.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    mx.eval(model.parameters())
    return model


def relative_l2(got: Any, want: Any) -> float:
    """``||got - want|| / ||want||`` in float64."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))
