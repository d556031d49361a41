"""A finished generation as a plain result: its tokens, text, saves and settings, with no model behind it.

``gen.result()`` makes one (``gen.save(path)``, ``gen.save_html(path)`` go through it); it saves and loads
(``GenerationResult.load(path)``, also reachable as ``Generation.load``) and draws the generation view.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..views.page import Page, Viewable
from ..views.saving import Saveable, attach

if TYPE_CHECKING:
    from .context import Generation


@dataclasses.dataclass
class GenerationResult(Saveable, Viewable):
    """What a generation produced, one entry per prompt row.

    Attributes:
        prompt_tokens: each prompt's token ids (unpadded).
        prompt_labels: each prompt token as text.
        new_tokens: each row's new token ids (EOS excluded).
        new_labels: each new token as text.
        texts: each row's new text (None without a tokenizer).
        reasons: why each row stopped (``"eos"``, ``"stop"``, ``"length"``).
        saved_values: the saves, as ``Generation.saved_values`` (``mx.array`` values: one per step stacked on
            a first axis ``(steps, ...)``, a list where shapes differ, or one step's value).

        saved_steps: the steps each save has values for (step 0 is the prompt pass; step ``k`` chose new
            token ``k``).
        single: one prompt was given (``text``, ``tokens`` and ``finish_reason`` are then single values).
        mode: ``"compiled"`` or ``"eager"``.
        num_steps: forward passes kept.
    """

    kind = "generation"

    prompt_tokens: List[List[int]]
    prompt_labels: List[List[str]]
    new_tokens: List[List[int]]
    new_labels: List[List[str]]
    texts: Optional[List[str]]
    reasons: List[str]
    saved_values: Dict[str, Any]
    saved_steps: Dict[str, List[int]]
    single: bool
    mode: str
    num_steps: int

    @staticmethod
    def of(gen: Generation, owner: Any, prompt: Any, arguments: Dict[str, Any]) -> "GenerationResult":
        """The result of a finished generation ``gen`` of ``prompt`` (as given) called with ``arguments``;
        ``owner`` is its InterpretableModel (its identity is taken when the result is saved)."""
        from ..analysis.validate import token_labels

        owner, rows = gen._owner, gen._finished()
        new = [list(t) for t in rows.tokens]
        result = GenerationResult(
            prompt_tokens=[list(r) for r in gen.prompts.rows],
            prompt_labels=[token_labels(owner, list(r)) for r in gen.prompts.rows],
            new_tokens=new, new_labels=[token_labels(owner, t) for t in new],
            texts=None if rows.decode is None else [rows.text(i) for i in range(len(new))],
            reasons=list(rows.reasons), saved_values=dict(gen.saved_values),
            saved_steps={k: list(v) for k, v in gen.saved_steps.items()}, single=gen.prompts.single,
            mode=gen.mode, num_steps=gen.num_steps)
        prompts = [prompt] if gen.prompts.single else list(getattr(prompt, "tolist", lambda: prompt)())
        return attach(result, owner, prompts, arguments)

    @property
    def text(self) -> Any:
        """The new text: a str for a single prompt, else one per prompt."""
        if self.texts is None:
            raise ValueError("this generation's model had no tokenizer, so it has no text; read .tokens")
        return self._shape(self.texts)

    @property
    def tokens(self) -> Any:
        """The new token ids: a list for a single prompt, else one list per prompt."""
        return self._shape(self.new_tokens)

    @property
    def finish_reason(self) -> Any:
        """Why each row stopped: ``"eos"``, ``"stop"`` or ``"length"`` (one value for a single prompt)."""
        return self._shape(self.reasons)

    def get(self, name: str) -> Any:
        """A saved value by key, or ``None``."""
        return self.saved_values.get(name)

    def _shape(self, per_row: list) -> Any:
        return per_row[0] if self.single else per_row

    def _page(self, **options: Any) -> Page:
        from ..views.generation import generation_page

        return generation_page(self, **options)
