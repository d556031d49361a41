"""What the numbers were measured on: BLAS, library versions and the machine.

The mlx-cpu wheel bundles a reference BLAS (about 5 GFLOP/s); preloading the system OpenBLAS is about
10x faster, which changes every ratio whose baseline is a matmul-bound forward. So the report always says
which BLAS MLX is actually running on, and measures it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from typing import Any

import mlx.core as mx


def _mapped_libraries() -> list[str]:
    """Paths of the shared objects mapped into this process (empty where /proc is missing)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line and "/" in line}
    except OSError:
        return []
    return sorted(paths)


def _is_blas(path: str) -> bool:
    name = os.path.basename(path).lower()
    return "blas" in name or "lapack" in name


def blas_name(preload: str, mapped: list[str]) -> str:
    """Which BLAS MLX's ``cblas_sgemm`` resolves to, from ``LD_PRELOAD`` and the mapped libraries.

    A preloaded library wins symbol resolution over the wheel's bundled one (both stay mapped).
    """
    preloaded_openblas = any("openblas" in p.lower() for p in preload.split(":") if p)
    if preloaded_openblas and any("openblas" in p.lower() for p in mapped):
        return "OpenBLAS (LD_PRELOAD, overrides the wheel's bundled BLAS)"
    if any("mlx_cpu.libs" in p and _is_blas(p) for p in mapped):
        return "bundled reference BLAS of the mlx-cpu wheel (slow; see `make bench`)"
    if any("openblas" in p.lower() for p in mapped):
        return "OpenBLAS (mapped)"
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    return "unknown"


def sgemm_gflops(n: int = 512, repeats: int = 5) -> float:
    """Measured float32 matmul throughput on MLX's CPU path (median of ``repeats``)."""
    a = mx.random.normal((n, n), key=mx.random.key(0))
    b = mx.random.normal((n, n), key=mx.random.key(1))
    mx.eval(a, b, a @ b)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        samples.append(time.perf_counter() - start)
    return 2 * n**3 / sorted(samples)[len(samples) // 2] / 1e9


def blas_info() -> dict[str, Any]:
    """BLAS in use, how it was chosen and how fast a 512x512 float32 matmul runs on it."""
    mx.eval(mx.ones((2, 2)) @ mx.ones((2, 2)))  # make sure MLX's CPU backend (and its BLAS) is loaded
    mapped = _mapped_libraries()
    preload = os.environ.get("LD_PRELOAD", "")
    return {
        "blas": blas_name(preload, mapped),
        "blas_libraries": [p for p in mapped if _is_blas(p)],
        "LD_PRELOAD": preload,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", ""),
        "sgemm_512_gflops": round(sgemm_gflops(), 1),
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that set the numbers."""
    return {
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "mlx-lm": _version("mlx-lm"),
        "mlxterp": _version("mlxterp"),
        "numpy": _version("numpy"),
    }


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU, cores usable by this process, OS, MLX device and the load average at start (noise hint)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "device": str(mx.default_device()),
        "load_avg_1m": round(load[0], 2),
    }


def describe() -> dict[str, Any]:
    """Everything above, as one dict (printed above the table and stored in ``--json``)."""
    return {"versions": versions(), "machine": machine(), "blas": blas_info()}


def format_env(info: dict[str, Any]) -> str:
    """A few readable lines for the top of the report."""
    v, m, b = info["versions"], info["machine"], info["blas"]
    lines = [
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"machine:  {m['cpu']}, {m['usable_cores']} usable of {m['cores']} cores, {m['os']}, "
        f"MLX device {m['device']}, load average {m['load_avg_1m']} at start",
        f"BLAS:     {b['blas']}; sgemm 512x512 {b['sgemm_512_gflops']} GFLOP/s"
        + (f"; OPENBLAS_NUM_THREADS={b['OPENBLAS_NUM_THREADS']}" if b["OPENBLAS_NUM_THREADS"] else ""),
    ]
    return "\n".join(lines)
