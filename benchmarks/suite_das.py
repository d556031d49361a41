"""DAS: interchange-intervention training of many sites at once against one site.

Case:

``das_sites``  one compiled DAS training step (source program, intervened base program, backward, Adam update)
               for 16 sites trained together (``DAS.train_many``: the resid_mid and resid_post of every layer,
               position -1, dim 1; fewer where the model has fewer sites) vs the same step for one site (the
               middle layer's resid_post), on ``batch`` (base, source) pairs of ``seq`` random tokens. Each
               side is the compiled step ``DAS.train`` runs (``Trainer.step``), timed on the same pairs.
               Before timing, the middle site's loss in the 16-site step is checked against the one-site
               step's (same initial rotation). Target: <= 2x.

The sites share one forward (see :mod:`mlxterp.circuits.das_program`): the base prompts' first ``seq - 1``
tokens run once on a KV cache, and each site's variant runs only the last token, from its site's layer on
(forward and backward), so the extra sites cost about ``16 * batch`` one-token rows over part of the layers
against ``batch * seq`` tokens for what is shared (the source run, the prefix).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from mlxterp.circuits.das_data import interchange_pairs, site_on
from mlxterp.circuits.das_rotation import initial_vectors
from mlxterp.circuits.das_train import Trainer

from .context import Context, shape_text
from .harness import Row, Target, compare, paired_ratio, ratio_row

SUITE = "das"
DESCRIPTION = "DAS training: 16 sites trained together (one forward) vs one site"

SITES_TARGET = Target("<=", 2.0)
MAX_SITES = 16
KINDS = ("resid_mid", "resid_post", "attn", "mlp", "resid_pre")


def site_names(layers: int) -> list[str]:
    """Up to 16 sites: resid_mid and resid_post of every layer first, then other kinds."""
    names = [f"layers.{i}.{kind}" for kind in KINDS for i in range(layers)]
    names.sort(key=lambda n: (KINDS.index(n.split(".")[2]) >= 2, int(n.split(".")[1])))
    return names[:MAX_SITES]


def _trainer(im, sites, pairs, width: int) -> tuple[Trainer, dict]:
    vectors = {f"site_{j}": initial_vectors(1, width, seed=j) for j in range(len(sites))}
    return Trainer(im, sites, pairs, optim.Adam(learning_rate=0.01)), vectors


def _row(ctx: Context, name: str, batch: int, seq: int) -> Row:
    m = ctx.model(name)
    im = m.wrap()
    labels = np.array(m.tokens(1, batch, seed=2))[0].tolist()
    pairs = interchange_pairs(im, m.tokens(batch, seq, seed=0), m.tokens(batch, seq, seed=1), labels)
    names = site_names(m.layers)
    middle = names.index(f"layers.{m.layers // 2}.resid_post")
    many = [site_on(im, n, (-1,), 1, pairs.base) for n in names]
    one_trainer, one_vectors = _trainer(im, [many[middle]], pairs, m.hidden)
    many_trainer, many_vectors = _trainer(im, many, pairs, m.hidden)
    many_vectors[f"site_{middle}"] = one_vectors["site_0"]
    one_loss, _ = one_trainer.step(one_vectors, pairs)
    many_loss, _ = many_trainer.step(many_vectors, pairs)
    diff = abs(many_loss[middle].item() - one_loss[0].item())
    if not diff <= 1e-4 * (1 + abs(one_loss[0].item())):
        raise AssertionError(f"{name}: site {names[middle]}'s loss trained with {len(names)} sites differs from "
                             f"training it alone by {diff:.3g}")
    s = ctx.settings
    timings = compare(lambda: mx.eval(one_trainer.step(one_vectors, pairs)),
                      lambda: mx.eval(many_trainer.step(many_vectors, pairs)),
                      repeats=s.repeats, warmup=s.warmup, min_time=s.min_time)
    return ratio_row(SUITE, "das_sites", name, shape_text(batch, seq), f"one site ({names[middle]})",
                     f"{len(names)} sites trained together", timings, SITES_TARGET,
                     note=f"training step, {batch} pairs; shared prefix {many_trainer.base.prefix_len} tokens; "
                          f"{len(names)} one-site steps would take {len(names) / paired_ratio(*timings):.1f}x "
                          f"the {len(names)}-site step; loss of the shared site: same to {diff:.1e}")


def das_sites(ctx: Context) -> Iterator[Row]:
    """One DAS training step: 16 sites together vs one site."""
    for name, reason in ctx.missing().items():
        yield Row(SUITE, "das_sites", name, "", "one site", "16 sites trained together", float("nan"),
                  skipped=reason)
    for name, batch, seq in ctx.configs():
        yield _row(ctx, name, batch, seq)


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {"das_sites": das_sites}
