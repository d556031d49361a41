"""Load llama-family GGUF checkpoints into mlx-lm's ``llama.Model``.

``mx.load`` reads GGUF natively and keeps Q4_0 / Q4_1 / Q8_0 tensors as MLX
affine-quantized triples (``weight``, ``scales``, ``biases``; group size 32),
so a quantized file becomes a quantized MLX model without ever materialising
a float copy. The bits can differ per tensor (SmolLM2's Q4_1 file has an
8-bit token embedding and 4-bit linears), so each layer is quantized with the
bits inferred from its own shapes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from . import forms
from .gguf_tokenizer import build_gguf_tokenizer

if TYPE_CHECKING:  # importing mlx_lm pulls in transformers (~1 s): defer to load time
    from mlx_lm.models import llama

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)
# Tensor types that mx.load keeps exact. Other types (K-quants, BF16, ...) are
# silently expanded to float16 by mx.load, which breaks the memory budget and
# is untested, so they are refused up front.
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")
GROUP_SIZE = 32  # every GGML block format mx.load understands uses 32 values

_GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
    9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
    15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16",
    26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4",
}

# GGUF tensor name -> mlx-lm llama parameter path.
_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_PER_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_ROPE_FREQS = "rope_freqs.weight"

# --------------------------------------------------------------------------
# GGUF header: architecture and per-tensor types, read before the big load.
# --------------------------------------------------------------------------
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _skip_value(buf: mmap.mmap, pos: int, vtype: int) -> int:
    """Return the offset just past one GGUF metadata value of type ``vtype``."""
    if vtype in _FIXED_SIZES:
        return pos + _FIXED_SIZES[vtype]
    if vtype == _STRING:
        (length,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + length
    if vtype == _ARRAY:
        etype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype in _FIXED_SIZES:
            return pos + _FIXED_SIZES[etype] * count
        for _ in range(count):
            pos = _skip_value(buf, pos, etype)
        return pos
    raise ValueError(f"corrupt GGUF metadata: unknown value type {vtype} at byte {pos}")


# Bytes per block and values per block of the tensor types mx.load reads.
_BLOCKS = {"F32": (4, 1), "F16": (2, 1), "Q4_0": (18, 32), "Q4_1": (20, 32), "Q8_0": (34, 32)}
_UINT32 = 4
_ALIGNMENT_KEY = "general.alignment"


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's header: ``architecture`` (None if absent) and, per tensor, its GGML type name,
    shape (outermost dimension first, as numpy and MLX order it) and the byte offset of its data in the
    file; ``size`` is the file's size in bytes."""

    architecture: Optional[str]
    types: Dict[str, str]
    shapes: Dict[str, Tuple[int, ...]]
    offsets: Dict[str, int]
    size: int


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Read a GGUF file's header: architecture, and the type, shape and data offset of every tensor.

    Only the header is parsed (no tensor data), so this is cheap even for
    multi-gigabyte files.

    Args:
        path: Path to a ``.gguf`` file.

    Returns:
        The :class:`GGUFHeader`.

    Raises:
        ValueError: If the file is not a GGUF v2/v3 file, or its header is truncated or corrupt.
    """
    size = Path(path).stat().st_size
    if size < 24:  # magic, version, tensor count, key-value count
        raise ValueError(f"GGUF file {path} is truncated: {size} bytes, and a GGUF header alone needs 24 or more.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (expected magic b'GGUF', got {buf[:4]!r}).")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path} is GGUF version {version}; expected version 2 or 3.")
        try:
            return _parse_header(buf, n_tensors, n_kv, size)
        except (struct.error, UnicodeDecodeError) as exc:
            raise ValueError(f"GGUF file {path} is truncated or corrupt: its header ({n_kv} metadata entries, "
                             f"{n_tensors} tensors) does not fit in its {size} bytes ({exc}).") from exc


def _parse_header(buf: mmap.mmap, n_tensors: int, n_kv: int, size: int) -> GGUFHeader:
    """The metadata and tensor infos after the fixed 24-byte start (struct.error where the bytes end)."""
    pos, arch, alignment = 24, None, 32
    for _ in range(n_kv):
        key, pos = _string(buf, pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if key == "general.architecture" and vtype == _STRING:
            arch, _ = _string(buf, pos)
        elif key == _ALIGNMENT_KEY and vtype == _UINT32:
            (alignment,) = struct.unpack_from("<I", buf, pos)
        pos = _skip_value(buf, pos, vtype)
    types, shapes, offsets = {}, {}, {}
    for _ in range(n_tensors):
        name, pos = _string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        pos += 4 + 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        types[name] = _GGML_TYPE_NAMES.get(ttype, f"unknown type id {ttype}")
        shapes[name] = tuple(int(d) for d in reversed(dims))  # GGUF stores the innermost dimension first
        offsets[name] = offset
    start = -(-pos // alignment) * alignment  # the tensor data section begins at the next aligned byte
    return GGUFHeader(arch, types, shapes, {k: start + v for k, v in offsets.items()}, size)


def _string(buf: mmap.mmap, pos: int) -> Tuple[str, int]:
    """A GGUF string (u64 length, UTF-8 bytes) at ``pos`` and the offset past it."""
    (length,) = struct.unpack_from("<Q", buf, pos)
    if pos + 8 + length > len(buf):
        raise struct.error(f"a {length}-byte string at byte {pos} runs past the end")
    return buf[pos + 8 : pos + 8 + length].decode("utf-8"), pos + 8 + length


def _check_data(path: Path, header: GGUFHeader) -> None:
    """Refuse a file whose tensor data is cut short (mx.load would fail or read past the end)."""
    for name, kind in header.types.items():
        block_bytes, block_values = _BLOCKS[kind]
        count = math.prod(header.shapes[name])
        end = header.offsets[name] + count // block_values * block_bytes
        if end > header.size:
            raise ValueError(
                f"GGUF file {path} is truncated: tensor {name!r} ({kind}, shape {list(header.shapes[name])}) "
                f"needs bytes {header.offsets[name]}-{end}, but the file has {header.size} bytes. "
                "Download or convert it again."
            )


def _check_supported(path: Path, arch: str | None, types: Mapping[str, str]) -> None:
    """Refuse architectures and tensor types this loader cannot load exactly."""
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF file {path} has architecture {arch!r}; supported architectures: "
            f"{list(SUPPORTED_ARCHITECTURES)}."
        )
    bad: dict[str, list[str]] = {}
    for name, kind in types.items():
        if kind not in SUPPORTED_TENSOR_TYPES:
            bad.setdefault(kind, []).append(name)
    if bad:
        detail = "; ".join(
            f"{kind} ({len(names)} tensors, e.g. {names[0]})" for kind, names in sorted(bad.items())
        )
        raise ValueError(
            f"GGUF file {path} uses unsupported tensor types: {detail}. Supported "
            f"types: {list(SUPPORTED_TENSOR_TYPES)}; re-quantize with "
            "`llama-quantize --pure` to Q4_0, Q4_1 or Q8_0."
        )


# --------------------------------------------------------------------------
# Model construction.
# --------------------------------------------------------------------------
def _scalar(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Return a metadata scalar as a Python value (GGUF scalars load as mx.array)."""
    value = metadata.get(key, default)
    return value.item() if hasattr(value, "item") else value


