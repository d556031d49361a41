"""Hook events of a module whose caller passes its input by keyword (GPT-J calls ``block(inputs=h)``)."""

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxterp import InterpretableModel


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def __call__(self, inputs, mask=None):
        return inputs + self.proj(inputs)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 4)
        self.layers = [_Block(), _Block()]

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.layers:
            x = block(mask=None, inputs=x)
        return x


@pytest.mark.parametrize("compile", [False, True])
def test_keyword_input_is_read_and_written(compile):
    mx.random.seed(0)
    net = _Net()
    model = InterpretableModel(net)
    tokens = mx.array([[1, 2, 3]])
    x = net.embed(tokens)
    with model.trace(tokens, compile=compile, capture="saved"):
        seen = model.layers[1].input.save()
        model.layers[1].input = model.layers[1].input * 0.0
        out = model.output.save()
    assert mx.array_equal(seen, net.layers[0](x))
    assert mx.array_equal(out, net.layers[1](mx.zeros_like(x)))
