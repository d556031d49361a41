"""The differential fuzzer's parts: random intervention programs, their values, one applier that runs a program
on the library's traced values or on the hand-written reference's arrays (tests/reference.py), and a checker
that runs every executor on one program and compares each with the reference.

Importable by any test module (``from tests.fuzz import ...``):

- ``programs.py``: :func:`programs` (a Hypothesis strategy of programs: lists of :class:`Step`),
  :func:`fuzz_inputs` (a strategy of inputs: token arrays or right-padded rows), :func:`values_for` (the
  values of one program for given seeds: new values, same structure), :func:`fuzz_module`/:func:`fuzz_model`
  (the tiny llama the fuzzer runs), :func:`random_tokens`, :func:`padded_rows`;
- ``applier.py``: :class:`Applier` (applies a program through ``get``/``set``/``save`` callables; sites and
  their layouts in :data:`LAYOUTS`), :func:`run_reference` (the reference forward with a program applied, its
  decode form too), :func:`run_trace` (the same program in ``model.trace``), :func:`param_values`;
- ``dictionaries.py``: :class:`FuzzDictionaries` (an SAE and a transcoder spliced in every layer; program
  sites :data:`DICT_KINDS`, their parts) and :class:`HandSplices` (their splicing written by hand for the
  reference): ``check_program(..., dictionaries=FuzzDictionaries())`` with ``programs(site_kinds=SITE_KINDS +
  DICT_KINDS)``;
- ``executors.py``: :func:`check_program` (every executor of :data:`EXECUTORS`, plus any ``extra`` ones,
  against the reference), :class:`Case` (what an executor receives), :class:`Outcome` (what it returns),
  :func:`assert_close`, :data:`COVERAGE` (outcomes checked per executor).

An executor is ``fn(case) -> iterable of Outcome``: each outcome names the values (a :data:`Seeds` tuple, one
seed per step) the reference must be run with, and the logits and saves the executor gave. A program's values
come from recipes (:class:`Applier` records which step and slot every number, vector and index array it hands
out came from), so a program's params can be given new values by name (:func:`param_values`), and a folded or
vmapped run knows which params differ per variant: a step marked ``mapped`` takes each variant's values, every
other step keeps the recorded ones (constant writes, the same for all variants).
"""

from .applier import Applier, TraceRun, library_name, library_site, param_values, run_reference, run_trace
from .executors import (COVERAGE, EXECUTORS, Case, Outcome, assert_close, batched, check_program, replay,
                        trace_compiled, trace_eager, vmapped)
from .dictionaries import FuzzDictionaries, HandSplices
from .programs import (ATTENTION, D_SAE, DICT_KINDS, HEAD_DIM, HEADS, HIDDEN, KINDS, KV_HEADS, LAYERS, LAYOUTS, READS,
                       RESIDUAL, SITE_KINDS, VOCAB, WRITES, Layout, Seeds, Step, StepValues, fuzz_inputs, fuzz_model,
                       fuzz_module, padded_rows, programs, random_tokens, recipe_value, site_order, sites_in_order,
                       values_for)

__all__ = [
    "Applier", "TraceRun", "library_name", "library_site", "param_values", "run_reference", "run_trace",
    "COVERAGE", "EXECUTORS", "Case", "Outcome", "assert_close", "batched", "check_program", "replay",
    "trace_compiled", "trace_eager", "vmapped", "FuzzDictionaries", "HandSplices", "ATTENTION", "D_SAE", "DICT_KINDS",
    "HEAD_DIM", "HEADS", "HIDDEN", "KINDS", "KV_HEADS",
    "LAYERS", "LAYOUTS", "READS", "RESIDUAL", "SITE_KINDS", "VOCAB", "WRITES", "Layout", "Seeds", "Step",
    "StepValues", "fuzz_inputs", "fuzz_model", "fuzz_module", "padded_rows", "programs", "random_tokens",
    "recipe_value", "site_order", "sites_in_order", "values_for",
]
