"""Random programs and their values: what the fuzzer generates (see :mod:`tests.fuzz`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

from mlxterp import InterpretableModel
from tests.models import tiny_llama_module

LAYERS, HIDDEN, VOCAB, HEADS, KV_HEADS = 2, 32, 128, 4, 2
D_SAE = 48  # latents of the fuzzer's dictionaries (tests/fuzz/dictionaries.py)
HEAD_DIM = HIDDEN // HEADS

RESIDUAL = ("embed", "layer_in", "attn", "mlp", "layer")
ATTENTION = ("q", "k", "v", "scores", "pattern", "heads")
SITE_KINDS = RESIDUAL + ATTENTION + ("output",)
# Parts of the dictionaries spliced in every layer (see dictionaries.py): an SAE at the layer's input
# (resid_pre) and a transcoder at its MLP; each with its features, error and reconstruction.
SAE_PARTS, TC_PARTS = ("sae_f", "sae_e", "sae_r"), ("tc_f", "tc_e", "tc_r")
DICT_KINDS = SAE_PARTS + TC_PARTS
WRITES = ("scale", "add_vec", "set_pos", "set_pos_vec", "set_slice", "set_index", "tanh_mix", "cross",
          "replace_number", "intervention")
READS = ("save", "save_pos", "save_reduce", "dead_number", "dead_array", "dead_function")
KINDS = WRITES + READS
INTERVENTION_SITES = ("attn", "mlp", "layer") + ATTENTION  # interventions= names a module or an attention point


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a site's axes are: token positions (query or key), heads; sites of one group share a shape."""

    positions: tuple[int, ...]
    head: Optional[int]
    group: str


LAYOUTS = {**{kind: Layout((1,), None, "residual") for kind in RESIDUAL}, "output": Layout((1,), None, "output"),
           "q": Layout((1,), 2, "query"), "heads": Layout((1,), 2, "query"),  # (batch, query, heads, head_dim)
           "k": Layout((1,), 2, "kv"), "v": Layout((1,), 2, "kv"),  # (batch, key, kv_heads, head_dim)
           "scores": Layout((2, 3), 1, "scores"), "pattern": Layout((2, 3), 1, "scores"),  # (batch, heads, q, k)
           **{kind: Layout((1,), None, "features" if kind.endswith("_f") else "residual") for kind in DICT_KINDS}}
ORDER = ("layer_in",) + ATTENTION + ("attn", "mlp", "layer")  # a layer's sites in execution order
# with dictionaries: each one's parts right after the site whose value they replace
DICT_ORDER = ("layer_in",) + SAE_PARTS + ATTENTION + ("attn", "mlp") + TC_PARTS + ("layer",)


@dataclasses.dataclass(frozen=True)
class Step:
    """One statement of a program: ``kind`` at ``site``; ``choice`` picks positions, axes, slice bounds and
    earlier values; ``mapped``: in folded and vmapped runs its values differ per variant (else constant)."""

    site: tuple
    kind: str
    choice: int
    mapped: bool = False


def site_order(site: tuple) -> tuple:
    if site[0] == "embed":
        return (-1, 0)
    if site[0] == "output":
        return (LAYERS, 0)
    return (site[1], DICT_ORDER.index(site[0]))


def sites_in_order(dictionaries: bool = False) -> list[tuple]:
    """Every site in execution order (with ``dictionaries``: the spliced dictionaries' parts too)."""
    order = DICT_ORDER if dictionaries else ORDER
    return [("embed",)] + [(kind, i) for i in range(LAYERS) for kind in order] + [("output",)]


