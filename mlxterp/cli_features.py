"""``mlxterp features DIR``: a trained dictionary's most active features on a file of prompts, each with the
contexts where it fires hardest, and optionally the histogram of feature densities.

The contexts come from :func:`top_contexts`, the dictionary's own ``encode`` over the prompts' activations at
its site (one program forward per chunk, stopped after the site): one function, to be replaced by the feature
analysis of :mod:`mlxterp.dictionaries` when it exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from . import cli
from .cli_args import UsageError, call, check_output_path, parse_int_list, positive_int, read_prompts

EXAMPLES = ("  mlxterp features runs/sae12 --prompts heldout.jsonl --top 20\n"
            "  mlxterp features runs/sae12/00-layers.12.resid_pre-topk --prompts p.txt --features 7,99 --contexts 8\n"
            "  mlxterp features runs/sae12 --prompts p.txt --plot density.png")


@dataclasses.dataclass
class FeatureContexts:
    """Per feature: how often it fires, its largest activation, and where it fires hardest.

    Attributes:
        counts: ``(d_sae,)`` tokens on which each feature is active; ``tokens``: tokens read.
        values: ``(contexts, d_sae)`` its largest activations, largest first (0 where fewer).
        where: ``(contexts, d_sae, 2)`` the (prompt, position) of each.
        rows: the prompts' token ids.
    """

    counts: np.ndarray
    tokens: int
    values: np.ndarray
    where: np.ndarray
    rows: List[List[int]]

    @property
    def density(self) -> np.ndarray:
        return self.counts / max(self.tokens, 1)


def top_contexts(model: Any, dictionary: Any, prompts: Sequence[Any], *, contexts: int = 5, batch_size: int = 8,
                 progress: bool = True) -> FeatureContexts:
    """The dictionary's features over every real token of ``prompts`` (see :class:`FeatureContexts`)."""
    from .activations import token_rows, padded_batches
    from .dictionaries import sites

    site = sites.resolve(model, dictionary.site)
    probe = mx.zeros((1, sites.PROBE_TOKENS), dtype=mx.int32)
    with model.trace(probe, capture="saved", compile=False) as tr:
        sites.read(model, site).save("site")
    program = tr.program()
    rows = token_rows(model, list(prompts))
    d_sae = dictionary.d_sae
    counts, total = np.zeros(d_sae, dtype=np.int64), 0
    values = np.zeros((contexts, d_sae), dtype=np.float32)
    where = np.zeros((contexts, d_sae, 2), dtype=np.int64)
    for ids, tokens, _ in tqdm(list(padded_batches(model, rows, batch_size)), desc="features", disable=not progress):
        h = program(tokens=mx.array(tokens))["site"]
        spots = np.array([(int(p), t) for r, p in enumerate(ids) for t in range(len(rows[p]))]).reshape(-1, 2)
        flat = np.array([r * tokens.shape[1] + t for r, p in enumerate(ids) for t in range(len(rows[p]))])
        x = mx.take(h.reshape(-1, h.shape[-1]), mx.array(flat.astype(np.int32)), axis=0)
        f = np.array(dictionary.encode(x).astype(mx.float32))
        counts += (f > 0).sum(axis=0)
        total += f.shape[0]
        values, where = _merge(values, where, f, spots)
    return FeatureContexts(counts, total, values, where, rows)


def _merge(values: np.ndarray, where: np.ndarray, f: np.ndarray, spots: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The running top activations per feature merged with a chunk's ``f (tokens, d_sae)`` (``spots``: each
    token's (prompt, position))."""
    k = values.shape[0]
    best = np.argpartition(-f, k - 1, axis=0)[:k] if f.shape[0] > k else np.arange(f.shape[0])[:, None].repeat(
        f.shape[1], axis=1)
    both = np.concatenate([values, np.take_along_axis(f, best, axis=0)])
    locations = np.concatenate([where, spots[best]])
    order = np.argsort(-both, axis=0, kind="stable")[:k]
    return np.take_along_axis(both, order, axis=0), np.take_along_axis(locations, order[..., None], axis=0)


# -- the subcommand ------------------------------------------------------------------------------------
def add_features_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a saved dictionary (cfg.json, SAELens layout) or a train-sae run "
                                              "folder holding one")
    p.add_argument("--prompts", required=True, metavar="FILE", help=".jsonl or text file of prompts")
    p.add_argument("--top", type=positive_int, default=20, help="features shown: the most often active (default 20)")
    p.add_argument("--features", help="comma-separated feature indices to show instead of the most active")
    p.add_argument("--contexts", type=positive_int, default=5, help="contexts per feature (default 5)")
    p.add_argument("--window", type=positive_int, default=8, help="tokens shown each side of a context (default 8)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward (default 8)")
    p.add_argument("--plot", metavar="PNG", help="write the histogram of feature densities (log10) to this PNG")


