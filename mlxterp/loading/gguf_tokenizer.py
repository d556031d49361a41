"""Build a Hugging Face / mlx-lm tokenizer from GGUF ``tokenizer.ggml.*`` metadata.

A GGUF file carries its whole vocabulary in the metadata, so no
``tokenizer.json`` is needed. Two vocabulary families are supported:

* ``"gpt2"`` -- byte-level BPE (tokens + merges), used by SmolLM2, Llama 3, ...
* ``"llama"`` -- SentencePiece-style BPE (tokens + scores, ``<0xNN>`` byte
  fallback), used by Llama 2 / Mistral style checkpoints.

The result is a :class:`mlx_lm.tokenizer_utils.TokenizerWrapper` around a
:class:`transformers.PreTrainedTokenizerFast`, i.e. the same kind of object
``mlx_lm.load`` returns.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any, Mapping

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors

logger = logging.getLogger(__name__)

SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")

# GGUF token types (llama.cpp ``llama_token_type``).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Regexes of llama.cpp's BPE pre-tokenizers, keyed by ``tokenizer.ggml.pre``.
# ``None`` means the GPT-2 regex built into the ByteLevel pre-tokenizer.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPM_SPACE = "\u2581"


def _scalar(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Return a metadata value as a Python scalar (GGUF scalars load as mx.array)."""
    value = metadata.get(key, default)
    return value.item() if hasattr(value, "item") else value


def _as_list(value: Any) -> list:
    """Return a GGUF array value (mx.array or list) as a Python list."""
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    """Pick the pre-tokenizer matching llama.cpp's ``tokenizer.ggml.pre`` name."""
    if pre in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        # SmolLM splits every digit on its own before the GPT-2 regex.
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    if pre not in (None, "default", "gpt2"):
        warnings.warn(
            f"GGUF pre-tokenizer {pre!r} is not known to mlxterp; falling back to "
            "the GPT-2 regex (known: default, gpt2, smollm, llama-bpe). Token "
            "boundaries around digits/punctuation may differ from the original.",
            stacklevel=3,
        )
    return byte_level


def _byte_level_bpe(metadata: Mapping[str, Any], tokens: list[str]) -> Tokenizer:
    """Build a byte-level BPE (``tokenizer.ggml.model == "gpt2"``)."""
    raw_merges = metadata.get("tokenizer.ggml.merges")
    if raw_merges is None:
        raise ValueError(
            "GGUF tokenizer 'gpt2' needs 'tokenizer.ggml.merges' in the metadata, "
            "but the file has none."
        )
    merges = []
    for merge in raw_merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ValueError(f"GGUF merge {merge!r} is not of the form 'left right'.")
        merges.append((left, right))
    pre = metadata.get("tokenizer.ggml.pre")
    vocab = {token: i for i, token in enumerate(tokens)}
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            fuse_unk=False,
            byte_fallback=False,
            # Llama 3 looks whole words up in the vocabulary before merging.
            ignore_merges=pre in ("llama-bpe", "llama3"),
        )
    )
    tk.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    tk.decoder = decoders.ByteLevel()
    return tk


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list:
    """Derive BPE merges from a SentencePiece vocabulary.

    SentencePiece-BPE merges the adjacent pair whose merged piece has the
    highest score, so every split of a piece into two in-vocabulary halves is a
    merge, ranked by the merged piece's score (as HF's LlamaConverter does).
    """
    vocab = {token: i for i, token in enumerate(tokens)}
    ranked = []
    for piece, score, kind in zip(tokens, scores, types):
        if kind not in (_NORMAL, _USER_DEFINED) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[piece], vocab[left], vocab[right]))
    ranked.sort()
    return [(tokens[a], tokens[b]) for _, _, a, b in ranked]