@st.composite
def programs(draw, max_steps: int = 9, site_kinds: Sequence[str] = SITE_KINDS, kinds: Sequence[str] = KINDS):
    """Random programs: 1..``max_steps`` steps at ``site_kinds`` sites, sorted in execution order (as user
    code usually is; several steps may share a site)."""
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(site_kinds))
        site = (kind,) if kind in ("embed", "output") else (kind, draw(st.integers(0, LAYERS - 1)))
        what = draw(st.sampled_from(kinds))
        if what == "intervention" and site[0] not in INTERVENTION_SITES:
            what = "scale"
        if what == "intervention" and any(s.site == site and s.kind == "intervention" for s in steps):
            what = "add_vec"  # interventions= holds one function per module
        steps.append(Step(site, what, draw(st.integers(0, 10_000)), draw(st.booleans())))
    return sorted(steps, key=lambda s: site_order(s.site))


# -- values -----------------------------------------------------------------------------------------------

Seeds = tuple  # one seed per step: which values each step takes


@dataclasses.dataclass(frozen=True)
class StepValues:
    number: float
    hidden: np.ndarray  # (HIDDEN,): vectors of any narrower width are its first entries
    vocab: np.ndarray  # (VOCAB,)
    ints: np.ndarray  # (2,): the entries of an index array


def values_for(program: Sequence[Step], seed: Union[int, Seeds]) -> list[StepValues]:
    """The values of each step: one seed for all, or one per step (step ``k``'s values depend only on its
    own seed and ``k``, so values mix across seeds step by step)."""
    seeds = seed if isinstance(seed, tuple) else (seed,) * len(program)
    out = []
    for k, s in enumerate(seeds):
        rng = np.random.default_rng((s, k))
        out.append(StepValues(float(rng.uniform(-2, 2)), rng.normal(size=HIDDEN).astype(np.float32),
                              rng.normal(size=VOCAB).astype(np.float32), rng.integers(-64, 64, size=2)))
    return out


def recipe_value(recipe: tuple, values: Sequence[StepValues]) -> Any:
    """The value a recipe (see :meth:`Applier.number`, ``vector``, ``index``) gives for ``values``."""
    kind, k, size = recipe
    if kind in ("number", "positive"):
        return values[k].number if kind == "number" else abs(values[k].number)
    if kind == "vector":
        return mx.array(values[k].vocab[:size] if size > HIDDEN else values[k].hidden[:size])
    return mx.array(values[k].ints % size - size * (values[k].ints < 0))  # in [-size, size): negative ones too


# -- inputs ---------------------------------------------------------------------------------------------


def fuzz_module(seed: int = 11):
    """The tiny mlx-lm llama the fuzzer runs (:data:`LAYERS` layers, :data:`HIDDEN` wide, 4 heads, 2 KV)."""
    return tiny_llama_module(seed=seed, layers=LAYERS, hidden=HIDDEN, vocab=VOCAB)


def fuzz_model(seed: int = 11) -> InterpretableModel:
    return InterpretableModel(fuzz_module(seed))


def random_tokens(batch: int, seq: int, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(1, VOCAB, size=(batch, seq)), dtype=mx.int32)


@st.composite
def fuzz_inputs(draw, padded: bool = False, max_seq: int = 7) -> tuple[Any, mx.array]:
    """``(what the library is given, the tokens the reference runs on)``: a ``(batch, seq)`` array for both,
    or (``padded``) 2-3 rows of different lengths and their right padding."""
    if padded:
        lengths = draw(st.lists(st.integers(2, max_seq), min_size=2, max_size=3).filter(lambda ls: len(set(ls)) > 1))
        return padded_rows(lengths, sum(lengths))
    seq, batch = draw(st.integers(2, max_seq)), draw(st.integers(1, 2))
    tokens = random_tokens(batch, seq, seq * 7 + batch)
    return tokens, tokens


def padded_rows(lengths: Sequence[int], seed: int = 0) -> tuple[list[list[int]], mx.array]:
    """Rows of the given lengths and their right padding with id 0, written by hand."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, VOCAB, size=n).tolist() for n in lengths]
    padded = np.zeros((len(rows), max(lengths)), dtype=np.int32)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    return rows, mx.array(padded)
