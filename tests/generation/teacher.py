"""A teacher-forced reference for generation with interventions, written without the library's step machinery.

A generation's step ``s`` computes the tokens ``[o_s, o_s + n_s)`` (the prompt at step 0, one token after)
and its queries attend to the keys ``[0, e_s)``, ``e_s = o_s + n_s``. So step ``s`` equals the forward of the
whole generated sequence (the hand-written one, ``tests/reference.py``) restricted to its block of every site:
the columns ``[o_s, o_s + n_s)`` of the token (query) axis and, for scores and patterns, the key columns
``[0, e_s)``. The reference runs that forward once per prompt and applies each program statement to every
step's block, as the documented rules place it there:

- token axis: ``-1`` is the block's last column; a position ``p >= 0`` is absolute (column ``p - o_s`` of the
  step that computes it, absent elsewhere); other negative indices are read in the prompt pass only;
- key axis: positions are absolute and the block's key columns are positions, so ``p`` is column ``p``
  wherever ``p < e_s``; a negative index counts back from the newest key ``e_s - 1``;
- a statement inside ``gen.steps[R]`` applies at the steps in ``R``; a save keeps one value per step it
  exists at.

Writes to ``k``/``v`` at a step's columns are what every later query attends to, as in the whole-sequence
forward: that is the rule a KV cache must follow. Statements are applied by :class:`Applier`, the same code for
the library (proxies inside ``model.generate``) and this reference (arrays), so only the placement differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Optional

import mlx.core as mx
import numpy as np

from mlxterp import apply
from mlxterp import interventions as iv
from tests.fuzz.programs import D_SAE, DICT_KINDS, SAE_PARTS, TC_PARTS
from tests.reference import llama_forward

LAYERS, HIDDEN, VOCAB, HEAD_DIM = 2, 32, 128, 8
ATTENTION = ("q", "k", "v", "scores", "pattern", "heads")
KEYED = ("scores", "pattern")
PER_LAYER = ("layer_in",) + ATTENTION + ("attn", "resid_mid", "mlp", "layer")
HIDDEN_SITES = ("embed", "layer_in", "attn", "resid_mid", "mlp", "layer")
MODULE_SITES = ("attn", "mlp", "layer")  # interventions= names modules whose output it rewrites
ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Stmt:
    """One statement of a program: a read or write of a site, inside ``gen.steps[scope]`` if given."""

    site: tuple
    kind: str
    choice: int  # structural choices: a position, a width, an earlier site
    scope: Any = None  # None (every step), an int step, or a slice of steps


# With dictionaries (tests/fuzz/dictionaries.py: an SAE at each layer's input, a transcoder at its MLP), their
# parts' sites follow the site whose value they replace.
PER_LAYER_DICT = ("layer_in",) + SAE_PARTS + ATTENTION + ("attn", "resid_mid", "mlp") + TC_PARTS + ("layer",)


def sites_in_order(dictionaries: bool = False) -> list[tuple]:
    order = PER_LAYER_DICT if dictionaries else PER_LAYER
    return [("embed",)] + [(name, i) for i in range(LAYERS) for name in order] + [("output",)]


def token_axis(site: tuple) -> int:
    return 2 if site[0] in KEYED else 1


def width(site: tuple) -> Optional[int]:
    """Size of the site's last axis where it is fixed (``None``: the key axis)."""
    if site[0] in KEYED:
        return None
    if site[0] in DICT_KINDS:
        return D_SAE if site[0].endswith("_f") else HIDDEN
    return VOCAB if site[0] == "output" else HEAD_DIM if site[0] in ATTENTION else HIDDEN


def in_scope(scope: Any, step: int) -> bool:
    if scope is None:
        return True
    if isinstance(scope, int):
        return step == scope
    return step in range(scope.start or 0, 10**9 if scope.stop is None else scope.stop, scope.step or 1)


