"""Applying a program: one :class:`Applier` for the tracer's proxies and the reference's arrays, and the two
runs built on it (see :mod:`tests.fuzz`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import mlx.core as mx

import mlxterp as mt
from mlxterp import InterpretableModel, apply
from mlxterp import interventions as iv
from tests.reference import llama_forward

from .dictionaries import FuzzDictionaries, HandSplices, library_part, parts_of
from .programs import (ATTENTION, D_SAE, DICT_KINDS, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, LAYOUTS, SITE_KINDS, VOCAB, Step,
                       StepValues, recipe_value, sites_in_order)


class Applier:
    """Applies one program: the same code serves the tracer (proxies) and the reference (arrays).

    ``get(site)``/``set(site, value)`` read and write a site's current value, ``save(key, value)`` keeps one;
    ``seq_len`` is the number of token positions the sites hold (queries), ``key_len`` the keys the scores
    and pattern hold (the same, except in a decode step with earlier positions cached);
    ``name(name, value)`` (the tracer's ``mlxterp.param``) makes a quarter of the values named params.
    ``recipes`` maps ``id`` of every value handed out to the recipe it came from (see :func:`recipe_value`).
    """

    def __init__(self, program: Sequence[Step], values: Sequence[StepValues], seq_len: int,
                 get: Callable, set: Callable, save: Callable, interventions_done: bool = False,
                 name: Optional[Callable[[str, Any], Any]] = None, key_len: Optional[int] = None):
        self.program, self.values, self.seq_len = program, values, seq_len
        self.key_len = seq_len if key_len is None else key_len  # keys the scores have (a decode step: more)
        self.get, self.set, self.save = get, set, save
        self.interventions_done = interventions_done  # the tracer applies them through interventions=
        self.name = name  # the tracer's mlxterp.param: some values become named params
        self.earlier: list[tuple[tuple, Any]] = []  # (site, value) of sites already passed
        self.recipes: dict[int, tuple] = {}
        self._handed: dict[tuple, Any] = {}  # keeps the values alive, so their ids stay theirs
        self._named: dict[tuple, Any] = {}
        self.splice_at: Optional[Callable[[tuple], None]] = None  # the reference's dictionaries (HandSplices)

    def _hand(self, recipe: tuple, named: bool = True) -> Any:
        if recipe not in self._handed:
            value = self._handed[recipe] = recipe_value(recipe, self.values)
            self.recipes[id(value)] = recipe
        if not (named and self.name is not None and self.program[recipe[1]].choice % 4 == 1):
            return self._handed[recipe]
        if recipe not in self._named:  # a named param (mlxterp.param) instead of a constant, for a quarter
            self._named[recipe] = self.name(f"p{recipe[1]}_{recipe[0]}_{recipe[2]}", self._handed[recipe])
        return self._named[recipe]

    def number(self, k: int, named: bool = True) -> float:
        return self._hand(("number", k, 0), named)

    def vector(self, k: int, width: int, named: bool = True) -> mx.array:
        return self._hand(("vector", k, width), named)

    def index(self, k: int, size: int) -> mx.array:
        return self._hand(("index", k, size), False)  # an index is structure: a param only as an array

    def factor(self, k: int, site: tuple) -> Any:
        """Step ``k``'s number as a factor: positive at the scores, whose masked entries hold the dtype's lowest
        value (a negative factor would make them the highest: infinities, then NaN everywhere after)."""
        return self._hand(("positive", k, 0)) if site[0] == "scores" else self.number(k)

    def intervention(self, k: int, site: tuple) -> Callable:
        """The ``interventions=`` entry of step ``k`` (made before the trace opens: its values are constants)."""
        step = self.program[k]
        return (iv.scale(self.number(k, False)) if step.choice % 2 == 0
                else iv.add_vector(self.vector(k, self.width(site), False)))

    def shape(self, site: tuple) -> tuple:
        """The site's shape after its batch axis."""
        group, seq = LAYOUTS[site[0]].group, self.seq_len
        return {"residual": (seq, HIDDEN), "output": (seq, VOCAB), "features": (seq, D_SAE),
                "query": (seq, HEADS, HEAD_DIM),
                "kv": (seq, KV_HEADS, HEAD_DIM), "scores": (HEADS, seq, self.key_len)}[group]

    def width(self, site: tuple) -> int:
        """The length of the site's last axis."""
        return self.shape(site)[-1]

    def size(self, site: tuple, axis: int) -> int:
        return self.shape(site)[axis - 1]

    def run_site(self, site: tuple) -> None:
        steps = [(k, s) for k, s in enumerate(self.program) if s.site == site]
        for k, step in steps:  # interventions= first
            if step.kind == "intervention" and not self.interventions_done:
                self.step(k, step)
        if self.splice_at is not None:  # then the dictionaries spliced there (the library splices on entry)
            self.splice_at(site)
        for k, step in steps:
            if step.kind != "intervention":
                self.step(k, step)
        self.earlier.append((site, self.get(site)))

    def axis(self, step: Step, with_head: bool) -> int:
        layout = LAYOUTS[step.site[0]]
        axes = layout.positions + ((layout.head,) if with_head and layout.head is not None else ())
        return axes[(step.choice // 5) % len(axes)]

    def at(self, step: Step, axis: int) -> int:
        """An index along ``axis`` (negative ones too)."""
        n = self.size(step.site, axis)
        return step.choice % n - (n if step.choice % 3 == 0 else 0)

    def step(self, k: int, step: Step) -> None:
        cur, site, kind = self.get(step.site), step.site, step.kind
        if kind in ("save", "save_pos", "save_reduce"):
            self.save(f"s{k}", self.read(k, step, cur))
        elif kind in ("set_pos", "set_pos_vec", "set_index", "set_slice"):
            cur[self.where(k, step)] = self.vector(k, self.region_width(step)) if kind == "set_pos_vec" else self.number(k)
            self.set(site, cur)
        elif kind == "cross":
            same = [v for s, v in self.earlier if s != site and LAYOUTS[s[0]].group == LAYOUTS[site[0]].group]
            self.set(site, cur + same[step.choice % len(same)] * self.factor(k, site) if same else cur - self.number(k))
        elif kind == "intervention":
            self.set(site, self.intervention(k, site)(cur))
        elif kind in ("dead_number", "dead_array", "dead_function"):
            self.read(k, step, cur)  # and never used
        else:
            self.set(site, {"scale": lambda: cur * self.factor(k, site),
                            "add_vec": lambda: cur + self.vector(k, self.width(site)),
                            "tanh_mix": lambda: apply(mx.tanh, cur * self.number(k)) + cur,
                            # a named param is an array: written to an input, it would not broadcast
                            "replace_number": lambda: self.number(k, named=site[0] != "layer_in")}[kind]())

    def read(self, k: int, step: Step, cur: Any) -> Any:
        """What a save or a dead expression computes."""
        kind, width = step.kind, self.width(step.site)
        if kind == "save":
            return cur
        if kind == "save_pos":
            axis = self.axis(step, True)
            return cur[(slice(None),) * axis + (self.at(step, axis),)]
        if kind == "save_reduce":
            return cur[..., : 1 + step.choice % width].sum(-1)
        if kind == "dead_number":
            return cur * self.number(k)
        if kind == "dead_array":
            return cur + mx.ones(width) * self.number(k, False)  # an array op: no traced value in it
        return apply(mx.exp, cur * self.number(k))

    def where(self, k: int, step: Step) -> tuple:
        """The index a write assigns at: one index, an array of indices, or a slice along an axis (and the
        first entries of another)."""
        if step.kind == "set_slice":
            axis = self.axis(step, False)
            ndim = self.ndim(step.site)
            other = ndim - 1 if axis != ndim - 1 else LAYOUTS[step.site[0]].head
            index = [slice(None)] * ndim
            index[axis] = slice(self.at(step, axis), None)
            index[other] = slice(None, 1 + step.choice % self.size(step.site, other))
            return tuple(index)
        axis = self.axis(step, True)
        at = self.index(k, self.size(step.site, axis)) if step.kind == "set_index" else self.at(step, axis)
        return (slice(None),) * axis + (at,)

    def ndim(self, site: tuple) -> int:
        return 1 + len(self.shape(site))

    def region_width(self, step: Step) -> int:
        """The last axis of the region a one-index write assigns (the one before it when the index is there)."""
        axis, ndim = self.axis(step, True), self.ndim(step.site)
        return self.size(step.site, ndim - 1 if axis != ndim - 1 else ndim - 2)


def run_reference(module, tokens: mx.array, program: Sequence[Step], values: Sequence[StepValues],
                  offset: int = 0, past: Optional[list] = None, present: Optional[list] = None,
                  dictionaries: Optional[FuzzDictionaries] = None) -> tuple:
    """The hand-written forward's logits and saves with ``program`` applied to its arrays. ``offset``, ``past``
    and ``present``: its decode form (see ``tests.reference.llama_forward``), for a decode step.
    ``dictionaries``: spliced by hand (:class:`HandSplices`), their parts' statements run after their sites'."""
    saves: dict = {}
    current: dict = {}
    hands = None if dictionaries is None else HandSplices(dictionaries, current)

    def set_(site, value):
        if hands is not None and site[0] in DICT_KINDS:
            hands.set_part(site, value)
            return
        if isinstance(value, float):  # a whole write of a number: the activation's shape and dtype
            value = mx.broadcast_to(mx.array(value, dtype=current[site].dtype), current[site].shape)
        current[site] = value

    applier = Applier(program, values, tokens.shape[1], lambda site: mx.array(current[site]), set_, saves.__setitem__,
                      key_len=offset + tokens.shape[1])
    if hands is not None:
        applier.splice_at = lambda site: hands.splice(site) if hands.owner(site) else None

    def hook(site, value):
        if hands is not None:
            hands.see(site, value)
        if site[0] not in SITE_KINDS:  # a site the programs never touch (the reference's resid_mid)
            return value
        current[site] = value
        applier.run_site(site)
        which = None if hands is None else hands.owner(site)
        if which is not None:
            for kind in parts_of(which):
                applier.run_site((kind, site[1]))
        return current[site]

    return llama_forward(module, tokens, hook, offset, past, present), saves


@dataclasses.dataclass
class TraceRun:
    logits: mx.array
    saves: dict
    trace: Any
    applier: Applier


def library_site(model: InterpretableModel, site: tuple) -> tuple[Any, str]:
    """The module proxy (or spliced dictionary) holding ``site`` and the attribute that reads or writes it."""
    kind = site[0]
    if kind in DICT_KINDS:
        return library_part(model, site)
    if kind == "embed":
        return model.module("model.embed_tokens"), "output"
    if kind == "output":
        return model.module(""), "output"
    if kind in ATTENTION:
        return model.module(f"layers.{site[1]}.self_attn"), kind
    path = {"layer_in": "", "layer": "", "attn": ".self_attn", "mlp": ".mlp"}[kind]
    return model.module(f"layers.{site[1]}{path}"), "input" if kind == "layer_in" else "output"


def library_name(model: InterpretableModel, site: tuple) -> str:
    proxy, attr = library_site(model, site)
    return proxy.name if site[0] not in ATTENTION else f"{proxy.name}.{attr}"


def run_trace(model: InterpretableModel, inputs: Any, program: Sequence[Step], values: Sequence[StepValues],
              compile: Any, dictionaries: Optional[FuzzDictionaries] = None) -> TraceRun:
    """``program`` in ``model.trace(inputs, compile=compile)`` (with ``dictionaries`` spliced): its logits,
    saves, trace and applier."""
    seq_len = max(len(r) for r in inputs) if isinstance(inputs, list) else inputs.shape[1]
    saves: dict = {}
    applier = Applier(program, values, seq_len, lambda site: getattr(*library_site(model, site)),
                      lambda site, value: setattr(*library_site(model, site), value),
                      lambda key, v: saves.__setitem__(key, v.save(key)), interventions_done=True, name=mt.param)
    interventions = {library_name(model, s.site): applier.intervention(k, s.site)
                     for k, s in enumerate(program) if s.kind == "intervention"}
    spliced = None if dictionaries is None else dictionaries.all()
    with model.trace(inputs, interventions=interventions or None, compile=compile, capture="saved",
                     dictionaries=spliced) as tr:
        for site in sites_in_order(dictionaries is not None):
            applier.run_site(site)
        model.output.save("logits")
    return TraceRun(tr.saved_values["logits"], {k: tr.saved_values[k] for k in saves}, tr, applier)


def param_values(prog: Any, applier: Applier, values: Sequence[StepValues]) -> dict:
    """Values of ``prog``'s params for ``values``, by name: each param's recipe (from the applier whose values
    built the program) applied to ``values``. Params of no recipe keep their defaults."""
    out = {}
    for name, spec in prog.params.items():
        recipe = applier.recipes.get(id(spec.default))
        if recipe is not None:
            out[name] = recipe_value(recipe, values)
    return out
