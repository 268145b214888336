"""Benchmark: time per committed flip of saf_ref.attack.bit_flip_attack (issue 11).

Usage::

    python benchmarks/bench_attack.py [--threads 2] [--k 5] [--candidates 8] [--batch 128]
                                      [--models demo,resnet20] [--methods pbs,gradient] [--repeats 1]

Models: ``demo`` is the demo's network (``small_cnn``, width 8) on the shipped 8x8 digits; ``resnet20`` is
ResNet-20 at CIFAR size (32x32x3 inputs, random images: the timing does not depend on the values). Both
are stored with an 8-bit per-tensor quantizer (Stutz et al.'s robust quantization), every tensor exposed.

For each model and method the attack runs with budget 0 (set-up only: store, flipped values of every
candidate bit, the clean evaluation) and with budget ``k``; the time per committed flip is
``(t_k - t_0) / k``, best of ``--repeats``. ``pbs`` costs one forward + backward pass and ``--candidates``
forward passes per flip; ``gradient`` one forward + backward pass and a few forward passes per round,
plus ``k`` forward passes for the trajectory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    parser.add_argument("--k", type=int, default=5, help="flips per attack (default 5)")
    parser.add_argument("--candidates", type=int, default=8, help="pbs: exact evaluations per flip")
    parser.add_argument("--batch", type=int, default=128, help="attack batch size (default 128)")
    parser.add_argument("--models", default="demo,resnet20", help="comma-separated: demo, resnet20")
    parser.add_argument("--methods", default="pbs,gradient", help="comma-separated: pbs, gradient")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (best is reported)")
    return parser.parse_args(argv)


def problem(name: str, batch: int):
    """``(model, params, state, x, y)`` of one benchmark model."""
    import numpy as np

    if name == "demo":
        from saf_ref import data
        from saf_ref.nn.small import init_small_cnn

        d = data.load_digits()
        params, state = init_small_cnn(in_channels=1, num_classes=10, width=8, rng=0)
        return "small_cnn", params, state, d.x_train[:batch], d.y_train[:batch]
    from saf_ref.nn.resnet import init_resnet

    params, state = init_resnet("resnet20", num_classes=10, rng=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return "resnet20", params, state, x, rng.integers(0, 10, batch)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before NumPy loads BLAS
    from saf_ref.attack import bit_flip_attack
    from saf_ref.bits import Quantizer
    from saf_ref.protect import default_spec

    spec = default_spec(Quantizer(8))
    print(f"threads={args.threads} k={args.k} candidates={args.candidates} batch={args.batch}")
    print(f"{'model':10s} {'method':9s} {'params':>8s} {'setup s':>8s} {'s/flip':>8s}")
    for name in args.models.split(","):
        inputs = problem(name, args.batch)
        n_params = sum(v.size for v in inputs[1].values())
        for method in args.methods.split(","):
            def run(k, inputs=inputs, method=method):
                model, params, state, x, y = inputs
                bit_flip_attack(model, params, state, spec, x, y, k=k, method=method,
                                candidates=args.candidates)
            t0 = best_time(lambda run=run: run(0), args.repeats)
            tk = best_time(lambda run=run: run(args.k), args.repeats)
            print(f"{name:10s} {method:9s} {n_params:8d} {t0:8.2f} {(tk - t0) / args.k:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
