"""``--html PATH`` of the CLI: checked before the model loads (like ``--plot``), and the page it writes holds
the numbers of the result the subcommand printed."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import cli_generate
from tests.models import STORIES
from tests.test_cli import (  # noqa: F401 (fixtures)
    assert_only_error,
    needs_stories,
    no_load,
    run,
    tiny_model,
    unwritable_dir,
)
from tests.views.test_pages import parse

COMMANDS = [["logit-lens", "x"], ["patch", "--clean", "a", "--corrupted", "b"], ["generate", "x"]]


@pytest.fixture()
def no_load_generate(monkeypatch, no_load):  # noqa: F811
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the argument error was found")
    monkeypatch.setattr(cli_generate, "load", load)


@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_html_is_found_before_loading(capsys, no_load_generate, unwritable_dir, command):  # noqa: F811
    code, _, err = run(capsys, *command, "--html", str(unwritable_dir / "v.html"))
    assert code == 2
    assert_only_error(err, "--html", "cannot write")


@pytest.mark.parametrize("command", COMMANDS)
def test_html_naming_a_folder(capsys, no_load_generate, tmp_path, command):
    code, _, err = run(capsys, *command, "--html", str(tmp_path))
    assert code == 2
    assert_only_error(err, "--html", "is a directory", "out.html")


def page_data(path) -> dict:
    return json.loads(parse(path.read_text(encoding="utf-8")).data)


def test_logit_lens_html(capsys, tiny_model, tmp_path):  # noqa: F811
    path = tmp_path / "lens.html"
    code, out, err = run(capsys, "logit-lens", "hello", "--top-k", "2", "--layers", "1,3", "--html", str(path))
    assert code == 0, err
    assert f"wrote {path}" in out
    expected = tiny_model.logit_lens("hello", top_k=2, layers=[1, 3])
    panel = page_data(path)["panels"][0]
    assert panel["layers"] == [1, 3] and np.array_equal(np.array(panel["probs"], dtype=np.float32), expected.probs)


def test_patch_html(capsys, tiny_model, tmp_path):  # noqa: F811
    path = tmp_path / "patch.html"
    code, out, err = run(capsys, "patch", "--clean", "abcdef", "--corrupted", "abcxef", "--html", str(path))
    assert code == 0, err
    data = page_data(path)
    expected = tiny_model.activation_patching("abcdef", "abcxef")
    assert data["layers"] == list(expected) and [row[0] for row in data["grid"]] == list(expected.values())
    assert "&quot;abcdef&quot;" in path.read_text() and "&quot;abcxef&quot;" in path.read_text()  # the header


@needs_stories
@pytest.mark.parametrize("steer", [False, True])
def test_generate_html_colours_each_token_by_its_probability(capsys, tmp_path, steer):
    """Each new token's value is the probability the model gave it, checked against mlx-lm's own forward of
    the prompt and the tokens before it."""
    import mlx_lm

    path = tmp_path / "gen.html"
    extra = ["--steer-toward", "sad", "--steer-away", "happy", "--layer", "2"] if steer else []
    code, out, err = run(capsys, "generate", "--model", str(STORIES), "Once upon a time", "-n", "6", *extra,
                         "--html", str(path))
    assert code == 0, err
    rows = page_data(path)["rows"]
    assert len(rows) == (2 if steer else 1) and rows[0]["values"] and all(0 < v <= 1 for v in rows[0]["values"])
    module, tokenizer = mlx_lm.load(str(STORIES))
    baseline = rows[0]  # unsteered in both runs (the steered run's row 0 adds 0 x the vector)
    prompt = tokenizer.encode("Once upon a time")
    logits = module(mx.array([prompt + baseline["ids"][:-1]]))[0].astype(mx.float32)
    probs = np.array(mx.softmax(logits, axis=-1))
    expected = [probs[len(prompt) - 1 + k, token] for k, token in enumerate(baseline["ids"])]
    np.testing.assert_allclose(baseline["values"], expected, rtol=1e-4, atol=1e-6)
