"""Benchmark: the matrix products under saf_ref's ResNet-20, through NumPy's BLAS and through torch's.

Usage::

    python benchmarks/bench_gemm.py                # batch 128, float32, best of 7 (about 15 s)
    python benchmarks/bench_gemm.py --quick        # batch 32, best of 2 (seconds)
    python benchmarks/bench_gemm.py --dtype float64

What it answers: how much of the gap between saf_ref and PyTorch (``bench_train.py``) is the matrix
engine alone. saf_ref's convolutions are matrix products over columns (``saf_ref.nn.conv``), computed by
the BLAS NumPy is linked against (OpenBLAS in the PyPI wheels); PyTorch's CPU convolutions run in
oneDNN and its ``torch.matmul`` in its own BLAS. The script

1. runs one ResNet-20 inference pass (``keep_cache=False``) and one training step with
   ``saf_ref.nn.conv``'s ``np`` replaced by a recorder, which notes the shape and the memory layout
   (strides) of both operands of every ``np.matmul`` call, and groups equal ones;
2. times all those products through ``np.matmul`` and, on the same data with the same strides, through
   ``torch.matmul``, interleaved with torch's whole inference pass and training step (the model of
   ``bench_train.py``), one thread, process CPU time, the minimum of the runs.

Reading it: *NumPy / torch.matmul* compares the two matrix engines on exactly saf_ref's products, and
*NumPy products / torch pass* is a floor under ``bench_train.py``'s ratio for a pass that keeps the
same products: no reordering of the rest (columns, batch norm, copies) can bring the ratio below it.
The operands are replayed with warm caches, as in the chunk loops, where each product reads columns
just written. The last linear layer's two small products (``saf_ref.nn.linear``) are not counted.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from typing import Any, NamedTuple

import _common


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per candidate (default 7)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--quick", action="store_true", help="batch 32, 2 timed runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 32, 2
    return args


class Product(NamedTuple):
    """One product's signature: operand shapes and strides (in elements), and whether ``out=`` was given."""

    a_shape: tuple[int, ...]
    a_strides: tuple[int, ...]
    b_shape: tuple[int, ...]
    b_strides: tuple[int, ...]
    out_shape: tuple[int, ...]
    into_out: bool

    @property
    def flops(self) -> int:
        """Two per term: ``2 * k`` for every element of the (possibly batched) product."""
        return 2 * self.a_shape[-1] * math.prod(self.out_shape)


class Recorder:
    """Stands in for the ``numpy`` module inside ``saf_ref.nn.conv``: every attribute is NumPy's, except
    ``matmul``, which counts the signature of each call before calling NumPy's."""

    def __init__(self, np) -> None:
        self._np = np
        self.products: Counter[Product] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._np, name)

    def matmul(self, a, b, out=None):
        def elements(x):
            return tuple(s // x.itemsize for s in x.strides)

        result = self._np.matmul(a, b, out=out)
        self.products[Product(a.shape, elements(a), b.shape, elements(b), result.shape, out is not None)] += 1
        return result


def record(run, np) -> Counter[Product]:
    """The products ``saf_ref.nn.conv`` makes while ``run()`` runs."""
    from saf_ref.nn import conv

    recorder = Recorder(np)
    conv.np = recorder
    try:
        run()
    finally:
        conv.np = np
    return recorder.products


def strided(np, shape, strides, dtype, rng):
    """``(buffer, view)``: a random buffer just big enough for a view of ``shape``, element ``strides``."""
    size = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    buf = rng.standard_normal(size).astype(dtype)
    return buf, np.lib.stride_tricks.as_strided(buf, shape, tuple(s * buf.itemsize for s in strides))


def replayers(products: Counter[Product], dtype, np, torch, rng):
    """``(numpy_run, torch_run)``: each makes every recorded product (times its count) on the same data
    and the same memory layout, ``np.matmul`` against ``torch.matmul``."""
    cases = []
    for p, count in products.items():
        (a_buf, a), (b_buf, b) = strided(np, p.a_shape, p.a_strides, dtype, rng), strided(
            np, p.b_shape, p.b_strides, dtype, rng
        )
        out = np.empty(p.out_shape, dtype) if p.into_out else None
        ta = torch.as_strided(torch.from_numpy(a_buf), p.a_shape, p.a_strides)
        tb = torch.as_strided(torch.from_numpy(b_buf), p.b_shape, p.b_strides)
        tout = None if out is None else torch.from_numpy(out)
        cases.append((count, a, b, out, ta, tb, tout))

    def numpy_run():
        for count, a, b, out, *_ in cases:
            for _ in range(count):
                np.matmul(a, b, out=out)

    def torch_run():
        for count, _a, _b, _out, ta, tb, tout in cases:
            for _ in range(count):
                torch.matmul(ta, tb, out=tout)

    return numpy_run, torch_run


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.start_blas_threads(1)  # before NumPy is imported: one BLAS thread
    import numpy as np

    torch = _common.import_torch("bench_gemm")
    if torch is None:
        return 1
    from bench_conv import describe_machine
    from bench_train import resnet20_workload

    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(1)
    ours, theirs = resnet20_workload(args.batch, args.dtype, torch)
    passes = {what: record(ours[what], np) for what in ("inference", "training step")}

    print(describe_machine(torch))
    print(
        f"ResNet-20, batch {args.batch}, 32x32, {args.dtype}, one thread; the matrix products of "
        f"saf_ref.nn.conv in one pass, best of {args.repeats}, interleaved; process CPU time"
    )
    print()
    print(
        "| pass | products (distinct) | GFLOP | NumPy products (ms) | torch.matmul, same products (ms) | "
        "NumPy / torch.matmul | torch whole pass (ms) | NumPy products / torch pass |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with _common.threads(1, torch):
        for what, products in passes.items():
            numpy_run, torch_run = replayers(products, dtype, np, torch, rng)
            best = _common.interleaved(
                {"numpy": numpy_run, "torch.matmul": torch_run, "torch pass": theirs[what]}, args.repeats
            )
            numpy_ms, torch_ms, pass_ms = (1e3 * best[k].cpu for k in ("numpy", "torch.matmul", "torch pass"))
            gflop = sum(p.flops * n for p, n in products.items()) / 1e9
            count = f"{sum(products.values())} ({len(products)})"
            print(
                f"| {what} | {count} | {gflop:.1f} | {numpy_ms:.0f} | {torch_ms:.0f} "
                f"| {numpy_ms / torch_ms:.2f} | {pass_ms:.0f} | {numpy_ms / pass_ms:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
