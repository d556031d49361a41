"""The two programs DAS runs: the source run, and the base run with the interchange interventions.

**Source.** One :class:`~mlxterp.Program` saves every site's activation at its positions; its forward stops
after the last site.

**Intervened base run.** ``K`` DAS sites are ``K`` variants of one program run in one forward, each a block of
``batch`` rows born at its site's layer (a staircase, :mod:`.das_staircase`): the program grows the batch at
those layers' inputs and writes :func:`~.das_rotation.interchange` at every site on its variant's block only.
The rotations and the source activations are its params; the saved value is the last position's logits,
returned as ``(K, batch, vocab)``.

**Shared prefix.** An interchange at positions ``>= p0`` leaves every value at positions ``< p0`` as the base
run has it, in every layer (attention is causal). So the base prompts' first ``p0`` tokens run once, on
``batch`` rows, filling mlx-lm's KV cache (no interventions, nothing else computed past the last layer), and
only the suffix (the last token, for ``position=-1``) runs in the intervened forward, each layer's cache
seen by every block running through it (:mod:`.prefix`): ``K`` variants then cost about ``K * suffix`` tokens,
not ``K * seq``. That is what an mlx-lm decode step does; the program is the same graph either way
(positions are counted from the end, so they index the same tokens in the prompt and in its suffix). Models
whose cache is not mlx-lm's plain ``KVCache`` (sliding windows, state-space layers) run the whole prompt in
every block, and each program checks once that both ways give the same logits before using the cache.

**Edited models.** Both programs are traces of the model, so they carry its edits (their constants are
params filled with the edits' values), and so does the prefix pass. A prompt split into a prefix and a
suffix computes what the whole prompt computes only under edits that act on each position alone (the
library's position-wise interventions, weight edits): an edit that counts positions from the end
(``[:, -1]``) or mixes positions would land elsewhere in each part, so such a model runs the whole prompt.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Optional, Sequence

import mlx.core as mx
from mlxterp.compiler import Graph, Op, PatchedForward, run_passes
from mlxterp.compiler.fold import fold_tokens
from mlxterp.compiler.locks import model_lock
from mlxterp.compiler.passes.lift import param_sources, param_values

from ..analysis.patching import sliceable_norm
from ..analysis.sweep import last_position
from ..generation.cache import cache_layers, static_eligible
from ..generation.program import call_with_cache
from ..tracing.program import Program, param
from ..tracing.proxy import apply
from .das_data import Site
from .das_rotation import householder, initial_vectors, take_positions
from .das_staircase import Staircase, grow_blocks, interchange_rows, staircase
from .prefix import PrefixCache, prefix_forward

if TYPE_CHECKING:
    from ..model import InterpretableModel

PREFIX_TOLERANCE = 1e-4  # relative: the cached prefix's logits against the whole prompt's (float rounding only)


class SourceProgram:
    """The source run: each site's activation at its positions, ``[(batch, len(positions), width)]``."""

    def __init__(self, model: "InterpretableModel", sites: Sequence[Site], tokens: mx.array):
        seq_len = int(tokens.shape[1])
        with model.trace(tokens[:1], capture="saved") as tr:  # recorded on one row: it replays on any batch
            for j, site in enumerate(sites):
                value = tr.module_value(site.path, 0, site.phase)
                apply(take_positions, value, site.offsets(seq_len)).save(f"source_{j}")
        self.program: Program = tr.program()
        self.count = len(sites)

    def __call__(self, tokens: mx.array) -> list[mx.array]:
        """The activations (the pure function: use it inside compiled or transformed functions too)."""
        saves = self.program.fn(tokens)
        return [saves[f"source_{j}"] for j in range(self.count)]


