"""The conversation methods of InterpretableModel: ``conversation``, ``turn_patching``, ``turn_attention``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]


class ConversationMixin:
    """Mixed into InterpretableModel; each method delegates to ``mlxterp.conversation``."""

    def conversation(self, messages: Sequence[Mapping], add_generation_prompt: Optional[bool] = None) -> Any:
        """Chat messages in this model's chat template, with the token positions of every turn.

        Args:
            messages: ``[{"role": "user", "content": "..."}, ...]``; roles ``"system"``, ``"user"``,
                ``"assistant"``, ``"tool"`` (the template decides which orders it accepts).
            add_generation_prompt: end with the template's generation prompt (the start of the assistant's
                answer); ``None`` (default): when the last message is not the assistant's.

        Returns:
            A :class:`mlxterp.Conversation`: ``.tokens``, ``.turns`` (role, span, content of
            each message), ``.turn(i)`` (a slice of positions), ``.preamble``, ``.generation_prompt``; pass it
            to ``trace``, ``generate`` (which reuses its KV cache turn after turn) and the analysis helpers.

        Raises:
            ChatTemplateError: the tokenizer has no chat template, or the template cannot render the messages
                (its own error is chained), or rewrites earlier turns once later ones follow.
            TypeError: ``messages`` is not a list of message dicts, a content is not a str, or
                ``add_generation_prompt`` is not a bool or None (the message and the expected form are named).
            ValueError: an empty list, a message without ``"role"`` or ``"content"``, or a role outside
                :data:`~mlxterp.conversation.ROLES` (the closest one is suggested).
        """
        from .conversation import Conversation

        return Conversation(self.tokenizer, messages, add_generation_prompt)

    def turn_patching(self, clean: Any, corrupted: Any, component: str = "output",
                      layers: Optional[List[int]] = None, turns: Optional[List[int]] = None, metric: Any = "l2", *,
                      content_only: bool = False, plot: bool = False, figsize: Tuple[float, float] = (12, 8),
                      cmap: str = "RdBu_r", batch_size: Optional[int] = None, progress: bool = False,
                      save_path: Optional[PathLike] = None, target: Any = None, foil: Any = None,
                      distributed: Any = "auto") -> Any:
        """Layer x turn activation patching: whole turns of ``clean`` patched into ``corrupted``.

        Cell ``(layer, turn)`` gives every position of the turn the clean value of the layer's component in
        the corrupted run and reports the recovery (%) of the last position's logits, as
        :meth:`~InterpretableModel.activation_patching` does; all cells run as staircase batches of compiled
        forwards.

        Args:
            clean: the clean :class:`~mlxterp.Conversation`.
            corrupted: the corrupted one: the same turns (roles in order), each with as many tokens as in
                ``clean`` (positions are matched one to one; other lengths are refused, naming the turn).
            component: the layer component to patch (default ``"output"``, the residual stream; ``"mlp"``,
                ``"attn"``, ...).
            layers: layer indices; ``None`` = all.
            turns: turn indices (negative count from the end); ``None`` = all.
            metric: as in :meth:`~InterpretableModel.activation_patching` (distances, ``"logit_diff"``,
                ``"logprob"``, ``"prob"``, a function of the last position's logits).
            content_only: patch each turn's content only, not its role header and end-of-turn markers.
            plot: draw a heatmap (shown only with an interactive matplotlib backend).
            figsize: plot size in inches.
            cmap: diverging colormap.
            batch_size: patched variants per forward; ``None`` picks one from the activation size.
            progress: show a progress bar.
            save_path: write the heatmap as a PNG here.
            target: the target token of a score metric (text or id); default the clean prediction.
            foil: ``logit_diff``'s foil token; default the corrupted prediction.
            distributed: shard the cells over ``mx.distributed`` processes (as
                :meth:`~InterpretableModel.activation_patching`).

        Returns:
            A :class:`mlxterp.conversation.TurnPatching` (``.grid``: a float64 numpy array
            ``(len(layers), len(turns))`` of recovery in percent; ``.layers``,
            ``.positions`` (the turns), ``.position_labels``, ``.roles``, ``.spans``, ``.top(k)``,
            ``.plot(save_path=None)``).

        Raises:
            TypeError: an argument is not a conversation.
            ValueError: different turns or turn lengths, identical clean and corrupted logits, or a bad
                ``component`` / ``layers`` / ``turns`` / ``metric`` (the valid choices are listed).
        """
        from .patching import turn_patching

        return turn_patching(self, clean, corrupted, component, layers, turns, metric, content_only=content_only,
                             plot=plot, figsize=figsize, cmap=cmap, batch_size=batch_size, progress=progress,
                             save_path=save_path, target=target, foil=foil, distributed=distributed)

    def turn_attention(self, conv: Any, layers: Optional[List[int]] = None, *, content_only: bool = False) -> Any:
        """Attention mass from each turn of ``conv`` to each earlier turn, per layer and head, in one traced
        forward (from ``attn.pattern``).

        Args:
            conv: a :class:`~mlxterp.Conversation`.
            layers: layer indices; ``None`` = all.
            content_only: segments are the turns' contents (headers and markers count as outside).

        Returns:
            A :class:`mlxterp.conversation.TurnAttention`: ``.mass`` ``(layers, heads, S, S)`` (float64
            fractions of attention, in [0, 1]) from segment ``i`` (query, the mean over its positions) to
            segment ``j`` (key, the total over its positions),

            segments being the turns then the generation prompt; ``.outside`` (mass on positions in no
            segment, the preamble); ``.per_layer`` and ``.mean`` (averaged over heads, and layers);
            ``.labels``; ``.top(k)``; ``.plot(layer=None, heads=None, save_path=None)``.

        Raises:
            TypeError: ``conv`` is not a conversation.
            ValueError: bad ``layers``, or a model without attention.
        """
        from .attention import turn_attention

        return turn_attention(self, conv, layers, content_only=content_only)
