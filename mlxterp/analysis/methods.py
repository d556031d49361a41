"""The analysis methods of InterpretableModel (get_token_predictions, logit_lens, activation_patching, ...)."""


class AnalysisMixin:
    """Mixed into InterpretableModel; each method delegates to a function in ``mlxterp.analysis``."""
