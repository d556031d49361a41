"""A conversation: chat messages in the model's chat template, with each turn's token positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, Sequence

from ..inputs import PromptObject, is_int
from .cache import ConversationCache
from .spans import Layout, layout
from .template import check_message, check_messages, render_text, require_template


class Turn(NamedTuple):
    """One message's place in a conversation's tokens.

    Attributes:
        role: the message's role (``"system"``, ``"user"``, ``"assistant"``, ``"tool"``).
        span: its positions: role header, content and end-of-turn markers, as the template writes them.
        content: the positions of its text alone (those that change with it).
    """

    role: str
    span: slice
    content: slice

    def __repr__(self) -> str:
        return f"Turn({self.role!r}, span={_show(self.span)}, content={_show(self.content)})"


def _show(span: slice) -> str:
    return f"{span.start}:{span.stop}"


class Conversation(PromptObject):
    """Chat messages rendered by the model's chat template (made by :meth:`InterpretableModel.conversation`).

    Traces, generation and the analysis helpers take it wherever they take a prompt. Turn ``i`` is
    ``messages[i]``; :meth:`turn` gives its positions as a slice for indexing a traced value
    (``model.layers[12].output[:, conv.turn(2)]``). See :mod:`mlxterp.conversation.spans` for what a span,
    a content, the preamble and the generation prompt cover and how they are found.

    A conversation is a value: ``conv + message`` and :meth:`reply` return new ones. Conversations made from
    one another share one KV cache (:attr:`cache`): ``model.generate(conv)`` runs only the tokens that the
    cache does not hold yet (the longest shared prefix of token ids is reused), then keeps the KV of
    everything it computed for the next turn.

    Attributes:
        add_generation_prompt: whether the tokens end with the template's generation prompt (by default, when
            the last message is not the assistant's).
        cache: the :class:`~mlxterp.conversation.ConversationCache` shared along the conversation.
    """

    def __init__(self, tokenizer: Any, messages: Sequence[Mapping], add_generation_prompt: Optional[bool] = None,
                 *, cache: Optional[ConversationCache] = None):
        require_template(tokenizer)
        checked = check_messages(messages)
        if add_generation_prompt is not None and not isinstance(add_generation_prompt, bool):
            raise TypeError(f"add_generation_prompt: expected True, False or None (automatic: True unless the last "
                            f"message is the assistant's), got {add_generation_prompt!r}")
        self._tokenizer = tokenizer
        self._messages = checked
        self._choice = add_generation_prompt
        self.add_generation_prompt = (checked[-1]["role"] != "assistant" if add_generation_prompt is None
                                      else add_generation_prompt)
        self._layout: Layout = layout(tokenizer, checked, self.add_generation_prompt)
        self.cache = cache if cache is not None else ConversationCache()

    # -- tokens and turns ---------------------------------------------------------------------
    @property
    def messages(self) -> list[dict]:
        """The messages (copies: editing them does not change the conversation; make a new one)."""
        return [dict(m) for m in self._messages]

    @property
    def tokens(self) -> list[int]:
        """The conversation's token ids, generation prompt included."""
        return list(self._layout.tokens)

    @property
    def turns(self) -> list[Turn]:
        """One :class:`Turn` per message, in order."""
        bounds, contents = self._layout.bounds, self._layout.contents
        return [Turn(m["role"], slice(bounds[i], bounds[i + 1]), slice(*contents[i]))
                for i, m in enumerate(self._messages)]

    def turn(self, index: int, content_only: bool = False) -> slice:
        """The positions of turn ``index`` (negative counts from the end) as a slice.

        Args:
            index: the turn (message) index.
            content_only: only the message's text, without the role header and end-of-turn markers.

        Returns:
            ``slice(start, stop)`` of token positions in :attr:`tokens` (the sequence axis of a traced value:
            ``model.layers[i].output[:, conv.turn(2)]``); empty for a message the template folds into the next.

        Raises:
            TypeError: ``index`` is not an int.
            IndexError: ``index`` is out of range (the valid range is named).
        """
        turn = self.turns[self._check_index(index)]
        return turn.content if content_only else turn.span

    @property
    def preamble(self) -> slice:
        """The positions before the first turn (a BOS token, a default system prompt), maybe empty."""
        return slice(0, self._layout.bounds[0])

    @property
    def generation_prompt(self) -> slice:
        """The positions of the generation prompt (empty without ``add_generation_prompt``)."""
        return slice(self._layout.prompt_start, len(self._layout.tokens))

    @property
    def text(self) -> str:
        """The conversation as the chat template writes it."""
        return render_text(self._tokenizer, self._messages, self.add_generation_prompt)

    @property
    def labels(self) -> list[str]:
        """``"<index> <role>"`` of each turn (for tables and plots)."""
        return [f"{i} {m['role']}" for i, m in enumerate(self._messages)]

    def _check_index(self, index: Any) -> int:
        n = len(self._messages)
        if not is_int(index):
            raise TypeError(f"turn index {index!r} is a {type(index).__name__}; expected an int")
        if not -n <= int(index) < n:
            raise IndexError(f"turn {int(index)} is out of range: this conversation has {n} turns "
                             f"({', '.join(self.labels)}), valid indices 0 to {n - 1} (or -{n} to -1)")
        return int(index) % n

    # -- new conversations ---------------------------------------------------------------------
    def __add__(self, other: Any) -> "Conversation":
        """A new conversation with ``other`` (a message dict or a list of them) appended; it shares the cache."""
        if isinstance(other, Mapping):
            added = (check_message(other, "the added message"),)
        elif isinstance(other, (list, tuple)):
            added = check_messages(other, "the added messages")
        else:
            raise TypeError(f"conversation + {type(other).__name__}: add a message dict such as "
                            "{'role': 'user', 'content': '...'} or a list of them")
        return Conversation(self._tokenizer, self._messages + added, self._choice, cache=self.cache)

    def reply(self, reply: Any) -> "Conversation":
        """This conversation with the assistant's reply appended (a generation of it, or text); it shares the
        cache, so the next generation reuses what generating the reply computed."""
        text = getattr(reply, "text", reply)
        if not isinstance(text, str):
            raise TypeError(f"reply: expected the assistant's text or a generation of one prompt, got "
                            f"{type(reply).__name__}" + (" of several prompts" if isinstance(text, list) else ""))
        return self + {"role": "assistant", "content": text}

    # -- as a prompt ---------------------------------------------------------------------------
    def token_ids(self, tokenizer: Any) -> list[int]:
        """The conversation's token ids (:attr:`tokens`), as a prompt: traces and generation call it.

        Args:
            tokenizer: the tokenizer of the model the conversation is given to.

        Raises:
            ValueError: ``tokenizer`` is not the one the conversation was rendered with (make it with this
                model: ``model.conversation(conv.messages)``).
        """
        if tokenizer is not self._tokenizer:
            raise ValueError("this conversation was rendered with another tokenizer than this model's; make it with "
                             "this model: model.conversation(conv.messages)")
        return self.tokens

    def for_generation(self, owner: Any) -> ConversationCache:
        """Called by ``generate`` before generating from this conversation: checks that it can be generated
        from and returns the :attr:`cache` (a generation of it alone that records nothing resumes from the cache
        and keeps its KV there; in a batch of prompts it is only checked, and the batch starts from nothing).

        Args:
            owner: the InterpretableModel generating (its tokenizer must be the conversation's).

        Raises:
            ValueError: another model's tokenizer, or no generation prompt (the last message is the
                assistant's, or ``add_generation_prompt=False``).
        """
        self.token_ids(owner.tokenizer)
        if not self.add_generation_prompt:
            raise ValueError(f"this conversation ({', '.join(self.labels)}) has no generation prompt, so the model "
                             "would not answer as the assistant: add a user message (conv + {'role': 'user', "
                             "'content': ...}) or make it with add_generation_prompt=True")
        return self.cache

    def __repr__(self) -> str:
        prompt = ", generation prompt" if self.add_generation_prompt else ""
        return (f"Conversation({len(self._messages)} turns: {', '.join(m['role'] for m in self._messages)}; "
                f"{len(self._layout.tokens)} tokens{prompt})")
