"""Splicing dictionaries into traces: ``model.trace(prompt, dictionaries=[sae])``.

A dictionary spliced at its site replaces the site's value ``x`` by ``reconstruction + error``, where
``features = encode(x)``, ``reconstruction = decode(features)`` and ``error = x - reconstruction``: the forward
is the model's own until something is edited (bit for bit: the new value is computed as ``x`` plus the parts'
changes, which are 0 until a part is written). A **transcoder** reads its input site (an
MLP's input) and stands for its output site (the MLP's output): ``features = encode(mlp input)``,
``reconstruction = decode(features)``, ``error = mlp output - reconstruction``, and the MLP's output becomes
``reconstruction + error``. With ``error=False`` (``mt.splice(sae, error=False)``) the site becomes the
reconstruction alone: the spliced forward whose loss CE-loss-recovered measures.

All of it is recorded as ordinary graph nodes when the trace opens (after the model's edits and
``interventions=``, before the block), so every executor runs it: eager and compiled traces, programs
(replay, ``batched``, ``mx.vmap``, ``mx.grad``), generation (at every step), sweeps of an edited model. The
dictionary's weights are constants of the trace, hence params of its programs (``const_N``).

Inside the block the parts are read and written from the site's value, ``h.<name>.features`` (the name is
the dictionary's :attr:`~mlxterp.dictionaries.Dictionary.name`, ``"sae"`` or ``"transcoder"`` by default):

- a write to ``features`` (``h.sae.features[:, -1, 123] = 8.0``) makes the reconstruction ``decode`` of the
  new features, and the site ``reconstruction + error`` of the new values;
- a write to ``reconstruction`` or ``error`` changes that term of the site's value;
- the site keeps its last write: a write to the site itself after a part's replaces the spliced value, and a
  part written after the site again makes the site ``reconstruction + error``.
"""

from __future__ import annotations

import dataclasses
import keyword
from typing import Any, Iterable, Optional

import mlx.core as mx

from ..dictionaries import sites as site_names
from ..dictionaries.dictionary import Dictionary
from ..tracing.attached import Part
from ..tracing.proxy import Proxy

PARTS = ("features", "error", "reconstruction")


def check_name(name: Any) -> str:
    """A dictionary's name as a trace sees it (``h.<name>``): a Python identifier that is no attribute of a
    traced value (``sum``, ``shape``, ``T`` would hide those).

    Raises:
        ValueError: an unusable name (the reason given).
    """
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise ValueError(f"dictionary name {name!r} is not valid: use a Python identifier not starting with '_' (it "
                         "is read as an attribute of the site's value: model.layers[6].resid_pre.<name>.features)")
    if hasattr(mx.array, name) or hasattr(Proxy, name):
        raise ValueError(f"dictionary name {name!r} is an attribute of traced values (h.{name} is taken); choose "
                         "another name, such as 'sae', 'res6' or 'tc_mlp8'")
    return name


@dataclasses.dataclass(frozen=True)
class SpliceSpec:
    """What ``mt.splice(dictionary, name=..., error=...)`` asks for (checked against a model when used).

    Attributes:
        dictionary: an :class:`~mlxterp.SAE` or :class:`~mlxterp.Transcoder` with weights and a site.
        name: the name it is read by in traces (default: ``dictionary.name``).
        error: keep the error term (the forward is unchanged until edited); ``False`` splices the
            reconstruction alone.
    """

    dictionary: Dictionary
    name: Optional[str] = None
    error: bool = True


def splice(dictionary: Dictionary, *, name: Optional[str] = None, error: bool = True) -> SpliceSpec:
    """A dictionary to splice with a name or without its error term: an entry of ``dictionaries=``.

    Args:
        dictionary: an :class:`~mlxterp.SAE` or :class:`~mlxterp.Transcoder` with weights and a site.
        name: read it as ``h.<name>`` in traces (default ``dictionary.name``: ``"sae"``/``"transcoder"``).
        error: ``True`` (default) adds the error term, so the forward is the model's own until a part is
            written; ``False`` makes the site the reconstruction alone (what CE-loss-recovered measures).
    """
    if not isinstance(dictionary, Dictionary):
        raise TypeError(f"splice() takes an mlxterp SAE or Transcoder, got {type(dictionary).__name__}")
    if not isinstance(error, bool):
        raise TypeError(f"splice(error=...) takes True or False, got {error!r}")
    return SpliceSpec(dictionary, None if name is None else check_name(name), error)


