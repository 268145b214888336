"""Determinism: the same bits for any number of BLAS threads.

NumPy hands matrix products to a BLAS library (OpenBLAS in the wheels on PyPI) that splits large
products over threads. Whether the split changes the order in which a dot product is summed, and with
it the last bit of the result, is the library's business: for the shapes of a training step it usually
does not, but some kernels (matrix-vector products, dot products, small-matrix paths) split the sum
itself, and one flipped last bit early in training grows into a different network. saf_ref promises the
same bits for a seed whatever ``OPENBLAS_NUM_THREADS`` says, so its hot loops (training epochs,
evaluation, campaign trials) run inside :func:`blas_threads_pinned`, which limits BLAS to one thread
and restores the previous setting on exit.

How the limit is set, in order of preference:

1. `threadpoolctl <https://github.com/joblib/threadpoolctl>`_, where it is installed (it is a
   dependency of scikit-learn, and of saf_ref's ``test`` extra): every BLAS library loaded in the process
   (OpenBLAS, MKL, BLIS);
2. otherwise the OpenBLAS that NumPy's wheel bundles (``numpy.libs`` / ``numpy/.dylibs``), through its
   own ``*_set_num_threads*`` entry point with :mod:`ctypes`;
3. otherwise nothing: :func:`pinning_method` returns ``None`` and results are deterministic for a fixed
   thread count only.

The core depends on NumPy and SciPy alone; threadpoolctl is used only when present.

Cost: inside these loops BLAS runs on one thread. Campaigns get their parallelism from worker
processes instead, which is deterministic by construction (each trial's pattern depends only on the
campaign seed and the trial number). Those workers pin BLAS to one thread for their whole life
(:func:`pin_blas_for_this_process`, their initializer), and their default number is
:func:`available_cpus`, the CPUs this process may run on: ``n`` workers each running an ``n``-thread
BLAS on ``n`` cores would oversubscribe the machine ``n``-fold, and OpenBLAS threads that wait for a
core spin rather than sleep.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from saf_ref import validation

__all__ = [
    "available_cpus",
    "blas_thread_count",
    "blas_threads_pinned",
    "bundled_openblas_threads",
    "pin_blas_for_this_process",
    "pinning_method",
    "set_bundled_openblas_threads",
]

_lock = threading.Lock()
_depth = 0  # nesting depth of blas_threads_pinned across threads
_restore: Callable[[], None] | None = None


# Looked up once per process: the libraries loaded do not change, and the hot loops pin on every epoch,
# evaluation and prediction (a failed import or a glob + dlopen each time would be wasted work).
@functools.cache
def _bundled_openblas() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """``(get_num_threads, set_num_threads)`` of the OpenBLAS bundled with NumPy's wheel, or None."""
    numpy_dir = os.path.dirname(np.__file__)
    folders = (os.path.join(os.path.dirname(numpy_dir), "numpy.libs"), os.path.join(numpy_dir, ".dylibs"))
    candidates = []
    for folder in folders:
        candidates += sorted(glob.glob(os.path.join(folder, "*openblas*")))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)  # already loaded by NumPy: this returns the same library
        except OSError:
            continue
        for get_name, set_name in (
            ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
            ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
            ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
            ("openblas_get_num_threads", "openblas_set_num_threads"),
        ):
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype, set_.argtypes, set_.restype = ctypes.c_int, [ctypes.c_int], None
                return get, set_
    return None


@functools.cache
def _threadpoolctl_controller_class():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController


_controller: tuple[int, Any] | None = None  # (len(sys.modules) at the scan, threadpoolctl controller)


def _threadpool_controller() -> Any:
    """threadpoolctl's controller of the libraries loaded in this process, rescanned after new imports.

    A scan (what ``threadpoolctl.threadpool_limits`` does on every call) reads ``/proc/self/maps`` and
    opens each thread-pool library: 1-2.5 ms, paid on every pin, hence on every evaluation of a campaign
    (11% of a demo sweep). A BLAS library is loaded by importing a module, so the scan is redone only
    when ``sys.modules`` has grown since the last one. Callers hold ``_lock`` or run before any thread.
    """
    global _controller
    if _controller is None or _controller[0] != len(sys.modules):
        _controller = (len(sys.modules), _threadpoolctl_controller_class()())
    return _controller[1]


