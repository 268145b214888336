"""Benchmark: saf_ref conv2d forward + backward against PyTorch CPU, ResNet-18 and ResNet-20 layer shapes.

Usage::

    python benchmarks/bench_conv.py                    # both suites, float32 and float64, 1 and 2 threads
    python benchmarks/bench_conv.py --quick            # a smoke run: fewer shapes, 2 repeats (about 1 min)
    python benchmarks/bench_conv.py --suites resnet20 --dtypes float32 --threads 1 --repeats 9

Suites (the targets of issue 14 in brackets, single thread, float32; float64 <= 1.0 everywhere):

- ``resnet18``: the 3x3 convolutions of every stage of ResNet-18 at CIFAR size (stride 1 and the stride-2
  transitions) and the 1x1 downsampling shortcuts, batch 32, plus the ImageNet 7x7 stride-2 stem at 224x224,
  batch 8 [geometric mean <= 1.0x torch];
- ``resnet20``: every convolution shape of ResNet-20 (16-64 channels), batch 128 [<= 1.3x].

One measurement is one forward pass and one backward pass giving ``dx`` and ``dw`` (no bias, as in
ResNet), against ``torch.nn.functional.conv2d`` and autograd. The two libraries alternate, ``--repeats``
times each after a warm-up, in one process, and the minimum is kept (the least noisy estimate on a shared
machine). Thread counts are switched inside the run: NumPy's BLAS with threadpoolctl (the script starts
BLAS with the largest count asked for, through ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` set before NumPy is imported), PyTorch with ``torch.set_num_threads``.

Clocks: with one thread the ratio is taken on process CPU time (``time.process_time``), which other
processes on the machine barely disturb; with more threads CPU time counts every thread's work (and
the spin-waiting of idle BLAS threads), so the ratio is taken on wall-clock time, which is only
meaningful on an otherwise idle machine. Both are printed. ``ours(2)/ours(1)`` (wall clock) checks that
two threads are no slower than one.
"""

from __future__ import annotations

import argparse
import sys

import _common

#: (name, N, in channels, out channels, input size, kernel, stride, padding)
SUITES = {
    "resnet18": [
        ("64ch @32x32, 3x3", 32, 64, 64, 32, 3, 1, 1),
        ("128ch @16x16, 3x3", 32, 128, 128, 16, 3, 1, 1),
        ("256ch @8x8, 3x3", 32, 256, 256, 8, 3, 1, 1),
        ("512ch @4x4, 3x3", 32, 512, 512, 4, 3, 1, 1),
        ("64->128 @32->16, 3x3 s2", 32, 64, 128, 32, 3, 2, 1),
        ("128->256 @16->8, 3x3 s2", 32, 128, 256, 16, 3, 2, 1),
        ("256->512 @8->4, 3x3 s2", 32, 256, 512, 8, 3, 2, 1),
        ("64->128 @32->16, 1x1 s2", 32, 64, 128, 32, 1, 2, 0),
        ("128->256 @16->8, 1x1 s2", 32, 128, 256, 16, 1, 2, 0),
        ("256->512 @8->4, 1x1 s2", 32, 256, 512, 8, 1, 2, 0),
        ("stem 3->64 @224->112, 7x7 s2", 8, 3, 64, 224, 7, 2, 3),
    ],
    "resnet20": [
        ("stem 3->16 @32x32, 3x3", 128, 3, 16, 32, 3, 1, 1),
        ("16ch @32x32, 3x3", 128, 16, 16, 32, 3, 1, 1),
        ("16->32 @32->16, 3x3 s2", 128, 16, 32, 32, 3, 2, 1),
        ("32ch @16x16, 3x3", 128, 32, 32, 16, 3, 1, 1),
        ("32->64 @16->8, 3x3 s2", 128, 32, 64, 16, 3, 2, 1),
        ("64ch @8x8, 3x3", 128, 64, 64, 8, 3, 1, 1),
        ("16->32 @32->16, 1x1 s2", 128, 16, 32, 32, 1, 2, 0),
        ("32->64 @16->8, 1x1 s2", 128, 32, 64, 16, 1, 2, 0),
    ],
}
#: Shapes of the --quick run (by name).
QUICK = {
    "64ch @32x32, 3x3",
    "256ch @8x8, 3x3",
    "16ch @32x32, 3x3",
    "64ch @8x8, 3x3",
    "16->32 @32->16, 1x1 s2",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default="resnet18,resnet20", help="comma-separated: resnet18, resnet20")
    parser.add_argument("--dtypes", default="float32,float64", help="comma-separated: float32, float64")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per shape and library (default 5)")
    parser.add_argument("--quick", action="store_true", help="a few shapes, float32, 2 repeats")
    args = parser.parse_args(argv)
    args.suites = [s for s in args.suites.split(",") if s]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    for s in args.suites:
        if s not in SUITES:
            parser.error(f"--suites: unknown suite {s!r} (choose from {', '.join(SUITES)})")
    for d in args.dtypes:
        if d not in ("float32", "float64"):
            parser.error(f"--dtypes: {d!r} is not float32 or float64")
    if args.quick:
        args.repeats, args.dtypes = 2, ["float32"]
    return args


