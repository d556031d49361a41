"""Sharding work over ``mx.distributed``: which items this process runs, and gathering everyone's results.

Every sweep that can run on several processes uses these functions and nothing else: resolve the
group from the caller's ``distributed=`` switch (:func:`resolve_group`), check that every rank was given
the same arguments (:func:`check_same_call`, before any work), take this rank's items of a list
of work items (:func:`my_items`: round-robin, so each rank gets a similar mix of cheap and costly
items), run them, then :func:`~mlxterp.distributed.gather` everyone's results (the group's ``all_gather``) and put them back in
item order (:func:`assemble`). Every rank returns the full result. There is no scheduler: the processes
are the ones ``mlx.launch`` (or ``MLX_RANK`` + ``MLX_HOSTFILE``) started, and every rank makes the same
calls in the same order, as collectives require.

Ranks given different arguments would each compute their share of a different call and gather them into
one result that is no call's result (half the rows from one rank's prompts, half from the other's). So
every sharded entry point first calls :func:`check_same_call` with its arguments: one ``all_gather`` of
a few 64-bit digests (:mod:`mlxterp.digest`), and on a difference every rank raises
:class:`DistributedMismatchError` naming the arguments that differ and what each rank had.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import mlx.core as mx
import numpy as np

from .digest import describe, digest

T = TypeVar("T")
Distributed = Union[bool, str, Any]  # True, False, "auto", or an mx.distributed.Group

SLOTS = 16  # digests one check exchanges per rank: the call and up to 15 arguments
LAUNCH_HINT = ("launch the script on several processes, e.g. 'mlx.launch --backend ring -n 2 python script.py' "
               "(or start each process with MLX_RANK and MLX_HOSTFILE set)")


def resolve_group(distributed: Distributed = "auto") -> Optional[Any]:
    """The group to shard over, or None to run in this process alone.

    Args:
        distributed: ``"auto"`` (the launched group if it has more than one process, else None), ``True``
            (the launched group; an error when there is none), ``False`` (None), or an
            ``mx.distributed.Group``.

    Raises:
        RuntimeError: ``True`` (or a group) was given and no group of more than one process is active.
        ValueError: any other value.
    """
    if distributed is False:
        return None
    if isinstance(distributed, mx.distributed.Group):
        group = distributed
    elif distributed is True or (isinstance(distributed, str) and distributed == "auto"):
        group = mx.distributed.init()
    else:
        raise ValueError(f"distributed must be True, False, 'auto' or an mx.distributed.Group, got {distributed!r}")
    if group.size() > 1:
        return group
    if distributed is not True and not isinstance(distributed, mx.distributed.Group):
        return None
    raise RuntimeError(f"distributed={distributed!r} needs a distributed group of more than one process, but "
                       f"this process is alone (group size {group.size()}); {LAUNCH_HINT}, or pass "
                       "distributed='auto' to run here alone")


class DistributedMismatchError(ValueError):
    """The ranks of a sharded call were given different arguments (raised on every rank)."""


def check_same_call(group: Optional[Any], call: str, **arguments: Any) -> None:
    """Raise :class:`DistributedMismatchError` on every rank unless every rank passed equal ``arguments``.

    Each rank digests the call's name and argument names and each argument (:func:`mlxterp.digest.digest`:
    arrays by their bytes, functions by their qualified name and code) and one ``all_gather`` exchanges the
    ``SLOTS`` digests. All ranks see the same table, so all raise together; on a difference a second
    ``all_gather`` exchanges a short description of each differing argument for the message. Alone
    (``group`` None), nothing is checked.

    Args:
        group: from :func:`resolve_group`.
        call: the entry point's name, for the message.
        arguments: the call's arguments as the user passed them (at most ``SLOTS - 1``).
    """
    if group is None:
        return
    if len(arguments) >= SLOTS:
        raise ValueError(f"check_same_call takes at most {SLOTS - 1} arguments, got {len(arguments)}")
    names = list(arguments)
    own = np.zeros(SLOTS, dtype=np.uint64)
    own[0] = digest((call, names))
    own[1:len(names) + 1] = [digest(value) for value in arguments.values()]
    table = _all_gather(mx.array(own.view(np.uint8)), group)
    table = np.array(table).view(np.uint64).reshape(size(group), SLOTS)
    differ = [j for j in range(SLOTS) if len(set(table[:, j].tolist())) > 1]
    if not differ:
        return
    shown = {"(the call)": f"{call}({', '.join(names)})"} if 0 in differ else {}
    shown.update({names[j - 1]: describe(arguments[names[j - 1]]) for j in differ if 0 < j <= len(names)})
    texts = gather(np.frombuffer(json.dumps(shown).encode(), dtype=np.uint8), group)
    seen = [json.loads(t.tobytes().decode()) for t in texts]
    raise DistributedMismatchError(_mismatch_message(call, seen, table, names, differ))


def _mismatch_message(call: str, seen: List[Dict[str, str]], table: np.ndarray, names: List[str],
                      differ: List[int]) -> str:
    parts = []
    for j in differ:
        name = "(the call)" if j == 0 else names[j - 1]
        each = "; ".join(f"rank {r}: {s.get(name, '?')} [digest {int(table[r, j]):016x}]"[:160]
                         for r, s in enumerate(seen))
        parts.append(f"{name} differs ({each})")
    return (f"{call}: the {len(seen)} ranks were given different arguments, so their shares would be gathered "
            f"into one result that is no single call's: {'; '.join(parts)}. Every rank must make the same call "
            "with the same arguments (load the same data on every rank, and do not branch on the rank before "
            "a sharded call); pass distributed=False for a call that is meant to differ per rank")


def run_on_leader(group: Optional[Any], fn: Any, errors: Tuple[Type[BaseException], ...] = ()) -> None:
    """Run ``fn()`` on rank 0 alone and let every rank learn how it ended: when it raises, rank 0 raises
    that exception and every other rank raises one of the same class (if it is one of ``errors``, else a
    RuntimeError) with the same message, so no rank goes on to a collective that rank 0 never reaches."""
    failure: Optional[BaseException] = None
    if rank(group) == 0:
        try:
            fn()
        except Exception as exc:  # re-raised below, after the other ranks were told
            failure = exc
    if group is not None:
        text = "" if failure is None else json.dumps([type(failure).__name__, str(failure)])
        status = gather(np.frombuffer(text.encode(), dtype=np.uint8), group)[0].tobytes().decode()
        if status and failure is None:
            kind, message = json.loads(status)
            cls = next((e for e in errors if e.__name__ == kind), None)
            raise cls(message) if cls is not None else RuntimeError(f"rank 0 failed ({kind}): {message}")
    if failure is not None:
        raise failure


def rank(group: Optional[Any]) -> int:
    """This process's rank (0 when ``group`` is None)."""
    return 0 if group is None else group.rank()


