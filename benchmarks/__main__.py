"""``python -m benchmarks``: see ``benchmarks/cli.py`` (``--help``)."""

import sys

from .cli import main

sys.exit(main())