def describe_machine(torch) -> str:
    """The machine banner of :func:`_common.machine_banner` (CPU, load, NumPy + BLAS kernels, Python) with
    torch's version and CPU capability."""
    return _common.machine_banner(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")


def time_shape(shape, dtype, repeats, torch, rng) -> dict:
    """``{"saf_ref": (cpu, wall), "torch": (cpu, wall)}`` for one layer shape (seconds)."""
    import numpy as np

    from saf_ref.nn.conv import conv2d_backward, conv2d_forward

    _, n, c, o, size, k, stride, pad = shape
    x = rng.standard_normal((n, c, size, size)).astype(dtype)
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(dtype)
    out = (size + 2 * pad - k) // stride + 1
    dy = rng.standard_normal((n, o, out, out)).astype(dtype)
    tx, tw, tdy = (
        torch.from_numpy(x).requires_grad_(True),
        torch.from_numpy(w).requires_grad_(True),
        torch.from_numpy(dy),
    )

    def ours():
        _, cache = conv2d_forward(x, w, stride=stride, padding=pad)
        conv2d_backward(dy, cache)

    def theirs():
        tx.grad = tw.grad = None
        torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad).backward(tdy)

    return _common.interleaved({"saf_ref": ours, "torch": theirs}, repeats)


def geomean(values) -> float:
    import numpy as np

    return float(np.exp(np.mean(np.log(values))))


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.start_blas_threads(max(args.threads))  # before NumPy is imported: BLAS's thread pool size
    import numpy as np

    torch = _common.import_torch("bench_conv")
    if torch is None:
        return 1

    print(describe_machine(torch))
    print(f"conv2d forward + backward (dx, dw), best of {args.repeats}, saf_ref and torch interleaved")
    summary = []
    for suite in args.suites:
        shapes = [s for s in SUITES[suite] if not args.quick or s[0] in QUICK]
        for dtype in args.dtypes:
            results = {}
            for threads in args.threads:
                rng = np.random.default_rng(0)
                with _common.threads(threads, torch):
                    results[threads] = [
                        time_shape(s, np.dtype(dtype), args.repeats, torch, rng) for s in shapes
                    ]
            print()
            print(f"### {suite}, {dtype}")
            print()
            head = "| layer | N |"
            for t in args.threads:
                clock = "CPU" if t == 1 else "wall"
                head += f" saf_ref {t}T (ms) | torch {t}T (ms) | ratio {t}T ({clock}) |"
            if 1 in args.threads and len(args.threads) > 1:
                head += " saf_ref 2T/1T (wall) |"
            print(head)
            print(
                "|---|---:|"
                + "---:|" * (3 * len(args.threads) + (1 in args.threads and len(args.threads) > 1))
            )
            ratios = {t: [] for t in args.threads}
            for i, shape in enumerate(shapes):
                row = f"| {shape[0]} | {shape[1]} |"
                for t in args.threads:
                    r = results[t][i]
                    k = 0 if t == 1 else 1  # CPU time for one thread, wall clock for more
                    ratios[t].append(r["saf_ref"][k] / r["torch"][k])
                    row += f" {1e3 * r['saf_ref'][k]:.1f} | {1e3 * r['torch'][k]:.1f} | {ratios[t][-1]:.2f} |"
                if 1 in args.threads and len(args.threads) > 1:
                    t2 = max(args.threads)
                    row += f" {results[t2][i]['saf_ref'][1] / results[1][i]['saf_ref'][1]:.2f} |"
                print(row)
            line = "| **geometric mean** | |"
            for t in args.threads:
                line += f" | | **{geomean(ratios[t]):.2f}** |"
                summary.append((suite, dtype, t, geomean(ratios[t])))
            print(line + (" |" if 1 in args.threads and len(args.threads) > 1 else ""))
    print()
    print("geometric means saf_ref / torch:")
    for suite, dtype, t, g in summary:
        print(f"  {suite:9s} {dtype}  {t} thread(s): {g:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
