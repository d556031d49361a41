"""mlxterp's benchmark harness: ratios of traced vs raw forwards (and compiled vs eager), measured in one run.

Run ``python -m benchmarks`` (``--quick`` for a one-minute pass, ``--help`` for options), or ``make bench``
to run on the system OpenBLAS. Suites are registered in ``benchmarks/registry.py``.
"""

from .cli import main, run_benchmarks
from .context import Settings
from .harness import Row

__all__ = ["Row", "Settings", "main", "run_benchmarks"]
