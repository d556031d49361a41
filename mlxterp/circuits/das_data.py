"""Checks of what DAS is given: its site, positions and dimension, and the (base, source, label) pairs.

Every check runs before any forward and names the bad argument, what was expected and the valid choices.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Sequence

import mlx.core as mx
import numpy as np

from ..analysis.validate import resolve_positions, token_id
from ..inputs import is_int
from ..names import ModuleNameError

if TYPE_CHECKING:
    from ..model import InterpretableModel

SITE_KINDS = ("a layer's residual value (layers.N.resid_pre, resid_mid, resid_post; layers.N is resid_post), its "
              "attention or MLP output (layers.N.attn, layers.N.mlp), or any module returning (batch, seq, width) "
              "values")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Interchange pairs: base and source token ids ``(n, seq)`` (int32, one length for all) and the label
    token of each pair ``(n,)`` (int32): what the model should predict after the intervention."""

    base: mx.array
    source: mx.array
    labels: mx.array

    def __len__(self) -> int:
        return int(self.base.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.base.shape[1])

    def take(self, index: np.ndarray) -> "Pairs":
        """The pairs at ``index`` (int array)."""
        rows = mx.array(index.astype(np.int32))
        return Pairs(self.base[rows], self.source[rows], self.labels[rows])


@dataclasses.dataclass(frozen=True)
class Site:
    """A DAS site resolved on one model: the user's name, the ``(path, phase)`` a trace reads and writes
    there, its width, the positions (non-negative, into prompts of ``seq_len`` tokens) and the dimension."""

    name: str
    path: str
    phase: str
    width: int
    positions: tuple[int, ...]
    dim: int

    def offsets(self, seq_len: int) -> tuple[int, ...]:
        """The positions counted from the end (``p - seq_len``): they index the same tokens in the whole
        prompt and in any suffix of it that contains them."""
        return tuple(p - seq_len for p in self.positions)


def check_dim(dim: Any) -> int:
    """``dim`` if it is a positive int (checked against the site's width once a model is known)."""
    if not is_int(dim) or int(dim) < 1:
        raise ValueError(f"dim: expected a positive int (the subspace's dimension, at most the site's width), "
                         f"got {dim!r}")
    return int(dim)


def check_position(position: Any) -> tuple[int, ...]:
    """``position`` as a tuple of ints (one int, or a non-empty list of distinct ints)."""
    items = (position,) if is_int(position) else position
    if not isinstance(items, (list, tuple, range)) or not items or not all(is_int(p) for p in items):
        raise ValueError(f"position: expected a token position (an int, -1 for the last token) or a non-empty "
                         f"list of them, got {position!r}")
    if len({int(p) for p in items}) != len(items):
        raise ValueError(f"position: {list(items)} repeats a position; give each position once")
    return tuple(int(p) for p in items)


def resolve_site(model: "InterpretableModel", name: Any, tokens: mx.array) -> tuple[str, str, int]:
    """``(path, phase, width)`` of DAS site ``name`` on ``model`` for prompts of ``tokens``' shape.

    Raises:
        ModuleNameError: no module or residual value has this name (the closest names listed).
        ValueError: the site's values are not ``(batch, seq, width)``.
    """
    if not isinstance(name, str):
        raise TypeError(f"site: expected a name such as 'layers.3.resid_post', got {type(name).__name__} {name!r}")
    try:
        path, phase = model._index.resolve_site(name)
    except (ModuleNameError, AttributeError) as e:
        raise ModuleNameError(f"DAS site: {e}; a DAS site is {SITE_KINDS}") from None
    module_path, module_phase = (model._index.residual_site(path, phase) if phase == "resid_mid" else (path, phase))
    spec = model._probe(tokens).values.get((module_path, 0, module_phase))
    shape = spec[0] if isinstance(spec, tuple) else None
    if shape is None or len(shape) != 3 or tuple(shape[:2]) != tuple(tokens.shape):
        got = f"shape {tuple(shape)}" if shape is not None else f"{spec!r}"
        raise ValueError(f"DAS site {name!r} holds {got} for prompts of shape {tuple(tokens.shape)}; a DAS site "
                         f"needs (batch, seq, width) values: {SITE_KINDS}")
    return path, phase, int(shape[2])


