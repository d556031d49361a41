"""The registry of benchmark suites: adding a suite is one file plus one line here.

A suite is a module ``benchmarks/suite_<name>.py`` that defines ``SUITE`` (its name), ``DESCRIPTION`` and
``CASES``: an ordered ``{case name: fn(ctx: Context) -> Iterable[Row]}``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable, Iterable

SUITES: dict[str, str] = {
    "trace": "benchmarks.suite_trace",
    "program": "benchmarks.suite_program",
    "analysis": "benchmarks.suite_analysis",
    "attention": "benchmarks.suite_attention",
    "generate": "benchmarks.suite_generate",
    "conversation": "benchmarks.suite_conversation",
    "gguf": "benchmarks.suite_gguf",
    "views": "benchmarks.suite_views",
    "das": "benchmarks.suite_das",
    "invoke": "benchmarks.suite_invoke",
    "edits": "benchmarks.suite_edits",
    "circuits": "benchmarks.suite_circuits",
    "dictionaries": "benchmarks.suite_dictionaries",
    "features": "benchmarks.suite_features",
}

Case = Callable[..., Iterable]


def suite(name: str) -> ModuleType:
    """The suite module registered as ``name``."""
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; registered suites: {', '.join(SUITES)}")
    return importlib.import_module(SUITES[name])


def all_cases() -> list[tuple[str, str, Case]]:
    """``(suite, case, fn)`` for every case of every registered suite, in order."""
    return [(name, case, fn) for name in SUITES for case, fn in suite(name).CASES.items()]


def select(only: Iterable[str] = ()) -> list[tuple[str, str, Case]]:
    """Cases whose suite or case name is in ``only`` (all of them when ``only`` is empty)."""
    wanted = set(only)
    cases = all_cases()
    if not wanted:
        return cases
    known = {s for s, _, _ in cases} | {c for _, c, _ in cases}
    unknown = wanted - known
    if unknown:
        raise ValueError(f"unknown suite or case {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}")
    return [(s, c, fn) for s, c, fn in cases if s in wanted or c in wanted]
