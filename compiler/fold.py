"""Folded runs: ``K`` variants of one program (params with a leading ``K`` axis) in one forward.

The model runs once on the tokens repeated ``K`` times along the batch axis, so its modules see
``K * B`` rows (the form a CPU or GPU runs fastest, and one that needs no ``mx.vmap`` rule for the model's
kernels: MLX has none for quantized matmuls). At each hook event the module's value is viewed as
``(K, B, ...)``, the program's nodes run under ``mx.vmap`` over ``K`` wherever a value differs per variant
(module values, mapped params, what is computed from them) and once where it does not, and writes are
folded back to ``K * B`` rows. Saves come back with the leading ``K`` axis, as ``mx.vmap`` would give them.
The result equals ``K`` separate runs; see ``tests/compiler/test_fold.py``.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from .ir import Node
from .lowering import PatchedForward, Run, resolve_args
from .semantics import check_replacement, evaluate


def fold_tokens(tokens: mx.array, k: int) -> mx.array:
    """``tokens`` repeated ``k`` times along the batch axis: variant ``j`` owns rows ``j*B .. (j+1)*B - 1``."""
    return mx.concatenate([tokens] * k, axis=0) if k > 1 else tokens


def run_folded(forward: PatchedForward, tokens: mx.array, params: list, k: int,
               mapped: frozenset[int]) -> tuple[Any, dict, dict]:
    """Run ``k`` variants: param ``i`` in ``mapped`` has a leading axis of size ``k`` (one value per variant).
    Returns the model output (``k * B`` rows for ``B`` rows of ``tokens``, or ``None`` if the forward stopped
    early), the saves (each ``(k, *shape)``: a leading ``k`` axis) and the captures (``k * B`` rows); values
    keep the dtypes the forward computes."""

    return forward.execute(FoldedRun(forward, params, k, mapped), fold_tokens(tokens, k))


class FoldedRun(Run):
    """A run whose values carry a leading variant axis where they differ per variant (see module doc)."""

    def __init__(self, forward: PatchedForward, params: list, k: int, mapped: frozenset[int]):
        super().__init__(forward, params)
        self.k = k
        self.mapped = mapped
        self.batched: set[int] = set()  # ids of nodes whose value has the leading K axis

    def _unfold(self, value: Any, node: Node) -> mx.array:
        if not isinstance(value, mx.array) or value.ndim == 0 or value.shape[0] % self.k:
            raise ValueError(f"{node.describe()} reads a value of shape {getattr(value, 'shape', type(value))}, "
                             f"whose batch axis does not split into {self.k} variants; a folded run needs "
                             "module values with the batch as their first axis")
        return value.reshape((self.k, value.shape[0] // self.k) + tuple(value.shape[1:]))

    def flow(self, node_id: int) -> Any:
        value = self.env[node_id]
        return value.reshape((-1,) + tuple(value.shape[2:]))

    def on_module_value(self, node: Node, current: Any) -> None:
        self.env[node.id] = self._unfold(current, node)
        self.batched.add(node.id)

    def on_param(self, node: Node) -> None:
        super().on_param(node)
        if node.target in self.mapped:
            self.batched.add(node.id)

    def on_save(self, node: Node, source: int) -> None:
        value = self.env[source]
        if source not in self.batched:  # the same for every variant: repeat it, as mx.vmap's outputs do
            value = mx.broadcast_to(value[None], (self.k,) + tuple(getattr(value, "shape", ())))
        self.saves[node.target] = value

    def on_replace(self, node: Node, current: Any, source: int) -> None:
        original = self._unfold(current, node)
        value = self.env[source]
        if source in self.batched:
            written = mx.vmap(lambda o, v: check_replacement(node, o, v))(original, value)
        else:
            one = check_replacement(node, original[0], value)
            written = mx.broadcast_to(one[None], (self.k,) + tuple(one.shape))
        self.env[node.id] = written
        self.batched.add(node.id)

    def on_compute(self, node: Node) -> None:
        ids = list(dict.fromkeys(node.refs()))
        if not any(i in self.batched for i in ids):
            return super().on_compute(node)

        def one_variant(*values: Any) -> Any:
            local = dict(zip(ids, values))
            args, kwargs = resolve_args(node, local.__getitem__, self.f._weak)
            return evaluate(node, args, kwargs)

        axes = tuple(0 if i in self.batched else None for i in ids)
        self.env[node.id] = mx.vmap(one_variant, in_axes=axes)(*[self.env[i] for i in ids])
        self.batched.add(node.id)
