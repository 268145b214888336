"""Benchmark: ResNet-20 training throughput (images/s) of saf_ref against PyTorch CPU, in the same run.

Usage::

    python benchmarks/bench_train.py [--threads 2] [--batch 128] [--steps 5] [--dtype float32]

One training step is what :func:`saf_ref.train.loop.train_step` does: a train-mode forward pass of
ResNet-20 on a batch of 32x32 RGB images, the mean cross-entropy, the backward pass and an SGD update
(momentum 0.9, weight decay 5e-4). PyTorch does the same with ``torch.nn`` modules (same architecture,
same weights, ``torch.optim.SGD``). Both libraries get the same number of threads: PyTorch through
``torch.set_num_threads``, NumPy's BLAS through ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS``, set *before* NumPy is imported.

After one warm-up step each, the libraries run alternately, ``--steps`` timed steps each; the best step
time is reported as images/s (the minimum is the least noisy estimate on a shared machine). The last line
is the ratio torch / saf_ref of the images/s (how many times faster PyTorch is).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per library (default 5)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    return parser.parse_args(argv)


def torch_resnet20(torch, num_classes=10):
    """ResNet-20 from torch.nn modules with torchvision's module names (so state_dict keys match)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            c_in = 16
            for s, c in enumerate((16, 32, 64)):
                blocks = []
                for b in range(3):
                    blocks.append(Block(c_in, c, 2 if (b == 0 and s > 0) else 1))
                    c_in = c
                setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean((2, 3)))

    return Net()


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # must happen before NumPy (and its BLAS) is imported
    import numpy as np

    try:
        import torch
    except ImportError:
        print("bench_train: PyTorch is not installed (pip install torch)", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)

    from saf_ref.nn.resnet import init_resnet
    from saf_ref.nn.state_dict import export_state_dict
    from saf_ref.train.loop import train_step
    from saf_ref.train.optim import SGD, sgd_init

    dtype = np.dtype(args.dtype)
    tdtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    rng = np.random.default_rng(0)
    params, state = init_resnet("resnet20", rng=rng, dtype=dtype)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, args.batch)
    config = SGD(0.1, momentum=0.9, weight_decay=5e-4)
    opt_state = sgd_init(params)

    model = torch_resnet20(torch).to(tdtype).train()
    sd = export_state_dict(params, state)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def ours():
        nonlocal params, state, opt_state
        params, state, opt_state, _info = train_step(
            params, state, opt_state, x, y, model="resnet20", optimizer=config
        )

    def theirs():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()

    times = {"saf_ref": [], "torch": []}
    ours()  # warm-up (allocations, BLAS/oneDNN initialization)
    theirs()
    for _ in range(args.steps):
        for name, step in (("saf_ref", ours), ("torch", theirs)):
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)

    print(
        f"ResNet-20 training step (forward, cross-entropy, backward, SGD), batch {args.batch}, 32x32, "
        f"{args.dtype}, {args.threads} thread(s); best of {args.steps} steps"
    )
    ips = {}
    for name, ts in times.items():
        ips[name] = args.batch / min(ts)
        best, median = 1000 * min(ts), 1000 * sorted(ts)[len(ts) // 2]
        print(f"  {name:<8} {ips[name]:8.1f} images/s   ({best:7.1f} ms/step, median {median:7.1f} ms)")
    print(f"  torch / saf_ref throughput ratio: {ips['torch'] / ips['saf_ref']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
