"""mlxterp's compiler: IR, verifier, passes, scheduler, lowering, eager/compiled executor.

It knows nothing about tokenizers or text, and never imports from ``mlxterp``.
"""

from .errors import (
    CausalityError,
    GraphError,
    ModuleNotCalledError,
    NodeExecutionError,
    ShapeMismatchError,
    TraceError,
    WriteTypeError,
)
from .executor import MODES, Executor, RunResult
from .export import to_dot, to_json, to_text
from .hooks import hooks_installed, is_hooked
from .ir import Graph, Node, Op, Ref
from .fold import run_folded
from .lowering import PatchedForward
from .points import Points, Runner
from .passes import eliminate_dead_code, lift_constants, run_passes, schedule
from .probe import Probe, probe
from .program import LoweredProgram
from .state_compile import StateCompiled
from .structure import structure_key
from .tree import ModuleTree
from .verify import verify

__all__ = [
    "CausalityError", "GraphError", "ModuleNotCalledError", "NodeExecutionError", "ShapeMismatchError",
    "TraceError", "WriteTypeError", "MODES", "Executor", "RunResult", "to_dot", "to_json", "to_text",
    "hooks_installed", "is_hooked", "Graph", "Node", "Op", "Ref", "PatchedForward", "Points", "Runner",
    "LoweredProgram", "run_folded", "eliminate_dead_code", "lift_constants", "run_passes", "schedule", "Probe",
    "probe", "StateCompiled", "structure_key", "ModuleTree", "verify",
]