def _require(metadata: Mapping[str, Any], key: str) -> Any:
    """Return a required hyper-parameter or say which key is missing."""
    if key not in metadata:
        raise ValueError(f"GGUF metadata lacks {key!r}, which a llama model needs.")
    return _scalar(metadata, key)


def _mlx_name(name: str) -> str | None:
    """Map ``blk.3.attn_q.weight`` to ``model.layers.3.self_attn.q_proj.weight``."""
    base, _, suffix = name.rpartition(".")
    if base in _TOP_LEVEL:
        return f"{_TOP_LEVEL[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _PER_BLOCK:
        return f"model.layers.{parts[1]}.{_PER_BLOCK[parts[2]]}.{suffix}"
    return None


def _model_args(metadata: Mapping[str, Any], weights: Mapping[str, mx.array]) -> llama.ModelArgs:
    """Translate ``llama.*`` GGUF hyper-parameters into mlx-lm ``ModelArgs``."""
    from mlx_lm.models import llama

    hidden = int(_require(metadata, "llama.embedding_length"))
    heads = int(_require(metadata, "llama.attention.head_count"))
    head_dim = int(_scalar(metadata, "llama.attention.key_length", hidden // heads))
    rope_dims = int(_scalar(metadata, "llama.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(
            f"GGUF llama.rope.dimension_count={rope_dims} differs from the head size "
            f"{head_dim}; partial rotary embeddings are not supported."
        )
    rope_scaling = None
    scaling = _scalar(metadata, "llama.rope.scaling.type")
    if scaling == "linear":
        rope_scaling = {"type": "linear", "factor": float(_require(metadata, "llama.rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise ValueError(
            f"GGUF llama.rope.scaling.type={scaling!r} is not supported; expected 'none' or 'linear'."
        )
    if "model.embed_tokens.weight" not in weights:
        raise ValueError("GGUF file lacks 'token_embd.weight', which a llama model needs.")
    tokens = metadata.get("tokenizer.ggml.tokens") or ()
    vocab = weights["model.embed_tokens.weight"].shape[0]
    if tokens and len(tokens) != vocab:
        # Padded embeddings are legal; the weights decide the model's shape.
        logger.warning("GGUF has %d tokens but %d embedding rows", len(tokens), vocab)
    return llama.ModelArgs(
        model_type="llama",
        hidden_size=hidden,
        num_hidden_layers=int(_require(metadata, "llama.block_count")),
        intermediate_size=int(_require(metadata, "llama.feed_forward_length")),
        num_attention_heads=heads,
        num_key_value_heads=int(_scalar(metadata, "llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(_require(metadata, "llama.attention.layer_norm_rms_epsilon")),
        vocab_size=vocab,
        rope_theta=float(_scalar(metadata, "llama.rope.freq_base", 10000.0)),
        # llama.cpp's converter permutes q/k so that RoPE pairs are adjacent.
        rope_traditional=True,
        rope_scaling=rope_scaling,
        max_position_embeddings=_scalar(metadata, "llama.context_length"),
        attention_bias="model.layers.0.self_attn.q_proj.bias" in weights,
        mlp_bias="model.layers.0.mlp.gate_proj.bias" in weights,
        tie_word_embeddings="lm_head.weight" not in weights,
    )


class GGUFFrequencyRoPE(nn.Module):
    """Interleaved RoPE with GGUF ``rope_freqs`` factors (Llama 3.1+ long context).

    llama.cpp divides each pair's angle by its factor, i.e. multiplies the
    period ``base ** (2i / dims)`` by it, which is what ``mx.fast.rope``'s
    ``freqs`` (periods) argument expects.
    """

    def __init__(self, dims: int, base: float, factors: mx.array):
        super().__init__()
        self.dims = dims
        periods = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
        # Leading underscore keeps the table out of the model's parameters.
        self._freqs = periods * factors.astype(mx.float32)

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        return mx.fast.rope(
            x, self.dims, traditional=True, base=None, scale=1.0, offset=offset, freqs=self._freqs
        )


def _quantized_bits(weights: Mapping[str, mx.array]) -> dict[str, int]:
    """Return ``{module path: bits}`` for every layer stored quantized.

    The packed uint32 weight holds ``32 / bits`` values per word and there is
    one scale per ``GROUP_SIZE`` inputs, so ``bits = 32 * packed / inputs``.
    """
    bits = {}
    for key, scales in weights.items():
        if not key.endswith(".scales"):
            continue
        module = key[: -len(".scales")]
        packed = weights[f"{module}.weight"].shape[-1]
        inputs = scales.shape[-1] * GROUP_SIZE
        if (32 * packed) % inputs:
            raise ValueError(f"cannot infer bits of {module}: packed {packed} words for {inputs} inputs.")
        bits[module] = 32 * packed // inputs
    return bits


def _float32_scales(weights: dict[str, mx.array], bits: Mapping[str, int]) -> None:
    """Hold every quantized layer's scales and biases in float32, in place.

    mx.load gives them in float16 (GGUF stores float16 scales), and MLX computes a quantized layer in
    its scales' dtype: ``nn.QuantizedEmbedding`` would round each embedding to float16 (logits of SmolLM2
    off by up to 0.02). The cast is exact; the packed weights stay as they are.
    """
    for module in bits:
        for part in ("scales", "biases"):
            weights[f"{module}.{part}"] = weights[f"{module}.{part}"].astype(mx.float32)


def load_gguf(path: str | Path, *, dequantize: bool = False) -> tuple[nn.Module, Any]:
    """Load a llama-family GGUF file as an mlx-lm model plus tokenizer.

    Args:
        path: Path to a ``.gguf`` file whose ``general.architecture`` is one of
            :data:`SUPPORTED_ARCHITECTURES` and whose tensors are all of
            :data:`SUPPORTED_TENSOR_TYPES`.
        dequantize: If ``True`` return a plain float model (``nn.Linear``
            layers, every weight in float32, quantized tensors dequantized
            exactly) instead of keeping the file's quantization.

    Returns:
        ``(model, tokenizer)``: an ``mlx_lm.models.llama.Model`` in eval mode
        with its parameters evaluated, and an mlx-lm ``TokenizerWrapper``.
        Quantized layers keep their packed weights and hold their scales and
        biases in float32, so they compute in float32 (see :func:`_float32_scales`).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: For unsupported architectures, tensor types, hyper-parameters
            or tokenizers, tensors the llama model has no place for, or a
            truncated or corrupt file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist (expected a path to a .gguf file).")
    header = read_gguf_header(path)
    _check_supported(path, header.architecture, header.types)
    _check_data(path, header)

    tensors, metadata = mx.load(str(path), return_metadata=True)
    rope_factors = tensors.pop(_ROPE_FREQS, None)
    weights, unknown = {}, []
    for name, array in tensors.items():
        target = _mlx_name(name)
        if target is None:
            unknown.append(name)
        else:
            weights[target] = array
    del tensors  # keep only one reference so dequantize can free the originals
    if unknown:
        raise ValueError(
            f"GGUF file {path} has tensors a llama model has no place for: {sorted(unknown)[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}. Expected token_embd, output_norm, output, "
            f"rope_freqs and blk.N.{{{', '.join(_PER_BLOCK)}}}."
        )

    from mlx_lm.models import llama

    args = _model_args(metadata, weights)
    model = llama.Model(args)
    if rope_factors is not None:
        for layer in model.layers:
            layer.self_attn.rope = GGUFFrequencyRoPE(args.head_dim, args.rope_theta, rope_factors)

    bits = _quantized_bits(weights)
    _float32_scales(weights, bits)
    if bits:
        # The freshly built layers hold lazy random weights; quantizing them is
        # free because load_weights replaces them before anything is evaluated.
        nn.quantize(
            model,
            class_predicate=lambda p, _: (
                {"group_size": GROUP_SIZE, "bits": bits[p], "mode": "affine"} if p in bits else False
            ),
        )
    model.load_weights(list(weights.items()), strict=True)
    del weights
    mx.eval(model.parameters())
    if dequantize:
        forms.dequantize(model, mx.float32)
    model.eval()
    logger.info(
        "loaded %s: %d layers, %d quantized tensors%s",
        path.name, args.num_hidden_layers, len(bits), " (dequantized)" if dequantize else "",
    )
    return model, build_gguf_tokenizer(metadata)
