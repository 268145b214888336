#!/usr/bin/env python
"""Train a narrow ResNet-20 on the shipped 5,000-image MNIST subset, plain and with weight transforms.

For each transform (default: identity, tanh, arctan) a ResNet-20 of width 4 (channels 4/8/16, one input
channel) is trained from the same initialization with the same data order, on 4,000 images, and tested
on the 1,000 held-out ones. With a transform ``f`` the network stores latents ``u`` and computes with
``w = f(u)`` (conv and fc weights); the latents start at ``f^{-1}(w0)`` so that every run starts from
the same effective network.

Usage (about 4-5 minutes on 2 cores for the three runs)::

    python scripts/train_mnist.py
    python scripts/train_mnist.py --epochs 12 --width 8 --transforms identity tanh arctan softsign

Prints one line per epoch and a summary table (test accuracy per transform, time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--width", type=int, default=4, help="channels of the first stage (16 = ResNet-20)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--transforms", nargs="+", default=["identity", "tanh", "arctan"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (set before NumPy is imported)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # BLAS reads these once, when NumPy loads it.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    import numpy as np

    from saf_ref.data.augment import channel_stats, normalize_channels
    from saf_ref.data.shipped import load_mnist5k
    from saf_ref.nn.resnet import init_resnet
    from saf_ref.protect import get_transform, param_role
    from saf_ref.train.loop import train
    from saf_ref.train.optim import SGD
    from saf_ref.train.schedules import Cosine

    data = load_mnist5k(dtype=np.float32)
    mean, std = channel_stats(data.x_train)
    x_train = normalize_channels(data.x_train, mean, std)
    x_test = normalize_channels(data.x_test, mean, std)
    dataset = (x_train, data.y_train, x_test, data.y_test)
    print(
        f"MNIST subset: {len(x_train)} train / {len(x_test)} test images; resnet20 width {args.width}, "
        f"{args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} (cosine), momentum 0.9, "
        f"weight decay {args.weight_decay}, random crop (pad 2)",
        flush=True,
    )
    params0, state0 = init_resnet("resnet20", in_channels=1, num_classes=10, width=args.width, rng=args.seed)
    shapes = {k: v.shape for k, v in params0.items()}
    results = []
    for name in args.transforms:
        transform = get_transform(name)
        # Latents u0 = f^{-1}(w0): the same effective starting network for every transform.
        # The transform applies to the conv/linear weights (role "weight"), as in train(transform=...).
        params = {
            k: (transform.inverse(v) if param_role(k, shapes) == "weight" else v) for k, v in params0.items()
        }
        print(f"--- transform {name}", flush=True)
        t0 = time.perf_counter()
        _, _, history = train(
            params,
            state0,
            dataset,
            model="resnet20",
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=SGD(args.lr, momentum=0.9, weight_decay=args.weight_decay),
            schedule=Cosine(args.lr, t_max=args.epochs),
            transform=transform,
            augment="crop",
            pad=2,
            rng=args.seed,
            verbose=not args.quiet,
        )
        seconds = time.perf_counter() - t0
        results.append((name, history[-1]["test_acc"], seconds, history[-1]["images_per_s"]))

    print("\ntransform   test accuracy   time      train img/s (last epoch)")
    for name, acc, seconds, ips in results:
        print(f"{name:<10}  {100 * acc:12.2f}%  {seconds:6.0f} s   {ips:8.0f}")
    base = dict((r[0], r[1]) for r in results).get("identity")
    if base is not None:
        gaps = {name: 100 * (base - acc) for name, acc, _, _ in results if name != "identity"}
        print("gap to identity (points): " + ", ".join(f"{k} {v:+.2f}" for k, v in gaps.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