@dataclasses.dataclass(frozen=True, eq=False)
class Splice:
    """A dictionary checked against a model, ready to be spliced into its traces (see the module docstring).

    Attributes:
        dictionary: the dictionary.
        name: its name in traces.
        error: whether the error term is part of the site's new value.
        site_in, site_out: the resolved sites it reads and stands for (the same site for an SAE).
    """

    dictionary: Dictionary
    name: str
    error: bool
    site_in: site_names.Site
    site_out: site_names.Site

    @property
    def bindings(self) -> tuple:
        """The site bindings ``(path, 0, phase)`` it is attached to: the input site, then the output site when
        that is another one."""
        found = [(self.site_in.path, 0, self.site_in.phase), (self.site_out.path, 0, self.site_out.phase)]
        return tuple(dict.fromkeys(found))

    def apply(self, trace: Any) -> "SplicedDictionary":
        """Record the splice into ``trace`` (as it opens) and attach its parts to the sites."""
        return SplicedDictionary(self, trace)

    def __repr__(self) -> str:
        sites = self.site_in.key if self.site_in is self.site_out else f"{self.site_in.key} -> {self.site_out.key}"
        return f"Splice({self.name!r}: {self.dictionary.label}, at {sites}{'' if self.error else ', no error term'})"


def check_dictionaries(model: Any, entries: Any, spliced: Iterable[Splice] = ()) -> tuple:
    """``dictionaries=`` as checked :class:`Splice` s, every problem found before anything is recorded
    (``spliced``: the splices already there, the model's edits', which no new one may share a name with at a
    site).

    Raises:
        TypeError: not a list of dictionaries (or ``mt.splice(...)`` entries).
        ModuleNameError: a site the model lacks (the closest names are listed).
        ValueError: a dictionary without weights or site, a width that differs from its site's, NaN or
            infinite weights, or two dictionaries with one name at one site.
    """
    if entries is None:
        return ()
    if isinstance(entries, (Dictionary, SpliceSpec)):
        entries = [entries]
    if not isinstance(entries, (list, tuple)):
        raise TypeError(f"dictionaries= takes a list of SAEs/Transcoders (or mt.splice(d, name=..., error=...)), got "
                        f"{type(entries).__name__}")
    splices = [check_dictionary(model, entry, i) for i, entry in enumerate(entries)]
    check_unique(list(spliced) + splices)
    return tuple(splices)


def check_unique(splices: Iterable[Splice]) -> None:
    """Refuse two spliced dictionaries of one name at one site (each is read as ``h.<name>`` there)."""
    seen: dict = {}
    for s in splices:
        for binding, key in zip(s.bindings, (s.site_in.key, s.site_out.key)):
            other = seen.get((binding, s.name))
            if other is not None:
                raise ValueError(f"two dictionaries are named {s.name!r} at site {key!r} ({other.dictionary.label} and "
                                 f"{s.dictionary.label}); each is read as h.{s.name} there: give one another name, "
                                 f"e.g. mt.splice(d, name='{s.name}2') or d.name = '{s.name}2'")
            seen[(binding, s.name)] = s


