"""Finding the user's source line for a recorded node."""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = (_ROOT + os.sep, os.path.join(os.path.dirname(_ROOT), "compiler") + os.sep)


def user_source() -> str:
    """``file:line`` of the innermost frame outside mlxterp and the compiler."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_INTERNAL):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"
