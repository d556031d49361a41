"""``InterpretableModel``: wraps an MLX model (or loads one by name) for tracing and interventions."""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import mlx.nn as nn

from mlxterp.compiler import Executor, Probe, probe

from .adapters import Architecture, architecture_for
from .adapters.attention import AttentionPoints
from .analysis.methods import AnalysisMixin
from .circuits.methods import CircuitsMixin
from .conversation.methods import ConversationMixin
from .edits.methods import EditMixin
from .generation.methods import GenerationMixin
from .inputs import TokenBatch, to_token_batch
from .names import ModuleIndex, ModuleNameError
from .positions import PositionGuard, position_limit
from .tokens import TokenizerMixin
from .tracing import context
from .tracing.module_proxy import LayerListProxy, ModuleProxy
from .tracing.trace import Trace

CAPTURE_CHOICES = "'all' (every module output), 'saved' (only .save()-d values) or a list of module names"


class InterpretableModel(TokenizerMixin, AnalysisMixin, CircuitsMixin, GenerationMixin, ConversationMixin,
                         EditMixin):
    """An MLX model with tracing, interventions and analysis helpers.

    Args:
        model: an ``nn.Module`` to wrap, or a name/path loaded with ``mlx_lm.load`` (or a ``.gguf`` file,
            or a registered name such as ``"smollm2-135m"``).
        tokenizer: tokenizer for text inputs (loaded automatically with a model name).
        layer_attr: attribute holding the transformer layers (``"layers"``, ``"h"``, ``"transformer.h"``).
            Families with an adapter (``mlxterp.adapters.registered()``, keyed by ``model_type``) find theirs
            and give canonical names (``layers.N.attn``, ``layers.N.mlp``, ``resid_mid``, ...); other
            models have their parts guessed from their names.
        dtype: with a model name: ``"float32"`` (or ``"float16"``, ``"bfloat16"``) dequantizes a quantized
            checkpoint at load (exactly, for float32) and casts every float weight to it.
        quantized: with a model name: ``True`` keeps a quantized checkpoint's weights quantized (4-bit GGUF
            linears compute in float32 with float32 scales), ``False`` dequantizes them to float32. With
            neither, the fastest form that fits: float32 on a CPU when the float32 weights take under a
            quarter of the memory and a float32 matmul is faster there than a quantized one, quantized
            otherwise and on GPUs. ``weight_form`` and ``repr(model)`` say which was chosen and why.
    """

    def __init__(self, model: Union[nn.Module, str], tokenizer: Optional[Any] = None, layer_attr: str = "layers",
                 *, dtype: Optional[Any] = None, quantized: Optional[bool] = None):
        from .loading import forms

        if isinstance(model, str):
            from .loading.registry import load

            model, loaded_tokenizer, self.weight_form = load(model, dtype=dtype, quantized=quantized)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        elif not isinstance(model, nn.Module):
            raise TypeError(f"model must be an mlx.nn.Module or a model name/path string, got {type(model).__name__}")
        elif dtype is not None or quantized is not None:
            raise ValueError(f"dtype={dtype!r} / quantized={quantized!r} choose how a model loaded by name is held; "
                             "a module passed in is used as it is. Pass the model's name or path, or convert the "
                             "module first with mlxterp.loading.apply_form(module, dtype='float32').")
        else:
            self.weight_form = forms.WeightForm(forms.describe(model), "as passed")
            """How the weights are held and why (:class:`mlxterp.loading.WeightForm`: ``.summary``, ``.choice``)."""
        self.model = model
        """The wrapped ``mlx.nn.Module`` (after a weight edit: the edited copy-on-write tree)."""
        self.tokenizer = tokenizer
        """The tokenizer (mlx-lm's ``TokenizerWrapper`` for a loaded model), or ``None``."""
        self.layer_attr = layer_attr
        """The attribute path of the transformer layers (``"layers"``, ``"h"``, ...)."""
        self._edits: tuple = ()  # applied at the start of every trace (see mlxterp.edits)
        self._root = model  # the module tree before weight edits (clear_edits returns to it)
        self._probes: collections.OrderedDict[tuple, Probe] = collections.OrderedDict()
        self._save_names: dict[tuple, str] = {}  # default save keys by (path, call, phase)
        # Compiled programs built by analysis helpers beside the executor's (e.g. attribution patching),
        # by kind; clear_compile_cache() empties them too.
        self._program_caches: dict[str, collections.OrderedDict] = {}
        self.layers = LayerListProxy(self)
        """The transformer layers as proxies: ``model.layers[3].mlp.output``, ``len(model.layers)``."""
        self._derive_from_tree()
        # The executor checks the module tree before every run and calls _tree_changed when a module was
        # replaced (quantized, wrapped, swapped): everything derived from the old tree is rebuilt then.
        self._executor = Executor(model, points=self._points, on_tree_change=self._tree_changed)

    # -- the module tree ---------------------------------------------------------------------
    def _derive_from_tree(self) -> None:
        """Build what depends on which module sits where: the module index, the attention points, the
        vocabulary size and the position limit (each computed before any is replaced, so a tree that is
        not a valid model leaves the previous state in place)."""
        index = ModuleIndex(self.model, self.layer_attr, architecture_for(self.model))
        points = AttentionPoints(index.attention)  # attention internals, computed where asked
        rows = _embedding_rows(index)
        # What positions the model handles (its family adapter's, else read from its modules/args).
        positions = PositionGuard(position_limit(self.model, index.arch))
        self._index, self._points, self._embedding_rows, self._positions = index, points, rows, positions
        self._probes.clear()
        self._save_names.clear()
        self.layers._proxies.clear()

    def _tree_changed(self) -> None:
        """The executor found the module tree changed (see :meth:`_sync_tree`): rebuild what was derived
        from it and drop every program built on it (its lowerings hook the old module objects)."""
        self._derive_from_tree()
        self._executor.points = self._points
        for cache in self._program_caches.values():
            cache.clear()

    def _sync_tree(self) -> None:
        """Check that no module was replaced since the last check (a few microseconds; see
        :class:`mlxterp.compiler.ModuleTree`), rebuilding everything derived from the tree if one was.
        Every entry point calls it before using the index: ``trace`` and the analysis helpers (through
        :meth:`_batch`), ``generate``, program calls, ``module()``, ``named_modules()``, ``proxy.module``,
        and :meth:`_probe` outside a recording trace (a helper's setup)."""
        self._executor.sync()

    # -- tracing -----------------------------------------------------------------------------
    def trace(self, inputs: Union[str, List[str], mx.array, List[int], None] = None,
              interventions: Optional[Dict[str, Callable]] = None, compile: Union[bool, str] = "auto",
              capture: Union[str, List[str]] = "all", *, dictionaries: Optional[List[Any]] = None) -> Trace:
        """A tracing context: record saves and interventions inside ``with``; they run on exit.

        Args:
            inputs: a prompt, a list of prompts (right-padded; ``trace.lengths`` keeps real lengths),
                token ids (list of int), an integer ``mx.array`` of shape ``(batch, seq)``, or a
                :class:`~mlxterp.conversation.Conversation` (or a list of them). ``None``: the prompts come
                from ``with tr.invoke(prompt):`` blocks inside the trace, one batch of all of them (see
                :meth:`Trace.invoke`).
            interventions: ``{module name: fn}``, each ``fn(activation) -> activation`` (applied after the
                model's edits, if it has any: see :meth:`edit`; with invokes, both apply to each invoke's own
                view as it begins).
            compile: ``False`` eager, ``True`` compiled, ``"auto"`` eager the first time a graph
                structure is seen and compiled once it repeats.
            capture: which module outputs land in ``trace.activations``: ``"all"`` (default),
                ``"saved"`` (none beyond ``.save()``), or a list of module names.
            dictionaries: SAEs and transcoders to splice at their sites (after the edits and
                ``interventions=``): each site's value becomes the dictionary's reconstruction plus its error
                term, and ``h.sae.features`` / ``.error`` / ``.reconstruction`` are readable and writable from
                the site's value ``h`` (see :mod:`mlxterp.features.splice`; ``mt.splice(d, name=...,
                error=False)`` names one or leaves out its error term).
        """
        if inputs is None:
            self._sync_tree()  # as _batch does: the trace records against the current module tree
            return Trace(self, None, interventions, compile, capture, dictionaries)
        return Trace(self, self._batch(inputs), interventions, compile, capture, dictionaries)

    def _batch(self, inputs: Any) -> TokenBatch:
        self._sync_tree()  # the valid ids are the current embedding's, and callers go on to use the index
        batch = to_token_batch(inputs, self.tokenizer, self._embedding_rows, self._pad_id())
        self._check_length(batch.lengths)
        return batch

    def _check_length(self, lengths: Sequence[int]) -> None:
        """Refuse prompts past learned positions, warn (once) past a rotary model's context."""
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        self._positions.check(lengths[longest], "the input" if len(lengths) == 1 else f"prompt {longest}")

    def _vocab_rows(self) -> Optional[int]:
        """Rows of the token embedding (to reject out-of-range ids), or ``None`` if there is none."""
        return _embedding_rows(self._index)

    def _capture_spec(self, capture: Any) -> Any:
        if capture == "all":
            return "all"
        if capture in ("saved", "none", None):
            return ()
        if isinstance(capture, (list, tuple)) and all(isinstance(c, str) for c in capture):
            return tuple((self._index.resolve(c), 0) for c in capture)
        raise ValueError(f"capture={capture!r} is not valid; choose {CAPTURE_CHOICES}")

    def _check_interventions(self, interventions: Optional[Dict[str, Callable]],
                             kind: str = "interventions") -> list[tuple[tuple[str, str], Callable, str]]:
        if interventions is None:
            return []
        if not isinstance(interventions, dict):
            raise TypeError(f"{kind} must be a dict {{module name: fn}}, got {type(interventions).__name__}")
        checked = []
        for name, fn in interventions.items():
            if not callable(fn):
                raise TypeError(f"{kind}[{name!r}] is a {type(fn).__name__}; expected a callable "
                                "activation -> activation such as iv.scale(0.5)")
            try:
                site = self._index.resolve_site(name)
            except AttributeError as exc:  # resid_mid of a layer without one: the reason, as a name error
                raise ModuleNameError(f"{kind}[{name!r}]: {exc}") from None
            checked.append((site, fn, name))
        return checked

    def _check_dictionaries(self, dictionaries: Any) -> tuple:
        """A ``dictionaries=`` argument as checked splices (see :func:`mlxterp.features.splice.check_dictionaries`)."""
        if dictionaries is None:
            return ()
        from .edits.records import DictionaryEdit
        from .features.splice import check_dictionaries

        spliced = [e.splice for e in self._edits if isinstance(e, DictionaryEdit)]  # the edits' splices come first
        return check_dictionaries(self, dictionaries, spliced)

    def _probe(self, tokens: mx.array) -> Probe:
        """Execution order and shapes for inputs of this shape (one lazy forward, cached, of the current
        module tree: checked here unless a trace on this model is recording, which checked it when it began)."""
        if not context.recording_on(self):
            self._sync_tree()
        key = (tuple(tokens.shape), tokens.dtype)  # the Dtype itself: hashable, and str() is slow
        found = self._probes.get(key)
        if found is None:
            found = probe(self.model, lambda: self.model(tokens), points=self._points)
            self._probes[key] = found
            if len(self._probes) > 64:
                self._probes.popitem(last=False)
        return found

    def _activation_name(self, captured: str) -> str:
        """Key in ``trace.activations`` for a module path: the seed's ``"model." + path`` form."""
        return "model." + captured if captured else "model"

    def _activation_key(self, name: str) -> Optional[str]:
        """Map any accepted module name to its ``trace.activations`` key (``None`` if it is not a module)."""
        try:
            return self._activation_name(self._index.resolve(name))
        except ModuleNameError:
            return None

    # -- modules -----------------------------------------------------------------------------
    @property
    def architecture(self) -> Optional[Architecture]:
        """The family adapter in use (:class:`mlxterp.adapters.Architecture`: where the embedding, layers,
        attention, MLP, norms and output projection are, and the residual form), or ``None`` when the
        model's ``model_type`` has none and module roles are guessed from their names."""
        return self._index.arch

    def named_modules(self) -> Iterator[Tuple[str, nn.Module]]:
        """``(name, module)`` for every module of the wrapped model (canonical paths)."""
        self._sync_tree()
        return iter(self._index.modules.items())

    def module(self, name: str) -> ModuleProxy:
        """A proxy for any module by name, e.g. ``model.module("layers.3.mlp.gate_proj")``."""
        self._sync_tree()
        return ModuleProxy(self, self._index.resolve(name))

    @property
    def output(self) -> Any:
        """The model's final output inside a trace (save it with ``.save()``): for a language model its
        logits, ``(batch, seq, vocab)`` in the model's output dtype (float32 for float32 weights)."""

        return ModuleProxy(self, "").output

    @output.setter
    def output(self, value: Any) -> None:
        ModuleProxy(self, "").output = value

    def __getattr__(self, name: str) -> Any:
        # Reached only for names that are not attributes: offer the model's modules (model.norm, ...).
        if name.startswith("_"):
            raise AttributeError(name)
        index = self.__dict__.get("_index")
        if index is not None:
            path = index.child("", name) or index.child(index.prefix.rstrip("."), name)
            if path is not None:
                return ModuleProxy(self, path)
        raise AttributeError(f"InterpretableModel has no attribute {name!r}")

    # -- compile cache -----------------------------------------------------------------------
    def compile_stats(self) -> dict:
        """Counters: ``traces`` (mx.compile traces), ``hits``, ``misses``, ``eager_runs``,
        ``compiled_runs``, ``evictions``, ``tree_changes`` (module replacements noticed, each dropping
        every cached program), ``cache_size``, and ``analysis_programs`` (entries kept beside
        the executor's: analysis helpers' compiled programs such as attribution patching's, and
        generation's step programs with its one per-model check of the compiled decode step)."""
        stats = {k: int(self._executor.stats.get(k, 0))
                 for k in ("traces", "hits", "misses", "eager_runs", "compiled_runs", "evictions", "tree_changes")}
        stats["cache_size"] = self._executor.cache_size()
        stats["analysis_programs"] = sum(len(c) for c in self._program_caches.values())
        return stats

    def clear_compile_cache(self) -> None:
        """Drop every compiled program, the analysis helpers' too (statistics are kept)."""
        self._executor.clear()
        for cache in self._program_caches.values():
            cache.clear()

    def _program_cache(self, kind: str) -> collections.OrderedDict:
        """The (LRU-ordered) cache where an analysis helper keeps its compiled programs of ``kind``."""
        return self._program_caches.setdefault(kind, collections.OrderedDict())

    def __repr__(self) -> str:
        return (f"InterpretableModel({type(self.model).__name__}, {len(self.layers)} layers, "
                f"tokenizer={'yes' if self.tokenizer is not None else 'none'}, "
                f"weights={self.weight_form.summary!r} ({self.weight_form.choice})"
                f"{f', {len(self._edits)} edit(s)' if self._edits else ''})")


def _embedding_rows(index: ModuleIndex) -> Optional[int]:
    """Rows of the token embedding that ``index`` finds, or ``None`` if there is none."""
    path = index.token_embedding()
    return None if path is None else int(index.modules[path].weight.shape[0])
