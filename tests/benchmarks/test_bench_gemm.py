"""The recorder of ``benchmarks/bench_gemm.py`` sees every matrix product of a ResNet-20 pass.

The benchmark's claim (NumPy's products alone against torch's whole pass) holds only if no product
escapes the recorder, so the recorded FLOPs are checked against the convolutions' FLOPs counted from
the architecture by hand: at least those (no product missed), and at most 1.3 times them (the stride-1
grid path also computes the outputs that fall on its zero border: (H+1)(W+1)/(HW) of them, at most
81/64 for the 8x8 stage).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_gemm():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_gemm
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_gemm


def resnet20_conv_flops(n: int) -> int:
    """Forward FLOPs (2 per multiply-add) of ResNet-20's convolutions on ``n`` 32x32 images."""

    def conv(c_in, c_out, k, out_hw):
        return 2 * n * out_hw * out_hw * c_out * c_in * k * k

    total = conv(3, 16, 3, 32) + 6 * conv(16, 16, 3, 32)  # stem, stage 1 (three blocks of two)
    for c_in, c, hw in ((16, 32, 16), (32, 64, 8)):  # stages 2 and 3: a strided block, then two
        total += conv(c_in, c, 3, hw) + conv(c_in, c, 1, hw) + 5 * conv(c, c, 3, hw)
    return total


def test_recorder_sees_every_product(bench_gemm):
    from saf_ref.nn.registry import model_fns
    from saf_ref.nn.resnet import init_resnet
    from saf_ref.train.loop import train_step
    from saf_ref.train.optim import SGD, sgd_init

    n, rng = 4, np.random.default_rng(0)
    params, state = init_resnet("resnet20", rng=rng, dtype=np.float32)
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n)
    forward = model_fns("resnet20", "test").forward
    flops = resnet20_conv_flops(n)

    infer = bench_gemm.record(lambda: forward(params, state, x, train=False, keep_cache=False), np)
    recorded = sum(p.flops * count for p, count in infer.items())
    assert flops <= recorded <= 1.3 * flops

    step = bench_gemm.record(
        lambda: train_step(params, state, sgd_init(params), x, y, model="resnet20", optimizer=SGD(0.1)), np
    )
    recorded = sum(p.flops * count for p, count in step.items())
    # forward, dw and dx of every convolution (the stem's dx, whose input is the data, may be skipped)
    stem = 2 * n * 32 * 32 * 16 * 27
    assert 3 * flops - stem <= recorded <= 1.3 * 3 * flops


def test_recorder_restores_numpy(bench_gemm):
    from saf_ref.nn import conv

    bench_gemm.record(lambda: None, np)
    assert conv.np is np
    with pytest.raises(RuntimeError):
        bench_gemm.record(lambda: (_ for _ in ()).throw(RuntimeError("boom")), np)
    assert conv.np is np