def check_dictionary(model: Any, entry: Any, i: int) -> Splice:
    """``dictionaries[i]`` (a dictionary or an ``mt.splice(...)``) checked against ``model`` (see
    :func:`check_dictionaries`), as a :class:`Splice`."""
    spec = entry if isinstance(entry, SpliceSpec) else SpliceSpec(entry) if isinstance(entry, Dictionary) else None
    if spec is None:
        raise TypeError(f"dictionaries[{i}] is a {type(entry).__name__}; expected an mlxterp SAE or Transcoder, or "
                        "mt.splice(dictionary, name=..., error=...)")
    d = spec.dictionary
    if not d.has_weights:
        raise ValueError(f"dictionaries[{i}] {d!r} has no weights: train it (mt.train) or load it before splicing")
    if d.site is None:
        raise ValueError(f"dictionaries[{i}] {d!r} has no site: create it with site= (or load it with "
                         "SAE.load(path, site=...)) so that a trace knows where to splice it")
    site_in = site_names.resolve(model, d.site)
    site_out = site_in if d.site_out in (None, d.site) else site_names.resolve(model, d.site_out)
    for what, width, site in (("d_in", d.d_in, site_in), ("d_out", d.d_out, site_out)):
        if width != site.width:
            raise ValueError(f"dictionaries[{i}] {d!r}: its {what} is {width}, but its site {site.name!r} holds vectors "
                             f"of width {site.width} on this model; splice it at a site of width {width}")
    _check_finite(d, i)
    return Splice(d, spec.name or d.name, spec.error, site_in, site_out)


def _check_finite(d: Dictionary, i: int) -> None:
    """NaN or infinite weights are refused (checked once per set of weight arrays)."""
    weights = d.inference_weights()
    arrays = tuple(weights.values())
    checked = getattr(d, "_finite_checked", ())
    if len(checked) == len(arrays) and all(a is b for a, b in zip(checked, arrays)):
        return
    finite = [bool(mx.all(mx.isfinite(w)).item()) for w in arrays]
    bad = [name for name, ok in zip(weights, finite) if not ok]
    if bad:
        raise ValueError(f"dictionaries[{i}] {d!r}: weights {bad} hold NaN or infinite values; splicing it would make "
                         "every value after its site NaN")
    object.__setattr__(d, "_finite_checked", arrays)


def splice_value(site: mx.array, reconstruction: mx.array, error: mx.array, reconstruction_now: mx.array,
                 error_now: mx.array) -> mx.array:
    """The site's spliced value ``reconstruction_now + error_now``, in the site's dtype, written as ``site +
    (reconstruction_now - reconstruction) + (error_now - error)`` (the same number, since ``site =
    reconstruction + error``): while neither part is edited it is the site's value bit for bit, and an edit adds
    its difference to it."""
    delta = (reconstruction_now - reconstruction) + (error_now - error)
    return (site.astype(delta.dtype) + delta).astype(site.dtype)


def reconstruction_value(reconstruction: mx.array, like: mx.array) -> mx.array:
    """The site's value spliced without its error term: the reconstruction, in the site's dtype."""
    return reconstruction.astype(like.dtype)


def error_of(target: mx.array, reconstruction: mx.array) -> mx.array:
    """``target - reconstruction`` in the reconstruction's dtype."""
    return target.astype(reconstruction.dtype) - reconstruction


