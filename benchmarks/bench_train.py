"""Benchmark: ResNet-20 training step and inference of saf_ref against PyTorch CPU, in the same run.

Usage::

    python benchmarks/bench_train.py                  # batch 128, float32, 1 and 2 threads, 7 steps each
    python benchmarks/bench_train.py --quick          # batch 32, 2 steps (a smoke run, about 20 s)
    python benchmarks/bench_train.py --threads 1 --steps 11 --dtype float64

Training step: what :func:`saf_ref.train.loop.train_step` does, a train-mode forward pass of ResNet-20
on a batch of 32x32 RGB images, the mean cross-entropy, the backward pass and an SGD update (momentum 0.9,
weight decay 5e-4); PyTorch does the same with ``torch.nn`` modules (same architecture and weights,
``torch.optim.SGD``). Inference: an evaluation-mode forward pass of the same batch that keeps
nothing for a backward pass (``keep_cache=False``; ``torch.no_grad()`` for PyTorch). Targets of issue
14: both within 1.5x of PyTorch on one thread, and no slower with two threads than with one.

The two libraries alternate, ``--steps`` timed runs each after a warm-up, in one process; the minimum is
kept. Thread counts are switched inside the run (threadpoolctl for NumPy's BLAS, started with the largest
count asked for through ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``;
``torch.set_num_threads``). With one thread the ratio is taken on process CPU time, robust to other load;
with more it is taken on wall-clock time (CPU time would count every thread), meaningful only on an idle
machine. The CPU, NumPy's BLAS and its kernel family are printed first.
"""

from __future__ import annotations

import argparse
import sys

import _common


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--steps", type=int, default=7, help="timed runs per library (default 7)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--quick", action="store_true", help="batch 32, 2 timed runs")
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",") if t]
    if args.quick:
        args.batch, args.steps = 32, 2
    return args


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


def resnet20_workload(batch: int, dtype_name: str, torch) -> tuple[dict, dict]:
    """``(ours, theirs)``: for ``"training step"`` and ``"inference"``, a callable that runs it once with
    saf_ref and with torch, on the same weights (``init_resnet("resnet20")``, seed 0) and the same
    random batch. The training steps update their own copies of the weights."""
    import numpy as np

    from saf_ref.nn.registry import model_fns
    from saf_ref.nn.resnet import init_resnet
    from saf_ref.nn.state_dict import export_state_dict
    from saf_ref.train.loop import train_step
    from saf_ref.train.optim import SGD, sgd_init

    dtype = np.dtype(dtype_name)
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
    rng = np.random.default_rng(0)
    params, state = init_resnet("resnet20", rng=rng, dtype=dtype)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, batch)
    config = SGD(0.1, momentum=0.9, weight_decay=5e-4)
    opt_state = sgd_init(params)
    forward = model_fns("resnet20", "bench_train").forward

    sd = {k: torch.from_numpy(v) for k, v in export_state_dict(params, state).items()}
    model = torch_resnet20(torch).to(tdtype).train()
    model.load_state_dict(sd)
    eval_model = torch_resnet20(torch).to(tdtype).eval()
    eval_model.load_state_dict(sd)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    eval_params, eval_state = dict(params), dict(state)

    def ours_train():
        nonlocal params, state, opt_state
        params, state, opt_state, _info = train_step(
            params, state, opt_state, x, y, model="resnet20", optimizer=config
        )

    def theirs_train():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()

    def ours_infer():  # keep_cache=False: nothing kept for a backward pass, as under torch.no_grad()
        forward(eval_params, eval_state, x, train=False, keep_cache=False)

    def theirs_infer():
        with torch.no_grad():
            eval_model(xt)

    return (
        {"training step": ours_train, "inference": ours_infer},
        {"training step": theirs_train, "inference": theirs_infer},
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.start_blas_threads(max(args.threads))  # before NumPy is imported: BLAS's thread pool size
    torch = _common.import_torch("bench_train")
    if torch is None:
        return 1
    from bench_conv import describe_machine

    ours, theirs = resnet20_workload(args.batch, args.dtype, torch)
    print(describe_machine(torch))
    print(
        f"ResNet-20, batch {args.batch}, 32x32, {args.dtype}; best of {args.steps} runs, saf_ref and torch "
        "interleaved; ratio = saf_ref time / torch time (CPU time for 1 thread, wall clock for more)"
    )
    print()
    print("| what | threads | saf_ref (ms) | torch (ms) | saf_ref / torch | saf_ref images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    walls = {}
    for what in ("training step", "inference"):
        for threads in args.threads:
            with _common.threads(threads, torch):
                r = _common.interleaved({"saf_ref": ours[what], "torch": theirs[what]}, args.steps)
            k = 0 if threads == 1 else 1
            ms_ours, ms_theirs = 1e3 * r["saf_ref"][k], 1e3 * r["torch"][k]
            walls[what, threads] = r["saf_ref"][1]
            print(
                f"| {what} | {threads} | {ms_ours:.0f} | {ms_theirs:.0f} | {ms_ours / ms_theirs:.2f} | "
                f"{args.batch / r['saf_ref'][k]:.0f} |"
            )
    if 1 in args.threads:
        print()
        for (what, threads), wall in walls.items():
            if threads != 1:
                print(
                    f"saf_ref {what}: {threads} threads / 1 thread, wall clock: {wall / walls[what, 1]:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
