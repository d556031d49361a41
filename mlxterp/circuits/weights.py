"""Whether a model's weights are still the arrays a cached value was computed from.

A value computed from the weights and kept across calls (the corrupted prompts' run that every edge-patching
call on them reads) is stale once any weight changes. Weights change three ways. An array replaced at its
slot (``module.weight = w``, ``update``, ``load_weights``). A module replaced (``nn.quantize``, a wrapper): a
tree change, which drops the model's program caches (where such values are kept) anyway. An array changed in
place (``w[0] = 0.0``, ``w += 1``): MLX points the same Python object at a new array, and may build that array
in the old one's buffer (it reuses a buffer that nothing else holds). So the objects' identities do not tell
(and they change with no weight changing: a compiled call with the model's state as an input,
:class:`~mlxterp.compiler.StateCompiled`, leaves new array objects over the same buffers), nor do the
buffers' addresses alone.

A :class:`WeightSnapshot` holds a second handle on every parameter's buffer (a no-copy view): while the
snapshot lives, no new array can be built in those buffers. A parameter is then unchanged exactly when the
array at its place reads the same buffer the same way: the same address, shape, strides and dtype (read
through the buffer protocol; a transposed or reinterpreted view of the same buffer counts as a change).
Checking SmolLM2-135M's 272 arrays takes about 1.5 ms (a forward of its 20-token induction prompt ~100 ms
here). The price: the buffers a snapshot was taken of stay in memory while it lives, even once the model has
replaced them (until the value it guards is looked up again and dropped as stale, or the model's program
caches are cleared). Arrays outside ``module.parameters()`` (private attributes such as a RoPE's
precomputed frequencies) are not covered.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten


class WeightSnapshot:
    """The identity of ``module``'s parameters now (see the module docstring)."""

    __slots__ = ("_pins", "_layouts")

    def __init__(self, module: nn.Module):
        arrays = parameters(module)
        self._pins = [a.reshape(a.shape) for a in arrays]  # views: they hold the buffers
        mx.eval(self._pins)
        self._layouts = [_layout(a) for a in arrays]

    def current(self, module: nn.Module) -> bool:
        """Whether ``module``'s parameters read the same buffers, in the same places, the same way."""
        return list(map(_layout, parameters(module))) == self._layouts


def parameters(module: nn.Module) -> List[mx.array]:
    """``module``'s parameter arrays, in ``tree_flatten`` order."""
    return [value for _, value in tree_flatten(module.parameters())]


def _layout(array: mx.array) -> Tuple[int, tuple, Optional[tuple], str]:
    """Where and how ``array`` reads its data: address, shape, strides (``None``: contiguous) and element type
    (evaluating it first, if it is not yet)."""
    if array.dtype == mx.bfloat16:  # numpy has no bfloat16: the same bits as uint16, the same buffer
        array = array.view(mx.uint16)
    face = np.asarray(array).__array_interface__
    return face["data"][0], face["shape"], face["strides"], str(array.dtype)