class SplicedDictionary:
    """``h.<name>`` inside a trace: one dictionary spliced at the site ``h`` (see the module docstring).

    ``features`` ``(batch, seq, d_sae)``, ``reconstruction`` and ``error`` ``(batch, seq, d_out)`` (in the
    dictionary's dtype, float32 by default, whatever the site's; the site's new value is cast back to the
    site's dtype) are traced values: read, index, save (default keys ``layers.6.resid_pre.sae.features``), and write them, by item
    (``h.sae.features[:, -1, 123] = 8.0``) or whole (``h.sae.features = f * 2``, a value broadcast to the
    part's shape). ``dictionary`` is the dictionary itself.
    """

    def __init__(self, splice: Splice, trace: Any):
        object.__setattr__(self, "_splice", splice)
        object.__setattr__(self, "_trace", trace)
        d = splice.dictionary
        weights = {n: Proxy(trace, trace._constant(w, False).id) for n, w in d.inference_weights().items()}
        site_in, site_out = splice.site_in, splice.site_out
        x = trace.module_value(site_in.path, 0, site_in.phase)
        target = x if site_out is site_in else trace.module_value(site_out.path, 0, site_out.phase)
        object.__setattr__(self, "_weights", weights)
        object.__setattr__(self, "_like", target)
        object.__setattr__(self, "_bindings", {
            "features": (site_in.path, 0, self._part(site_in, "features", d.d_sae)),
            "reconstruction": (site_out.path, 0, self._part(site_out, "reconstruction", d.d_out)),
            "error": (site_out.path, 0, self._part(site_out, "error", d.d_out))})
        features = trace.record_call(d.encoder, (x, weights))
        reconstruction = trace.record_call(d.decoder, (features, weights))
        error = trace.record_call(error_of, (target, reconstruction))
        object.__setattr__(self, "_original", (reconstruction, error))
        for name, value in (("features", features), ("reconstruction", reconstruction), ("error", error)):
            trace._versions[self._bindings[name]] = value._node
        self._write_site()
        for binding in splice.bindings:
            trace.attach(binding, splice.name, self)

    def _part(self, site: site_names.Site, name: str, width: int) -> Part:
        return Part(site.phase, self._splice.name, name, width, f"{site.key}.{self._splice.name}.{name}")

    # -- the parts ---------------------------------------------------------------------------------
    @property
    def dictionary(self) -> Dictionary:
        """The spliced dictionary itself (an :class:`~mlxterp.SAE` or :class:`~mlxterp.Transcoder`)."""
        return self._splice.dictionary

    @property
    def features(self) -> Proxy:
        """The features ``(batch, seq, d_sae)`` float32 (the dictionary's dtype), after any writes so far."""
        return self._read("features")

    @features.setter
    def features(self, value: Any) -> None:
        self._read("features")[...] = value

    @property
    def reconstruction(self) -> Proxy:
        """The reconstruction ``(batch, seq, d_out)``: ``decode(features)``, or what was written to it."""
        return self._read("reconstruction")

    @reconstruction.setter
    def reconstruction(self, value: Any) -> None:
        self._read("reconstruction")[...] = value

    @property
    def error(self) -> Proxy:
        """The error term ``(batch, seq, d_out)``: the site's value less the reconstruction."""
        return self._read("error")

    @error.setter
    def error(self, value: Any) -> None:
        self._refuse_error_write()
        self._read("error")[...] = value

    def _read(self, name: str) -> Proxy:
        path, call, part = self._bindings[name]
        return self._trace.module_value(path, call, part)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in PARTS:
            raise AttributeError(f"{self._splice.name} (a spliced {type(self.dictionary).__name__}) has no settable "
                                 f"attribute {name!r}; write its parts: {', '.join(PARTS)}")
        object.__setattr__(self, name, value)

    # -- writes (from the tracer, see mlxterp.tracing.attached) ------------------------------------
    def write_part(self, trace: Any, name: str, value: Any) -> None:
        """Record a write of ``value`` to part ``name``; the site becomes the spliced value of the new parts."""
        if name == "error":
            self._refuse_error_write()
        if not (isinstance(value, Proxy) and value._trace is trace):
            self._read(name)[...] = value  # a plain value: written as a whole assignment (broadcast, cast)
            return
        trace._versions[self._bindings[name]] = value._node
        if name == "features":
            reconstruction = trace.record_call(self.dictionary.decoder, (value, self._weights), derived_from=value._node)
            trace._versions[self._bindings["reconstruction"]] = reconstruction._node
        self._write_site()

    def _write_site(self) -> None:
        trace, site = self._trace, self._splice.site_out
        reconstruction = self._read("reconstruction")
        if self._splice.error:
            value = trace.record_call(splice_value, (self._like, *self._original, reconstruction, self._read("error")),
                                      keeps_shape=True)
        else:
            value = trace.record_call(reconstruction_value, (reconstruction, self._like), keeps_shape=True)
        trace.write(site.path, 0, site.phase, value)

    def _refuse_error_write(self) -> None:
        if not self._splice.error:
            raise ValueError(f"{self._splice.name} was spliced without its error term (mt.splice(..., error=False)): "
                             "the site is its reconstruction alone, so a write to its error would change nothing; "
                             "splice it with error=True to edit the error term")

    def __repr__(self) -> str:
        return f"<spliced {self._splice!r}>"
