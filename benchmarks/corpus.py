"""A training corpus of English prose from Debian packages, for dictionary and lens quality runs.

Nothing can be fetched from a model or data-set hub here, but Debian's archive is reachable. Three
packages ship several million tokens of English prose as HTML:

- ``python3.11-doc``: the Python documentation (PSF documentation licence), ~1.5M SmolLM2 tokens;
- ``postgresql-doc-15``: the PostgreSQL manual (PostgreSQL licence), ~1.2M tokens;
- ``debian-handbook``: the Debian Administrator's Handbook, English edition (GPL-2+ or CC-BY-SA-3.0).

Each package is read from ``/usr/share/doc`` when installed, otherwise fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` into the output folder (no root needed). Paragraphs are the text of
``<p>`` elements (DocBook's ``<div class="para">`` in the handbook), code blocks (``<pre>``) left out, with
at least 8 words. A document's consecutive paragraphs are packed into chunks of up to ``--words`` words
(a longer paragraph is cut at a sentence end, or at the word limit), one chunk per prompt.

Documents (HTML pages) are split into train and held-out by a hash of their path (about 1 in
``--heldout-every``), so held-out text comes from pages never trained on; the train chunks are shuffled
with ``--seed`` so that every shard of an activation store mixes every source. Writes ``train.jsonl`` and
``heldout.jsonl`` (one ``{"text": ...}`` per line, read with :class:`mlxterp.PromptFile`) and
``corpus.json`` (the packages and their versions, counts, and the files' SHA-256)::

    python -m benchmarks.corpus --out ~/.cache/mlxterp/corpus
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np

PACKAGES = {  # package -> the folder of its English HTML, relative to the unpacked root
    "python3.11-doc": "usr/share/doc/python3.11/html",
    "postgresql-doc-15": "usr/share/doc/postgresql-doc-15/html",
    "debian-handbook": "usr/share/doc/debian-handbook/html/en-US",
}
MIN_WORDS = 8
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class _Paragraphs(html.parser.HTMLParser):
    """The text of every paragraph element of a page, code blocks and scripts excluded."""

    SKIP = ("pre", "script", "style")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: List[str] = []
        self._open: List[Tuple[str, int]] = []  # (tag, depth of that tag when it opened) of paragraphs
        self._depth: Dict[str, int] = {}
        self._skip = 0
        self._buf: List[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._depth[tag] = self._depth.get(tag, 0) + 1
        if tag in self.SKIP:
            self._skip += 1
        is_para = tag == "p" or (tag == "div" and ("class", "para") in attrs)
        if is_para and not self._open:
            self._open.append((tag, self._depth[tag]))
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1
        if self._open and self._open[-1] == (tag, self._depth.get(tag, 0)):
            self._open.pop()
            text = " ".join("".join(self._buf).split())
            if len(text.split()) >= MIN_WORDS:
                self.out.append(text)
        self._depth[tag] = max(0, self._depth.get(tag, 0) - 1)

    def handle_data(self, data: str) -> None:
        if self._open and not self._skip:
            self._buf.append(data)


def package_root(package: str, cache: Path) -> Tuple[Path, str]:
    """The folder holding ``package``'s files (installed, or unpacked into ``cache``) and its version."""
    installed = Path("/") / PACKAGES[package]
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if installed.is_dir() and version.returncode == 0 and version.stdout:
        return Path("/"), version.stdout
    target = cache / "packages" / package
    stamp = target / ".version"
    if not stamp.is_file():
        download = cache / "debs"
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=download, check=True, capture_output=True)
        deb = sorted(download.glob(f"{package}_*.deb"))[-1]
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        stamp.write_text(deb.name.split("_")[1])
    return target, stamp.read_text()


def documents(root: Path) -> Iterator[Tuple[str, List[str]]]:
    """``(page path relative to root, its paragraphs)`` for every HTML page, in path order."""
    for page in sorted(root.rglob("*.html")):
        if "_static" in page.parts:
            continue
        parser = _Paragraphs()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        if parser.out:
            yield str(page.relative_to(root)), parser.out


def chunks(paragraphs: List[str], words: int) -> List[str]:
    """Consecutive paragraphs packed into chunks of at most ``words`` words (long ones cut)."""
    return _pack([piece for para in paragraphs for piece in _cut(para, words)], words, "\n\n")


def _cut(paragraph: str, words: int) -> List[str]:
    """A paragraph as pieces of at most ``words`` words, cut after sentences (a longer sentence at the limit)."""
    parts = []
    for sentence in SENTENCE_END.split(paragraph):
        tokens = sentence.split()
        parts += [" ".join(tokens[i:i + words]) for i in range(0, len(tokens), words)]
    return _pack(parts, words, " ")


def _pack(pieces: List[str], words: int, sep: str) -> List[str]:
    """Pieces joined by ``sep`` greedily into groups of at most ``words`` words (each piece fits alone)."""
    out: List[str] = []
    current: List[str] = []
    count = 0
    for piece in pieces:
        n = len(piece.split())
        if current and count + n > words:
            out.append(sep.join(current))
            current, count = [], 0
        current.append(piece)
        count += n
    if current:
        out.append(sep.join(current))
    return out


def build(out: Path, words: int, heldout_every: int, seed: int) -> Dict[str, object]:
    """Write the corpus into ``out`` and return its description (also written as ``corpus.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    train: List[str] = []
    heldout: List[str] = []
    sources = {}
    for package, folder in PACKAGES.items():
        root, version = package_root(package, out)
        n_docs = n_chunks = 0
        for path, paragraphs in documents(root / folder):
            digest = int.from_bytes(hashlib.sha256(f"{package}/{path}".encode()).digest()[:8], "little")
            into = heldout if digest % heldout_every == 0 else train
            for chunk in chunks(paragraphs, words):
                into.append(chunk)
                n_chunks += 1
            n_docs += 1
        sources[package] = {"version": version, "documents": n_docs, "chunks": n_chunks}
    order = np.random.default_rng(seed).permutation(len(train))
    files = {"train.jsonl": [train[i] for i in order], "heldout.jsonl": heldout}
    described = {"sources": sources, "words": words, "heldout_every": heldout_every, "seed": seed, "files": {}}
    for name, texts in files.items():
        data = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()
        (out / name).write_bytes(data)
        described["files"][name] = {"chunks": len(texts), "words": sum(len(t.split()) for t in texts),
                                    "sha256": hashlib.sha256(data).hexdigest()}
    (out / "corpus.json").write_text(json.dumps(described, indent=1) + "\n")
    return described


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="~/.cache/mlxterp/corpus", help="output folder (default %(default)s)")
    parser.add_argument("--words", type=int, default=96, help="words per chunk at most (default %(default)s)")
    parser.add_argument("--heldout-every", type=int, default=40,
                        help="about 1 document in this many is held out (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train chunks' order (default 0)")
    args = parser.parse_args(argv)
    described = build(Path(args.out).expanduser(), args.words, args.heldout_every, args.seed)
    print(json.dumps(described, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
