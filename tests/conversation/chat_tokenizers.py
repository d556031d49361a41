"""Real Hugging Face tokenizers for tests, built offline: the chat templates and special tokens of published
tokenizer configs (``tokenizers/*.json``, written by hand from ChatML/SmolLM2, Llama 3 and Gemma), over a
character-level vocabulary small enough for the tiny test models (< 128 ids)."""

from __future__ import annotations

import json
import string
from pathlib import Path

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

CONFIGS = Path(__file__).parent / "tokenizers"
FAMILIES = ("chatml", "llama3", "gemma3")
CHARS = string.ascii_letters + string.digits + " \n.,?!'-:"
EXTRA = "".join(chr(c) for c in range(0xC0, 0x100))  # Latin-1 letters: fill the vocabulary to 128 ids


def config(family: str) -> dict:
    return json.loads((CONFIGS / f"{family}.json").read_text())


def chat_tokenizer(family: str) -> TokenizerWrapper:
    """The family's tokenizer: its special tokens first (ids 0, 1, ...), then one id per character, 128 ids in
    all (the tiny models' vocabulary): any generated id decodes to text that encodes back to it."""
    cfg = config(family)
    specials = ["<unk>"] + [t for t in cfg["additional_special_tokens"] if t != "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for c in (CHARS + EXTRA)[: 128 - len(specials)]:
        vocab[c] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(specials)
    backend.decoder = decoders.Fuse()  # characters joined back without separators
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=cfg["bos_token"], eos_token=cfg["eos_token"],
                                 unk_token=cfg["unk_token"])
    hf.chat_template = cfg["chat_template"]
    return TokenizerWrapper(hf, BPEStreamingDetokenizer)


def ids(tokenizer: TokenizerWrapper, *pieces: str) -> list[int]:
    """Token ids of text pieces, each encoded alone (special tokens recognised), concatenated."""
    return [i for p in pieces for i in tokenizer.encode(p, add_special_tokens=False)]