def pinning_method() -> str | None:
    """How :func:`blas_threads_pinned` limits BLAS here: ``"threadpoolctl"``, ``"openblas"`` (NumPy's
    bundled OpenBLAS through ctypes) or ``None`` (no way found: the context manager does nothing)."""
    if _threadpoolctl_controller_class() is not None:
        return "threadpoolctl"
    if _bundled_openblas() is not None:
        return "openblas"
    return None


def _pin_one_thread(method: str | None) -> Callable[[], None] | None:
    """Limit BLAS to one thread; return the function that undoes it."""
    if method == "threadpoolctl":
        limiter = _threadpool_controller().limit(limits=1, user_api="blas")
        return limiter.restore_original_limits
    if method == "openblas":
        get, set_ = _bundled_openblas()
        previous = get()
        set_(1)
        return lambda: set_(previous)
    return None


@contextlib.contextmanager
def blas_threads_pinned(method: str | None = "auto") -> Iterator[None]:
    """Run the body with the BLAS library limited to one thread (re-entrant, thread-safe).

    Parameters
    ----------
    method : {"auto", "threadpoolctl", "openblas", None}
        ``"auto"`` (default): :func:`pinning_method`. The others force one route (for tests); None
        does nothing.

    Notes
    -----
    Nested and concurrent uses share one pin: the first to enter sets it, the last to leave restores
    the setting found on entry.
    """
    global _depth, _restore
    with _lock:
        if _depth == 0:
            _restore = _pin_one_thread(pinning_method() if method == "auto" else method)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _restore is not None:
                _restore()
                _restore = None


def pin_blas_for_this_process() -> None:
    """Limit BLAS to one thread for the rest of this process (the initializer of campaign workers).

    Also sets ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` to ``"1"`` in
    ``os.environ``, for BLAS libraries loaded later and for processes this one starts (a library reads
    them once, when it loads: for those already loaded the call through :func:`pinning_method`'s route
    is what counts). A :func:`blas_threads_pinned` block inside keeps the pin and restores one thread.
    """
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    _pin_one_thread(pinning_method())  # never undone: the restore function is dropped


def bundled_openblas_threads() -> int | None:
    """The thread count of the OpenBLAS bundled with NumPy, asked directly (microseconds: cheap enough
    for a hot loop, unlike a threadpoolctl scan), or None where NumPy has no bundled OpenBLAS."""
    openblas = _bundled_openblas()
    return int(openblas[0]()) if openblas is not None else None


def set_bundled_openblas_threads(n: int) -> int | None:
    """Let the OpenBLAS bundled with NumPy use ``n`` threads (``n >= 1``); return the count it had, or
    None, changing nothing, where NumPy has no bundled OpenBLAS.

    For benchmarks that compare thread counts where threadpoolctl is not installed; results do not
    depend on it (:func:`blas_threads_pinned` is what the library's own loops use).
    """
    n = validation.check_int(n, "n", "set_bundled_openblas_threads", low=1)
    openblas = _bundled_openblas()
    if openblas is None:
        return None
    get, set_ = openblas
    previous = int(get())
    set_(n)
    return previous


def blas_thread_count() -> int | None:
    """The number of threads NumPy's BLAS may use now, or None where it cannot be asked.

    Through threadpoolctl where it is installed (the largest count over the BLAS libraries loaded),
    else through the OpenBLAS bundled with NumPy.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        openblas = _bundled_openblas()
        return int(openblas[0]()) if openblas is not None else None
    counts = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def available_cpus() -> int:
    """The number of CPUs this process may run on (at least 1): the default number of worker processes.

    ``len(os.sched_getaffinity(0))`` where the OS has it (Linux: it reflects ``taskset``, a cgroup
    cpuset and the CPUs a container was given), else ``os.cpu_count()``, which counts every CPU of the
    machine whether or not this process may use it.
    """
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        try:
            return max(1, len(getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)
