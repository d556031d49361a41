"""Chat messages checked, and rendered to token ids by the tokenizer's own chat template."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Sequence

from ..inputs import is_int

ROLES = ("system", "user", "assistant", "tool")
"""The message roles a conversation accepts (whether the template accepts a given order of them is its own
choice: Gemma's refuses a system message, or roles that do not alternate)."""
MESSAGE_FORM = "{'role': 'user', 'content': 'text'}"


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template, or its template cannot render these messages."""


def check_messages(messages: Any, arg: str = "messages") -> tuple[dict, ...]:
    """``messages`` as a tuple of message dicts (copies), each with a known ``role`` and a str ``content``.

    Raises:
        TypeError: not a list of dicts, or a content that is not a str.
        ValueError: an empty list, a missing key, or a role outside :data:`ROLES`.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(f"{arg}: expected a list of messages such as [{MESSAGE_FORM}], got {type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError(f"{arg}: expected at least one message such as {MESSAGE_FORM}, got an empty list")
    return tuple(check_message(m, f"{arg}[{i}]") for i, m in enumerate(messages))


def check_message(message: Any, where: str) -> dict:
    """One message as a dict copy (see :func:`check_messages`)."""
    if not isinstance(message, Mapping):
        raise TypeError(f"{where}: expected a message dict such as {MESSAGE_FORM}, got {type(message).__name__}")
    missing = [k for k in ("role", "content") if k not in message]
    if missing:
        raise ValueError(f"{where} has no {' or '.join(repr(k) for k in missing)}; a message is a dict such as "
                         f"{MESSAGE_FORM} (keys given: {sorted(map(str, message))})")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        close = difflib.get_close_matches(str(role), ROLES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{where} has role {role!r}{hint}; expected one of {', '.join(map(repr, ROLES))}")
    if not isinstance(content, str):
        raise TypeError(f"{where}['content'] is a {type(content).__name__}; expected the message's text (a str)")
    return dict(message)


def require_template(tokenizer: Any) -> None:
    """A :class:`ChatTemplateError` when ``tokenizer`` is missing or has no chat template."""
    if tokenizer is None:
        raise ChatTemplateError("a conversation needs a tokenizer with a chat template, and this model has no "
                                "tokenizer: pass InterpretableModel(model, tokenizer=...)")
    if not getattr(tokenizer, "chat_template", None) or not hasattr(tokenizer, "apply_chat_template"):
        raise ChatTemplateError(
            f"this model's tokenizer ({type(tokenizer).__name__}) has no chat template, so the turns of a "
            "conversation cannot be rendered; set one (tokenizer.chat_template = '...jinja...', as the model's "
            "tokenizer_config.json gives it) or trace the formatted text as a plain prompt")


def render(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` in the tokenizer's chat template (its own ``apply_chat_template``).

    Raises:
        ChatTemplateError: the template raised (it refuses these messages), or gave no token ids.
    """
    try:
        out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                            tokenize=True)
    except Exception as e:  # the template's own refusal (raise_exception, a missing key): said as ours, chained
        raise ChatTemplateError(f"the chat template cannot render these messages ({_roles(messages)}): "
                                f"{type(e).__name__}: {e}") from e
    if isinstance(out, Mapping):  # transformers may return a BatchEncoding
        out = out["input_ids"]
    ids = list(out)
    if not all(is_int(t) for t in ids):
        raise ChatTemplateError(f"the tokenizer's apply_chat_template returned {type(out).__name__} items that are "
                                "not token ids; expected a list of int")
    return [int(t) for t in ids]


def render_text(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """The text of ``messages`` in the chat template."""
    return str(tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                             tokenize=False))


def _roles(messages: Sequence[dict]) -> str:
    return "roles " + ", ".join(str(m.get("role")) for m in messages) if messages else "no messages"
