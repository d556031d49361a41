"""Tutorials: Python scripts in jupytext's "percent" format, run cell by cell, their outputs recorded.

A tutorial ``docs/tutorials/<name>.py`` is plain Python (``python <name>.py`` runs it) whose ``# %%`` lines
split it into cells (``# %% [markdown]`` cells hold the prose), so ``jupytext --to notebook`` opens it as a
notebook. It reads its model from ``MLXTERP_TUTORIAL_MODEL`` (default: the default model), so the tests run
it on a tiny model quickly and on the default model in the real-model tier.

``python -m docsgen.tutorials [name ...]`` runs tutorials on the default model and records, per code cell,
its printed output and the figures (PNG) and views (HTML) it wrote, in ``docs/tutorials/outputs/<name>/``
(``outputs.json`` and the files). The site's page for a tutorial shows each cell with its outputs
(:func:`render`); a cell whose source changed since its outputs were recorded fails the build until the
tutorial is run again (``make tutorials``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
SHOWN = (".png", ".html", ".svg")  # files a cell writes that the page shows (others, such as stores, are not kept)
MAX_OUTPUT_LINES = 60


@dataclass
class Cell:
    """One cell of a tutorial: ``kind`` is ``"code"`` or ``"markdown"``, ``source`` its text."""

    kind: str
    source: str

    @property
    def digest(self) -> str:
        """A short SHA-256 of the source: outputs are valid for the source they were recorded from."""
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]


@dataclass
class Output:
    """What one code cell gave: its printed text, the shown files it wrote, and its time in seconds."""

    digest: str
    stdout: str = ""
    files: list = field(default_factory=list)
    seconds: float = 0.0


def scripts(folder: Path = TUTORIALS) -> list[Path]:
    """The tutorial scripts of ``folder``, by name."""
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def cells(script: Path) -> list[Cell]:
    """The cells of a percent-format script, as jupytext reads them (markdown cells without their ``# ``)."""
    import jupytext

    notebook = jupytext.read(script, fmt="py:percent")
    return [Cell(c.cell_type, c.source) for c in notebook.cells if c.cell_type in ("code", "markdown")
            and c.source.strip()]


@contextlib.contextmanager
def _environment(workdir: Path, env: dict[str, str]) -> Iterator[None]:
    old_cwd, old_env = os.getcwd(), {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _written(workdir: Path) -> dict[str, float]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in workdir.rglob("*")
            if p.is_file() and p.suffix in SHOWN}


def _save_figures(workdir: Path, index: int) -> list[str]:
    """Save and close the matplotlib figures a cell left open (as a notebook would show them)."""
    if "matplotlib.pyplot" not in sys.modules:
        return []
    import matplotlib.pyplot as plt

    names = []
    for k, number in enumerate(plt.get_fignums()):
        name = f"cell{index}_figure{k}.png"
        plt.figure(number).savefig(workdir / name, dpi=90, bbox_inches="tight")
        names.append(name)
    plt.close("all")
    return names


def run(script: Path, workdir: Path, env: Optional[dict[str, str]] = None,
        echo: bool = False) -> tuple[dict[str, Any], list[Output]]:
    """Run ``script`` cell by cell in ``workdir`` with ``env`` set; returns its namespace and outputs.

    Args:
        script: a percent-format tutorial.
        workdir: the working directory its cells run in (the files they write land there).
        env: environment variables set while it runs (``MLXTERP_TUTORIAL_MODEL``, ...).
        echo: also print each cell's output as it comes.

    Returns:
        The namespace the cells ran in (for tests to check results), and one :class:`Output` per code cell.
        A cell that raises raises here, naming the cell.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    outputs = []
    code = [cell for cell in cells(script) if cell.kind == "code"]
    with _environment(workdir, dict(env or {})):
        for index, cell in enumerate(code):
            before, buffer, t0 = _written(workdir), io.StringIO(), time.perf_counter()
            try:
                with contextlib.redirect_stdout(buffer):
                    exec(compile(cell.source, f"{script.name} (code cell {index})", "exec"), namespace)
            except BaseException:
                sys.stdout.write(buffer.getvalue())
                raise
            figures = _save_figures(workdir, index)
            after = _written(workdir)
            files = sorted(set(figures) | {name for name, t in after.items() if before.get(name) != t})
            outputs.append(Output(cell.digest, buffer.getvalue(), files, round(time.perf_counter() - t0, 2)))
            if echo:
                print(f"--- cell {index} ({outputs[-1].seconds:.1f} s)\n{buffer.getvalue()}", end="", flush=True)
    return namespace, outputs


def record(script: Path, model: str, outdir: Path, env: Optional[dict[str, str]] = None) -> None:
    """Run ``script`` on ``model`` and write its outputs (``outputs.json`` and shown files) to ``outdir``."""
    with tempfile.TemporaryDirectory(prefix=f"tutorial-{script.stem}-") as tmp:
        t0 = time.perf_counter()
        _, outputs = run(script, Path(tmp), {"MLXTERP_TUTORIAL_MODEL": model, **(env or {})}, echo=True)
        if outdir.exists():
            shutil.rmtree(outdir)
        outdir.mkdir(parents=True)
        for output in outputs:
            for name in output.files:
                target = outdir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(tmp) / name, target)
    meta = {"script": script.name, "model": model, "seconds": round(time.perf_counter() - t0, 1),
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, load average "
                       f"{os.getloadavg()[0]:.1f}", "blas": "OpenBLAS" if "openblas" in os.environ.get("LD_PRELOAD", "")
            else "MLX's bundled BLAS", "date": time.strftime("%Y-%m-%d")}
    (outdir / "outputs.json").write_text(json.dumps({"meta": meta, "cells": [vars(o) for o in outputs]}, indent=1))


def _text_block(text: str) -> str:
    lines = text.rstrip("\n").split("\n")
    if len(lines) > MAX_OUTPUT_LINES:
        cut = len(lines) - MAX_OUTPUT_LINES
        lines = lines[:MAX_OUTPUT_LINES // 2] + [f"... ({cut} lines not shown)"] + lines[-MAX_OUTPUT_LINES // 2:]
    return "```text\n" + "\n".join(lines) + "\n```\n"


def _shown(name: str, folder: str) -> str:
    if name.endswith(".html"):
        # An iframe's src is not rewritten by MkDocs: the page is tutorials/<name>/ (directory URLs).
        src = f"../{folder}/{name}"
        return (f'<iframe class="mlxterp-view" src="{src}" loading="lazy" title="{name}"></iframe>\n\n'
                f"[Open `{name}` on its own]({folder}/{name}) (a self-contained page: it works offline).\n")
    return f"![{name}]({folder}/{name})\n"


def render(script: Path) -> tuple[str, list[str]]:
    """The page for ``script``: its cells with their recorded outputs, and problems (missing or stale outputs)."""
    folder = f"outputs/{script.stem}"
    recorded_file = script.parent / folder / "outputs.json"
    problems, recorded, meta = [], [], {}
    if recorded_file.exists():
        data = json.loads(recorded_file.read_text())
        recorded, meta = data["cells"], data["meta"]
    else:
        problems.append(f"tutorial {script.name}: no recorded outputs ({recorded_file}); run "
                        f"`make tutorials` or `python -m docsgen.tutorials {script.stem}`")
    parts, index = [], 0
    for cell in cells(script):
        if cell.kind == "markdown":
            parts.append(cell.source + "\n")
            continue
        parts.append(f"```python\n{cell.source}\n```\n")
        output = recorded[index] if index < len(recorded) else None
        if output is not None and output["digest"] != cell.digest:
            problems.append(f"tutorial {script.name}: code cell {index} changed since its outputs were recorded; "
                            f"run `python -m docsgen.tutorials {script.stem}` (make tutorials)")
        elif output is not None:
            if output["stdout"].strip():
                parts.append(_text_block(output["stdout"]))
            parts.extend(_shown(name, folder) for name in output["files"])
        index += 1
    if recorded and len(recorded) != index:
        problems.append(f"tutorial {script.name}: {len(recorded)} recorded code cells, the script has {index}")
    footer = (f"\n---\n\n[Download the script]({script.name}) (jupytext percent format: "
              f"`jupytext --to notebook {script.name}` makes it a notebook).")
    if meta:
        footer += (f" Outputs recorded on {meta['model']} ({meta['machine']}, {meta['blas']}; "
                   f"{meta['seconds']:.0f} s in all) on {meta['date']}.")
    return "\n".join(parts) + footer + "\n", problems


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docsgen.tutorials", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="tutorials to run (default: all), e.g. find_a_fact")
    parser.add_argument("--model", default="smollm2-135m", help="the model (default smollm2-135m)")
    args = parser.parse_args(argv)
    known = {p.stem: p for p in scripts()}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown tutorial(s) {unknown}; choose from {sorted(known)}")
    for name in args.names or sorted(known):
        print(f"=== {name} on {args.model}", flush=True)
        record(known[name], args.model, TUTORIALS / "outputs" / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
