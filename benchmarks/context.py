"""Run settings and the context handed to every benchmark case."""

from __future__ import annotations

import dataclasses
import sys
from typing import Iterator

from .models import Loaded, load

FULL_SHAPES = ((1, 16), (1, 128), (8, 16), (8, 128))
QUICK_SHAPES = ((1, 16), (8, 16))


@dataclasses.dataclass
class Settings:
    """How much to measure. ``quick()`` and ``full()`` are the two presets; the CLI overrides fields."""

    models: tuple[str, ...] = ("llama256", "stories260K")
    shapes: tuple[tuple[int, int], ...] = FULL_SHAPES
    repeats: int = 7          # minimum timed calls per side of a comparison
    warmup: int = 2           # untimed calls per side first
    min_time: float = 1.0     # keep repeating a comparison until both sides together took this long (s)
    sweep: int = 100          # traces in the steering sweep (eager vs compiled)
    scan: int = 100           # steering vectors in the batched-program scan
    retrace_sweep: int = 1000  # traces in the zero-retrace check
    overhead_model: str = "micro4"
    analysis_seq: int = 32    # tokens of the clean/corrupted prompts in the analysis suite
    prompts: int = 1000       # prompts in the batch_get_activations throughput case
    generate_models: tuple[str, ...] = ("stories260K", "smollm2-135m")  # the generate suite's models
    gen_tokens: int = 48      # new tokens per generation (a quarter of it on models of hidden >= 512)
    circuit_models: tuple[str, ...] = ("smollm2-135m",)  # the circuits suite's models
    gguf: str = "smollm2-135m"  # the GGUF model of the gguf suite (a registered name or a .gguf path)
    quick: bool = False

    @classmethod
    def full(cls) -> "Settings":
        return cls()

    @classmethod
    def quick_preset(cls) -> "Settings":
        return cls(shapes=QUICK_SHAPES, repeats=3, warmup=1, min_time=0.15, sweep=20, scan=16, retrace_sweep=100,
                   prompts=200, generate_models=("stories260K",), gen_tokens=16, circuit_models=("stories260K",),
                   quick=True)


def shape_text(batch: int, seq: int) -> str:
    return f"b{batch} s{seq}"


class Context:
    """Settings plus models built once per run (cases wrap them in fresh ``InterpretableModel``s)."""

    def __init__(self, settings: Settings, verbose: bool = True):
        self.settings = settings
        self.verbose = verbose
        self._models: dict[str, Loaded] = {}
        self.cache: dict = {}  # whatever a suite builds once per run (e.g. the gguf suite's two models)

    def model(self, name: str) -> Loaded:
        """The built model ``name`` (raises ``FileNotFoundError`` with a reason if it is unavailable)."""
        if name not in self._models:
            self._models[name] = load(name)
        return self._models[name]

    def missing(self, names: tuple[str, ...] | None = None) -> dict[str, str]:
        """``{model: why it is unavailable}`` for the models (default: the settings') that cannot be built."""
        reasons = {}
        for name in self.settings.models if names is None else names:
            try:
                self.model(name)
            except FileNotFoundError as e:
                reasons[name] = str(e)
        return reasons

    def available(self, names: tuple[str, ...] | None = None) -> list[str]:
        """The models (default: the settings') that can be built, in order."""
        names = self.settings.models if names is None else names
        missing = self.missing(names)
        return [name for name in names if name not in missing]

    def configs(self) -> Iterator[tuple[str, int, int]]:
        """Every (model, batch, seq) of the settings, for the available models."""
        for name in self.available():
            for batch, seq in self.settings.shapes:
                yield name, batch, seq

    def log(self, text: str) -> None:
        """Progress on stderr (the table goes to stdout)."""
        if self.verbose:
            print(text, file=sys.stderr, flush=True)
