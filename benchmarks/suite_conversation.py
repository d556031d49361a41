"""A conversation's next turn against mlx-lm generating the same tokens from a warm cache.

``conversation_turn``: a conversation of one user message is generated (``gen_tokens`` new tokens; a
quarter of that on models of hidden >= 512), the reply and a second user message are appended, and the
next turn is generated. That next turn reuses the conversation's KV cache (the first turn's prompt and
reply) and runs only the new tokens. Baseline: ``mlx_lm.stream_generate`` (what ``mlx_lm.generate`` runs)
of the same new tokens with ``prompt_cache=`` a warm mlx-lm cache holding the same positions (filled by
mlx-lm's own forward, once; each call gets fresh cache objects over those keys and values). Both make
exactly the same number of tokens (no EOS; ``ignore_eos=True`` on our side), greedy, and must agree token
for token. Every timed call starts from the same cache (a copy of the state after the first turn, made
outside the timed region). The value is the median over rounds of candidate / baseline process CPU time
(other processes on a shared machine do not inflate it); the wall-clock ratio, and the same reply generated
from the whole conversation without a cache, are in the notes. Target: <= 1.2x.

Models whose tokenizer has no chat template (stories260K, the in-memory llamas) get a stand-in: a ChatML
template over a character vocabulary (see :func:`chatml_stand_in`).
"""

from __future__ import annotations

import statistics
import string
import time
from typing import Any, Callable, Iterator

import mlx.core as mx
from mlx_lm.generate import stream_generate
from mlx_lm.models.cache import KVCache, make_prompt_cache

from mlxterp import InterpretableModel
from mlxterp.conversation import Conversation

from .context import Context
from .harness import Row, Target
from .models import Loaded
from .suite_generate import _without_eos

SUITE = "conversation"
DESCRIPTION = "a conversation's next turn (KV cache reused) vs mlx-lm generating the same tokens from a warm cache"

TURN_TARGET = Target("<=", 1.2)
FIRST = ("Here is the start of a story. Once upon a time a little cat lived in a big house by the sea. Every "
         "morning she watched the boats leave the harbour, and every evening she slept by the fire. One day a "
         "storm came. How does the story end?")
SECOND = "Now tell it again, with a dog."
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chatml_stand_in(vocab: int) -> Any:
    """A ChatML tokenizer for a model without a chat template: ``<unk>``, ``<|im_start|>``, ``<|im_end|>``
    (EOS), then one id per character, ``vocab`` ids in all (so that any reply's text encodes back to its
    tokens, as a real tokenizer's would)."""
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    chars = string.ascii_letters + string.digits + " \n.,?!'-:"
    chars = (chars + "".join(chr(0xC0 + i) for i in range(vocab)))[: vocab - len(specials)]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + list(chars))}, merges=[],
                                   unk_token="<unk>"))
    backend.add_special_tokens(specials)
    backend.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", unk_token="<unk>")
    hf.chat_template = CHATML
    return TokenizerWrapper(hf, BPEStreamingDetokenizer)


