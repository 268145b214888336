"""Benchmark: saf_ref conv2d forward + backward against PyTorch CPU, ResNet-18 (CIFAR) layer shapes.

Usage::

    python benchmarks/bench_conv.py [--threads 2] [--batch 32] [--repeats 7] [--dtype float32]
                                    [--clock wall|cpu] [--openblas-coretype NAME]

Both libraries get the same number of threads (default 2, the CI machine's cores): PyTorch through
``torch.set_num_threads``, NumPy's BLAS through the environment variables ``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``, which this script sets *before* importing NumPy (BLAS reads
them once, when it loads; setting them later has no effect).

Each measurement is one forward pass and one backward pass giving ``dx`` and ``dw`` (no bias, as in
ResNet). The two libraries run alternately, ``--repeats`` times each after a warm-up, in the same
process; the best time of each is reported (the minimum is the least noisy estimate on a shared
machine, as ``timeit`` recommends). The last line is the geometric mean of the per-shape ratios
saf_ref / torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    parser.add_argument("--batch", type=int, default=32, help="batch size N (default 32)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per shape and library")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter (default); cpu: time.process_time, the process's CPU time, robust "
        "to other processes on a shared machine but only meaningful with --threads 1 (BLAS worker "
        "threads spin while they wait, which CPU time counts)",
    )
    parser.add_argument(
        "--openblas-coretype",
        default=None,
        help="force OpenBLAS's kernel family (OPENBLAS_CORETYPE, e.g. SkylakeX) where its run-time "
        "detection falls back to older kernels on an unrecognised CPU; default: leave it alone",
    )
    return parser.parse_args(argv)


#: (name, in channels, out channels, input size, kernel, stride, padding): ResNet-18 for CIFAR (32x32).
SHAPES = [
    ("64ch @32x32, 3x3 s1", 64, 64, 32, 3, 1, 1),
    ("128ch @16x16, 3x3 s1", 128, 128, 16, 3, 1, 1),
    ("256ch @8x8, 3x3 s1", 256, 256, 8, 3, 1, 1),
    ("512ch @4x4, 3x3 s1", 512, 512, 4, 3, 1, 1),
    ("64->128 @32->16, 3x3 s2", 64, 128, 32, 3, 2, 1),
    ("128->256 @16->8, 3x3 s2", 128, 256, 16, 3, 2, 1),
    ("256->512 @8->4, 3x3 s2", 256, 512, 8, 3, 2, 1),
    ("64->128 @32->16, 1x1 s2", 64, 128, 32, 1, 2, 0),
    ("128->256 @16->8, 1x1 s2", 128, 256, 16, 1, 2, 0),
    ("256->512 @8->4, 1x1 s2", 256, 512, 8, 1, 2, 0),
]


def _openblas_core() -> str:
    """The kernel family OpenBLAS picked at run time (``Haswell``, ``SkylakeX``, ...), if it says."""
    import ctypes
    import glob

    import numpy as np

    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        lib = ctypes.CDLL(path)
        for symbol in (
            "scipy_openblas_get_corename64_",
            "scipy_openblas_get_corename",
            "openblas_get_corename",
        ):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return "unknown"


def time_shape(shape, args, rng):
    """Best forward + backward times (seconds) of saf_ref and of torch for one layer shape."""
    import numpy as np
    import torch

    from saf_ref.nn.conv import conv2d_backward, conv2d_forward

    _, c, o, size, k, stride, pad = shape
    dtype = np.dtype(args.dtype)
    x = rng.standard_normal((args.batch, c, size, size)).astype(dtype)
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(dtype)
    out = (size + 2 * pad - k) // stride + 1
    dy = rng.standard_normal((args.batch, o, out, out)).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def ours():
        _, cache = conv2d_forward(x, w, stride=stride, padding=pad)
        conv2d_backward(dy, cache)

    def theirs():
        tx.grad = tw.grad = None
        torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad).backward(tdy)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ours(), theirs()  # warm-up (allocator, BLAS and oneDNN initialisation)
    t_ours, t_theirs = [], []
    for _ in range(args.repeats):  # alternate, so that both see the same machine conditions
        for fn, times in ((ours, t_ours), (theirs, t_theirs)):
            start = clock()
            fn()
            times.append(clock() - start)
    return min(t_ours), min(t_theirs)


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # must happen before NumPy (and its BLAS) is imported
    if args.openblas_coretype:
        os.environ["OPENBLAS_CORETYPE"] = args.openblas_coretype
    import numpy as np

    try:
        import torch
    except ImportError:
        print("bench_conv: PyTorch is not installed (pip install torch)", file=sys.stderr)
        return 1

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"conv2d forward + backward (dx, dw), N={args.batch}, {args.dtype}, {args.threads} threads, "
        f"best of {args.repeats}, {args.clock} clock; numpy {np.__version__} "
        f"(OpenBLAS kernels: {_openblas_core()}), torch {torch.__version__}"
    )
    print()
    print("| layer | saf_ref (ms) | torch (ms) | saf_ref / torch |")
    print("|---|---:|---:|---:|")
    ratios = []
    for shape in SHAPES:
        best_ours, best_theirs = time_shape(shape, args, rng)
        ratios.append(best_ours / best_theirs)
        print(f"| {shape[0]} | {1e3 * best_ours:.2f} | {1e3 * best_theirs:.2f} | {ratios[-1]:.2f} |")
    geomean = float(np.exp(np.mean(np.log(ratios))))
    print()
    print(f"geometric mean saf_ref / torch: {geomean:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
