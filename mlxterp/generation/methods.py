"""The generation methods of InterpretableModel: ``generate`` and ``steering_vector``."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import mlx.core as mx


class GenerationMixin:
    """Mixed into InterpretableModel; each method delegates to ``mlxterp.generation``."""

    def generate(self, prompt: Union[str, List[str], List[int], mx.array], max_new_tokens: int = 20, *,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: Optional[int] = None,
                 stop: Union[None, str, Sequence[str]] = None, ignore_eos: bool = False,
                 stream: Optional[Callable[[Any], Any]] = None, chat: bool = False,
                 interventions: Optional[Dict[str, Callable]] = None, compile: Union[bool, str] = "auto",
                 dictionaries: Optional[List[Any]] = None) -> Any:
        """Generate text with interventions: a context that records them once and applies them at every step.

        ``with model.generate(prompt) as gen:`` records reads, writes and ``.save()``-s like
        ``model.trace``; they run on exit: the prompt pass once, then one decode step per new token on a KV
        cache. See :class:`mlxterp.generation.Generation` for what applies when, and for the results
        (``gen.text``, ``gen.tokens``, stacked saves). Used without ``with``, it runs when its results are
        first read.

        Args:
            prompt: a prompt, a list of prompts (one batch, left-padded; each row generates as if alone),
                token ids, an integer ``mx.array`` ``(batch, seq)``, or a
                :class:`~mlxterp.conversation.Conversation` (continued from its KV cache when nothing is
                recorded: only the tokens the cache lacks run).
            max_new_tokens: most tokens to generate per prompt.
            temperature: 0 is greedy; above 0 samples from ``softmax(logits / temperature)``.
            top_p: nucleus sampling (1 keeps every token); needs ``temperature > 0``.
            top_k: sample among the ``top_k`` most likely tokens (0, or the vocabulary size, keeps every
                token); needs ``temperature > 0``.
            seed: draw from this seed, an int in ``[0, 2**64)`` (the global random state is left alone);
                ``None`` draws from the global random state.
            stop: a string or strings that end a row's text (cut before them).
            ignore_eos: keep generating after the tokenizer's end-of-sequence token.
            stream: called with a :class:`mlxterp.generation.TokenEvent` (row, step, token, text) for every
                new token, as it is generated.
            chat: wrap each prompt as a user message in the tokenizer's chat template.
            interventions: ``{module name: fn}`` applied to that module's output at every step.
            dictionaries: SAEs and transcoders spliced at their sites at every step (as ``model.trace`` splices
                them): ``h.sae.features[:, -1, i] = 8.0`` in the block steers by feature ``i`` at every step.
            compile: ``"auto"`` (default) runs decode steps as one compiled function on a static KV cache
                that grows with the generation, when the model supports it (checked once per model against
                mlx-lm's cache) and the program has no key axis (attention scores or patterns), else
                eagerly; ``True`` requires the compiled path; ``False`` runs eagerly on mlx-lm's own cache.

        Returns:
            A :class:`mlxterp.generation.Generation`.
        """
        from .context import Generation

        self._sync_tree()  # a module replaced since the last run: names, vocabulary and step programs follow
        return Generation(self, prompt, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          seed=seed, stop=stop, ignore_eos=ignore_eos, stream=stream, chat=chat,
                          interventions=interventions, compile=compile, dictionaries=dictionaries)

    def steering_vector(self, toward: Union[str, Sequence[str]], away: Union[str, Sequence[str]], layer: int,
                        positions: str = "last") -> mx.array:
        """A contrastive steering vector: mean residual over ``toward`` minus that over ``away``.

        Args:
            toward: prompt(s) to steer toward (``["Love", ...]``).
            away: prompt(s) to steer away from (``["Hate", ...]``).
            layer: the layer whose output (the residual stream after it) is read.
            positions: ``"last"`` (each prompt's last token, default) or ``"all"`` (each prompt's mean).

        Returns:
            ``(hidden,)`` in the residual's dtype; add ``alpha * v`` to ``model.layers[layer].output``.
        """
        from .steering import steering_vector

        return steering_vector(self, toward, away, layer, positions)