def run_features(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompts)
    plot = check_output_path(args.plot, "--plot")
    folder = dictionary_folder(args.dir)
    wanted = _feature_list(args.features)
    from .dictionaries import Dictionary

    dictionary = call(Dictionary.load, folder, usage=True)
    if wanted and max(wanted) >= dictionary.d_sae:
        raise UsageError(f"argument --features: {max(wanted)} is not a feature of {folder} (it has {dictionary.d_sae}: "
                         f"0 to {dictionary.d_sae - 1})")
    model = cli.load(args.model, args.weights)
    from .cli_train import _site

    site = _site(model, dictionary.site, "DIR (the dictionary's site)")
    if site.width != dictionary.d_in:
        raise UsageError(f"DIR: the dictionary reads width {dictionary.d_in} at {dictionary.site}; {args.model} has "
                         f"width {site.width} there (another model?)")
    t0 = time.perf_counter()
    found = call(top_contexts, model, dictionary, prompts, contexts=args.contexts, batch_size=args.batch_size,
                 usage=True)
    density = found.density
    print(f"{dictionary.label}: {found.tokens:,} tokens of {len(prompts)} prompts in {cli.seconds(t0)}; "
          f"{int((found.counts == 0).sum())} of {dictionary.d_sae} features never active, mean L0 "
          f"{found.counts.sum() / max(found.tokens, 1):.1f}")
    chosen = wanted or [int(i) for i in np.argsort(-found.counts, kind="stable")[:args.top] if found.counts[i] > 0]
    for feature in chosen:
        print(f"\nfeature {feature}: active on {100 * density[feature]:.2f}% of tokens, max "
              f"{found.values[0, feature]:.2f}")
        for value, (prompt, position) in zip(found.values[:, feature], found.where[:, feature]):
            if value > 0:
                print(f"  {value:8.2f}  {_context(model, found.rows[prompt], position, args.window)}")
    if plot:
        _plot_density(density, plot, dictionary.label)
        print(f"\nwrote {plot}")
    return 0


def dictionary_folder(path: str) -> Path:
    """The folder of a saved dictionary: ``path`` itself, or the one dictionary of a training run folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"argument DIR: {path!r} is not a folder (expected a saved dictionary or a train-sae run)")
    if (folder / "cfg.json").is_file():
        return folder
    inside = sorted(p.parent for p in folder.glob("*/cfg.json"))
    if len(inside) == 1:
        return inside[0]
    if not inside:
        raise UsageError(f"argument DIR: {path!r} holds no dictionary (no cfg.json in it or in a subfolder); an "
                         "unfinished train-sae run saves its dictionary when it completes")
    raise UsageError(f"argument DIR: {path!r} holds {len(inside)} dictionaries; name one: "
                     + ", ".join(str(p) for p in inside))


def _feature_list(spec: Optional[str]) -> List[int]:
    if spec is None:
        return []
    try:
        values = parse_int_list(spec, "features")
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"argument --features: {exc}") from None
    if any(v < 0 for v in values):
        raise UsageError(f"argument --features: feature indices are >= 0, got {spec!r}")
    return values


def _context(model: Any, ids: List[int], position: int, window: int) -> str:
    """The text around ``position`` with its token in brackets."""
    lo, hi = max(0, position - window), min(len(ids), position + window + 1)
    before = model.tokenizer.decode(ids[lo:position]) if position > lo else ""
    after = model.tokenizer.decode(ids[position + 1:hi]) if hi > position + 1 else ""
    text = f"{'...' if lo else ''}{before}[[{model.tokenizer.decode([ids[position]])}]]{after}{'...' if hi < len(ids) else ''}"
    return text.replace("\n", "\\n")


def _plot_density(density: np.ndarray, path: Path, label: str) -> None:
    from .plotting import require_matplotlib

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    active = density[density > 0]
    ax.hist(np.log10(active), bins=50)
    ax.set_xlabel("log10 feature density (fraction of tokens active)")
    ax.set_ylabel("features")
    ax.set_title(f"{label}: {len(density) - len(active)} of {len(density)} never active")
    fig.savefig(path, dpi=130, format="png")
