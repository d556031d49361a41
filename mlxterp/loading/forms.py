"""How a loaded model holds its weights: quantized as stored, or dequantized to a float dtype.

A quantized checkpoint (GGUF Q4_0/Q4_1/Q8_0, an mlx-lm 4-bit folder) can run as it is stored or be
expanded once at load. Dequantizing is exact when it is computed in float32 (``q * scale + bias`` of a
float16 scale and a small integer fits a float32 exactly), and on a CPU a float32 matmul on a good BLAS
is several times faster than MLX's quantized matmul kernel, at four to eight times the memory. So the
automatic choice (:func:`choose`) dequantizes to float32 on a CPU where the float32 weights take under
a quarter of the machine's memory *and* a float32 matmul is measured faster than a quantized one there
(the mlx-cpu wheel's bundled reference BLAS is slower than the quantized kernel); it keeps the weights
quantized on GPUs, where the quantized kernels are the fast ones, and where memory is short.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

FLOAT_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
MEMORY_FRACTION = 4  # dequantize automatically only when the float32 weights take < 1/4 of memory
# ... and only when a float32 matmul is at least this many times faster than a quantized one: it pays for
# the seconds of dequantizing and 4-8x the memory, and the measurement (about 10x on OpenBLAS, 0.5-0.8x on
# the mlx-cpu wheel's bundled BLAS) stays on one side of it on a busy machine.
MIN_SPEEDUP = 2.0
CHOICES = ("dtype='float32' (or 'float16', 'bfloat16'): dequantize at load; quantized=True: keep quantized "
           "weights; quantized=False: dequantize to float32; neither: the automatic choice")


@dataclasses.dataclass(frozen=True)
class WeightForm:
    """What :func:`apply_form` did: ``summary`` says how the weights are held now (``"float32,
    dequantized at load"``, ``"quantized 4/8-bit, float32 scales"``), ``reason`` why (``"requested
    quantized=True"``, ``"auto: ..."``)."""

    summary: str
    reason: str
    dequantized: bool = False

    @property
    def choice(self) -> str:
        """Who chose: ``"auto"``, ``"requested dtype='float32'"``, ``"as stored"`` or ``"as passed"``."""
        return self.reason.split(":", 1)[0]

    def __str__(self) -> str:
        return f"{self.summary} ({self.reason})"


def check_request(dtype: Any = None, quantized: Optional[bool] = None) -> Tuple[Optional[str], Optional[bool]]:
    """Validate ``dtype=`` / ``quantized=``: ``(dtype name or None, quantized or None)``.

    Raises:
        ValueError: for an unknown dtype, a non-bool ``quantized``, or both a dtype and ``quantized=True``;
            the message lists the valid choices.
    """
    if quantized not in (None, True, False):
        raise ValueError(f"quantized={quantized!r} is not valid; valid choices: {CHOICES}.")
    name = dtype_name(dtype)
    if name is not None and quantized is True:
        raise ValueError(f"dtype={name!r} dequantizes the weights but quantized=True keeps them quantized; pass "
                         f"one of them. Valid choices: {CHOICES}.")
    return name, quantized


def dtype_name(dtype: Any) -> Optional[str]:
    """``"float32"`` for ``"float32"`` or ``mx.float32`` (None stays None); ValueError naming the choices."""
    if dtype is None:
        return None
    for name, value in FLOAT_DTYPES.items():
        if dtype == name or dtype is value or (isinstance(dtype, mx.Dtype) and dtype == value):
            return name
    raise ValueError(f"dtype={dtype!r} is not valid; valid dtypes: {', '.join(map(repr, FLOAT_DTYPES))} "
                     f"(or None). Valid choices: {CHOICES}.")


def apply_form(model: nn.Module, dtype: Any = None, quantized: Optional[bool] = None) -> WeightForm:
    """Hold ``model``'s weights as asked (in place): quantized, dequantized to ``dtype``, or the automatic
    choice when both are None (see :func:`choose`).

    Raises:
        ValueError: for invalid arguments (see :func:`check_request`), ``quantized=True`` on a model without
            quantized layers, or quantized layers of a kind that cannot be dequantized.
    """
    name, keep = check_request(dtype, quantized)
    layers = quantized_layers(model)
    if keep is True:
        if not layers:
            raise ValueError("quantized=True keeps a quantized checkpoint's weights quantized, but this model has "
                             f"no quantized layers. Valid choices: {CHOICES}.")
        return WeightForm(describe(model), "requested quantized=True")
    if keep is False or name is not None:
        target = name or "float32"
        dequantize(model, FLOAT_DTYPES[target])
        asked = f"dtype={name!r}" if name else "quantized=False"
        return WeightForm(describe(model, dequantized=bool(layers)), f"requested {asked}", bool(layers))
    if not layers:
        return WeightForm(describe(model), "as stored: no quantized layers")
    expand, reason = choose(float32_bytes(model), on_gpu(), memory_bytes(), cpu_float32_speedup)
    if expand:
        dequantize(model, mx.float32)
    return WeightForm(describe(model, dequantized=expand), reason, expand)


def choose(f32_bytes: int, gpu: bool, memory: Optional[int], speedup: Callable[[], float]) -> Tuple[bool, str]:
    """The automatic choice: ``(dequantize to float32?, reason)``.

    Args:
        f32_bytes: size of the model's weights in float32.
        gpu: whether MLX's default device is a GPU.
        memory: the machine's memory in bytes (None: unknown).
        speedup: measures how many times faster a float32 matmul runs than a quantized one on the CPU
            (called only when the other conditions allow dequantizing).
    """
    gb = f"{f32_bytes / 1e9:.2f} GB"
    if gpu:
        return False, "auto: quantized weights on the GPU, whose quantized kernels are fast"
    if memory is None:
        return False, "auto: kept quantized, the machine's memory is unknown"
    if f32_bytes * MEMORY_FRACTION >= memory:
        return False, (f"auto: kept quantized, float32 weights ({gb}) would take over 1/{MEMORY_FRACTION} of "
                       f"the memory ({memory / 1e9:.1f} GB)")
    ratio = speedup()
    if ratio >= MIN_SPEEDUP:
        return True, f"auto: float32 matmuls are {ratio:.1f}x faster than quantized ones on this CPU; {gb}"
    return False, (f"auto: kept quantized, float32 matmuls are only {ratio:.2f}x as fast as quantized ones on "
                   "this CPU (a slow BLAS, such as the mlx-cpu wheel's bundled one; see the README)")


# ---------------------------------------------------------------------------------------------------
# facts about the model and the machine
# ---------------------------------------------------------------------------------------------------
def quantized_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """``{path: module}`` of every module holding quantized weights (it has ``scales``)."""
    return {path: m for path, m in model.named_modules() if isinstance(m, nn.Module) and "scales" in m}


def float32_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters take in float32, quantized ones counted dequantized."""
    total = 0
    quantized = {id(m) for m in quantized_layers(model).values()}
    for _, module in model.named_modules():
        for key, value in module.items():
            if not isinstance(value, mx.array):
                continue
            if id(module) in quantized and key in ("scales", "biases"):
                continue
            size = value.size
            if id(module) in quantized and key == "weight":
                size = size * 32 // module.bits  # a uint32 word packs 32 / bits values
            total += 4 * size
    return total


def describe(model: nn.Module, dequantized: bool = False) -> str:
    """``"quantized 4/8-bit, float32 scales"``, ``"float32, dequantized at load"``, ``"float16"``..."""
    layers = quantized_layers(model).values()
    floats = sorted({str(v.dtype).split(".")[-1] for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)})
    if layers:
        bits = "/".join(str(b) for b in sorted({m.bits for m in layers}))
        scales = sorted({str(m["scales"].dtype).split(".")[-1] for m in layers})
        return f"quantized {bits}-bit, {'/'.join(scales)} scales"
    text = "/".join(floats) or "no float weights"
    return f"{text}, dequantized at load" if dequantized else text


def on_gpu() -> bool:
    """Whether MLX computes on a GPU by default (Apple's Metal, or CUDA)."""
    return mx.default_device().type == mx.DeviceType.gpu


def memory_bytes() -> Optional[int]:
    """The machine's physical memory (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


@functools.lru_cache(maxsize=1)
def cpu_float32_speedup(rows: int = 8, width: int = 576, repeats: int = 3) -> float:
    """How many times faster a float32 matmul runs than a 4-bit quantized one on the CPU, at the shape of a
    small model's MLP on 8 tokens (measured once per process, 0.05-0.2 s): about 10x on OpenBLAS, 0.5-0.8x
    on the mlx-cpu wheel's bundled reference BLAS."""
    with mx.stream(mx.cpu):
        x = mx.random.normal((rows, width), key=mx.random.key(0))
        w = mx.random.normal((width * 8 // 3, width), key=mx.random.key(1))
        packed, scales, biases = mx.quantize(w, group_size=32, bits=4)
        mx.eval(x, w, packed, scales, biases)
        dense = lambda: mx.eval(x @ w.T)  # noqa: E731
        quant = lambda: mx.eval(mx.quantized_matmul(x, packed, scales, biases, group_size=32, bits=4))  # noqa: E731
        best = {dense: float("inf"), quant: float("inf")}
        for _ in range(repeats + 1):  # the first round warms up
            for fn in best:
                start = time.perf_counter()
                fn()
                best[fn] = min(best[fn], time.perf_counter() - start)
    return best[quant] / max(best[dense], 1e-9)


# ---------------------------------------------------------------------------------------------------
# dequantization
# ---------------------------------------------------------------------------------------------------
def dequantize(model: nn.Module, dtype: mx.Dtype = mx.float32) -> None:
    """Replace every quantized layer by its float layer and cast the other float parameters to ``dtype``
    (in place). The dequantization runs in float32, so a float32 result is exact.

    Raises:
        ValueError: if a quantized layer is of a kind with no float counterpart here.
    """
    for path, module in quantized_layers(model).items():
        layer = float_layer(path, module, dtype)
        mx.eval(layer.parameters())  # one layer at a time: the packed original is freed before the next
        model.update_modules(tree_unflatten([(path, layer)]))
    cast = [(k, v.astype(dtype)) for k, v in tree_flatten(model.parameters())
            if mx.issubdtype(v.dtype, mx.floating) and v.dtype != dtype]
    if cast:
        model.update(tree_unflatten(cast))
        mx.eval(model.parameters())


def float_layer(path: str, module: nn.Module, dtype: mx.Dtype) -> nn.Module:
    """The float layer equal to a quantized one (its weight dequantized in float32, then cast)."""
    biases = module.get("biases")
    weight = mx.dequantize(module["weight"], module["scales"].astype(mx.float32),
                           None if biases is None else biases.astype(mx.float32),
                           group_size=module.group_size, bits=module.bits,
                           mode=getattr(module, "mode", "affine")).astype(dtype)
    layer = _float_counterpart(path, module, weight)
    layer.weight = weight
    if "bias" in module:
        layer.bias = module["bias"]
    return layer


def _float_counterpart(path: str, module: nn.Module, weight: mx.array) -> nn.Module:
    if isinstance(module, nn.QuantizedEmbedding):
        return nn.Embedding(*weight.shape)
    if isinstance(module, nn.QuantizedLinear):
        return nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
    try:  # mlx-lm's mixture-of-experts layers
        from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear
    except ImportError:  # pragma: no cover - mlx-lm is a dependency
        QuantizedSwitchLinear = SwitchLinear = None
    if QuantizedSwitchLinear is not None and isinstance(module, QuantizedSwitchLinear):
        experts, out, inp = weight.shape
        return SwitchLinear(inp, out, experts, bias="bias" in module)
    raise ValueError(f"cannot dequantize {path!r} ({type(module).__name__}): only QuantizedLinear, "
                     "QuantizedEmbedding and mlx-lm's QuantizedSwitchLinear are supported; pass quantized=True "
                     "to keep the weights quantized.")

