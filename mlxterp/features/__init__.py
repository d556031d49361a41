"""Features of trained dictionaries inside the model: splicing, evaluation and feature analysis.

- Splicing (:mod:`.splice`): ``model.trace(prompt, dictionaries=[sae])`` replaces each dictionary's site by its
  reconstruction plus its error term; ``h.sae.features`` / ``.error`` / ``.reconstruction`` are readable and
  writable traced values, in every executor (programs, generation, sweeps of ``model.edit(dictionaries=...)``).
- Evaluation (:mod:`.evaluate`, metrics in :mod:`.tally`): ``mt.evaluate(model, [sae, tc], prompts)`` measures
  every dictionary's reconstruction, sparsity and spliced/zero-ablated losses in one batched program per chunk.
- Features: :func:`top_contexts` (top-activating contexts, every feature's density and logit effects; its
  view is the feature page), :func:`logit_effects`, :func:`token_features` (the top features of each token),
  :func:`attribution` (every feature's indirect effect on a metric from one forward and one backward) and
  :func:`feature_ablation` / :func:`feature_patching` (the exact effects, for checking it).
"""

from .attribution import FeatureAttribution, attribution, feature_ablation, feature_patching
from .contexts import top_contexts
from .evaluate import evaluate
from .logits import LogitEffects, logit_effects
from .pages import FeatureContexts
from .results import EvaluationReport
from .splice import Splice, SpliceSpec, SplicedDictionary, splice
from .tokens import TokenFeatures, token_features

__all__ = ["EvaluationReport", "FeatureAttribution", "FeatureContexts", "LogitEffects", "Splice", "SpliceSpec",
           "SplicedDictionary", "TokenFeatures", "attribution", "evaluate", "feature_ablation", "feature_patching", "logit_effects",
           "splice", "token_features", "top_contexts"]