def _sentencepiece_bpe(metadata: Mapping[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    """Build a SentencePiece-style BPE (``tokenizer.ggml.model == "llama"``)."""
    if "tokenizer.ggml.scores" not in metadata:
        raise ValueError(
            "GGUF tokenizer 'llama' needs 'tokenizer.ggml.scores' in the metadata, "
            "but the file has none."
        )
    scores = _as_list(metadata["tokenizer.ggml.scores"])
    unk_id = _scalar(metadata, "tokenizer.ggml.unknown_token_id", 0)
    add_space_prefix = bool(_scalar(metadata, "tokenizer.ggml.add_space_prefix", True))
    vocab = {token: i for i, token in enumerate(tokens)}
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=_spm_merges(tokens, scores, types),
            unk_token=tokens[unk_id],
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    steps = [normalizers.Replace(" ", _SPM_SPACE)]
    if add_space_prefix:
        steps.insert(0, normalizers.Prepend(_SPM_SPACE))
    tk.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace(_SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tk.decoder = decoders.Sequence(decode)
    return tk


def _add_special_tokens(tk: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Register control/unknown tokens as special, user-defined ones as added.

    Added tokens are matched before the BPE runs, so ``<|im_start|>`` stays one
    token instead of being split into bytes.
    """
    special = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i, kind in enumerate(types)
        if kind in (_CONTROL, _UNKNOWN)
    ]
    user = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i, kind in enumerate(types)
        if kind == _USER_DEFINED
    ]
    if special:
        tk.add_special_tokens(special)
    if user:
        tk.add_tokens(user)


def _post_processor(tokens: list[str], bos: int | None, eos: int | None,
                    add_bos: bool, add_eos: bool) -> processors.PostProcessor | None:
    """Template that adds BOS/EOS around encoded text when the file asks for it."""
    specials = {}
    if add_bos and bos is not None:
        specials["bos"] = (tokens[bos], bos)
    if add_eos and eos is not None:
        specials["eos"] = (tokens[eos], eos)
    if not specials:
        return None

    def template(seq: str, type_id: int) -> str:
        parts = [f"{specials['bos'][0]}:{type_id}"] if "bos" in specials else []
        parts.append(f"{seq}:{type_id}")
        if "eos" in specials:
            parts.append(f"{specials['eos'][0]}:{type_id}")
        return " ".join(parts)

    return processors.TemplateProcessing(
        single=template("$A", 0),
        pair=f"{template('$A', 0)} {template('$B', 1)}",
        special_tokens=sorted(set(specials.values())),
    )


def build_gguf_tokenizer(metadata: Mapping[str, Any]):
    """Build an mlx-lm ``TokenizerWrapper`` from GGUF metadata.

    Args:
        metadata: The metadata dict returned by
            ``mx.load(path, return_metadata=True)``.

    Returns:
        A :class:`mlx_lm.tokenizer_utils.TokenizerWrapper` exposing ``encode``,
        ``decode``, ``convert_ids_to_tokens``, ``vocab_size``,
        ``eos_token_id`` and ``apply_chat_template`` like ``mlx_lm.load``'s.

    Raises:
        ValueError: If the metadata has no vocabulary or uses a tokenizer
            model other than those in :data:`SUPPORTED_TOKENIZER_MODELS`.
    """
    # Imported here because transformers is slow to import and only needed now.
    from mlx_lm.tokenizer_utils import (
        BPEStreamingDetokenizer,
        SPMStreamingDetokenizer,
        TokenizerWrapper,
    )
    from transformers import PreTrainedTokenizerFast

    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if kind not in SUPPORTED_TOKENIZER_MODELS:
        raise ValueError(
            f"GGUF tokenizer.ggml.model {kind!r} is not supported; expected one of "
            f"{list(SUPPORTED_TOKENIZER_MODELS)}."
        )
    if not tokens:
        raise ValueError(
            f"GGUF tokenizer {kind!r} needs 'tokenizer.ggml.tokens' in the metadata, "
            "but the file has none (or an empty list)."
        )
    tokens = list(tokens)
    if "tokenizer.ggml.token_type" in metadata:
        types = [int(t) for t in _as_list(metadata["tokenizer.ggml.token_type"])]
    else:
        types = [_NORMAL] * len(tokens)

    if kind == "gpt2":
        tk = _byte_level_bpe(metadata, tokens)
        detokenizer = BPEStreamingDetokenizer
        add_bos_default = False
    else:
        tk = _sentencepiece_bpe(metadata, tokens, types)
        trim = bool(_scalar(metadata, "tokenizer.ggml.add_space_prefix", True))
        detokenizer = functools.partial(SPMStreamingDetokenizer, trim_space=trim)
        add_bos_default = True
    _add_special_tokens(tk, tokens, types)

    ids = {
        name: _scalar(metadata, f"tokenizer.ggml.{name}_token_id")
        for name in ("bos", "eos", "unknown", "padding")
    }
    add_bos = bool(_scalar(metadata, "tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(_scalar(metadata, "tokenizer.ggml.add_eos_token", False))
    post = _post_processor(tokens, ids["bos"], ids["eos"], add_bos, add_eos)

    special_kwargs = {
        key: tokens[ids[name]]
        for key, name in (("bos_token", "bos"), ("eos_token", "eos"),
                          ("unk_token", "unknown"), ("pad_token", "padding"))
        if ids[name] is not None and 0 <= ids[name] < len(tokens)
    }
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, **special_kwargs)
    # transformers may install its own post-processor from add_bos_token; the
    # GGUF flags are the ground truth, so restore ours (or none).
    hf.backend_tokenizer.post_processor = post
    template = metadata.get("tokenizer.chat_template")
    if template:
        hf.chat_template = template
    logger.debug("built GGUF %s tokenizer with %d tokens", kind, len(tokens))
    eos = [ids["eos"]] if ids["eos"] is not None else None
    return TokenizerWrapper(hf, detokenizer, eos_token_ids=eos)