class Applier:
    """Applies a program's statements to values: library proxies (``place`` keeps indices as written) or one
    step's blocks of the reference (``place`` maps them to the block, or ``ABSENT``)."""

    def __init__(self, program: list[Stmt], values: list, positions: int, keys_kept: int, save: Callable):
        self.program, self.values, self.save = program, values, save
        self.positions = positions  # positions the generation computes: an absolute position is < this
        self.keys_kept = keys_kept  # a negative key index reaches back at most this far (the shortest prompt)
        self.get: Callable = None
        self.set: Callable = None
        self.place: Callable = lambda axis, entry: entry  # (axis "token"/"key", entry) -> entry or ABSENT
        self.step_ok: Callable = lambda stmt: True  # whether a statement's scope holds (reference: this step)
        self.scope: Callable = lambda stmt: contextlib.nullcontext()  # library: `with gen.steps[...]:`
        self.interventions_done = False  # the library applies them through interventions=
        self.splice_at: Optional[Callable[[tuple], None]] = None  # the reference's dictionaries (HandSplices)

    def run_site(self, site: tuple) -> None:
        here = [(k, s) for k, s in enumerate(self.program) if s.site == site]
        for k, stmt in here:  # interventions= first
            if stmt.kind == "intervention" and not self.interventions_done:
                self.run(k, stmt)
        if self.splice_at is not None:  # then the dictionaries spliced there (the library splices on entry)
            self.splice_at(site)
        for k, stmt in here:
            if stmt.kind != "intervention":
                self.run(k, stmt)

    def run(self, k: int, stmt: Stmt) -> None:
        if self.step_ok(stmt):
            with self.scope(stmt):
                self.statement(k, stmt)

    def index(self, stmt: Stmt, axis: str, entry: Any) -> Any:
        """The site's index with ``entry`` on its token or key axis (``ABSENT`` if it is not in this block)."""
        placed = self.place(axis, entry)
        if placed is ABSENT:
            return ABSENT
        if axis == "key":
            return (Ellipsis, placed)
        return (slice(None),) * token_axis(stmt.site) + (placed,)

    def position(self, stmt: Stmt) -> int:
        return stmt.choice % self.positions

    def key_back(self, stmt: Stmt) -> int:
        return -(1 + stmt.choice % self.keys_kept)

    def statement(self, k: int, stmt: Stmt) -> None:
        number, hidden, vocab = self.values[k]
        cur = self.get(stmt.site)
        kind, name = stmt.kind, f"s{k}"
        if kind == "save":
            self.save(name, cur)
        elif kind == "save_reduce":
            part = cur[..., self.key_back(stmt):] if stmt.site[0] in KEYED else cur[..., : 1 + stmt.choice % 5]
            self.save(name, part.sum(axis=-1))
        elif kind in ("save_last", "save_pos", "save_key", "save_key_pos"):
            axis = "key" if kind.startswith("save_key") else "token"
            entry = {"save_last": -1, "save_pos": self.position(stmt), "save_key": self.key_back(stmt),
                     "save_key_pos": self.position(stmt)}[kind]
            index = self.index(stmt, axis, entry)
            if index is not ABSENT:
                self.save(name, cur[index])
        elif kind == "scale":
            self.set(stmt.site, cur * number)
        elif kind == "add":
            fixed = width(stmt.site)
            vec = mx.array(vocab if fixed == VOCAB else hidden) if fixed in (HIDDEN, VOCAB) else number
            self.set(stmt.site, cur + vec)
        elif kind in ("set_last", "set_pos", "set_prev", "scale_pos", "set_key", "set_key_pos", "scale_keys"):
            self.set_part(stmt, cur, number)
        elif kind == "cross":
            earlier = [s for s in sites_in_order()[: sites_in_order().index(stmt.site)] if s[0] in HIDDEN_SITES]
            self.set(stmt.site, cur + self.get(earlier[stmt.choice % len(earlier)]) * number)
        elif kind == "tanh_mix":
            self.set(stmt.site, apply(mx.tanh, cur * number) + cur)
        elif kind == "intervention":
            self.set(stmt.site, make_intervention(stmt, number, mx.array(hidden))(cur))
        else:
            raise AssertionError(kind)

    def set_part(self, stmt: Stmt, cur: Any, number: float) -> None:
        axis = "key" if stmt.kind in ("set_key", "set_key_pos", "scale_keys") else "token"
        entry = {"set_last": -1, "set_pos": self.position(stmt), "set_prev": -2, "scale_pos": self.position(stmt),
                 "set_key": self.key_back(stmt), "set_key_pos": self.position(stmt),
                 "scale_keys": slice(self.key_back(stmt), None)}[stmt.kind]
        index = self.index(stmt, axis, entry)
        if index is ABSENT:
            return
        if stmt.kind in ("scale_pos", "scale_keys"):
            cur[index] = cur[index] * number
        else:
            cur[index] = number
        self.set(stmt.site, cur)


def make_intervention(stmt: Stmt, number: float, vector: mx.array):
    return iv.scale(number) if stmt.choice % 2 == 0 else iv.add_vector(vector)


