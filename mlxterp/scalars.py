"""What counts as a number where mlxterp takes one: Python ints and floats, and numpy's integer and float
scalars alike (``np.float32(0.5)``, ``np.int64(3)``, what indexing a numpy array gives). Bools and complex
numbers are not numbers here.

A numpy scalar is taken as the Python number of the same value (:func:`python_number`), so it behaves as a
Python number does everywhere: a lifted param of a trace, weak like ``0.5`` (it takes the dtype of the
array it meets), never baked into a compiled program.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REAL_KINDS = "a Python or numpy int or float"


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number: a Python or numpy integer or float scalar, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def python_number(value: Any) -> Any:
    """A numpy integer, float or bool scalar as the Python ``int``/``float``/``bool`` of the same value;
    anything else as is. (``np.float32(0.1)`` gives the float32 value exactly: casting it back to float32
    changes nothing.)"""
    return value.item() if isinstance(value, (np.integer, np.floating, np.bool_)) else value


def is_complex(value: Any) -> bool:
    """Whether ``value`` is a complex scalar (Python or numpy)."""
    return isinstance(value, (complex, np.complexfloating))
