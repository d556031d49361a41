"""mlxterp: mechanistic interpretability for MLX, on a graph-rewriting tracer.

Importing the package changes nothing global.
"""

from . import circuits, interventions
from .activation_cache import ActivationCache
from .activations import batch_get_activations, collect_activations, get_activations
from .circuits import DAS, Circuit, EdgeScores
from .conversation import Conversation
from .model import InterpretableModel
from .names import ModuleNameError
from .dictionaries import SAE, Transcoder, train
from . import features
from .features import evaluate, splice
from .lenses import TunedLens
from .probes import Probe
from .store import ActivationStore, PromptFile
from .tracing.invoke import Invoke, InvokeError
from .tracing.module_proxy import LayerListProxy, ModuleProxy
from .tracing.program import ParamSpec, Program, param
from .tracing.proxy import Proxy, apply
from .tracing.trace import Trace

OutputProxy = Proxy
"""The seed API's name for :class:`Proxy`, a traced value (``module.output``, ``model.output``, ...)."""

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "ActivationStore",
    "Circuit",
    "Conversation",
    "DAS",
    "EdgeScores",
    "InterpretableModel",
    "Invoke",
    "InvokeError",
    "LayerListProxy",
    "ModuleNameError",
    "ModuleProxy",
    "OutputProxy",
    "ParamSpec",
    "Program",
    "Probe",
    "PromptFile",
    "Proxy",
    "SAE",
    "Trace",
    "Transcoder",
    "TunedLens",
    "apply",
    "batch_get_activations",
    "circuits",
    "collect_activations",
    "evaluate",
    "features",
    "get_activations",
    "interventions",
    "param",
    "splice",
    "train",
]
