"""Digests of call arguments (``mlxterp.digest``): equal values give equal digests in every process (no
addresses, no salted ``hash()``), and any difference in data, code or captured values changes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxterp.analysis.metrics import check_metric, logit_diff
from mlxterp.digest import describe, digest
from tests.models import REPO

SAMPLES = """
import mlx.core as mx, numpy as np
from mlxterp.analysis.metrics import check_metric, logit_diff
from mlxterp import interventions as iv

def score(target):
    return lambda logits: logits[:, target] - logits[:, 0]

SAMPLES = {
    "text": ["a prompt", "another"], "set": {"b", "a", 3}, "dict": {"z": 1, "a": [1.5, None]},
    "array": mx.arange(6).reshape(2, 3), "bf16": mx.ones(4, dtype=mx.bfloat16), "numpy": np.eye(2),
    "metric": check_metric(score(7)), "builtin": logit_diff(3, 4), "intervention": iv.scale(0.5),
    "slices": (slice(1, None), Ellipsis, mx.float16),
}
"""


def samples() -> dict:
    namespace: dict = {"__name__": "__main__"}  # as in the other process (a function's module is digested)
    exec(SAMPLES, namespace)
    return namespace["SAMPLES"]


def test_digests_are_the_same_in_another_process_with_another_hash_seed():
    code = SAMPLES + "from mlxterp.digest import digest\nimport json\n" \
                     "print(json.dumps({k: digest(v) for k, v in SAMPLES.items()}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout) == {k: digest(v) for k, v in samples().items()}


def test_functions_differ_by_code_and_captured_values_not_by_identity():
    def score(target):
        return lambda logits: logits[:, target] - logits[:, 0]

    assert digest(score(3)) == digest(score(3)) != digest(score(4))
    assert digest(check_metric(score(3))) != digest(check_metric(score(4)))
    assert digest(lambda x: x * 2) != digest(lambda x: x * 3)
    assert digest(logit_diff(1, 2)) != digest(logit_diff(2, 1))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(values=st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=20), at=st.integers(0, 19))
def test_any_changed_array_element_changes_the_digest(values, at):
    a = np.array(values, dtype=np.float32)
    b = a.copy()
    b.view(np.uint32)[at % len(a)] ^= 1
    assert digest(mx.array(a)) == digest(mx.array(a.copy())) != digest(mx.array(b))
    assert digest(a) != digest(a.astype(np.float64))  # the dtype counts, not only the values


def test_describe_is_short_and_says_what_it_is():
    assert describe(["x"] * 30) == "30 items, the first 'x'"
    assert describe(mx.zeros((4, 64))) == "array of shape (4, 64) float32"
    assert describe(np.zeros(3, dtype=np.int8)) == "array of shape (3,) int8"
    assert describe([0, 2, -1]) == "[0, 2, -1]"
    assert len(describe("y" * 500)) <= 48
