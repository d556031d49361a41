"""``python -m benchmarks.fuzz``: the differential fuzzer's long run (the test suite runs 140 programs).

Random intervention programs (tests/fuzz.py) run through every executor (traces eager and compiled, program
replay with new values, ``prog.batched`` with mapped and constant values, ``mx.vmap`` over ``prog.fn``), and
every outcome must equal the hand-written reference forward (tests/reference.py) run with that outcome's
values. ``--examples`` programs on token arrays and as many on right-padded batches, up to ``--max-steps``
statements each and up to ``--variants`` folded variants; ``--seed`` picks the examples (the same seed
gives the same programs). Prints the outcomes checked per executor, the time and the load average; on the
first mismatch it raises (exit status 1) with Hypothesis's shrunk counterexample.

Run it from the repository root (it imports ``tests``); it writes no Hypothesis database.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests import fuzz


def run(examples: int, max_steps: int, variants: int, seed_value: int, padded: bool) -> None:
    """``examples`` random programs through every executor (raises on the first mismatch)."""
    model = fuzz.fuzz_model()

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(program=fuzz.programs(max_steps=max_steps), inputs=fuzz.fuzz_inputs(padded=padded),
           value_seed=st.integers(0, 10**6), k=st.integers(2, variants))
    def check(program, inputs, value_seed, k):
        fuzz.check_program(model, *inputs, program, value_seed, variants=k)

    check()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000, help="programs per input kind (default 1000)")
    parser.add_argument("--max-steps", type=int, default=14, help="statements per program at most (default 14)")
    parser.add_argument("--variants", type=int, default=5, help="folded/vmapped variants at most (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="which programs (default 0)")
    args = parser.parse_args(argv)
    if args.examples < 1 or args.max_steps < 1 or not 2 <= args.variants <= 12:
        parser.error("--examples and --max-steps must be >= 1 and --variants in 2..12")
    start = time.perf_counter()
    for padded in (False, True):
        print(f"{args.examples} programs on {'right-padded batches' if padded else 'token arrays'} ...",
              file=sys.stderr, flush=True)
        try:
            run(args.examples, args.max_steps, args.variants, args.seed, padded)
        except Exception:
            print(f"MISMATCH (traceback and Hypothesis's shrunk example follow); outcomes checked before it: "
                  f"{dict(fuzz.COVERAGE)}", file=sys.stderr, flush=True)
            raise
    outcomes = ", ".join(f"{name} {n}" for name, n in fuzz.COVERAGE.items())
    print(f"OK: {2 * args.examples} programs, every outcome equal to the reference ({outcomes}); "
          f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
