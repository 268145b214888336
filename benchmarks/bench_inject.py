"""Bit-error injection time against the time of one copy of the array, in the same run.

``inject_bit_errors`` must return a new array, so one ``codes.copy()`` is the floor; what matters is the
sampling overhead on top of it. The sampler draws geometric gaps between flips, so its cost grows with
the number of flips (``N * p`` for ``N`` stored bits), not with ``N``. Target of issue 14: float32 (11.7
million values) at ``p = 1e-3`` within 1.5x the copy.

Run::

    python benchmarks/bench_inject.py            # 11.7 million values, 15 repeats, 1 and 2 threads
    python benchmarks/bench_inject.py --quick    # 1 million values, 5 repeats (a few seconds)
    python benchmarks/bench_inject.py --codes float32 --rates 1e-3 --repeats 41

For each code width (float32 as uint32, float16 as uint16, uint8) and each rate p, the copy and the
injection run alternately (``benchmarks/_common.py``: interleaved, minimum of the repeats), with NumPy's
BLAS limited to each thread count in turn. The table gives the ratio ``inject / copy`` on process CPU
time for one thread (robust to other load) and on CPU and wall time for two. The injection itself is
single-threaded NumPy either way; the two-thread column checks that nothing in it gets slower when BLAS
may use two threads.
"""

from __future__ import annotations

import argparse
import sys

import _common

RATES = (1e-7, 1e-5, 1e-3, 1e-1)
CODES = {"float32": "uint32", "float16": "uint16", "uint8": "uint8"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 million values, 5 repeats")
    parser.add_argument("--n", type=int, default=None, help="number of values (default 11,700,000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 15)")
    parser.add_argument("--threads", default="1,2", help="comma-separated BLAS thread counts (default 1,2)")
    parser.add_argument("--codes", default=",".join(CODES), help="comma-separated: float32, float16, uint8")
    parser.add_argument("--rates", default=",".join(f"{p:g}" for p in RATES), help="comma-separated rates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.n = args.n or (1_000_000 if args.quick else 11_700_000)
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.codes = [c for c in args.codes.split(",") if c]
    args.rates = [float(r) for r in args.rates.split(",") if r]
    for c in args.codes:
        if c not in CODES:
            parser.error(f"--codes: unknown code {c!r} (choose from {', '.join(CODES)})")
    return args


def bench(args) -> dict:
    """``{(code, p): {threads: {"copy": Best, "inject": Best}}}``."""
    import numpy as np

    from saf_ref.bits.faults import inject_bit_errors

    rng = np.random.default_rng(args.seed)
    results: dict = {}
    for threads in args.threads:
        with _common.threads(threads):
            for name in args.codes:
                dtype = np.dtype(CODES[name])
                codes = rng.integers(0, np.iinfo(dtype).max, size=args.n, dtype=dtype, endpoint=True)
                for p in args.rates:
                    fns = {
                        "copy": codes.copy,
                        "inject": lambda c=codes, p=p: inject_bit_errors(c, p, rng=rng),
                    }
                    best = _common.interleaved(fns, args.repeats)
                    results.setdefault((name, p), {})[threads] = best
    return results


def markdown(results: dict, args) -> str:
    first, rest = args.threads[0], args.threads[1:]
    head = (
        f"| codes | p | expected flips | copy {first}T (ms) | inject {first}T (ms) "
        f"| inject / copy {first}T (CPU) |"
    )
    head += "".join(f" inject / copy {t}T (CPU) | {t}T (wall) |" for t in rest)
    lines = [head, "|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(rest)]
    for (name, p), by_threads in results.items():
        import numpy as np

        nbits = np.dtype(CODES[name]).itemsize * 8
        b = by_threads[first]
        row = (
            f"| {name} ({CODES[name]}) | {p:.0e} | {args.n * nbits * p:,.0f} | {1e3 * b['copy'].cpu:.2f} "
            f"| {1e3 * b['inject'].cpu:.2f} | **{b['inject'].cpu / b['copy'].cpu:.2f}** |"
        )
        for t in rest:
            b = by_threads[t]
            row += f" {b['inject'].cpu / b['copy'].cpu:.2f} | {b['inject'].wall / b['copy'].wall:.2f} |"
        lines.append(row)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.start_blas_threads(max(args.threads))  # before NumPy is imported
    print(_common.machine_banner())
    print(
        f"{args.n:,} values; copy and inject_bit_errors interleaved, minimum of {args.repeats} repeats; "
        f"CPU = process CPU time, wall = wall clock"
    )
    print()
    print(markdown(bench(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
