"""Where each message of a conversation lies in its tokens, read from the chat template itself.

The template renders every prefix of the messages (``messages[:1]``, ``messages[:2]``, ...); message ``i``'s
turn is what ``messages[:i + 1]`` adds to ``messages[:i]``, token for token. This needs no knowledge of any
template's markers, so it holds for ChatML, Llama 3, Gemma and any template whose rendering of a prefix
begins the rendering of the whole (checked: a template that rewrites earlier turns is refused).

- A turn's **span** is everything the template emits for its message: the role header, the content, the
  end-of-turn markers (``<|im_start|>user\\n ... <|im_end|>\\n`` in ChatML).
- Its **content** is the tokens that change with the message's text: the span of the same turn rendered
  with an empty content is the turn less its content (what both renderings share at the start and at the
  end is header and markers).
- The **preamble** is what the template emits before the first message's own turn: a BOS token, or a
  default system prompt (SmolLM2's template adds one when no system message is given). It is found by
  rendering the first message after two others, where the template writes it as a plain turn: what the
  real rendering holds before that turn is the preamble. Where that rendering fails (the template refuses
  the probe), a leading BOS that appears nowhere else is the preamble.
- The **generation prompt** (``add_generation_prompt``) is what the template adds after the last turn to
  start the assistant's answer (``<|im_start|>assistant\\n``).

A message the template folds into the next one (Gemma puts the system prompt inside the first user turn)
has an empty span; its text is then inside the next turn's span.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from .template import ChatTemplateError, render

# Messages rendered before the first one to see how the template writes it as a plain turn (by its role).
_PROBE = ({"role": "user", "content": "x"}, {"role": "assistant", "content": "y"})
_PROBES = {"assistant": _PROBE[:1]}


@dataclasses.dataclass(frozen=True)
class Layout:
    """A conversation's tokens and where its parts lie (positions, ``start:stop``).

    Attributes:
        tokens: the whole rendering, generation prompt included when asked.
        bounds: turn ``i`` spans ``bounds[i]:bounds[i + 1]``; ``bounds[0]`` ends the preamble.
        contents: ``(start, stop)`` of each turn's content.
        prompt_start: where the generation prompt starts (``len(tokens)`` when there is none).
    """

    tokens: tuple[int, ...]
    bounds: tuple[int, ...]
    contents: tuple[tuple[int, int], ...]
    prompt_start: int


def layout(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> Layout:
    """The :class:`Layout` of ``messages`` rendered by ``tokenizer``'s chat template.

    Raises:
        ChatTemplateError: the template cannot render a prefix of the messages, or renders a prefix as tokens
            that do not begin the longer rendering (its turns cannot be told apart).
    """
    prefixes = [render(tokenizer, messages[: i + 1], False) for i in range(len(messages))]
    full = render(tokenizer, messages, True) if add_generation_prompt else prefixes[-1]
    for i in range(1, len(prefixes)):
        _check_prefix(tokenizer, prefixes[i - 1], prefixes[i], f"messages[:{i}]", f"messages[:{i + 1}]")
    _check_prefix(tokenizer, prefixes[-1], full, "the messages", "the messages with the generation prompt")
    start = preamble_length(tokenizer, messages[0], prefixes[0], full)
    bounds = (start,) + tuple(len(p) for p in prefixes)
    contents = tuple(_content(tokenizer, messages, i, prefixes[i], bounds[i], bounds[i + 1])
                     for i in range(len(messages)))
    return Layout(tuple(full), bounds, contents, len(prefixes[-1]))


def preamble_length(tokenizer: Any, first: dict, rendered: list[int], full: list[int]) -> int:
    """How many tokens the template emits before the first message's own turn (see the module docstring);
    ``rendered`` is the first message alone, ``full`` the whole conversation."""
    probe = _PROBES.get(first["role"], _PROBE)
    try:
        before = render(tokenizer, probe, False)
        after = render(tokenizer, probe + (first,), False)
    except ChatTemplateError:  # the template refuses the probe (Gemma: roles must alternate): use the fallback
        after = None
    if after is not None and after[: len(before)] == before:
        own = after[len(before):]  # the first message as a plain turn
        start = len(rendered) - len(own)
        if own and start >= 0 and rendered[start:] == own:
            return start
    bos = getattr(tokenizer, "bos_token_id", None)
    return 1 if isinstance(bos, int) and rendered[:1] == [bos] and full.count(bos) == 1 else 0


def _content(tokenizer: Any, messages: Sequence[dict], i: int, real: list[int], start: int,
             stop: int) -> tuple[int, int]:
    """``(start, stop)`` of turn ``i``'s content: where ``real`` (``messages[:i + 1]`` rendered) differs from
    the same messages with turn ``i``'s content empty."""
    empty = render(tokenizer, list(messages[:i]) + [dict(messages[i], content="")], False)
    head = _common_prefix(real, empty)
    tail = _common_prefix(real[::-1], empty[::-1])
    tail = min(tail, min(len(real), len(empty)) - head)  # shared head and tail never overlap
    lo = min(max(head, start), stop)
    return lo, max(min(len(real) - tail, stop), lo)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _check_prefix(tokenizer: Any, shorter: list[int], longer: list[int], what: str, whole: str) -> None:
    if longer[: len(shorter)] == shorter:
        return
    at = _common_prefix(shorter, longer)
    raise ChatTemplateError(
        f"the chat template renders {what} as tokens that do not begin its rendering of {whole} (they differ at "
        f"token {at}: {_show(tokenizer, shorter[at:at + 3])} against {_show(tokenizer, longer[at:at + 3])}): it "
        "writes earlier turns differently once later ones follow, so turn boundaries cannot be read from it")


def _show(tokenizer: Any, ids: list[int]) -> str:
    return f"{ids} ({tokenizer.decode(ids)!r})"