class InterchangeProgram:
    """The base run with ``K`` DAS interchanges, one variant each (see the module docstring).

    Args:
        model: the InterpretableModel.
        sites: the ``K`` resolved sites.
        tokens: base token ids ``(batch, seq)`` of the prompts' length (the program runs on any batch).
        share_prefix: run the tokens before the first intervened position once, on a KV cache, when the
            model's cache allows it (``False``: always the whole prompt).
    """

    def __init__(self, model: "InterpretableModel", sites: Sequence[Site], tokens: mx.array,
                 share_prefix: bool = True):
        self.model = model
        self.sites = tuple(sites)
        self.k = len(sites)
        tokens = tokens[:1]  # recorded and checked on one row: the program runs on any batch
        self.stairs = staircase(model, self.sites, tokens)
        graph = _record(model, self.sites, tokens, self.stairs)
        passes = run_passes(graph.with_captures(()), model._probe(tokens).events)
        self.forward = PatchedForward(model.model, passes.after, passes.schedule, call=call_with_cache,
                                      points=model._points, stop_early=False)
        self._defaults = param_values(graph, param_sources(passes.after))  # the model's edits' constants too
        self._slots = {n.meta["name"]: n.target for n in passes.after if n.op is Op.PARAM and n.meta.get("name")}
        self._unorder = mx.array([self.stairs.order.index(j) for j in range(self.k)])
        self.prefix_len = 0
        self._prefix: Optional[PatchedForward] = None
        first = min(p for s in self.sites for p in s.positions)
        # a prefix and a suffix compute what the whole prompt does only under position-wise edits
        if share_prefix and first > 0 and static_eligible(model.model) and model._padding_safe():
            self._prefix, self._prefix_params = prefix_forward(model, tokens)
            self._layers = len(cache_layers(model.model))
            self.prefix_len = first
            with model_lock(model.model):  # eager runs: no other thread may hook the model meanwhile
                self._check_prefix(tokens)

    def logits(self, base: mx.array, rotations: Sequence[mx.array], sources: Sequence[mx.array]) -> mx.array:
        """Last-position logits ``(K, batch, vocab)`` of the base run with site ``j``'s interchange in
        variant ``j`` (a pure function of its arguments and the model's weights).

        Args:
            base: base token ids ``(batch, seq)``.
            rotations: per site, ``(width, dim)`` orthonormal columns.
            sources: per site, the source activations ``(batch, len(positions), width)``.
        """
        caches = self._caches(base[:, :self.prefix_len])
        params: list[Any] = list(self._defaults)
        for j in range(self.k):
            params[self._slots[f"rotation_{j}"]] = rotations[j]
            params[self._slots[f"source_{j}"]] = sources[j]
        suffix = fold_tokens(base[:, self.prefix_len:], self.stairs.start_blocks())
        _, saves, _ = self.forward((suffix, caches), params)
        logits = saves["logits"]  # (K * batch, vocab), the variants in birth order
        return mx.take(logits.reshape((self.k, -1, logits.shape[-1])), self._unorder, axis=0)

    def _caches(self, prefix: mx.array) -> Optional[list]:
        """The KV cache after the prefix, each layer's seen by every block running through the layer."""
        if self._prefix is None:
            return None
        caches = [PrefixCache() for _ in range(self._layers)]
        self._prefix((prefix, caches), self._prefix_params)
        return [cache.repeated(self.stairs.blocks_at(i)) for i, cache in enumerate(caches)]

    def _check_prefix(self, tokens: mx.array) -> None:
        """Use the cache only if it gives the whole prompt's logits (to float rounding) on random values."""
        rotations = [householder(initial_vectors(s.dim, s.width, seed=j)) for j, s in enumerate(self.sites)]
        sources = [mx.random.normal((tokens.shape[0], len(s.positions), s.width), key=mx.random.key(j))
                   for j, s in enumerate(self.sites)]
        cached = self.logits(tokens, rotations, sources)
        prefix, self._prefix, self.prefix_len = (self._prefix, self.prefix_len), None, 0
        whole = self.logits(tokens, rotations, sources)
        error = mx.max(mx.abs(cached - whole)).item()
        scale = mx.max(mx.abs(whole)).item()
        if error <= PREFIX_TOLERANCE * (scale + 1.0):
            self._prefix, self.prefix_len = prefix
        else:
            warnings.warn(f"DAS: this model's KV cache does not reproduce the whole prompt's logits (max difference "
                          f"{error:.3g}); the base prompts run whole in every variant (slower, same numbers)",
                          stacklevel=3)


def _record(model: "InterpretableModel", sites: Sequence[Site], tokens: mx.array, stairs: Staircase) -> Graph:
    """The intervened base run's graph: the batch grown at the layers where variants are born, an interchange
    with named params at every site on its variant's block, the final norm cut to the last position where that
    is safe (every site inside the layers), the last position's logits saved."""
    batch, seq_len = (int(n) for n in tokens.shape)
    inside = all(s.path.startswith(model._index.container + ".") for s in sites)
    norm_path = sliceable_norm(model, tokens) if inside else None
    with model.trace(fold_tokens(tokens, stairs.start_blocks()), capture="saved") as tr:
        for layer, count in stairs.births():
            path = model.layers[layer].path
            grown = apply(grow_blocks, tr.module_value(path, 0, "input"), stairs.blocks_before(layer), count,
                          layer != stairs.last_birth)
            tr.write(path, 0, "input", grown)
        for j, site in enumerate(sites):
            value = tr.module_value(site.path, 0, site.phase)
            rotation = param(f"rotation_{j}", mx.zeros((site.width, site.dim)))
            source = param(f"source_{j}", mx.zeros((batch, len(site.positions), site.width)))
            tr.write(site.path, 0, site.phase,
                     apply(interchange_rows, value, rotation, source, stairs.block(j), site.offsets(seq_len)))
        if norm_path is not None:
            norm = model.module(norm_path)
            norm.input = apply(last_position, norm.input)
        model.output[:, -1, :].save("logits")
    return tr.graph
