"""Generation fixtures: the shared tiny llama wrapped fresh per test, and a steering vector for it."""

from __future__ import annotations

import mlx.core as mx
import pytest

MODES = [False, True]  # eager on mlx-lm's cache; compiled on the static cache


@pytest.fixture()
def steer() -> mx.array:
    return mx.random.normal((64,), key=mx.random.key(7)) * 0.5
