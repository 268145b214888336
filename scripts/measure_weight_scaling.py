#!/usr/bin/env python
"""Measure weight scaling for IEEE formats: accuracy under random bit errors with and without it.

Trains the demo's baseline (``saf-ref demo`` defaults: small_cnn of width 8 on the shipped 8x8 digits,
12 epochs, seed 0; the same weights as the demo's ``baseline`` rows) or loads it from ``--checkpoint``,
stores it in float32 and float16 in several ways, and runs one bit-error campaign over all of them
(every parameter exposed, as in the demo) at the demo's rates, seed and 20 trials. Prints one row per way
of storing, the mean accuracy (%) over the trials at each rate. The analysis behind the rows is
``docs/weight_scaling.md``.

Usage (from the repository root; about 1 minute on an idle 2-core machine)::

    python scripts/measure_weight_scaling.py
    python scripts/measure_weight_scaling.py --trials 20 --checkpoint /tmp/baseline.npz --workers 2

The rows, per format:

- ``none``: stored as trained (the demo's baseline); ``none, zero``: the same read with inf/NaN -> 0;
- ``t=1 (old auto)``: conv/linear weights scaled to ``max|sW| = 1``, the default before this analysis;
- ``|sW| >= 2``: every tensor scaled so its largest magnitude sits at the top of the widest range whose
  single flips never give inf (``[2, 2**64)`` in float32, ``[2, 256)`` in float16; its top exponent bit
  is set, so flipping it divides by ``2**(bias+1)``);
- ``auto``: every tensor scaled with the new default target ``2**emax`` (read as stored, inf kept);
- ``auto, zero``: the same, inf/NaN read as 0 (the recommended pairing);
- ``auto w only, zero``: only conv/linear weights scaled (biases and batch norm raw but exposed).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from saf_ref.experiments.campaign import Subject, run_campaign
from saf_ref.experiments.demo import DEFAULT_RATES, load_dataset
from saf_ref.nn import init_small_cnn
from saf_ref.protect import default_spec, weight_scaling_spec
from saf_ref.train import SGD, Cosine, load_checkpoint, save_checkpoint, train

# The demo's rates: the nested fault patterns depend on the whole list, so with the same seed and trials
# the rows "none" are the demo's baseline rows, and the "auto, zero" rows its weight-scaling rows.
RATES = DEFAULT_RATES
ALL_ROLES = ("weight", "bias", "bn", "other")
# Top of the widest range [2, 2**(2**(E-2))) without single-flip infinities, with margin for rounding.
MSB_WINDOW_TARGET = {"float32": 1.5 * 2.0**63, "float16": 1.5 * 2.0**7}


def train_baseline(seed: int = 0):
    """The demo's baseline: ``saf-ref demo`` defaults (DemoConfig), trained with ``w = u``."""
    x_train, y_train, x_test, y_test, num_classes = load_dataset("digits")
    params, state = init_small_cnn(in_channels=x_train.shape[1], num_classes=num_classes, width=8, rng=seed)
    lr, epochs = 0.05, 12
    params, state, _ = train(
        params, state, (x_train, y_train, x_test, y_test),
        model="small_cnn", epochs=epochs, batch_size=32,
        optimizer=SGD(lr, momentum=0.9, weight_decay=5e-4), schedule=Cosine(lr, epochs),
        augment=None, rng=seed + 1, verbose=False,
    )  # fmt: skip
    return params, state


def subjects_for(params, state, fmt: str) -> list[Subject]:
    """The ways of storing ``params`` in ``fmt`` that the table compares (see the module docstring)."""
    ways = [
        ("none", default_spec(fmt), "propagate"),
        ("none, zero", default_spec(fmt), "zero"),
        ("t=1 (old auto)", weight_scaling_spec(params, 1.0, fmt), "propagate"),
        ("|sW| >= 2", weight_scaling_spec(params, MSB_WINDOW_TARGET[fmt], fmt, roles=ALL_ROLES), "propagate"),
        ("auto", weight_scaling_spec(params, "auto", fmt, roles=ALL_ROLES), "propagate"),
        ("auto, zero", weight_scaling_spec(params, "auto", fmt, roles=ALL_ROLES), "zero"),
        ("auto w only, zero", weight_scaling_spec(params, "auto", fmt), "zero"),
    ]
    return [
        Subject("scaling", "identity", fmt, "small_cnn", params, state, spec, nonfinite=nf,
                label=f"{fmt} {name}")
        for name, spec, nf in ways
    ]


def format_rows(result, subjects, rates) -> str:
    cells = {(r["subject"], r["ber"]): r["accuracy_mean"] for r in result.summary}
    clean = {c["subject"]: c["clean_accuracy"] for c in result.clean}
    head = f"{'storage':<28}{'clean':>7}" + "".join(f"{r:>8.0e}" for r in rates)
    lines = [head, "-" * len(head)]
    for s in subjects:
        accuracies = "".join(f"{100 * cells[(s.key, r)]:>8.1f}" for r in rates)
        lines.append(f"{s.key:<28}{100 * clean[s.key]:>7.1f}{accuracies}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="fault patterns per rate (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: serial)")
    ap.add_argument("--checkpoint", default=None, help="load the baseline from this .npz, or save it there")
    args = ap.parse_args(argv)
    if args.trials < 1:
        ap.error(f"--trials must be >= 1, got {args.trials}")
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    start = time.perf_counter()
    if args.checkpoint is not None and Path(args.checkpoint).exists():
        ckpt = load_checkpoint(args.checkpoint)
        params, state = ckpt.params, ckpt.state
    else:
        params, state = train_baseline()
        if args.checkpoint is not None:
            save_checkpoint(args.checkpoint, params=params, state=state, metadata={"name": "baseline"})
    print(f"baseline ready in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    subjects = subjects_for(params, state, "float32") + subjects_for(params, state, "float16")
    _, _, x_test, y_test, _ = load_dataset("digits")
    with warnings.catch_warnings():
        # Dividing a faulty 1e38 by a scale below 1 (the t=1 rows) overflows on purpose.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_campaign(
            subjects, x_test, y_test, RATES, trials=args.trials, seed=args.seed,
            executor="serial" if args.workers is None else "process", max_workers=args.workers,
            progress=False,
        )  # fmt: skip
    print(f"accuracy (%) on the {len(y_test)} digits test images, mean over {args.trials} trials, "
          "every parameter exposed")
    print(format_rows(result, subjects, RATES))
    print(f"\n{time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
