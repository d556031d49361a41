"""Linear probes on a site's activations, trained by the generic trainer (:func:`mlxterp.dictionaries.fit`).

::

    probe = Probe.train(store, labels, site="layers.12.resid_pre")   # labels per row or per prompt
    probe.heldout                       # accuracy (classification) or R^2 (regression) on held-out prompts
    probe(x)                            # P(class 1) / class probabilities / predictions, of arrays or traced values
    probe.save("probe"); Probe.load("probe")

Kinds (:mod:`.objective`): ``linear`` (least squares), ``logistic`` (two classes), ``softmax`` (several).
Activations are standardised with constants from the first batch and the weights folded back after training,
so the probe takes raw activations. A held-out fraction of the prompts (``holdout=``) is kept out of training
(its rows weigh 0 in the loss) and scored at the end.
"""

from .objective import KINDS, ProbeObjective
from .probe import Probe, ProbeScore
from .training import score_probe, train_probe

__all__ = ["KINDS", "Probe", "ProbeObjective", "ProbeScore", "score_probe", "train_probe"]
