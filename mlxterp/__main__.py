"""``python -m mlxterp``: the same command line as the ``mlxterp`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
