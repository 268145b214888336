"""float32 calls allocate no float64 scratch: their peak memory is half that of the float64 call.

NumPy reports its array allocations to :mod:`tracemalloc`, so the peak traced memory of a call measures
its temporaries. Every temporary of a float32 call should be half the size of the float64 call's; a
single hidden float64 copy of an input (``x.astype(float)``, a ``np.zeros`` without ``dtype``, a
promotion by a float64 scalar array) raises the ratio well above the thresholds below. Shapes are large
enough for NumPy's temporary elision to behave alike in both precisions. Cross-entropy is absent on
purpose: it computes in float64 by design (see :mod:`saf_ref.nn.loss`).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from saf_ref.nn.activations import relu_clipped_vjp, relu_vjp
from saf_ref.nn.batchnorm import batchnorm2d_vjp
from saf_ref.nn.conv import conv2d_forward, conv2d_vjp
from saf_ref.nn.linear import linear_vjp
from saf_ref.nn.pool import global_avgpool_vjp, maxpool2d_vjp

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 16, 32, 32))
W = RNG.standard_normal((16, 16, 3, 3))
DY = RNG.standard_normal((16, 16, 32, 32))
XL, WL, DYL = (
    RNG.standard_normal((64, 4096)),
    RNG.standard_normal((128, 4096)),
    RNG.standard_normal((64, 128)),
)


def calls(dtype):
    """The ops' float work for one dtype, inputs cast beforehand (outside the measurement)."""
    x, w, dy, c = X.astype(dtype), W.astype(dtype), DY.astype(dtype), np.ones(16, dtype)
    xl, wl, dyl, bl = XL.astype(dtype), WL.astype(dtype), DYL.astype(dtype), np.ones(128, dtype)
    dy_pool, dy_avg = dy[:, :, :16, :16].copy(), dy[:, :, 0, 0].copy()
    return {
        "conv2d forward + backward": lambda: conv2d_vjp(x, w, c, dy, padding=1),
        "conv2d forward, stride 2": lambda: conv2d_forward(x, w, c, stride=2, padding=1),
        "batchnorm2d train": lambda: batchnorm2d_vjp(x, c, c, c, c, dy, train=True),
        "batchnorm2d eval": lambda: batchnorm2d_vjp(x, c, c, c, c, dy, train=False),
        "relu": lambda: relu_vjp(x, dy),
        "relu_clipped": lambda: relu_clipped_vjp(x, dy, ceiling=1.0),
        "maxpool2d": lambda: maxpool2d_vjp(x, dy_pool),
        "global_avgpool": lambda: global_avgpool_vjp(x, dy_avg),
        "linear": lambda: linear_vjp(xl, wl, bl, dyl),
    }


# Allowed peak(float32) / peak(float64). 0.5 is the ideal; dtype-independent arrays raise it a little:
# relu's bool masks (1 byte per element), maxpool's int64 indices and offsets.
LIMITS = {"relu": 0.56, "relu_clipped": 0.56, "maxpool2d": 0.8}


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", list(calls(np.float32)))
def test_float32_peak_memory_is_half_of_float64(name):
    f32, f64 = calls(np.float32)[name], calls(np.float64)[name]
    ratio = peak_bytes(f32) / peak_bytes(f64)
    limit = LIMITS.get(name, 0.52)
    assert ratio <= limit, (
        f"{name}: float32 peak is {ratio:.3f} of float64's (limit {limit}): float64 scratch?"
    )