class Turn:
    """The benchmark's conversation on one model: the state after the first turn and the second turn."""

    def __init__(self, ctx: Context, m: Loaded):
        self.m = m
        tokenizer = m.tokenizer if getattr(m.tokenizer, "chat_template", None) else chatml_stand_in(m.vocab)
        self.model = InterpretableModel(m.module, tokenizer=tokenizer)
        self.n = ctx.settings.gen_tokens if m.hidden < 512 else max(4, ctx.settings.gen_tokens // 4)
        first = self.model.conversation([{"role": "user", "content": FIRST}])
        reply = self.model.generate(first, self.n, ignore_eos=True)
        self.messages = (first.reply(reply) + {"role": "user", "content": SECOND}).messages
        self.state = first.cache.copy()  # the KV of the first turn's prompt and reply
        self.tokens = self.model.conversation(self.messages).tokens
        self.reused = _common_prefix(self.state.tokens, self.tokens)
        self.mlx_tokenizer = _without_eos(Loaded(m.name, m.module, m.hidden, m.layers, m.vocab, tokenizer))
        warm = make_prompt_cache(m.module)  # mlx-lm's own prefill of the positions the turn reuses
        m.module(mx.array([self.tokens[:self.reused]]), cache=warm)
        self.warm = [(c.keys[:, :, :self.reused], c.values[:, :, :self.reused]) for c in warm]
        mx.eval(self.warm)

    def ours(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """(prepare, run): the next turn on a fresh copy of the first turn's cache."""
        conv = Conversation(self.model.tokenizer, self.messages, cache=self.state.copy())

        def run() -> list[int]:
            tokens = self.model.generate(conv, self.n, ignore_eos=True).tokens
            if conv.cache.reused != self.reused:
                raise RuntimeError(f"the turn reused {conv.cache.reused} positions, not {self.reused}")
            return tokens

        return conv, run

    def whole(self) -> tuple[Any, Callable[[], Any]]:
        """(prepare, run): the same reply generated from the whole conversation, no cache."""
        conv = self.model.conversation(self.messages)
        return conv, lambda: self.model.generate(conv, self.n, ignore_eos=True).tokens

    def mlx(self) -> tuple[Any, Callable[[], Any]]:
        """(prepare, run): mlx-lm's stream_generate of the new tokens from a warm cache of the same positions."""
        cache = []
        for keys, values in self.warm:  # a fresh warm cache per call (generation extends it)
            layer = KVCache()
            layer.keys, layer.values, layer.offset = keys, values, self.reused
            cache.append(layer)
        suffix = self.tokens[self.reused:]

        def run() -> list[int]:
            steps = stream_generate(self.m.module, self.mlx_tokenizer, suffix, max_tokens=self.n, prompt_cache=cache)
            return [r.token for r in steps]

        return cache, run


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return min(n, len(b) - 1)


def _timed(side: Callable[[], tuple[Any, Callable[[], Any]]]) -> tuple[float, float, Any]:
    """``(cpu s, wall s, result)`` of one call, its preparation (fresh caches) outside the timed region."""
    _, run = side()
    cpu, wall = time.process_time(), time.perf_counter()
    out = run()
    return time.process_time() - cpu, time.perf_counter() - wall, out


def conversation_turn(ctx: Context) -> Iterator[Row]:
    """The next turn of a conversation against mlx-lm from a warm cache."""
    base, cand = "mlx_lm stream_generate, warm prompt_cache", "model.generate(conversation), cache reused"
    for name, reason in ctx.missing(ctx.settings.generate_models).items():
        yield Row(SUITE, "conversation_turn", name, "", base, cand, float("nan"), skipped=reason)
    for name in ctx.available(ctx.settings.generate_models):
        t = Turn(ctx, ctx.model(name))
        sides = [t.mlx, t.ours, t.whole]
        for side in sides + [t.ours, t.whole]:  # warm-up: a shape's second prompt pass is its compiled one
            _timed(side)
        rounds = 1 if ctx.settings.quick and t.m.hidden >= 512 else max(2, ctx.settings.repeats)
        samples: list[list[tuple[float, float, Any]]] = [[] for _ in sides]
        for r in range(rounds):
            for k in range(len(sides)):
                i = (k + r) % len(sides)
                samples[i].append(_timed(sides[i]))
        mlx, ours, whole = samples
        if any(s[2] != mlx[0][2] for s in mlx + ours + whole):
            raise RuntimeError(f"{name}: the sides generated different tokens")
        ratio = statistics.median(o[0] / b[0] for o, b in zip(ours, mlx))
        wall = statistics.median(o[1] / b[1] for o, b in zip(ours, mlx))
        from_scratch = statistics.median(w[0] / o[0] for w, o in zip(whole, ours))
        note = (f"{len(t.tokens) - t.reused} new prompt tokens after {t.reused} reused, {t.n} generated; wall-clock "
                f"ratio {wall:.3f}x; the whole conversation without a cache takes {from_scratch:.2f}x the turn")
        mins = min(o[0] for o in ours) / min(b[0] for b in mlx)
        yield Row(SUITE, "conversation_turn", name, f"b1 +{len(t.tokens) - t.reused} tok, {t.n} new", base, cand,
                  ratio, "x", TURN_TARGET, statistics.median(b[0] for b in mlx),
                  statistics.median(o[0] for o in ours), mins, note)


CASES = {"conversation_turn": conversation_turn}