def site_on(model: "InterpretableModel", name: str, position: tuple, dim: int, tokens: mx.array) -> Site:
    """The DAS site ``name`` at ``position`` with ``dim`` dimensions, resolved for prompts of ``tokens``."""
    seq_len = int(tokens.shape[1])
    path, phase, width = resolve_site(model, name, tokens)
    if dim > width:
        raise ValueError(f"dim: {dim} is more than the width of site {name!r} ({width}); choose 1 to {width}")
    positions = tuple(sorted(resolve_positions(list(position), seq_len, arg="position")))
    return Site(name, path, phase, width, positions, dim)


def interchange_pairs(model: "InterpretableModel", base: Any, source: Any, labels: Any) -> Pairs:
    """Base and source prompts with their labels, checked: as many of each, every prompt of one token length
    (positions are matched one to one), each label one token."""
    b = prompt_tokens(model, base, "base_prompts")
    s = prompt_tokens(model, source, "source_prompts")
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"base_prompts has {b.shape[0]} prompts and source_prompts {s.shape[0]}; give one source "
                         "prompt per base prompt")
    if b.shape[1] != s.shape[1]:
        raise ValueError(f"base_prompts have {b.shape[1]} tokens and source_prompts {s.shape[1]}: DAS interchanges "
                         "activations between the same positions of base and source, so every prompt must have "
                         "one token length (e.g. counterfactual prompts built from one template)")
    return Pairs(b, s, _labels(model, labels, b.shape[0]))


def prompt_tokens(model: "InterpretableModel", prompts: Any, arg: str) -> mx.array:
    """Token ids ``(n, seq)`` of prompts that all have one token length (positions are matched one to one)."""
    if isinstance(prompts, str):
        raise ValueError(f"{arg}: expected a list of prompts (or a (n, seq) token array), got one str")
    try:
        batch = model._batch(prompts)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arg}: {e}") from None
    if batch.padded:
        lengths = batch.lengths
        odd = next(i for i, n in enumerate(lengths) if n != lengths[0])
        raise ValueError(f"{arg}: prompt {odd} has {lengths[odd]} tokens and prompt 0 has {lengths[0]}: DAS "
                         "interchanges activations between the same positions of base and source prompts, so "
                         "every prompt must have one token length (e.g. counterfactual prompts built from one "
                         "template)")
    return batch.tokens.astype(mx.int32)


def _labels(model: "InterpretableModel", labels: Any, n: int) -> mx.array:
    if isinstance(labels, (mx.array, np.ndarray)):
        array = np.asarray(labels)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"labels: expected one token id per pair, shape ({n},) of ints; got shape "
                             f"{array.shape} of {array.dtype}")
        labels = array.tolist()
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValueError(f"labels: expected a list of {n} tokens (ids or single-token strings such as ' Paris'), "
                         f"got {type(labels).__name__}")
    if len(labels) != n:
        raise ValueError(f"labels: got {len(labels)} labels for {n} prompt pairs; give one label per pair (the token "
                         "the model should predict after the intervention)")
    return mx.array([token_id(model, t, f"labels[{i}]") for i, t in enumerate(labels)], dtype=mx.int32)


def batch_indices(n: int, size: int, seed: Optional[int]) -> Any:
    """Endless batches of ``size`` pair indices: each epoch a permutation of ``range(n)`` drawn from
    ``seed``; a batch that runs past an epoch's end continues into the next, so every batch has one size
    (one compiled shape)."""
    rng = np.random.default_rng(seed)
    pending = np.empty(0, dtype=np.int64)
    while True:
        while len(pending) < size:
            pending = np.concatenate([pending, rng.permutation(n)])
        yield pending[:size]
        pending = pending[size:]
