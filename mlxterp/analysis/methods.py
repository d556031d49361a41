"""The analysis methods of InterpretableModel (get_token_predictions, logit_lens, activation_patching, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

PathLike = Union[str, Path]


class AnalysisMixin:
    """Mixed into InterpretableModel; each method delegates to a function in ``mlxterp.analysis``."""

    def get_token_predictions(self, hidden_state: Any, top_k: int = 10, return_scores: bool = False) -> List[Any]:
        """Decode hidden states to token predictions with the model's output projection.

        The hidden state goes through the output projection only (``lm_head``, or the input embedding
        used transposed in weight-tied models, quantized ones included), **not** the final norm: pass a
        normed state (or use :meth:`logit_lens`, which applies the norm) for calibrated predictions.

        Args:
            hidden_state: a float array (any float dtype; an ``mx.array`` or what ``mx.array()`` converts) of
                shape ``(d_model,)`` or ``(batch, d_model)``, ``d_model`` the model's hidden size.
            top_k: number of predictions per row (at most the vocabulary size).
            return_scores: also return each token's score, its logit (a Python float, computed in float32;
                not a probability).

        Returns:
            For a ``(hidden,)`` input, a list of ``top_k`` token ids (or ``(token_id, logit)`` tuples),
            best first; for a ``(batch, hidden)`` input, one such list per row.

        Raises:
            ValueError: wrong shape or dtype of ``hidden_state``, or ``top_k`` out of range.
        """
        from .lens import get_token_predictions

        return get_token_predictions(self, hidden_state, top_k, return_scores)

    def logit_lens(self, text: Any, top_k: int = 1, layers: Optional[List[int]] = None, plot: bool = False,
                   max_display_tokens: int = 15, figsize: Tuple[float, float] = (16, 10), cmap: str = "viridis", *,
                   save_path: Optional[PathLike] = None, lens: Any = None) -> Dict[int, List[List[Tuple[int, float, str]]]]:
        """What each layer predicts at each position: its output through the final norm and unembedding.

        One traced forward saves the requested layers' outputs; they are then stacked and projected in
        one batched computation (final norm, output projection, float32 softmax, top-k in MLX).

        Args:
            text: the prompt (a str; token ids are accepted too).
            top_k: predictions per position.
            layers: layer indices (negative ones count from the end); ``None`` = all layers.
            plot: draw a heatmap of the top-1 predictions (shown only if an interactive matplotlib
                backend is active).
            max_display_tokens: positions shown in the plot (the last ones).
            figsize: plot size in inches.
            cmap: plot colormap.
            save_path: write the heatmap as a PNG here (drawn even if ``plot`` is False).
            lens: a :class:`mlxterp.TunedLens`: each layer's output goes through its translator first (the
                tuned lens); the result names itself ``"tuned lens"`` (``result.save_html(path, compare=...)``
                shows it beside the logit lens). None: the logit lens.

        Returns:
            ``{layer: [[(token_id, probability, token_str), ...] per position]}`` with ``top_k`` entries per
            position, best first; the score is the softmax probability (a fraction in [0, 1], computed in
            float32). The last layer's top-1 is the model's own prediction. The dict is a
            :class:`mlxterp.analysis.lens.LogitLensResult`: it also holds the arrays (``.ids``: int64,
            ``.probs``: float32, both numpy ``(layers, seq, top_k)``), saves and loads (``.save(path)``), and
            writes an interactive view (``.save_html(path)``).

        Raises:
            ValueError: bad ``layers`` (the valid range is listed), ``top_k`` or ``text``; a ``lens`` of another
                model or without a translator for a requested layer.
        """
        from .lens import logit_lens

        return logit_lens(self, text, top_k, layers, plot, max_display_tokens, figsize, cmap, save_path=save_path,
                          lens=lens)

    def activation_patching(self, clean_text: Any, corrupted_text: Any, component: str = "mlp",
                            layers: Optional[List[int]] = None, metric: str = "l2", plot: bool = False,
                            figsize: Tuple[float, float] = (12, 8), cmap: str = "RdBu_r", *,
                            batch_size: Optional[int] = None, progress: bool = False,
                            save_path: Optional[PathLike] = None, target: Any = None,
                            foil: Any = None, distributed: Any = "auto") -> Dict[int, float]:
        """How much of the clean behaviour each layer's component restores in the corrupted run.

        For each layer, the component's clean output replaces the corrupted run's at every position, and
        ``recovery = (d(corrupted, clean) - d(patched, clean)) / d(corrupted, clean) * 100`` with ``d`` a
        float32 distance between the last position's logits. The sweep is vectorised: a staircase batch
        (see :mod:`mlxterp.analysis.sweep`) runs the clean prompt, the corrupted prompt and every patched
        variant in ``ceil(len(layers) / batch_size)`` compiled forwards.

        Args:
            clean_text: the clean prompt.
            corrupted_text: the corrupted prompt; it must have as many tokens as ``clean_text``.
            component: ``"mlp"``, ``"self_attn"`` (alias ``"attn"``), ``"output"`` (the whole layer) or any
                sub-module of a layer that runs once per forward (``"mlp.gate_proj"``,
                ``"self_attn.o_proj"``, GPT-2's ``"mlp.c_fc"``, ...).
            layers: layer indices; ``None`` = all.
            metric: ``"l2"``, ``"cosine"`` or ``"mse"`` (distances from the clean logits); ``"logit_diff"``
                (``target`` minus ``foil`` logit), ``"logprob"`` (nats) or ``"prob"`` (of ``target``); a
                :class:`~mlxterp.analysis.metrics.Metric`; or a function ``logits -> score per row`` of the
                last position's float32 ``(rows, vocab)`` logits (MLX operations). Scores give recovery
                ``(m(patched) - m(corrupted)) / (m(clean) - m(corrupted)) * 100``.
            plot: draw a bar chart (shown only with an interactive matplotlib backend).
            figsize: plot size in inches.
            cmap: diverging colormap.
            batch_size: patched variants per forward (bounds memory); ``None`` picks one from the
                activation size.
            progress: show a progress bar.
            save_path: write the bar chart as a PNG here.
            target: the target token of a score metric, as text (``" Paris"``) or id; default: the clean
                prompt's top prediction.
            foil: ``logit_diff``'s foil token; default: the corrupted prompt's top prediction.
            distributed: shard the variants over ``mx.distributed`` processes: ``"auto"`` (default) when the
                script was launched on several (``mlx.launch``), ``True`` to require that (an error
                otherwise), ``False`` for this process alone. Every rank returns the full result; every rank
                must pass the same arguments (checked before any work: ``DistributedMismatchError``).

        Returns:
            ``{layer: recovery}``, recovery a Python float in percent (100 = the clean behaviour restored), a
            :class:`mlxterp.analysis.patching.LayerPatchingResult` (a dict with ``.metric``, ``.component``,
            ``.corrupted_distance``, ``.save(path)`` and ``.save_html(path)``).

        Raises:
            ValueError: prompts of different token lengths, identical clean/corrupted logits, or a bad
                ``component`` / ``layers`` / ``metric`` / ``batch_size`` (the valid choices are listed).
        """
        from .patching import activation_patching

        return activation_patching(self, clean_text, corrupted_text, component, layers, metric, plot, figsize,
                                   cmap, batch_size=batch_size, progress=progress, save_path=save_path,
                                   target=target, foil=foil, distributed=distributed)

    def patching_grid(self, clean_text: Any, corrupted_text: Any, component: str = "output",
                      layers: Optional[List[int]] = None, positions: Optional[List[int]] = None, metric: str = "l2",
                      plot: bool = False, figsize: Tuple[float, float] = (12, 8), cmap: str = "RdBu_r", *,
                      batch_size: Optional[int] = None, progress: bool = False,
                      save_path: Optional[PathLike] = None, target: Any = None, foil: Any = None,
                      distributed: Any = "auto") -> Any:
        """Layer x position activation patching (ROME-style causal tracing).

        Cell ``(i, p)`` patches only position ``p`` of the component at layer ``i`` with its clean value
        and reports the recovery (%) of the last position's logits, as in :meth:`activation_patching`.
        All cells run as staircase batches of ``batch_size`` variants per compiled forward. Cells before the
        first position where the prompts differ are 0 (the activations there are identical in a causal
        model; the trace checks it) and are not run.

        Args:
            clean_text: the clean prompt.
            corrupted_text: the corrupted prompt (same number of tokens).
            component: the layer component to patch (default ``"output"``, the residual stream).
            layers: layer indices; ``None`` = all.
            positions: token positions (negative ones count from the end); ``None`` = all.
            metric: ``"l2"``, ``"cosine"`` or ``"mse"`` (distances from the clean logits); ``"logit_diff"``
                (``target`` minus ``foil`` logit), ``"logprob"`` (nats) or ``"prob"`` (of ``target``); a
                :class:`~mlxterp.analysis.metrics.Metric`; or a function ``logits -> score per row`` of the
                last position's float32 ``(rows, vocab)`` logits (MLX operations). Scores give recovery
                ``(m(patched) - m(corrupted)) / (m(clean) - m(corrupted)) * 100``.
            plot: draw a heatmap (shown only with an interactive matplotlib backend).
            figsize: plot size in inches.
            cmap: diverging colormap.
            batch_size: patched variants per forward; ``None`` picks one from the activation size.
            progress: show a progress bar.
            save_path: write the heatmap as a PNG here.
            target: the target token of a score metric, as text (``" Paris"``) or id; default: the clean
                prompt's top prediction.
            foil: ``logit_diff``'s foil token; default: the corrupted prompt's top prediction.
            distributed: shard the variants over ``mx.distributed`` processes: ``"auto"`` (default) when the
                script was launched on several (``mlx.launch``), ``True`` to require that (an error
                otherwise), ``False`` for this process alone. Every rank returns the full result; every rank
                must pass the same arguments (checked before any work: ``DistributedMismatchError``).

        Returns:
            A :class:`mlxterp.analysis.patching.PatchingGrid` (``.grid``: a float64 numpy array
            ``(len(layers), len(positions))`` of recovery in percent; ``.layers``, ``.positions``,
            ``.position_labels``, ``.metric``, ``.plot(save_path=None)``, ``.save(path)``, ``.save_html(path)``).

        Raises:
            ValueError: as :meth:`activation_patching`, and for bad ``positions``.
        """
        from .patching import patching_grid

        return patching_grid(self, clean_text, corrupted_text, component, layers, positions, metric, plot, figsize,
                             cmap, batch_size=batch_size, progress=progress, save_path=save_path, target=target,
                             foil=foil, distributed=distributed)

    def attribution_patching(self, clean_text: Any, corrupted_text: Any, component: str = "output",
                             layers: Optional[List[int]] = None, positions: Optional[List[int]] = None,
                             metric: str = "l2", plot: bool = False, figsize: Tuple[float, float] = (12, 8),
                             cmap: str = "RdBu_r", *, save_path: Optional[PathLike] = None, target: Any = None,
                             foil: Any = None) -> Any:
        """Gradient (linear) estimate of :meth:`patching_grid`.

        Cell ``(i, p)`` is ``-100 / d(corrupted, clean) * sum_h (clean_act - corrupted_act) * dd/dact``
        at layer ``i``, position ``p``: the first-order change of recovery when that activation is
        patched. It costs one clean forward and one corrupted forward + backward (``mx.value_and_grad``
        through the traced graph), whatever the number of cells; the whole computation is compiled once
        per (component, layers, prompt length, metric) and reused by later calls.

        Args:
            clean_text: the clean prompt.
            corrupted_text: the corrupted prompt (same number of tokens).
            component: the layer component (default ``"output"``).
            layers: layer indices; ``None`` = all.
            positions: token positions; ``None`` = all.
            metric: ``"l2"``, ``"cosine"`` or ``"mse"`` (distances from the clean logits); ``"logit_diff"``
                (``target`` minus ``foil`` logit), ``"logprob"`` (nats) or ``"prob"`` (of ``target``); a
                :class:`~mlxterp.analysis.metrics.Metric`; or a function ``logits -> score per row`` of the
                last position's float32 ``(rows, vocab)`` logits (MLX operations). Scores give recovery
                ``(m(patched) - m(corrupted)) / (m(clean) - m(corrupted)) * 100``.
            plot: draw a heatmap (shown only with an interactive matplotlib backend).
            figsize: plot size in inches.
            cmap: diverging colormap.
            save_path: write the heatmap as a PNG here.
            target: the target token of a score metric, as text (``" Paris"``) or id; default: the clean
                prompt's top prediction.
            foil: ``logit_diff``'s foil token; default: the corrupted prompt's top prediction.

        Returns:
            A :class:`mlxterp.analysis.patching.PatchingGrid` with ``method="attribution patching"`` (``.grid``:
            float64 ``(len(layers), len(positions))``, estimated recovery in percent).

        Raises:
            ValueError: as :meth:`patching_grid`.
        """
        from .patching import attribution_patching

        return attribution_patching(self, clean_text, corrupted_text, component, layers, positions, metric, plot,
                                    figsize, cmap, save_path=save_path, target=target, foil=foil)

    def head_patching(self, clean_text: Any, corrupted_text: Any, layers: Optional[List[int]] = None,
                      heads: Optional[List[int]] = None, metric: Any = "l2", plot: bool = False,
                      figsize: Tuple[float, float] = (10, 8), cmap: str = "RdBu_r", *,
                      batch_size: Optional[int] = None, progress: bool = False,
                      save_path: Optional[PathLike] = None, target: Any = None, foil: Any = None,
                      distributed: Any = "auto") -> Any:
        """Activation patching of single attention heads: a layers x heads grid of recovery (%).

        Cell ``(layer, head)`` gives that head's output (``attn.heads[:, :, head]``, before the output
        projection, every position) its clean value in the corrupted run. All cells run as staircase batches
        (as :meth:`activation_patching`), compiled; the layers compute their attention explicitly.

        Args:
            clean_text: the clean prompt.
            corrupted_text: the corrupted prompt (same number of tokens).
            layers: layer indices; ``None`` = all.
            heads: head indices; ``None`` = all.
            metric: as in :meth:`activation_patching` (``"logit_diff"`` is the usual choice for circuits).
            plot: draw a heatmap (shown only with an interactive matplotlib backend).
            figsize: plot size in inches.
            cmap: diverging colormap.
            batch_size: patched variants per forward; ``None`` picks one from the activation size.
            progress: show a progress bar.
            save_path: write the heatmap as a PNG here.
            target: the target token of a score metric (text or id); default: the clean prediction.
            foil: ``logit_diff``'s foil token; default: the corrupted prediction.
            distributed: shard the variants over ``mx.distributed`` processes: ``"auto"`` (default) when the
                script was launched on several (``mlx.launch``), ``True`` to require that (an error
                otherwise), ``False`` for this process alone. Every rank returns the full result; every rank
                must pass the same arguments (checked before any work: ``DistributedMismatchError``).

        Returns:
            A :class:`mlxterp.analysis.heads.HeadPatchingGrid` (``.grid``: a float64 numpy array
            ``(len(layers), len(heads))`` of recovery in percent; ``.layers``, ``.heads``, ``.top(k)``,
            ``.plot(save_path=None)``, ``.save(path)``, ``.save_html(path)``).

        Raises:
            ValueError: as :meth:`activation_patching`, for bad ``heads``, and for a model without attention.
        """
        from .heads import head_patching

        return head_patching(self, clean_text, corrupted_text, layers, heads, metric, plot, figsize, cmap,
                             batch_size=batch_size, progress=progress, save_path=save_path, target=target,
                             foil=foil, distributed=distributed)

    def attention_patterns(self, text: Any, layers: Optional[List[int]] = None) -> Any:
        """Every head's attention pattern of one prompt, in one traced forward.

        Args:
            text: the prompt (a str; token ids are accepted too).
            layers: layer indices; ``None`` = all.

        Returns:
            An :class:`mlxterp.analysis.patterns.AttentionPatterns`: ``[layer]`` is a float32
            ``(heads, seq, seq)`` numpy array of attention weights (row = query, column = key; each row sums to
            1 over the keys up to the query), ``.tokens`` the prompt's tokens as text, and
            ``.plot(layer, heads=None, save_path=None)`` draws one head or a grid of heads, tokens on both axes;
            ``.save_html(path)`` writes the interactive view; ``.save(path)`` saves it.

        Raises:
            ValueError: bad ``layers`` or ``text``, or a model without attention.
        """
        from .patterns import attention_patterns

        return attention_patterns(self, text, layers)

    def head_scores(self, seq_len: int = 50, batch: int = 4, layers: Optional[List[int]] = None, seed: int = 0,
                    token_range: Optional[Tuple[int, int]] = None) -> Any:
        """Induction, previous-token and duplicate-token scores of every head, from one batched forward on
        ``batch`` sequences of ``seq_len`` random tokens repeated once (after the tokenizer's BOS, if it adds
        one).

        Args:
            seq_len: random tokens per copy.
            batch: sequences.
            layers: layer indices; ``None`` = all.
            seed: seed of the random tokens.
            token_range: ``(low, high)`` ids to draw from; default the middle of the vocabulary.

        Returns:
            A :class:`mlxterp.analysis.patterns.HeadScores` (``.induction``, ``.previous_token``,
            ``.duplicate_token``: float32 numpy ``(len(layers), heads)`` arrays of mean attention weights, in
            [0, 1]; ``.tokens``: the int32 ``(batch, 2 * seq_len)`` ids, one more column with a BOS;
            ``.top(kind, k)``; ``.plot(save_path=None)``).


        Raises:
            ValueError: bad arguments, or a model without attention.
        """
        from .patterns import head_scores

        return head_scores(self, seq_len, batch, layers, seed, token_range)
