"""Features of trained dictionaries inside the model: splicing, evaluation and feature analysis.

- Splicing (:mod:`.splice`): ``model.trace(prompt, dictionaries=[sae])`` replaces each dictionary's site by its
  reconstruction plus its error term; ``h.sae.features`` / ``.error`` / ``.reconstruction`` are readable and
  writable traced values, in every executor (programs, generation, sweeps of ``model.edit(dictionaries=...)``).
- Evaluation (:mod:`.evaluate`, metrics in :mod:`.tally`): ``mt.evaluate(model, [sae, tc], prompts)`` measures
  every dictionary's reconstruction, sparsity and spliced/zero-ablated losses in one batched program per chunk.
"""

from .evaluate import evaluate
from .results import EvaluationReport
from .splice import Splice, SpliceSpec, SplicedDictionary, splice

__all__ = ["EvaluationReport", "Splice", "SpliceSpec", "SplicedDictionary", "evaluate", "splice"]
