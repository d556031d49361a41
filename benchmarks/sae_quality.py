"""SAE quality on the default model: a TopK SAE (k 32, 8x latents) on SmolLM2-135M's layer-12 residual
(``layers.12.resid_pre``), trained on the corpus of :mod:`benchmarks.corpus`, evaluated on held-out text
every ``--every`` tokens of training.

Phases (each resumable: rerun the same command after an interruption, even ``kill -9``):

1. ``collect``: the layer-12 residual of the first train chunks holding ``--collect`` tokens, into an
   activation store (float32; the forward stops after layer 12).
2. ``train``: ``mlxterp.train`` on the store for ``--tokens`` tokens, paused every ``--every`` tokens
   (``until=``; the run is one run, with one learning-rate schedule, equal to an uninterrupted one) to
   evaluate on the held-out chunks:

   - FVE: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over every held-out token;
   - L0: active latents per held-out token; dead: the trainer's fraction of latents silent for the last
     ``dead_tokens`` training tokens, and the fraction never active on the held-out tokens;
   - CE-recovered: ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``, next-token cross-entropy over the
     held-out chunks' real positions, with the SAE's reconstruction spliced in at the site (a hand-written
     splice: ``interventions={site: decode(encode(x))}``), and with the site zero-ablated.

Results go to ``<work>/<tag>.json`` (one record per evaluation) and are printed as a table; ``--png``
draws the curve::

    python -m benchmarks.corpus --out ~/.cache/mlxterp/corpus
    python -m benchmarks.sae_quality --phase collect
    python -m benchmarks.sae_quality --phase train --tag base --png docs/sae_quality.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import mlx.core as mx
import numpy as np

SITE = "layers.12.resid_pre"


def load_model() -> Any:
    from mlxterp import InterpretableModel

    return InterpretableModel("smollm2-135m", dtype="float32")


def first_chunks(model: Any, path: Path, tokens: int) -> List[str]:
    """The leading texts of a corpus file holding at least ``tokens`` tokens (all of them if fewer)."""
    from mlxterp import PromptFile

    prompts = PromptFile(path)
    out, total = [], 0
    for i in range(len(prompts)):
        if total >= tokens:
            break
        out.append(prompts[i])
        total += len(model.encode(prompts[i]))
    return out


def collect(model: Any, corpus: Path, work: Path, tokens: int) -> Any:
    from mlxterp import collect_activations

    prompts = first_chunks(model, corpus / "train.jsonl", tokens)
    return collect_activations(model, prompts, layers=[SITE], out=work / "store", dtype="float32", batch_size=16,
                               metadata={"corpus": json.loads((corpus / "corpus.json").read_text())["files"]})


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sae_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("collect", "train"), required=True)
    parser.add_argument("--corpus", default="~/.cache/mlxterp/corpus", help="corpus folder (benchmarks.corpus)")
    parser.add_argument("--work", default="~/.cache/mlxterp/sae-quality", help="store, runs and results")
    parser.add_argument("--collect", type=int, default=2_200_000, help="tokens to collect (default %(default)s)")
    args = parser.parse_args(argv)
    corpus, work = Path(args.corpus).expanduser(), Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    model = load_model()
    if args.phase == "collect":
        t0 = time.perf_counter()
        store = collect(model, corpus, work, args.collect)
        print(f"store: {len(store)} rows in {time.perf_counter() - t0:.0f} s, load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
