"""Tokenizer conveniences shared by :class:`InterpretableModel` (encode, decode, token strings)."""

from __future__ import annotations

from typing import Any, List, Optional, Union

import mlx.core as mx


class TokenizerMixin:
    """Methods that need ``self.tokenizer``; each raises ValueError when there is none."""

    tokenizer: Any

    def _require_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise ValueError(f"{what} needs a tokenizer, and this model has none: "
                             "pass InterpretableModel(model, tokenizer=...)")
        return self.tokenizer

    def encode(self, text: str) -> List[int]:
        """Token ids for ``text`` (with the tokenizer's BOS if it adds one)."""
        if not isinstance(text, str):
            raise TypeError(f"encode needs a str, got {type(text).__name__}; use encode_batch for lists")
        return list(self._require_tokenizer("encode").encode(text))

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        """Token ids for each text."""
        if isinstance(texts, str):
            raise TypeError("encode_batch needs a list of str; use encode for a single string")
        return [self.encode(t) for t in texts]

    def decode(self, tokens: Union[List[int], mx.array]) -> str:
        """Text for token ids (a list or a 1-D ``mx.array``; a ``(1, seq)`` array is accepted too)."""
        tokenizer = self._require_tokenizer("decode")
        if isinstance(tokens, mx.array):
            if tokens.ndim == 2 and tokens.shape[0] == 1:
                tokens = tokens[0]
            if tokens.ndim != 1:
                raise ValueError(f"decode needs a 1-D token array, got shape {tuple(tokens.shape)}")
            tokens = tokens.tolist()
        return tokenizer.decode([int(t) for t in tokens])

    def token_to_str(self, token_id: int) -> str:
        """The string of one token, keeping its leading space (``' world'``)."""
        tokenizer = self._require_tokenizer("token_to_str")
        token_id = int(token_id)
        text = tokenizer.decode([token_id])
        piece = _piece(tokenizer, token_id)
        # SentencePiece marks a leading space with "▁", which decoding one token drops.
        if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        return text

    def _pad_id(self) -> int:
        """Id used to right-pad batches: the tokenizer's pad, else EOS, else 0 (never read by real tokens)."""
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, attr, None) if self.tokenizer is not None else None
            if isinstance(value, int):
                return value
        return 0

    @property
    def vocab_size(self) -> Optional[int]:
        """Vocabulary size of the tokenizer, or ``None`` without one."""
        if self.tokenizer is None:
            return None
        size = getattr(self.tokenizer, "vocab_size", None)
        return int(size) if size is not None else len(self.tokenizer)


def _piece(tokenizer: Any, token_id: int) -> Any:
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    return convert(token_id) if convert is not None else None