def values_for(program: list[Stmt], seed: int) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Per statement: a number (positive on attention internals: a negative multiple of a masked score
    overflows), a hidden-width vector and a vocabulary-width vector."""
    rng = np.random.default_rng(seed)
    out = []
    for stmt in program:
        number = float(rng.uniform(0.5, 1.5) if stmt.site[0] in ATTENTION else rng.uniform(-2, 2))
        out.append((number, rng.normal(size=HIDDEN).astype(np.float32), rng.normal(size=VOCAB).astype(np.float32)))
    return out


@dataclasses.dataclass
class StepBlocks:
    """Where step ``s`` lives in a whole-sequence forward of one prompt of ``prompt`` tokens."""

    prompt: int
    steps: int

    def span(self, s: int) -> tuple[int, int]:
        return (0, self.prompt) if s == 0 else (self.prompt + s - 1, 1)

    def block(self, site: tuple, value: mx.array, s: int) -> mx.array:
        o, n = self.span(s)
        if site[0] in KEYED:
            return value[:, :, o:o + n, : o + n]
        return value[:, o:o + n]

    def put(self, site: tuple, value: mx.array, s: int, block: Any) -> mx.array:
        o, n = self.span(s)
        value = mx.array(value)
        if isinstance(block, (int, float)):  # a whole write of a number: the block's shape and dtype
            block = mx.full(self.block(site, value, s).shape, block, dtype=value.dtype)
        if site[0] in KEYED:
            value[:, :, o:o + n, : o + n] = block
        else:
            value[:, o:o + n] = block
        return value


def teacher_forced(module: Any, prompt: list[int], generated: list[int], steps: int, program: list[Stmt],
                   values: list, positions: int, keys_kept: int, dictionaries: Any = None,
                   ) -> tuple[mx.array, dict[str, dict[int, mx.array]]]:
    """The hand-written forward of ``prompt + generated[:steps - 1]`` with ``program`` applied to each step's
    blocks (and ``dictionaries``, a ``tests.fuzz.FuzzDictionaries``, spliced by hand into each step's block:
    a dictionary computes each position alone). Returns the logits at each step's last position
    ``(steps, vocab)`` and the saves ``{key: {step: value}}``."""
    from tests.fuzz.dictionaries import HandSplices, parts_of

    tokens = mx.array([prompt + generated[: steps - 1]])
    blocks = StepBlocks(len(prompt), steps)
    saves: dict[str, dict[int, mx.array]] = {}
    done: dict[tuple, list[mx.array]] = {}  # each site passed: its blocks per step, after the program
    current: dict[tuple, mx.array] = {}
    applier = Applier(program, values, positions, keys_kept, None)
    applier.get = lambda site: mx.array(current[site])
    applier.set = current.__setitem__
    hands = None if dictionaries is None else HandSplices(dictionaries, current)
    if hands is not None:
        applier.set = lambda site, v: hands.set_part(site, v) if site[0] in DICT_KINDS else current.__setitem__(site, v)
        applier.splice_at = lambda site: hands.splice(site) if hands.owner(site) else None

    def hook(site: tuple, value: mx.array) -> mx.array:
        per_step = []
        which = None if hands is None else hands.owner(site)
        for s in range(steps):
            o, n = blocks.span(s)
            current.update({other: values_at[s] for other, values_at in done.items()})
            current[site] = blocks.block(site, value, s)
            applier.place = lambda axis, entry, o=o, n=n: _place(axis, entry, o, n)
            applier.step_ok = lambda stmt, s=s: in_scope(stmt.scope, s)
            applier.save = lambda key, v, s=s: saves.setdefault(key, {}).__setitem__(s, v)
            applier.run_site(site)
            for kind in parts_of(which) if which is not None else ():
                applier.run_site((kind, site[1]))
            per_step.append(current[site])
        done[site] = per_step
        for s, block in enumerate(per_step):
            value = blocks.put(site, value, s, block)
        return value

    logits = llama_forward(module, tokens, hook)
    last = mx.stack([logits[0, o + n - 1] for o, n in map(blocks.span, range(steps))])
    return last, saves


def _place(axis: str, entry: Any, o: int, n: int) -> Any:
    """An index entry on a step's block (the step computes ``[o, o + n)`` and attends to ``[0, o + n)``)."""
    if axis == "key":
        if isinstance(entry, slice):
            return entry
        return entry if -(o + n) <= entry < o + n else ABSENT
    if entry < 0:
        return entry  # -1: the newest token; -2 only inside gen.steps[0] (the prompt pass)
    return entry - o if o <= entry < o + n else ABSENT
