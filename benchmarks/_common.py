"""Pieces the benchmark scripts share: thread setup, the machine banner, an interleaved timer.

Import it from a script in this folder (``python benchmarks/<script>.py`` puts the folder on
``sys.path``)::

    import _common

    _common.start_blas_threads(2)      # FIRST, before NumPy is imported: the size of BLAS's thread pool
    import numpy as np

    print(_common.machine_banner())    # CPU model, CPUs, load, NumPy + BLAS library and kernel family
    for threads in (1, 2):
        with _common.threads(threads):                         # BLAS (and torch, if given) limited
            best = _common.interleaved({"a": f, "b": g}, repeats=9)
        print(best["b"].cpu / best["a"].cpu)                   # min CPU-time ratio, same run

Why this way:

- **Interleaved**: the candidates run alternately (``a b a b ...``), so a burst of load from other
  processes hits all of them alike, and each ratio compares runs made moments apart.
- **Minimum**: noise only ever adds time, so the fastest run is the least disturbed estimate.
- **CPU time** (``time.process_time``) for one thread: another process taking the core stops the clock.
  With more threads CPU time adds up every thread's work, and the spin-waiting of idle BLAS threads, so
  there the wall clock is the meaningful one, and only on an idle machine. Both are recorded.
- **Threads**: OpenBLAS sizes its thread pool once, when NumPy loads it, from ``OPENBLAS_NUM_THREADS``
  / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``; :func:`start_blas_threads` sets them before NumPy is
  imported, and :func:`threads` lowers the count inside the run (threadpoolctl, else the OpenBLAS
  bundled with NumPy through :mod:`saf_ref.determinism`'s ctypes route).

This module imports NumPy only inside its functions, so that importing it first changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ---------------------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------------------
def start_blas_threads(most: int) -> None:
    """Size BLAS's thread pool to ``most`` threads: call before NumPy is imported (warns otherwise)."""
    if "numpy" in sys.modules:
        print(
            f"_common.start_blas_threads: NumPy is already imported, its BLAS keeps the thread pool it "
            f"started with ({blas_description()})",
            file=sys.stderr,
        )
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(most)


@contextlib.contextmanager
def threads(n: int, torch: Any = None) -> Iterator[None]:
    """Limit NumPy's BLAS (and ``torch``, if given) to ``n`` threads inside the block, then restore."""
    previous_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with _blas_limit(n):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(previous_torch)


def _blas_limit(n: int) -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _openblas_limit(n)
    return threadpool_limits(limits=n, user_api="blas")


@contextlib.contextmanager
def _openblas_limit(n: int) -> Iterator[None]:
    from saf_ref import determinism

    previous = determinism.set_bundled_openblas_threads(n)  # None: no way to set it, run with what BLAS has
    try:
        yield
    finally:
        if previous is not None:
            determinism.set_bundled_openblas_threads(previous)


def blas_threads_now() -> int | None:
    """The number of threads NumPy's BLAS may use now (None where it cannot be asked)."""
    from saf_ref.determinism import blas_thread_count

    return blas_thread_count()


# ---------------------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_description() -> str:
    """NumPy's BLAS: library, version and the kernel family it chose, e.g. ``openblas 0.3.29 (Haswell
    kernels)`` (threadpoolctl), else what NumPy's build configuration names."""
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                return f"{lib['internal_api']} {lib.get('version')} ({lib.get('architecture')} kernels)"
    except ImportError:
        pass
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')} (kernel family unknown: no threadpoolctl)"
    except Exception:  # noqa: BLE001 - only a description
        return "unknown BLAS"


def import_torch(script: str) -> Any:
    """PyTorch, or None after telling stderr that ``script`` needs it (the scripts compare against it)."""
    try:
        import torch
    except ImportError:
        print(f"{script}: PyTorch is not installed (pip install torch)", file=sys.stderr)
        return None
    return torch


def machine_banner(extra: str = "") -> str:
    """One paragraph: CPU model, CPUs (usable / present), load average, NumPy + BLAS, Python, ``extra``."""
    import numpy as np

    from saf_ref.determinism import available_cpus

    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load average unknown"
    parts = [
        f"{cpu_model()}, {available_cpus()} of {os.cpu_count()} CPUs usable, {load}",
        f"numpy {np.__version__} with {blas_description()}",
        f"Python {platform.python_version()} ({platform.machine()})",
    ]
    if extra:
        parts.append(extra)
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------
class Best(NamedTuple):
    """The fastest of the timed runs of one candidate, in seconds, by each clock."""

    cpu: float  # process CPU time, all threads (time.process_time)
    wall: float  # wall clock (time.perf_counter)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Best]:
    """Run the callables alternately ``repeats`` times after ``warmup`` rounds; the minimum of each clock.

    The minima are taken per clock (the fastest CPU time and the fastest wall time may come from
    different runs).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    cpu = {name: float("inf") for name in fns}
    wall = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            c1, w1 = time.process_time(), time.perf_counter()
            cpu[name] = min(cpu[name], c1 - c0)
            wall[name] = min(wall[name], w1 - w0)
    return {name: Best(cpu[name], wall[name]) for name in fns}
