"""The seed API's examples ("InterpretableModel", "Tracing", "Interventions"), as written, on stories260K."""

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxterp import InterpretableModel, LayerListProxy, ModuleProxy
from mlxterp import interventions as iv
from tests.models import STORIES

pytestmark = pytest.mark.realmodel

input = "Once upon a time"  # noqa: A001 (the seed's examples call their prompt `input`)
input_text = input


@pytest.fixture(scope="module")
def model():
    if not STORIES.is_dir():
        pytest.skip(f"real-model tier: {STORIES} is absent")
    return InterpretableModel(str(STORIES))


def test_constructor_forms(model):
    import mlx_lm

    base_model, my_tokenizer = mlx_lm.load(str(STORIES))
    wrapped = InterpretableModel(base_model, tokenizer=my_tokenizer)
    assert wrapped.tokenizer is my_tokenizer and len(wrapped.layers) == 5
    assert model.tokenizer is not None and isinstance(model.model, nn.Module)
    assert InterpretableModel(base_model, tokenizer=my_tokenizer, layer_attr="layers").layers[0].path == "model.layers.0"


def test_trace_examples(model):
    with model.trace("Hello world"):
        output = model.output.save()
    assert output.shape[-1] == 512

    with model.trace("Test", interventions={"layers.3": iv.scale(0.5)}):
        output = model.output.save()
    assert output.shape[:2] == (1, len(model.encode("Test")))

    with model.trace(["Hello", "World"]):
        acts = model.layers[3].output.save()
    assert acts.shape[0] == 2 and acts.shape[-1] == 64


def test_encode_decode_examples(model):
    tokens = model.encode("Hello world")
    assert tokens[0] == 1 and all(isinstance(t, int) for t in tokens)
    text = model.decode(tokens)
    assert "Hello world" in text
    tokens_array = mx.array(tokens)
    assert model.decode(tokens_array) == text
    token_lists = model.encode_batch(["Hello", "World", "Test"])
    assert [t[0] for t in token_lists] == [1, 1, 1] and len(token_lists) == 3
    assert model.encode("Once upon a time, there was a little dragon") == [
        1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 279, 420, 412, 428, 289]


def test_token_to_str_keeps_the_leading_space(model):
    tokens = model.encode("Hello world")
    strings = [model.token_to_str(t) for t in tokens]
    assert "".join(strings[1:]).strip() == "Hello world"
    assert any(s.startswith(" ") for s in strings[2:])


def test_vocab_size_and_tokenizer_attribute(model):
    assert model.vocab_size == 512
    tokenizer = model.tokenizer
    assert hasattr(tokenizer, "encode")


def test_named_modules_layers_and_output(model):
    names = [f"{name}: {type(module).__name__}" for name, module in model.named_modules()]
    assert "model.layers.0.mlp: MLP" in names
    layer_3 = model.layers[3]
    assert isinstance(layer_3, ModuleProxy) and isinstance(model.layers, LayerListProxy)
    assert len(model.layers) == 5 and [str(layer) for layer in model.layers][0].startswith("ModuleProxy(layers.0")
    with model.trace(input_text):
        final_output = model.output.save()
    assert mx.array_equal(final_output, model.model(mx.array([model.encode(input_text)])))


def test_trace_attributes_and_get(model):
    with model.trace(input) as trace:
        model.layers[3].output.save()
    activation = trace.get("layers.3.output")
    assert activation.shape == (1, len(model.encode(input)), 64)
    with model.trace(input) as trace:
        pass  # Activations captured automatically
    attn_act = trace.get_activation("layers.3.attn")
    assert attn_act.shape == activation.shape
    layer_6_equivalent = trace.activations["model.model.layers.4"]
    assert layer_6_equivalent.shape == activation.shape


def test_output_proxy_save_is_usable_immediately(model):
    with model.trace(input):
        attn = model.layers[3].self_attn.output.save()
        assert attn.shape == (1, len(model.encode(input)), 64)  # Can use immediately
    assert isinstance(attn, mx.array)


def test_interventions_section(model):
    hidden_dim = 64
    reference = model.model(mx.array([model.encode(input)]))
    with model.trace(input, interventions={"layers.3": iv.scale(0.5)}):
        output = model.output.save()
    assert not mx.allclose(output, reference)
    with model.trace(input, interventions={"layers.4": iv.zero_out}):
        output = model.output.save()
    with model.trace(input, interventions={"layers.3": iv.scale(2.0)}):
        output = model.output.save()
    steering = mx.random.normal((hidden_dim,))
    # The seed steers "layers.5"; stories260K has layers 0-4.
    with model.trace(input, interventions={"layers.4": iv.add_vector(steering)}):
        steered_output = model.output.save()
    assert steered_output.shape == reference.shape
    with model.trace(input, interventions={"layers.3": iv.replace_with(0.0)}):
        output = model.output.save()
    batch, seq_len = 1, len(model.encode(input))
    custom = mx.ones((batch, seq_len, hidden_dim))
    with model.trace(input, interventions={"layers.3": iv.replace_with(custom)}):
        output = model.output.save()
    with model.trace(input, interventions={"layers.3": iv.clamp(-1.0, 1.0)}):
        output = model.output.save()
    with model.trace(input, interventions={"layers.3": iv.clamp(max_val=10.0)}):
        output = model.output.save()
    with model.trace(input, interventions={"layers.3": iv.noise(std=0.2)}):
        output = model.output.save()
    combined = iv.compose() \
        .add(iv.scale(0.8)) \
        .add(iv.noise(std=0.1)) \
        .add(iv.clamp(-5.0, 5.0)) \
        .build()
    with model.trace(input, interventions={"layers.3": combined}):
        output = model.output.save()
    assert bool(mx.all(mx.isfinite(output)))

    def my_intervention(activation: mx.array) -> mx.array:
        """Custom activation modification"""
        return mx.tanh(activation)

    with model.trace(input, interventions={"layers.3": my_intervention}):
        output = model.output.save()
    with model.trace(input, interventions={"layers.3": iv.clamp(-1.0, 1.0)}):
        clamped = model.layers[3].output.save()
    assert float(mx.abs(clamped).max()) <= 1.0


