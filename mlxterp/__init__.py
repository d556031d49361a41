"""mlxterp: mechanistic interpretability for MLX, on a graph-rewriting tracer.

Importing the package changes nothing global.
"""

from . import interventions
from .activation_cache import ActivationCache
from .activations import batch_get_activations, collect_activations, get_activations
from .model import InterpretableModel
from .names import ModuleNameError
from .dictionaries import SAE, Transcoder, train
from .store import ActivationStore, PromptFile
from .tracing.module_proxy import LayerListProxy, ModuleProxy
from .tracing.program import ParamSpec, Program, param
from .tracing.proxy import Proxy, apply
from .tracing.trace import Trace

OutputProxy = Proxy  # the seed's name for a traced value

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "ActivationStore",
    "InterpretableModel",
    "LayerListProxy",
    "ModuleNameError",
    "ModuleProxy",
    "OutputProxy",
    "ParamSpec",
    "Program",
    "PromptFile",
    "Proxy",
    "SAE",
    "Trace",
    "Transcoder",
    "apply",
    "batch_get_activations",
    "collect_activations",
    "get_activations",
    "interventions",
    "param",
    "train",
]
