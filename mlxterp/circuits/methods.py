"""The circuit methods of InterpretableModel (direct logit attribution, residual decomposition, edge
attribution, edge patching, circuit faithfulness); each delegates to a function of ``mlxterp.circuits``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

PathLike = Union[str, Path]

class CircuitsMixin:
    """Mixed into InterpretableModel; each method delegates to ``mlxterp.circuits``.

    Circuit methods need a pre-norm transformer whose residual stream is the sum of the embedding, the
    heads (``attn.heads`` through their slices of ``o_proj``) and the MLPs, with separate q, k, v and o
    projections (llama, mistral, qwen2/3 and their kin); the first call checks it on a short forward and
    otherwise says why it cannot. Metrics are scores of the last position's logits (as in
    :meth:`~InterpretableModel.head_patching`: ``"logit_diff"`` with ``target=``/``foil=``, ``"logprob"``, ``"prob"``,
    or a function ``logits -> score per row``), averaged over the prompts. A prompt argument takes a str, a list of
    prompts that encode to the same number of tokens (no padding: positions are matched one to one), token ids, or a
    ``(batch, seq)`` token array.
    """

    def decompose(self, prompt: Any, *, last_only: bool = False) -> Any:
        """Every component of the residual stream in one forward: the embedding, each head's output (its
        ``attn.heads`` through its slice of the output projection) and each MLP's output.

        Args:
            prompt: the prompt(s).
            last_only: keep the last position only (``seq`` is then 1).

        Returns:
            A :class:`mlxterp.circuits.ResidualDecomposition`: ``.stack`` ``(components, batch, seq, hidden)``
            (an ``mx.array`` in the model's activation dtype) named by ``.names``; ``.components(layer, phase)`` and
            ``.residual(layer, phase)`` (the parts of and the sum at a layer's input, ``"pre"``, or its MLP's input,
            ``"mid"``); ``.accumulated()`` (the residual after the embedding and each layer); ``.heads(layer)``;
            ``.mlp(layer)``; ``.error`` (the final residual less the sum: output-projection biases, rounding).

        Raises:
            ValueError: a model circuits cannot decompose, or prompts of different token lengths.
        """
        from .dla import decompose

        return decompose(self, prompt, last_only=last_only)

    def direct_logit_attribution(self, prompt: Any, target: Any = None, foil: Any = None, *, plot: bool = False,
                                 save_path: Optional[PathLike] = None) -> Any:
        """Each component's direct effect on the logit of ``target`` (minus ``foil``'s) at the last position.

        The final residual's components (:meth:`decompose`) go through the final norm with its scale frozen at
        this run's value (TransformerLens' convention: the norm becomes linear, ``v * s * w`` for an RMSNorm)
        and onto the unembedding direction. The contributions of the embedding, every head and every MLP then
        sum to the logit difference; what belongs to no component (biases, a LayerNorm's offset) is ``error``.

        Args:
            prompt: the prompt(s); contributions are averaged over the prompts.
            target: the token (text such as ``" Paris"``, or id); default: the first prompt's prediction.
            foil: a token whose logit is subtracted; ``None`` attributes the target's logit alone.
            plot: draw the heatmap (shown only with an interactive matplotlib backend).
            save_path: write the heatmap as a PNG here.

        Returns:
            A :class:`mlxterp.circuits.DirectLogitAttribution`, every number in logits (float64, from float32
            logits): ``.top(k)`` ``(name, contribution)``, ``.heads`` ``(layers, heads)``, ``.mlps``
            ``(layers,)``, ``.embed``, ``.total`` (their sum), ``.logit_diff`` (the model's), ``.error``,
            ``.plot()``.

        Raises:
            ValueError: as :meth:`decompose`, a bad target or foil, or a final norm that is neither an RMSNorm
                nor a LayerNorm.
        """
        from .dla import direct_logit_attribution

        return direct_logit_attribution(self, prompt, target, foil, plot=plot, save_path=save_path)

    def edge_attribution(self, clean: Any, corrupted: Any, metric: Any = "logit_diff", method: str = "eap-ig",
                         steps: int = 5, receivers: str = "heads", *, target: Any = None, foil: Any = None) -> Any:
        """Attribution scores of every edge of the model's circuit graph, from one folded forward and backward.

        Edge ``(u, r)`` scores ``(z_u(clean) - z_u(corrupted)) . dm/dx_r``: sender ``u``'s output difference
        times the gradient of the metric at receiver ``r``'s input, the first-order change of the metric when
        that edge alone takes its clean value in the corrupted run. EAP takes the gradient in the corrupted run;
        EAP-IG averages it over ``steps`` points ``k / steps`` (``k = 0 .. steps - 1``) of the straight path from
        the corrupted to the clean input embeddings (Hanna et al. 2024); ``"eap-ig-activations"`` averages it,
        for ``u``'s edges, over the same points of the path on which only ``u``'s block of senders (the
        embedding, a layer's heads, a layer's MLP) moves from its corrupted to its clean outputs in the
        corrupted run: its node scores estimate patching a node's clean output into the corrupted run (as
        :meth:`~InterpretableModel.head_patching` does), at the cost of ``1 + (2 L + 1) (steps - 1)`` variants of the
        forward and backward for ``L`` layers (README.md, "Circuits", says what each method estimates). Senders:
        ``embed``, ``layers.L.attn.heads.H``, ``layers.L.mlp``. Receivers: each head's q input
        (``layers.L.attn.heads.H.q``), each key-value head's k and v inputs (``.k``, ``.v``), each MLP
        (``layers.L.mlp``) and ``logits``; with ``receivers="layers"`` each layer's attention (``layers.L.attn``)
        instead of its heads' inputs.

        Args:
            clean: the clean prompt(s).
            corrupted: the corrupted prompt(s), as many as the clean ones (or one for all), of the same token
                length (positions are matched one to one).
            metric: a score of the last position's logits (see the class docstring).
            method: ``"eap-ig"`` (default), ``"eap"`` (the same with one step) or ``"eap-ig-activations"``.
            steps: points of the integrated gradients (EAP-IG on either path).
            receivers: ``"heads"`` (q/k/v per head) or ``"layers"``.
            target: the target token of ``"logit_diff"``/``"logprob"``/``"prob"``; default: the clean prediction.
            foil: ``logit_diff``'s foil token; default: the corrupted prediction.

        Returns:
            :class:`mlxterp.circuits.EdgeScores`: ``.top(k)`` ``(sender, receiver, score)``,
            ``.circuit(n_edges=...)`` or ``.circuit(threshold=...)``, ``.node_scores()``, ``.head_scores()``,
            ``.scores`` ``(receivers, senders)`` float64 numpy, ``.clean``/``.corrupted`` (the metric, mean over
            the prompts), ``.plot()``; scores are changes of the metric, in its units (logits for
            ``"logit_diff"``, nats for ``"logprob"``).

        Raises:
            ValueError: a bad method, ``steps < 1``, prompts of different token lengths, a distance metric or one
                that ignores the logits, a model circuits cannot decompose; all before any forward.
        """
        from .attribution import edge_attribution

        return edge_attribution(self, clean, corrupted, metric, method, steps, receivers, target=target, foil=foil)

    def edge_patching(self, clean: Any, corrupted: Any, edges: Any, metric: Any = "logit_diff", *,
                      ablation: str = "corrupted", receivers: str = "heads", target: Any = None,
                      foil: Any = None) -> Any:
        """The clean run with some edges patched, exactly, in one forward.

        Each edge's receiver reads its input with that sender's output swapped for its value in the corrupted
        run (``ablation="corrupted"``) or its mean over the corrupted prompts (``"mean"``); the sender's output
        is its output in the patched run itself, so patched edges upstream change it.

        Args:
            clean: the clean prompt(s).
            corrupted: the corrupted prompt(s), of the same token length.
            edges: ``(sender, receiver)`` name pairs (``[("layers.17.attn.heads.3", "layers.18.attn.heads.2.k")]``)
                or a :class:`mlxterp.circuits.Circuit`.
            metric: a score of the last position's logits.
            ablation: ``"corrupted"`` or ``"mean"``.
            receivers: the granularity the edge names use (``"heads"`` or ``"layers"``).
            target: the metric's target token, as in :meth:`edge_attribution`.
            foil: the metric's foil token (``"logit_diff"``), as in :meth:`edge_attribution`.

        Returns:
            :class:`mlxterp.circuits.EdgePatching`: ``.value`` (the patched metric, mean over the prompts),
            ``.corrupted``, ``.logits`` ``(batch, vocab)`` (the last position's, an ``mx.array`` in the model's
            output dtype).

        Raises:
            ValueError: an unknown node, a sender that runs after its receiver, and as :meth:`edge_attribution`.
        """
        from .faithfulness import edge_patching

        return edge_patching(self, clean, corrupted, edges, metric, ablation=ablation, receivers=receivers,
                             target=target, foil=foil)

    def evaluate_circuit(self, circuit: Any, clean: Any, corrupted: Any, metric: Any = "logit_diff", *,
                         ablation: str = "corrupted", receivers: str = "heads", target: Any = None,
                         foil: Any = None) -> Any:
        """A circuit's metric with every edge outside it ablated, beside the full and the empty circuit's, from
        one forward (the corrupted prompts, the full model and the circuit as rows of one batch).

        Args:
            circuit: a :class:`mlxterp.circuits.Circuit` (``edges.circuit(n_edges=200)``) or edge pairs.
            clean: the clean prompt(s).
            corrupted: the corrupted prompt(s), of the same token length.
            metric: a score of the last position's logits.
            ablation: ``"corrupted"`` (an ablated edge carries the corrupted run's value) or ``"mean"`` (its mean
                over the corrupted prompts).
            receivers: the granularity of edge pairs (a Circuit carries its own).
            target: the metric's target token, as in :meth:`edge_attribution`.
            foil: the metric's foil token (``"logit_diff"``), as in :meth:`edge_attribution`.

        Returns:
            :class:`mlxterp.circuits.Faithfulness`: ``.value``, ``.clean``, ``.baseline`` (every edge ablated;
            Python floats, the metric averaged over the prompts) and ``.faithfulness``
            ``= (value - baseline) / (clean - baseline)`` (a fraction: 1 is the full model, not percent).
        """
        from .faithfulness import evaluate_circuit

        return evaluate_circuit(self, circuit, clean, corrupted, metric, ablation=ablation, receivers=receivers,
                                target=target, foil=foil)

    def faithfulness_curve(self, edges: Any, clean: Any, corrupted: Any,
                           sizes: Sequence[int] = (10, 20, 50, 100, 200, 500), metric: Any = "logit_diff", *,
                           ablation: str = "corrupted", target: Any = None, foil: Any = None, plot: bool = False,
                           save_path: Optional[PathLike] = None) -> Any:
        """Faithfulness of the best-``n`` circuits of ``edges`` for each ``n`` in ``sizes``: every circuit, the
        full model and the corrupted prompts as rows of one batched forward.

        Args:
            edges: the :class:`mlxterp.circuits.EdgeScores` of :meth:`edge_attribution`.
            clean: the clean prompt(s) (see :meth:`evaluate_circuit`).
            corrupted: the corrupted prompt(s), of the same token length.
            sizes: numbers of edges.
            metric: a score of the last position's logits, as in :meth:`evaluate_circuit`.
            ablation: ``"corrupted"`` or ``"mean"``, as in :meth:`evaluate_circuit`.
            target: the metric's target token, as in :meth:`edge_attribution`.
            foil: the metric's foil token (``"logit_diff"``), as in :meth:`edge_attribution`.
            plot: draw the curve (shown only with an interactive matplotlib backend).
            save_path: write the curve as a PNG here.

        Returns:
            :class:`mlxterp.circuits.FaithfulnessCurve`: ``.sizes``, ``.values`` (float64 ``(len(sizes),)``, the
            metric), ``.faithfulness`` (float64 ``(len(sizes),)`` fractions), ``.clean``, ``.baseline``,
            ``.as_dict()`` (``{n_edges: faithfulness}``), ``.plot()``, ``.save(path)``.

        """
        from .faithfulness import faithfulness_curve

        return faithfulness_curve(self, edges, clean, corrupted, sizes, metric, ablation=ablation, target=target,
                                  foil=foil, plot=plot, save_path=save_path)
