"""Features of trained dictionaries inside the model: splicing, evaluation and feature analysis.

- Splicing (:mod:`.splice`): ``model.trace(prompt, dictionaries=[sae])`` replaces each dictionary's site by its
  reconstruction plus its error term; ``h.sae.features`` / ``.error`` / ``.reconstruction`` are readable and
  writable traced values, in every executor (programs, generation, sweeps of ``model.edit(dictionaries=...)``).
"""

from .splice import Splice, SpliceSpec, SplicedDictionary, splice

__all__ = ["Splice", "SpliceSpec", "SplicedDictionary", "splice"]
