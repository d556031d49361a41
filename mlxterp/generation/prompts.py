"""Prompts for generation: text, chat messages or token ids, left-padded into one batch.

Generation pads on the left, as mlx-lm's batch generation does: every row's newest token is then the last
column at every step (``[:, -1]`` is each prompt's last token in the prompt pass, and each new token
after), and the cache's mask hides the padding. (A trace pads on the right instead: see
:mod:`mlxterp.inputs`.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mlx.core as mx
import numpy as np

from ..core import WrappedModel
from ..inputs import PromptObject, TokenBatch, check_range, token_rows


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """The prompts' token rows, their left-padded batch, and whether one prompt was given."""

    rows: tuple[tuple[int, ...], ...]
    batch: TokenBatch
    single: bool

    @staticmethod
    def of(owner: WrappedModel, prompt: Any, chat: bool) -> "PromptBatch":
        """Normalise ``prompt`` (a str, a list of str, token ids, or an integer array) for ``owner``."""
        single = (isinstance(prompt, (str, PromptObject)) or _is_id_list(prompt)
                  or (isinstance(prompt, mx.array) and prompt.ndim == 1))
        if chat:
            prompt = [_chat_ids(owner.tokenizer, p) for p in ([prompt] if single else prompt)]
        rows = token_rows(prompt, owner.tokenizer)
        tokens = left_pad(rows, owner._pad_id())
        check_range(TokenBatch(tokens, tuple(len(r) for r in rows)), owner._embedding_rows)
        return PromptBatch(tuple(tuple(r) for r in rows), TokenBatch(tokens, tuple(len(r) for r in rows)), single)

    @property
    def tokens(self) -> mx.array:
        return self.batch.tokens

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def left_padding(self) -> list[int]:
        return [self.columns - len(r) for r in self.rows]

    @property
    def uniform(self) -> bool:
        return not any(self.left_padding)

    def shape(self, per_row: list) -> Any:
        """``per_row`` as the prompt was given: its only item for a single prompt, else the list."""
        return per_row[0] if self.single else per_row


def prefix_cache(owner: WrappedModel, prompt: Any) -> Any:
    """The KV prefix cache a prompt object carries (a conversation's, see
    :meth:`mlxterp.inputs.PromptObject.for_generation`), or None; each prompt object of a batch is checked,
    and a batch starts from nothing."""
    if isinstance(prompt, PromptObject):
        return prompt.for_generation(owner)
    for item in prompt if isinstance(prompt, (list, tuple)) else ():
        if isinstance(item, PromptObject):
            item.for_generation(owner)
    return None


def left_pad(rows: list[list[int]], pad_id: int) -> mx.array:
    """Left-pad token rows with ``pad_id`` into one int32 array."""
    width = max(len(r) for r in rows)
    data = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, r in enumerate(rows):
        data[i, width - len(r):] = r
    return mx.array(data)


def _is_id_list(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt)


def _chat_ids(tokenizer: Any, message: Any) -> list[int]:
    """Token ids of one user message in the tokenizer's chat template, ready for the assistant's answer."""
    if isinstance(message, PromptObject):
        raise TypeError(f"chat=True wraps text in the chat template, and this {type(message).__name__} is in it "
                        "already: generate it without chat=True")
    if not isinstance(message, str):
        raise TypeError(f"chat=True needs prompts as text, got {type(message).__name__}")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat=True needs a tokenizer with a chat template, and this model's has none; "
                         "give the formatted prompt as text instead")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True)
    return [int(i) for i in ids]
