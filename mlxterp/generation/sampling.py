"""Choosing tokens and deciding when to stop: samplers, seeds, EOS, stop strings, streamed text."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_k, apply_top_p, greedy_sampler

from ..inputs import is_int
from ..scalars import is_number

Sampler = Callable[[mx.array], mx.array]


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    """What a streaming callback receives for each new token of each row.

    Attributes:
        row: the prompt's row in the batch (0 for a single prompt).
        step: the generation step that produced ``token`` (step 0 is the prompt pass).
        token: the new token id.
        text: the new piece of that row's text (it may be empty while a multi-byte character or a possible
            stop string is incomplete).
    """


    row: int
    step: int
    token: int
    text: str


def token_sampler(temperature: float, top_p: float, top_k: int, seed: Optional[int],
                  vocab: Optional[int] = None) -> Sampler:
    """A sampler of next tokens from log-probabilities ``(batch, vocab)`` (greedy at temperature 0).

    Filters are mlx-lm's (``apply_top_p``, ``apply_top_k``; ``top_k`` equal to the vocabulary ``vocab``
    keeps every token). With a ``seed``, draws come from ``mx.random.key(seed)``, split once per step as MLX
    splits its global key, so a seeded generation draws what mlx-lm draws after ``mx.random.seed(seed)`` and
    leaves the global random state alone; without one they come from (and advance) the global state, as in
    mlx-lm. Every argument is checked first: a bad one inside mlx-lm's compiled filters would also leave
    MLX's global random state unusable.
    """
    check_sampling(temperature, top_p, top_k, seed, vocab)
    top_k, seed = int(top_k), None if seed is None else int(seed)  # numpy ints as Python ints, for MLX
    if temperature == 0:
        return greedy_sampler
    key = [mx.random.key(seed)] if seed is not None else None
    scale = 1.0 / float(temperature)
    top_k = 0 if top_k == vocab else top_k

    def sample(logprobs: mx.array) -> mx.array:
        if 0 < top_p < 1:
            logprobs = apply_top_p(logprobs, float(top_p))
        if top_k > 0:
            logprobs = apply_top_k(logprobs, top_k)
        if key is None:
            return mx.random.categorical(logprobs * scale)
        key[0], draw = mx.random.split(key[0])
        return mx.random.categorical(logprobs * scale, key=draw)

    return sample


_FLOAT32_MAX = 3.4028234663852886e38


def check_sampling(temperature: Any, top_p: Any, top_k: Any, seed: Any, vocab: Optional[int] = None) -> None:
    """ValueError naming the first bad sampling argument (``vocab``: the model's, bounding ``top_k``)."""
    if not (is_number(temperature) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature!r}: expected a number >= 0 (0 is greedy)")
    if 0 < temperature and 1.0 / temperature > _FLOAT32_MAX:
        raise ValueError(f"temperature={temperature!r}: too small to divide logits by (1/temperature overflows "
                         "float32); use 0 for greedy decoding")
    if not (is_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r}: expected a number in (0, 1] (1 keeps every token)")
    top = "" if vocab is None else f" and <= {vocab} (the model's vocabulary)"
    if not (is_int(top_k) and 0 <= top_k and (vocab is None or top_k <= vocab)):
        raise ValueError(f"top_k={top_k!r}: expected an int >= 0{top} (0 keeps every token)")
    if temperature == 0 and (top_p < 1 or top_k > 0):
        raise ValueError(f"top_p={top_p} / top_k={top_k} need temperature > 0: greedy decoding takes the top "
                         "token, so filtering does nothing")
    if seed is not None and not (is_int(seed) and 0 <= seed < 2**64):
        raise ValueError(f"seed={seed!r}: expected an int in [0, 2**64) (MLX's random keys are 64-bit) or None")


def eos_ids(tokenizer: Any) -> frozenset[int]:
    """The tokenizer's end-of-sequence ids (mlx-lm's ``eos_token_ids``, else ``eos_token_id``)."""
    if tokenizer is None:
        return frozenset()
    ids = getattr(tokenizer, "eos_token_ids", None)
    if ids is None:
        single = getattr(tokenizer, "eos_token_id", None)
        ids = [] if single is None else [single]
    return frozenset(int(i) for i in ids)


def stop_strings(stop: Any) -> tuple[str, ...]:
    """``stop`` as a tuple of non-empty strings (``None``: none)."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise ValueError(f"stop={stop!r}: expected a non-empty string or a list of them")
    return tuple(items)


class Rows:
    """The new tokens of each row, when each row finished and why, and its text so far.

    A row finishes at EOS (the EOS token is not kept), when its text contains a stop string (the text is
    cut before it; the tokens keep the one that completed it), or at ``max_new_tokens``.
    """

    def __init__(self, batch: int, max_new_tokens: int, eos: frozenset[int], stops: Sequence[str],
                 decode: Optional[Callable[[list[int]], str]], stream: Optional[Callable[[TokenEvent], Any]]):
        if (stops or stream is not None) and decode is None:
            raise ValueError("stop strings and streaming need a tokenizer to turn tokens into text; "
                             "this model has none")
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.reasons: list[Optional[str]] = [None] * batch
        self.max_new_tokens = max_new_tokens
        self.eos = eos
        self.stops = tuple(stops)
        self.decode = decode
        self.stream = stream
        self._emitted = [""] * batch
        self._texts: list[Optional[str]] = [None] * batch

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.reasons)

    def push(self, step: int, ids: Sequence[int]) -> None:
        """Take step ``step``'s token for every unfinished row."""
        for row, token in enumerate(ids):
            if self.reasons[row] is not None:
                continue
            if token in self.eos:
                self.reasons[row] = "eos"
                continue
            self.tokens[row].append(int(token))
            if self.stops or self.stream is not None:
                self._follow_text(row, step, int(token))
            if self.reasons[row] is None and len(self.tokens[row]) >= self.max_new_tokens:
                self.reasons[row] = "length"

    def text(self, row: int) -> str:
        """The row's final text (cut before a stop string)."""
        if self._texts[row] is None:
            self._texts[row] = self._cut(self.decode(self.tokens[row]))[0]
        return self._texts[row]

    def _follow_text(self, row: int, step: int, token: int) -> None:
        text, stopped = self._cut(self.decode(self.tokens[row]))
        if stopped:
            self.reasons[row] = "stop"
            self._texts[row] = text
        else:
            text = text[: len(text) - self._held_back(text)]
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            text = text[:-1]
        piece = text[len(self._emitted[row]):] if text.startswith(self._emitted[row]) else ""
        self._emitted[row] += piece
        if self.stream is not None:
            self.stream(TokenEvent(row, step, token, piece))

    def _cut(self, text: str) -> tuple[str, bool]:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return (text[: min(hits)], True) if hits else (text, False)

    def _held_back(self, text: str) -> int:
        """Length of the longest end of ``text`` that could begin a stop string (not streamed yet)."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
