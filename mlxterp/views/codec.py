"""A result's data as strict JSON plus a table of arrays, and back, bit for bit.

:func:`encode` walks a tree of Python values (None, bool, int, float, str, lists, tuples, dicts) holding
numpy arrays, mlx arrays and numpy scalars, and returns a JSON-ready tree in which every array is replaced by
a reference into a table of numpy arrays (written to a safetensors side file by :mod:`.saving`);
:func:`decode` inverts it exactly: the same container types (a tuple stays a tuple, an int key stays an int),
the same array library, dtype, shape and bits.

Tags (a JSON object whose only key starts with ``__``) mark what plain JSON cannot say:

- ``{"__array__": name, "dtype": d, "mlx": bool}``: an array of the table (bfloat16, which numpy lacks, is
  stored as its uint16 bits and reinterpreted on the way back);
- ``{"__scalar__": d, "value": v}``: a numpy scalar such as ``np.float32(0.5)``;
- ``{"__tuple__": [...]}``; ``{"__items__": [[key, value], ...]}``: a dict whose keys are not all plain
  strings (int layer keys); ``{"__float__": "nan" | "inf" | "-inf"}``: strict JSON has no such numbers.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import mlx.core as mx
import numpy as np

# numpy dtypes a safetensors file holds (bfloat16 arrives as the uint16 view of an mlx array)
NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                "float32", "float64")
MLX_DTYPES = NUMPY_DTYPES + ("bfloat16",)
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode(tree: Any) -> Tuple[Any, Dict[str, np.ndarray]]:
    """``(json_tree, arrays)``: ``tree`` with every array replaced by a tagged reference into ``arrays``.

    Raises:
        TypeError: a value of another type, naming where it is in the tree (``data.grid[2]``) and the
            supported types.
    """
    arrays: Dict[str, np.ndarray] = {}
    return _encode(tree, arrays, "data"), arrays


def decode(tree: Any, arrays: Dict[str, np.ndarray]) -> Any:
    """The tree :func:`encode` was given, from its JSON tree and its arrays (by name)."""
    if isinstance(tree, list):
        return [decode(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        return tree
    tag = _tag(tree)
    if tag is None:
        return {k: decode(v, arrays) for k, v in tree.items()}
    if tag == "__array__":
        return _array_from(arrays[tree["__array__"]], tree["dtype"], tree["mlx"])
    if tag == "__scalar__":
        return np.dtype(tree["__scalar__"]).type(tree["value"])
    if tag == "__tuple__":
        return tuple(decode(v, arrays) for v in tree["__tuple__"])
    if tag == "__items__":
        return {decode(k, arrays): decode(v, arrays) for k, v in tree["__items__"]}
    return _FLOATS[tree["__float__"]]


def _encode(value: Any, arrays: Dict[str, np.ndarray], where: str) -> Any:
    if value is None or isinstance(value, (bool, str)) or (isinstance(value, int) and type(value) is int):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (np.ndarray, mx.array)):
        return _array_ref(value, arrays, where)
    if isinstance(value, np.generic):
        return _scalar(value, where)
    if isinstance(value, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return _encode_dict(value, arrays, where)
    raise TypeError(f"{where}: cannot save a {type(value).__name__} ({value!r:.80}); a saved result holds None, "
                    "bool, int, float, str, lists, tuples, dicts, numpy or mlx arrays and numpy scalars")


def _encode_dict(value: dict, arrays: Dict[str, np.ndarray], where: str) -> Any:
    if all(isinstance(k, str) and not k.startswith("__") for k in value):
        return {k: _encode(v, arrays, f"{where}.{k}") for k, v in value.items()}
    return {"__items__": [[_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")]
                          for k, v in value.items()]}


def _tag(tree: dict) -> Any:
    if len(tree) >= 1:
        first = next(iter(tree))
        if first.startswith("__"):
            return first
    return None


def _array_ref(value: Any, arrays: Dict[str, np.ndarray], where: str) -> Dict[str, Any]:
    is_mlx = isinstance(value, mx.array)
    dtype = str(value.dtype).replace("mlx.core.", "")
    if dtype not in (MLX_DTYPES if is_mlx else NUMPY_DTYPES):
        raise TypeError(f"{where}: cannot save an array of dtype {dtype}; supported: "
                        f"{', '.join(MLX_DTYPES if is_mlx else NUMPY_DTYPES)}")
    if is_mlx:
        data = np.array(value.view(mx.uint16) if value.dtype == mx.bfloat16 else value)
    else:
        data = np.array(value, order="C", copy=True)  # (np.ascontiguousarray makes a 0-d array 1-d)
    name = f"a{len(arrays)}"
    arrays[name] = data
    return {"__array__": name, "dtype": dtype, "mlx": is_mlx}


def _array_from(data: np.ndarray, dtype: str, is_mlx: bool) -> Any:
    if not is_mlx:
        return np.array(data, dtype=np.dtype(dtype))
    if dtype == "bfloat16":
        return mx.array(data).view(mx.bfloat16)
    # dtype given: mx.array(float64 data) alone would give float32
    return mx.array(data, dtype=mx.bool_ if dtype == "bool" else getattr(mx, dtype))


def _scalar(value: np.generic, where: str) -> Dict[str, Any]:
    dtype = value.dtype.name
    if dtype not in NUMPY_DTYPES:
        raise TypeError(f"{where}: cannot save a numpy scalar of dtype {dtype}; supported: {', '.join(NUMPY_DTYPES)}")
    item = value.item()
    if isinstance(item, float) and not math.isfinite(item):
        item = repr(item)  # np.dtype(...).type("nan") parses it back
    return {"__scalar__": dtype, "value": item}


def names(tree: Any) -> List[str]:
    """The array names a JSON tree refers to (to check a side file against its JSON)."""
    if isinstance(tree, list):
        return [n for v in tree for n in names(v)]
    if not isinstance(tree, dict):
        return []
    if _tag(tree) == "__array__":
        return [tree["__array__"]]
    return [n for v in tree.values() for n in names(v)]
