"""Tuned lens quality on the default model: a tuned lens for every layer of SmolLM2-135M but the last, trained
live on the corpus of :mod:`benchmarks.corpus` with the paper's optimizer, against the logit lens on held-out
chunks: per-layer KL to the final distribution and next-token cross-entropy (nats per token).

::

    python -m benchmarks.tuned_lens --tokens 4096 --png docs/tuned_lens.png

Writes ``<work>/tuned_lens-<tokens>.json`` (the evaluation) and the lens in ``<work>/lens-<tokens>/``
(a resumable run folder: rerun the same command after an interruption).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tuned_lens", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="~/.cache/mlxterp/corpus", help="corpus folder (benchmarks.corpus)")
    parser.add_argument("--work", default="~/.cache/mlxterp/tuned-lens", help="run folders and results")
    parser.add_argument("--tokens", type=int, default=4096, help="training tokens (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="tokens per step (default %(default)s)")
    parser.add_argument("--heldout", type=int, default=12, help="held-out chunks evaluated (default %(default)s)")
    parser.add_argument("--png", help="write the per-layer curves here")
    args = parser.parse_args(argv)
    import mlxterp as mt
    from mlxterp import InterpretableModel, PromptFile

    corpus, work = Path(args.corpus).expanduser(), Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    model = InterpretableModel("smollm2-135m", dtype="float32")
    train = PromptFile(corpus / "train.jsonl")
    heldout = PromptFile(corpus / "heldout.jsonl")
    prompts = [train[i] for i in range(min(len(train), args.tokens // 16))]  # more than enough chunks
    t0 = time.perf_counter()
    lens = mt.TunedLens.train(model, prompts, tokens=args.tokens, batch_size=args.batch_size,
                              out=work / f"lens-{args.tokens}")
    trained = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = lens.evaluate(model, [heldout[i] for i in range(args.heldout)], progress=True)
    record = {"tokens": args.tokens, "batch_size": args.batch_size, "train_seconds": trained,
              "eval_seconds": time.perf_counter() - t1, "load": os.getloadavg(), "layers": result.layers,
              "kl": result.kl.tolist(), "kl_logit": result.kl_logit.tolist(), "ce": result.ce.tolist(),
              "ce_logit": result.ce_logit.tolist(), "ce_model": result.ce_model, "eval_tokens": result.tokens,
              "improved": result.improved}
    (work / f"tuned_lens-{args.tokens}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(result.table())
    print(json.dumps({k: v for k, v in record.items() if not isinstance(v, list)}))
    if args.png:
        result.plot(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
