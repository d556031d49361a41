"""Smoke test of the benchmark harness: its quickest mode on tiny models runs, and reports every row.

Timings are not tests: only the table's shape and the finiteness of its numbers are checked here.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from benchmarks import Settings, main, registry, run_benchmarks
from benchmarks.harness import Row, Target, format_table, summary
from tests.loading.test_gguf import QUANT, tiny_args, write_tiny_gguf

# The gguf suite's demo plots the tiny GGUF's byte tokens, some of which no font has a glyph for.
pytestmark = pytest.mark.filterwarnings("ignore:Glyph .* missing from font")

TINY_ARGS = ["--models", "tiny", "--shapes", "1x8", "--repeats", "2", "--warmup", "1", "--min-time", "0",
             "--sweep", "3", "--scan", "3", "--retrace-sweep", "5", "--analysis-seq", "8", "--prompts", "12",
             "--gen-tokens", "4"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    gguf = folder / "tiny.gguf"  # the gguf suite's model: a tiny quantized llama instead of SmolLM2
    write_tiny_gguf(gguf, tiny_args(), quant=QUANT)
    assert main(TINY_ARGS + ["--gguf", str(gguf), "--json", str(folder / "out.json")]) == 0
    return json.loads((folder / "out.json").read_text())


def test_every_registered_case_reports_a_row(smoke_run):
    reported = {row["case"] for row in smoke_run["rows"]}
    assert reported == {case for _, case, _ in registry.all_cases()}


@pytest.mark.parametrize("case,count", [("eager_overhead", 1), ("compiled_overhead", 1), ("compiled_floor", 1),
                                        ("steering_sweep", 1), ("compile_vs_eager", 1), ("zero_retrace", 1),
                                        ("trace_overhead", 2), ("cache_miss", 1), ("capture_all", 2),
                                        ("activation_patching", 1), ("patching_grid", 1),
                                        ("batch_get_activations", 2), ("attribution_patching", 1),
                                        ("pattern_one_layer", 2), ("pattern_all_layers", 2), ("head_patching", 2),
                                        ("generate_steering", 1), ("generate_variants", 1), ("generate_saves", 1),
                                        ("conversation_turn", 1),
                                        ("replay", 1), ("steering_scan", 1), ("gradient", 1),
                                        ("gguf_forward", 1), ("gguf_demo", 1), ("sweep_interrupt", 2),
                                        ("attention_view", 2), ("das_sites", 1), ("edited_forward", 4),
                                        ("weight_edited_forward", 2), ("edited_invokes", 1),
                                        ("circuits_eap", 1), ("circuits_eap_ig", 1), ("circuits_eap_ig_act", 1),
                                        ("circuits_patching", 1), ("circuits_patching_new", 1),
                                        ("circuits_curve", 1), ("circuits_dla", 1)])
def test_row_counts_per_case_on_one_model_and_shape(smoke_run, case, count):
    assert sum(row["case"] == case for row in smoke_run["rows"]) == count


def test_ratios_and_values_are_finite(smoke_run):
    from mlxterp.views.browser import unavailable

    for row in smoke_run["rows"]:
        if row["status"] == "SKIP" and row["case"] == "attention_view" and unavailable():
            continue  # the browser row, where Chromium or Playwright is missing (the row says why)
        assert row["status"] in ("PASS", "FAIL", "info"), row
        assert math.isfinite(row["value"]), row
        if row["unit"] == "x":
            assert row["value"] > 0 and math.isfinite(row["baseline_s"]) and math.isfinite(row["candidate_s"]), row


def test_retrace_count_is_an_integer_and_targets_are_stated(smoke_run):
    retrace = next(r for r in smoke_run["rows"] if r["case"] == "zero_retrace")
    assert retrace["unit"] == "retraces" and retrace["value"] == int(retrace["value"])
    judged = {r["case"] for r in smoke_run["rows"] if r["target"]}
    assert {"eager_overhead", "steering_sweep", "zero_retrace", "trace_overhead"} <= judged
    # compiled_overhead is judged for forwards of 5 ms and more; the tiny model's row says when it is not
    overhead = next(r for r in smoke_run["rows"] if r["case"] == "compiled_overhead")
    assert overhead["target"] or "not judged: the floor's forward is under" in overhead["note"]


def test_analysis_suite_quick_mode_gives_finite_ratios(tmp_path):
    path = tmp_path / "analysis.json"
    start = time.perf_counter()
    assert main(["--quick", "--only", "analysis", "--models", "tiny", "--json", str(path)]) == 0
    assert time.perf_counter() - start < 15
    rows = json.loads(path.read_text())["rows"]
    assert {r["case"] for r in rows} == set(registry.suite("analysis").CASES)
    for row in rows:
        assert row["status"] in ("PASS", "FAIL", "info"), row
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        assert math.isfinite(row["baseline_s"]) and math.isfinite(row["candidate_s"]), row
    patching = [r for r in rows if r["case"] in ("activation_patching", "patching_grid")]
    assert all("recoveries differ" not in "; ".join(r["failures"]) for r in patching)  # same numbers as the loop


def test_report_names_blas_versions_and_machine(smoke_run):
    env = smoke_run["env"]
    assert env["blas"]["blas"] and env["blas"]["sgemm_512_gflops"] > 0
    assert {"python", "mlx", "mlx-lm", "mlxterp"} <= set(env["versions"])
    assert env["machine"]["cpu"] and env["machine"]["cores"] >= 1


def test_table_marks_targets_pass_fail_and_info():
    rows = [Row("s", "a", "m", "b1 s8", "base", "cand", 1.2, target=Target("<=", 1.3), baseline_s=1e-3,
                candidate_s=1.2e-3),
            Row("s", "b", "m", "b1 s8", "base", "cand", 2.0, target=Target("<=", 1.3)),
            Row("s", "c", "m", "b1 s8", "base", "cand", 0.5),
            Row("s", "d", "m", "", "base", "cand", math.nan, skipped="model absent")]
    assert [r.status for r in rows] == ["PASS", "FAIL", "info", "SKIP"]
    table = format_table(rows)
    assert "1.200x" in table and "<= 1.3" in table and "model absent" in table
    assert summary(rows).startswith("2 targets: 1 PASS, 1 FAIL")


def test_missing_model_gives_a_skip_row_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXTERP_STORIES260K", str(tmp_path / "absent"))
    rows = run_benchmarks(Settings(models=("stories260K",)), only=["eager_overhead"], verbose=False)
    assert [r.status for r in rows] == ["SKIP"] and "absent" in rows[0].skipped


def test_unknown_case_names_the_choices():
    with pytest.raises(ValueError, match="eager_overhead"):
        registry.select(["no_such_case"])


def test_list_prints_suites_and_cases(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "trace:" in out and "steering_sweep" in out


def test_the_fuzzer_long_run_checks_every_executor_and_reports(capsys):
    from benchmarks import fuzz as long_fuzz
    from tests import fuzz

    before = dict(fuzz.COVERAGE)
    assert long_fuzz.main(["--examples", "2", "--max-steps", "3", "--variants", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 4 programs, every outcome equal to the reference")
    assert fuzz.COVERAGE["eager"] == before.get("eager", 0) + 4  # one eager trace per program
    with pytest.raises(SystemExit):
        long_fuzz.main(["--variants", "1"])
