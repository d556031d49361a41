"""``PromptFile``: the prompts of a file as a lazy sequence, so a dataset never has to fit in memory.

A ``.jsonl`` file holds one JSON value per line: a string, a list of token ids, or an object with a
``"text"`` (or ``"prompt"``) field. Any other file is plain text, one prompt per line. Blank lines are
skipped. Opening the file scans it once, checking every line and keeping only where each prompt starts
(8 bytes per prompt); prompts are read again when asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Sequence, Union

import numpy as np

FIELDS = ("text", "prompt")


class PromptFile(Sequence[Any]):
    """The prompts of a ``.jsonl`` or plain-text file (see the module docstring).

    Args:
        path: the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line that is not a prompt (its line number and what was expected are named), or
            no prompts at all.
    """

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"prompts file {str(self.path)!r} does not exist")
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        offsets, lines = [], []
        with open(self.path, "rb") as f:
            pos = 0
            for number, raw in enumerate(f, start=1):
                if raw.strip():
                    self._parse(raw, number)  # check every line now, not hours into a run
                    offsets.append(pos)
                    lines.append(number)
                pos += len(raw)
        if not offsets:
            raise ValueError(f"prompts file {str(self.path)!r} has no prompts (one prompt per line"
                             f"{', as JSON' if self.jsonl else ''}; blank lines are skipped)")
        self._offsets = np.array(offsets, dtype=np.int64)
        self._lines = np.array(lines, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, item: Union[int, slice]) -> Any:
        if isinstance(item, slice):
            return self._read(range(len(self))[item])
        index = range(len(self))[item]  # IndexError for out of range, negative from the end
        return self._read([index])[0]

    def __repr__(self) -> str:
        return f"PromptFile({str(self.path)!r}, {len(self)} prompts)"

    def _read(self, indices: Sequence[int]) -> List[Any]:
        out = []
        with open(self.path, "rb") as f:
            for i in indices:
                f.seek(int(self._offsets[i]))
                out.append(self._parse(f.readline(), int(self._lines[i])))
        return out

    def _parse(self, raw: bytes, number: int) -> Any:
        where = f"{str(self.path)!r} line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where} is not UTF-8 text ({exc})") from exc
        if not self.jsonl:
            return text.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not JSON ({exc.msg}); a .jsonl prompts file holds one JSON value per "
                             "line: a string, a list of token ids, or an object with a 'text' field") from exc
        return _prompt(value, where)


def _prompt(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        field = next((f for f in FIELDS if f in value), None)
        if field is None:
            raise ValueError(f"{where}: the object has no 'text' or 'prompt' field (its keys: "
                             f"{', '.join(map(repr, value)) or 'none'})")
        value = value[field]
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    raise ValueError(f"{where}: expected a non-empty string, a non-empty list of token ids (ints) or an object "
                     f"with a 'text' field, got {type(value).__name__} {str(value)[:40]!r}")