def test_text_without_tokenizer_raises_value_error(model):
    base_model = model.model
    bare = InterpretableModel(base_model)  # No tokenizer
    with pytest.raises(ValueError):
        with bare.trace("text input"):  # Needs tokenizer!
            pass


def test_wrong_layer_attr_raises_attribute_error(model):
    with pytest.raises(AttributeError):
        InterpretableModel(model.model, layer_attr="transformer")


def test_traced_logits_equal_the_raw_forward(model):
    prompt = "Once upon a time, there was a little dragon"
    tokens = mx.array([model.encode(prompt)])
    for compile in (False, True):
        with model.trace(prompt, compile=compile) as tr:
            pass
        assert mx.array_equal(tr.output, model.model(tokens)) if not compile else mx.allclose(
            tr.output, model.model(tokens), atol=1e-5)


def test_get_token_predictions_example(model):
    with model.trace("The capital of France is") as trace:
        layer_6 = trace.activations["model.model.layers.4"]  # the seed reads layer 6; stories260K has 5
    last_token_hidden = layer_6[0, -1, :]
    predictions = model.get_token_predictions(last_token_hidden, top_k=5)
    assert len(predictions) == 5 and all(isinstance(model.token_to_str(t), str) for t in predictions)
    predictions_with_scores = model.get_token_predictions(last_token_hidden, top_k=5, return_scores=True)
    assert [t for t, _ in predictions_with_scores] == predictions
    assert all(f"{model.token_to_str(t)}: {s:.2f}" for t, s in predictions_with_scores)


def test_logit_lens_examples(model, tmp_path):
    results = model.logit_lens("The capital of France is")
    layer_4_predictions = results[4]
    pos_3_top_pred = layer_4_predictions[3][0]
    assert len(pos_3_top_pred) == 3 and isinstance(pos_3_top_pred[2], str)
    results = model.logit_lens("The capital of France is", layers=[0, 2, 4])
    assert sorted(results) == [0, 2, 4]
    text = "The capital of France"
    results = model.logit_lens(text, layers=[4])
    tokens = model.encode(text)
    assert len(results[4]) == len(tokens)
    import matplotlib

    matplotlib.use("Agg")
    results = model.logit_lens("The Eiffel Tower is located in the city of", plot=True, max_display_tokens=15,
                               figsize=(16, 10))
    assert len(results) == 5


def test_activation_patching_examples(model):
    import matplotlib

    matplotlib.use("Agg")
    results = model.activation_patching(clean_text="Once upon a time there was a little girl",
                                        corrupted_text="Once upon a time there was a little boy",
                                        component="mlp", plot=True)
    assert sorted(results) == [0, 1, 2, 3, 4]
    sorted_results = sorted(results.items(), key=lambda x: x[1], reverse=True)
    assert all(f"  Layer {layer_idx}: {recovery:.1f}% recovery" for layer_idx, recovery in sorted_results[:3])
    results = model.activation_patching(clean_text="Once upon a time there was a little girl",
                                        corrupted_text="Once upon a time there was a little boy",
                                        component="self_attn", layers=[0, 2, 4], plot=False)
    assert sorted(results) == [0, 2, 4]
    results = model.activation_patching(clean_text="The cat sat on the mat", corrupted_text="The dog sat on the mat",
                                        component="mlp.gate_proj", layers=[1, 3])
    results = model.activation_patching(clean_text="Once upon a time there was a little girl",
                                        corrupted_text="Once upon a time there was a little boy",
                                        component="mlp", metric="mse", plot=False)
    assert all(abs(v) < 1e4 for v in results.values())


def test_utilities_examples(model):
    from mlxterp import batch_get_activations, collect_activations, get_activations

    acts = get_activations(model, "Hello world", layers=[1, 3])
    assert acts["layer_3"].shape == (1, 64)
    acts = get_activations(model, ["Hello", "World", "Test"], layers=[2], positions=-1)
    assert acts["layer_2"].shape == (3, 64)
    acts = get_activations(model, "Test prompt", layers=[3], positions=[0, -1])
    assert acts["layer_3"].shape == (1, 2, 64)
    large_dataset = [f"Prompt {i}" for i in range(100)]
    acts = batch_get_activations(model, prompts=large_dataset, layers=[1, 3], batch_size=32)
    assert acts["layer_3"].shape == (100, 64)
    cache = collect_activations(model, "Test input", layers=["layers.3", "layers.4"])
    act_3 = cache.get("layers.3")
    assert act_3 is not None and len(cache) == 2 and "layers.3" in cache.keys()
    cache = collect_activations(model, input)
    assert "layers.3" in cache and len(list(cache.keys())) == 5


def test_core_components_examples(model):
    proxy = model.layers[3]
    assert type(proxy).__name__ == "ModuleProxy"
    with model.trace(input):
        act = proxy.output.save()
    assert act.shape[-1] == 64
    layers = model.layers
    assert len(layers) == 5 and all(str(layer).startswith("ModuleProxy") for layer in layers)
