"""Command-line arguments checked before any work: each bad one is a one-line usage error.

:class:`UsageError` (exit status 2) and :class:`RunError` (1) are what the subcommands raise for user
errors; :func:`call` turns a library function's ``ValueError`` into one of them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class UsageError(Exception):
    """Bad arguments or inputs: exit status 2."""


class RunError(Exception):
    """A user-caused failure while running (a model that will not load, ...): exit status 1."""


def call(fn: Callable[..., Any], *args: Any, usage: bool = False, **kwargs: Any) -> Any:
    """Call a library function whose ValueError means bad user input (UsageError if ``usage`` else RunError)."""
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        raise (UsageError if usage else RunError)(str(exc)) from exc
    except ImportError as exc:  # plotting without matplotlib: the message says how to install it
        if "matplotlib" not in str(exc):
            raise
        raise RunError(str(exc)) from exc


def parse_int_list(spec: str, what: str = "layers") -> List[int]:
    """``"0,5,10"`` / ``"0-10"`` / ``"0-3,8,-1"`` -> a list of ints, in order, without duplicates."""
    out: List[int] = []
    items = str(spec).split(",")
    for item in items:
        item = item.strip()
        single = re.fullmatch(r"-?\d+", item)
        span = re.fullmatch(r"(\d+)-(\d+)", item)
        if single:
            values = [int(item)]
        elif span and int(span.group(1)) <= int(span.group(2)):
            values = list(range(int(span.group(1)), int(span.group(2)) + 1))
        else:
            raise argparse.ArgumentTypeError(f"invalid {what} {spec!r} (bad item {item!r}): expected "
                                             f"comma-separated indices and inclusive ranges, e.g. '0,5,10', "
                                             f"'0-10' or '0-3,8,-1'")
        out.extend(v for v in values if v not in out)
    return out


def layers_arg(spec: str) -> List[int]:
    return parse_int_list(spec, "layers")


def positions_arg(spec: str) -> List[int]:
    return parse_int_list(spec, "positions")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def check_layers(layers: Optional[Sequence[int]], n_layers: int) -> Optional[List[int]]:
    """Normalise layer indices (negative from the end) against the model; UsageError when out of range."""
    if layers is None:
        return None
    from .analysis.validate import resolve_layers

    return call(resolve_layers, list(layers), n_layers, arg="argument --layers", sort=False, usage=True)


def check_output_path(path: Optional[str], option: str, suffix: str = ".png") -> Optional[Path]:
    """The path of a file to write, checked before any work: UsageError when it names a directory, its folder
    does not exist, or it cannot be written (the check creates and removes the file if it is new). ``suffix``
    is the kind of file, for the example name the error suggests."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"argument {option}: {path!r} is a directory; expected a file name, e.g. "
                         f"{str(target / ('out' + (target.suffix or suffix)))!r}")
    if not target.parent.is_dir():
        raise UsageError(f"argument {option}: folder {str(target.parent)!r} of {path!r} does not exist")
    check_writable(target, option)
    return target


def check_writable(target: Path, option: str) -> None:
    """UsageError unless ``target`` (a file, existing or not) can be written; a new one is removed again."""
    try:
        if target.exists():
            with open(target, "ab"):  # appending nothing leaves the file as it is
                pass
        else:
            with open(target, "xb"):
                pass
            target.unlink()
    except OSError as exc:
        raise UsageError(f"argument {option}: cannot write {str(target)!r}: {exc.strerror or exc}") from exc


def check_store_dir(path: str, option: str) -> Path:
    """The folder of an activation store, existing or new; UsageError when it is a file or cannot be written
    (a new folder is created and removed again by the check)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"argument {option}: {path!r} is a file; expected a folder for an activation store, or a "
                         "file name ending in .safetensors")
    if folder.is_dir():
        check_writable(folder / ".mlxterp-write-check", option)
        return folder
    if not folder.parent.is_dir():
        raise UsageError(f"argument {option}: folder {str(folder.parent)!r} of {path!r} does not exist")
    try:
        folder.mkdir()
        folder.rmdir()
    except OSError as exc:
        raise UsageError(f"argument {option}: cannot create {str(folder)!r}: {exc.strerror or exc}") from exc
    return folder


def check_output_dir(path: str, option: str) -> Path:
    """A folder to write files into, created if missing; UsageError when that fails or it is not writable."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"argument {option}: cannot create {str(folder)!r}: {exc.strerror or exc}") from exc
    check_writable(folder / ".mlxterp-write-check", option)
    return folder


def read_prompts(path: str, option: str = "--prompts") -> Sequence[Any]:
    """The prompts of a ``.jsonl`` or text file (a :class:`mlxterp.store.PromptFile`), or the lines of a pipe
    or device such as ``<(...)`` or ``/dev/null`` (read once, as text); UsageError when it is missing, a
    directory, unreadable or has no prompts."""
    from .store import PromptFile

    source = Path(path).expanduser()
    if not source.exists():
        raise UsageError(f"argument {option}: file {path!r} does not exist")
    if source.is_dir():
        raise UsageError(f"argument {option}: {path!r} is a directory; expected a .jsonl or text file, one prompt "
                         "per line")
    try:
        if source.is_file():
            return PromptFile(source)
        prompts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"argument {option}: cannot read {path!r}: {exc}") from exc
    except ValueError as exc:
        raise UsageError(f"argument {option}: {exc}") from exc
    if not prompts:
        raise UsageError(f"argument {option}: {path!r} has no prompts (expected one prompt per line)")
    return prompts


def check_prompts_differ(clean: Sequence[int], corrupted: Sequence[int], clean_option: str,
                         corrupted_option: str) -> List[int]:
    """Positions where two equally long token lists differ; UsageError when there are none."""
    diff = [i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b]
    if not diff:
        raise UsageError(f"argument {corrupted_option}: it encodes to the same tokens as {clean_option}; "
                         "patching needs prompts that differ")
    return diff


def check_model_name(name: str) -> None:
    """Reject what the loader could never load (typos of registered names, missing paths) as usage errors."""
    from .loading import registered_models

    names = registered_models()
    if name in names:
        return
    path = Path(name).expanduser()
    if path.exists():
        return
    choices = ", ".join(names) or "(none)"
    if path.suffix.lower() == ".gguf" or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UsageError(f"argument --model: {name!r} does not exist (expected a registered name: {choices}; "
                         "an existing .gguf file or mlx-lm folder; or a Hugging Face repo id owner/name)")
    if not _HF_ID.fullmatch(name):
        raise UsageError(f"argument --model: unknown model {name!r}; registered names: {choices} "
                         "(or give a .gguf file, an mlx-lm folder or a Hugging Face repo id owner/name; "
                         "see 'mlxterp models')")