def size(group: Optional[Any]) -> int:
    """Number of processes (1 when ``group`` is None)."""
    return 1 if group is None else group.size()


def my_items(items: Sequence[T], group: Optional[Any]) -> List[T]:
    """This rank's share of ``items``: every ``size``-th item starting at ``rank`` (all of them alone)."""
    return list(items[rank(group)::size(group)])


def assemble(parts: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Inverse of :func:`my_items` over all ranks: ``parts[r]`` holds the results of items ``r, r + size,
    ...``; returns the ``n`` results in item order."""
    first = next((p for p in parts if len(p)), parts[0])
    out = np.empty((n,) + first.shape[1:], dtype=first.dtype)
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out


def gather_items(local: np.ndarray, n: int, group: Optional[Any]) -> np.ndarray:
    """This rank's results of its :func:`my_items` (rows of ``local``) gathered from every rank: the ``n``
    results in item order, on every rank."""
    return local if group is None else assemble(gather(local, group), n)


def gather_array_items(local: mx.array, n: int, group: Optional[Any]) -> mx.array:
    """:func:`gather_items` of an ``mx.array`` (any dtype, bfloat16 included; values unchanged)."""
    if group is None:
        return local
    half = local.dtype == mx.bfloat16  # no numpy dtype: travels as its bits
    full = mx.array(gather_items(np.array(local.view(mx.uint16) if half else local), n, group))
    return full.view(mx.bfloat16) if half else full


def gather(local: np.ndarray, group: Optional[Any]) -> List[np.ndarray]:
    """Every rank's ``local`` array (same dtype and trailing shape, any number of rows), in rank order.

    Two ``all_gather`` calls: the row counts, then the rows padded to the longest part and sent as bytes
    (so any dtype travels unchanged, float64 included).
    """
    local = np.ascontiguousarray(local)
    if group is None:
        return [local]
    counts = np.array(_all_gather(mx.array([local.shape[0]], dtype=mx.int64), group)).tolist()
    longest = max(counts)
    if longest == 0:
        return [local[:0] for _ in counts]
    padded = np.zeros((longest,) + local.shape[1:], dtype=local.dtype)
    padded[:local.shape[0]] = local
    raw = _all_gather(mx.array(padded.reshape(-1).view(np.uint8)), group)
    blocks = np.array(raw).view(local.dtype).reshape((len(counts), longest) + local.shape[1:])
    return [blocks[r, :c] for r, c in enumerate(counts)]


def barrier(group: Optional[Any]) -> None:
    """Wait until every rank reaches this point (no-op alone)."""
    if group is not None:
        _all_gather(mx.array([0], dtype=mx.int32), group)


def local_hostfile(path: Union[str, Path], n: int) -> Path:
    """Write a ring hostfile for ``n`` processes on this machine (free ports of 127.0.0.1) to ``path``.

    Start rank ``r`` with ``MLX_RANK=r MLX_HOSTFILE=path python script.py``: the ranks ``mlx.launch`` would
    start, without its launcher process (which busy-polls a core while they run).
    """
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    path = Path(path)
    path.write_text(json.dumps([[f"127.0.0.1:{port}"] for port in ports]))
    return path


def _all_gather(x: mx.array, group: Any) -> mx.array:
    out = mx.distributed.all_gather(x, group=group, stream=mx.cpu)
    mx.eval(out)
    return out
