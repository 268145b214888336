"""Bit-error injection time against the time of one copy of the array.

``inject_bit_errors`` must return a new array, so one ``codes.copy()`` is the floor; what matters is the
sampling overhead on top of it. The sampler draws geometric gaps between flips, so its cost grows with
the number of flips (``N * p`` for ``N`` stored bits), not with ``N``.

Run::

    python benchmarks/bench_inject.py            # 11.7 million values, 11 repeats (about a minute)
    python benchmarks/bench_inject.py --quick    # 1 million values, 3 repeats (a few seconds)

For each code width (float32 as uint32, float16 as uint16, uint8) and each rate p, it times the copy and
the injection alternately (so both see the same machine state), ``--repeats`` times, and prints the
medians and their ratio ``inject / copy`` as a Markdown table, plus the ratio of the fastest runs (less
sensitive to other load on the machine: a 47 MB copy alone varies by 2x between runs on a busy host).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from saf_ref.bits.faults import inject_bit_errors

RATES = (1e-7, 1e-5, 1e-3, 1e-1)
CODES = (("float32", np.uint32), ("float16", np.uint16), ("uint8", np.uint8))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(n: int, repeats: int, seed: int) -> list[dict]:
    """Median copy and injection times for every code width and rate."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, dtype in CODES:
        nbits = np.dtype(dtype).itemsize * 8
        codes = rng.integers(0, np.iinfo(dtype).max, size=n, dtype=dtype, endpoint=True)
        codes.copy()  # warm up the allocator once
        for p in RATES:
            inject_bit_errors(codes, p, rng=rng)  # warm-up call
            copy_t, inject_t = [], []
            for _ in range(repeats):
                copy_t.append(_timed(codes.copy))
                inject_t.append(_timed(lambda c=codes, p=p: inject_bit_errors(c, p, rng=rng)))
            copy_s, inject_s = float(np.median(copy_t)), float(np.median(inject_t))
            rows.append(
                {
                    "codes": f"{name} ({np.dtype(dtype).name})",
                    "p": p,
                    "flips": n * nbits * p,
                    "copy_ms": 1e3 * copy_s,
                    "inject_ms": 1e3 * inject_s,
                    "ratio": inject_s / copy_s,
                    "ratio_min": min(inject_t) / min(copy_t),
                }
            )
    return rows


def markdown(rows: list[dict], n: int, repeats: int) -> str:
    lines = [
        f"{n:,} values, median of {repeats} repeats; numpy {np.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs",
        "",
        "| codes | p | expected flips | copy (ms) | inject (ms) | inject / copy | same, best runs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['codes']} | {r['p']:.0e} | {r['flips']:,.0f} | {r['copy_ms']:.2f} | {r['inject_ms']:.2f} "
            f"| {r['ratio']:.2f} | {r['ratio_min']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 million values, 3 repeats")
    parser.add_argument("--n", type=int, default=None, help="number of values (default 11,700,000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 11)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.n or (1_000_000 if args.quick else 11_700_000)
    repeats = args.repeats or (3 if args.quick else 11)
    print(markdown(bench(n, repeats, args.seed), n, repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
