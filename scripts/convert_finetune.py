#!/usr/bin/env python
"""Convert a pretrained plain CNN to a saturated weight transform (SAF), fine-tune it, test its robustness.

The saturated-transform paper adapts a *pretrained* network to ``w = f(u)`` in a few epochs instead of
training it from scratch. Two ways to start (:func:`saf_ref.protect.convert.convert_to_saf`):

- ``copy``: ``u = w``. The network then computes with ``f(w)`` (tanh shrinks every weight), so it starts
  off worse and fine-tuning adapts it;
- ``inverse``: ``u = f^{-1}(w)``, so ``f(u) = w`` up to rounding: the converted network computes what the
  pretrained one did, and fine-tuning starts from the pretrained accuracy. Only for weights inside
  ``f``'s range, though: a trained classifier layer (not followed by batch norm) has weights beyond
  tanh's range ``(-1, 1)``, which come back clipped just below 1. ``--fold`` first moves a power of two
  from ``fc.weight`` into the preceding batch norm (``bn3``); ReLU is positively homogeneous, so the
  network computes the same logits bit for bit, with every weight inside the range.

Steps, on the shipped 8x8 digits (no network, only shipped data):

1. train a plain small CNN (3 conv-BN-ReLU layers, width 8) from scratch;
2. convert it both ways, evaluate, fine-tune each for a few epochs with ``train(..., transform=f)``,
   evaluate again;
3. store every model's latents in float32 (the transform applied after reading) and run a bit-error
   campaign (:func:`saf_ref.experiments.campaign.run_campaign`): plain, plain with activation clipping
   applied afterwards (every ReLU capped at ``--act-clip``, model ``"small_cnn@act_clip=C"``, the
   prior-work baseline the SAF paper contrasts with), and both conversions before and after fine-tuning.

Usage (10 to 30 seconds on 2 cores)::

    python scripts/convert_finetune.py
    python scripts/convert_finetune.py --fold --transform arctan --finetune-epochs 2 --json out.json

Prints the clean accuracies and a table of the mean accuracy (%) over the trials at each bit-error rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12, help="epochs of the plain pretraining")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05, help="pretraining learning rate (cosine schedule)")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="fine-tuning learning rate (cosine)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--transform", default="tanh", help="tanh, arctan, softsign")
    p.add_argument("--fold", action="store_true", help="fold fc's scale into bn3 first (see above)")
    p.add_argument("--act-clip", type=float, default=6.0, help="ReLU ceiling of the act-clip row; 0: none")
    p.add_argument("--rates", type=float, nargs="+", default=[1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="campaign processes (default: all cores)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (set before NumPy is imported)")
    p.add_argument("--json", default=None, help="also write the campaign summary to this JSON file")
    return p.parse_args(argv)


def fold_fc_into_bn3(params, limit):
    """The same small CNN with ``max |fc.weight| < limit``: ``bn3`` times ``2**k``, ``fc.weight`` over it.

    ``fc`` reads ``mean(relu(bn3(z)))`` and ``relu(s y) = s relu(y)`` for ``s > 0``; with ``s`` a power of
    two every product is exact, so the logits are unchanged bit for bit.
    """
    import numpy as np

    top = float(np.max(np.abs(params["fc.weight"])))
    k = max(0, int(np.ceil(np.log2(top / limit))) + 1)  # +1: strictly inside, with a margin
    s = params["fc.weight"].dtype.type(2.0**k)
    scaled = {"bn3.weight": params["bn3.weight"] * s, "bn3.bias": params["bn3.bias"] * s}
    return {**params, **scaled, "fc.weight": params["fc.weight"] / s}, k


def main(argv=None) -> int:
    args = parse_args(argv)
    # BLAS reads these once, when NumPy loads it.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    import numpy as np

    from saf_ref.data.shipped import load_digits
    from saf_ref.experiments.campaign import Subject, run_campaign
    from saf_ref.nn.registry import format_model_name
    from saf_ref.nn.small import init_small_cnn, small_cnn_forward
    from saf_ref.protect import default_spec, effective_weights, get_transform
    from saf_ref.protect.convert import convert_to_saf
    from saf_ref.train.loop import evaluate, train
    from saf_ref.train.optim import SGD
    from saf_ref.train.schedules import Cosine

    start = time.perf_counter()
    data = load_digits()  # float32 in [0, 1]
    x_test, y_test = data.x_test, data.y_test
    f = get_transform(args.transform)
    print(
        f"digits: {len(data.x_train)} train / {len(x_test)} test images; small_cnn width {args.width}; "
        f"pretraining {args.epochs} epochs (lr {args.lr}), fine-tuning {args.finetune_epochs} epochs "
        f"(lr {args.finetune_lr}) with w = {args.transform}(u)",
        flush=True,
    )

    def fit(params, state, epochs, lr, transform, seed):
        return train(
            params, state, data, model="small_cnn", epochs=epochs, batch_size=args.batch_size,
            optimizer=SGD(lr, momentum=0.9, weight_decay=args.weight_decay), schedule=Cosine(lr, epochs),
            transform=transform, augment=None, rng=seed, verbose=False,
        )[:2]  # fmt: skip

    spec_plain, spec_saf = default_spec("float32"), default_spec("float32", args.transform)

    def accuracy(params, state, spec=None, model="small_cnn"):
        # The network computes with the weights read back through the storage spec (f(u) for SAF).
        weights = params if spec is None else effective_weights(params, spec)[0]
        return evaluate(weights, state, x_test, y_test, model=model).accuracy

    # 1. The pretrained plain network.
    init = init_small_cnn(in_channels=1, num_classes=10, width=args.width, rng=args.seed)
    plain, state = fit(*init, args.epochs, args.lr, None, args.seed + 1)
    if args.fold:
        folded, k = fold_fc_into_bn3(plain, f.bound)
        x = x_test

        def logits(p):
            return small_cnn_forward(p, state, x, train=False)[0]

        same = logits(folded).tobytes() == logits(plain).tobytes()
        print(f"--fold: bn3 x 2**{k}, fc.weight / 2**{k}; test logits unchanged bit for bit: {same}")
        plain = folded
    weights = {k: v for k, v in plain.items() if v.ndim in (2, 4)}
    outside = sum(int(np.sum(np.abs(v) >= f.bound)) for v in weights.values())
    shrink = max(float(np.max(np.abs(v - f.forward(v)))) for v in weights.values())
    print("largest |w| per layer: " + ", ".join(f"{k} {np.max(np.abs(v)):.3f}" for k, v in weights.items()))
    print(
        f"{outside} weights outside {args.transform}'s range (-{f.bound:.4g}, {f.bound:.4g}) "
        f"(clipped by the inverse conversion); largest |w - {args.transform}(w)| (the copy conversion's "
        f"change): {shrink:.3f}"
    )
    rows = [("plain", "identity", accuracy(plain, state), None)]
    subjects = [Subject("plain", "identity", "float32", "small_cnn", plain, state, spec_plain)]
    if args.act_clip > 0:
        clip_name = format_model_name("small_cnn", act_clip=args.act_clip)
        rows.append(
            ("plain + " + clip_name.split("@")[1], "identity", accuracy(plain, state, model=clip_name), None)
        )
        subjects.append(Subject("act_clip", "identity", "float32", clip_name, plain, state, spec_plain))

    # 2. Conversion both ways, then fine-tuning.
    for mode in ("copy", "inverse"):
        latents = convert_to_saf(plain, f, mode=mode)
        before = accuracy(latents, state, spec_saf)
        tuned, tuned_state = fit(latents, state, args.finetune_epochs, args.finetune_lr, f, args.seed + 2)
        after = accuracy(tuned, tuned_state, spec_saf)
        rows.append((f"{mode}", args.transform, before, after))
        subjects.append(Subject(f"{mode}", args.transform, "float32", "small_cnn", latents, state, spec_saf))
        subjects.append(
            Subject(f"{mode}+ft", args.transform, "float32", "small_cnn", tuned, tuned_state, spec_saf)
        )

    print("\nclean test accuracy (%)")
    print(f"{'model':<22}{'transform':<10}{'converted':>10}{'fine-tuned':>12}")
    for name, transform, before, after in rows:
        tail = f"{100 * after:>12.1f}" if after is not None else f"{'':>12}"
        print(f"{name:<22}{transform:<10}{100 * before:>10.1f}{tail}")

    # 3. Bit errors in the stored float32 latents.
    print(f"\nbit-error campaign: {len(subjects)} models x {len(args.rates)} rates x {args.trials} trials")
    result = run_campaign(
        subjects, x_test, y_test, args.rates, trials=args.trials, seed=args.seed, max_workers=args.workers
    )
    cells = {(r["subject"], r["ber"]): r for r in result.summary}
    rates = sorted(set(args.rates))
    print(f"\nmean accuracy (%) over {args.trials} trials, float32 storage")
    head = f"{'model':<14}{'transform':<10}{'clean':>7}" + "".join(f"{r:>8.0e}" for r in rates)
    print(head + "\n" + "-" * len(head))
    for s, clean in zip(subjects, result.clean, strict=True):
        line = f"{s.method:<14}{s.transform:<10}{100 * clean['clean_accuracy']:>7.1f}"
        print(line + "".join(f"{100 * cells[(s.key, r)]['accuracy_mean']:>8.1f}" for r in rates))
    if args.json:
        result.to_json(args.json)
        print(f"\nwrote {args.json}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
