"""maxpool2d and global average pooling: naive loops, tie-breaking, central differences, float32, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nn_helpers import (
    NAIVE_RTOL,
    assert_gradient,
    assert_no_alias,
    assert_unchanged,
    rel_error,
    snapshot,
)

from saf_ref.nn.naive import global_avgpool_naive, maxpool2d_backward_naive, maxpool2d_naive
from saf_ref.nn.pool import (
    GlobalAvgPoolCache,
    MaxPool2dCache,
    global_avgpool_backward,
    global_avgpool_forward,
    global_avgpool_vjp,
    maxpool2d_backward,
    maxpool2d_forward,
    maxpool2d_vjp,
)
from saf_ref.testing.tolerance import assert_within_dot_bound

U32 = 2.0**-24

POOL_CONFIGS = [
    ((2, 3, 8, 8), 3, 2, 1),  # ImageNet stem
    ((2, 2, 7, 9), 3, 2, 1),  # odd sizes
    ((1, 2, 6, 6), 2, 2, 0),
    ((1, 2, 5, 7), (2, 3), (1, 2), (1, 1)),
    ((1, 1, 4, 4), 4, 1, 2),  # padding = kernel // 2, windows that are mostly padding
]


@pytest.mark.parametrize("x_shape, k, s, p", POOL_CONFIGS)
def test_maxpool_matches_naive_loops_including_ties(x_shape, k, s, p):
    rng = np.random.default_rng(0)
    kw = {"kernel_size": k, "stride": s, "padding": p}
    for x in (rng.standard_normal(x_shape), rng.integers(-1, 2, x_shape).astype(np.float64)):  # many ties
        y, cache = maxpool2d_forward(x, **kw)
        y_ref, idx_ref = maxpool2d_naive(x, **kw)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(cache.indices, idx_ref)
        dy = rng.standard_normal(y.shape)
        dx = maxpool2d_backward(dy, cache).dx
        assert rel_error(dx, maxpool2d_backward_naive(x, dy, **kw)) <= NAIVE_RTOL


@given(data=st.data())
def test_maxpool_random_configurations_with_ties_and_specials(data):
    kh, kw = data.draw(st.integers(1, 3), label="kh"), data.draw(st.integers(1, 3), label="kw")
    sh, sw = data.draw(st.integers(1, 3), label="sh"), data.draw(st.integers(1, 3), label="sw")
    ph, pw = data.draw(st.integers(0, kh // 2), label="ph"), data.draw(st.integers(0, kw // 2), label="pw")
    h = data.draw(st.integers(max(1, kh - 2 * ph), 6), label="H")
    w = data.draw(st.integers(max(1, kw - 2 * pw), 6), label="W")
    values = st.sampled_from([-np.inf, -1.0, 0.0, -0.0, 1.0, 2.0, np.inf, np.nan])
    x = np.array(data.draw(st.lists(values, min_size=2 * h * w, max_size=2 * h * w)), np.float64)
    x = x.reshape(1, 2, h, w)
    kw_ = {"kernel_size": (kh, kw), "stride": (sh, sw), "padding": (ph, pw)}
    y, cache = maxpool2d_forward(x, **kw_)
    y_ref, idx_ref = maxpool2d_naive(x, **kw_)
    np.testing.assert_array_equal(y, y_ref)  # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(cache.indices, idx_ref)


def test_maxpool_tie_and_special_conventions():
    """PyTorch's rules, written out: first maximum on ties, last NaN, first in-bounds -inf."""
    x = np.array([[[[1.0, 3.0, 3.0, 0.0]]]])
    _, cache = maxpool2d_forward(x, kernel_size=(1, 4), stride=1, padding=0)
    assert cache.indices.item() == 1
    x = np.array([[[[1.0, np.nan, 2.0, np.nan]]]])
    y, cache = maxpool2d_forward(x, kernel_size=(1, 4), stride=1, padding=0)
    assert np.isnan(y.item()) and cache.indices.item() == 3
    x = np.full((1, 1, 3, 3), -np.inf)
    y, cache = maxpool2d_forward(x, kernel_size=3, stride=2, padding=1)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(cache.indices[0, 0], [[0, 1], [3, 4]])  # never a padding cell
    dx = maxpool2d_backward(np.ones((1, 1, 2, 2)), cache).dx
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_maxpool_overlapping_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0  # the centre is the maximum of all four overlapping 2x2 windows
    dx = maxpool2d_vjp(x, np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), kernel_size=2, stride=1, padding=0).dx
    assert dx[0, 0, 1, 1] == 10.0 and dx.sum() == 10.0


def test_maxpool_gradient_matches_central_differences():
    rng = np.random.default_rng(1)
    x = rng.permutation(2 * 2 * 7 * 7).reshape(2, 2, 7, 7) * 0.01  # distinct values, spaced >> h
    y, cache = maxpool2d_forward(x)
    dy = rng.standard_normal(y.shape)
    dx = maxpool2d_backward(dy, cache).dx
    assert_gradient(dx, lambda v: maxpool2d_forward(v)[0], x, dy, what="maxpool2d dx")


def test_maxpool_float32_is_exact():
    """Max pooling does no arithmetic: float32 equals float64 bit for bit, same indices and gradient."""
    rng = np.random.default_rng(2)
    x32 = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    y32, c32 = maxpool2d_forward(x32)
    y64, c64 = maxpool2d_forward(x32.astype(np.float64))
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(y32, y64.astype(np.float32))
    np.testing.assert_array_equal(c32.indices, c64.indices)
    dy32 = rng.standard_normal(y32.shape).astype(np.float32)
    dx32 = maxpool2d_backward(dy32, c32).dx
    dx64 = maxpool2d_backward(dy32.astype(np.float64), c64).dx
    assert dx32.dtype == np.float32
    # Overlapping windows add up to 4 gradients per element: within the summation bound.
    mag = maxpool2d_backward(np.abs(dy32).astype(np.float64), c64).dx
    assert_within_dot_bound(dx32, dx64, mag, 4, u=U32, what="maxpool2d dx")


def test_global_avgpool_matches_naive_loops_and_central_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5, 6)) + 2.0
    y, cache = global_avgpool_forward(x)
    assert rel_error(y, global_avgpool_naive(x)) <= NAIVE_RTOL
    dy = rng.standard_normal(y.shape)
    dx = global_avgpool_backward(dy, cache).dx
    np.testing.assert_array_equal(dx, np.broadcast_to(dy[:, :, None, None] / 30, x.shape))
    assert_gradient(dx, lambda v: global_avgpool_forward(v)[0], x, dy, what="global_avgpool dx")


def test_global_avgpool_float32_within_bound():
    rng = np.random.default_rng(4)
    x32 = (rng.standard_normal((4, 8, 7, 7)) + 3.0).astype(np.float32)
    x64 = x32.astype(np.float64)
    y32, c32 = global_avgpool_forward(x32)
    y64, c64 = global_avgpool_forward(x64)
    assert y32.dtype == np.float32
    assert_within_dot_bound(y32, y64, global_avgpool_forward(np.abs(x64))[0], 49 + 1, u=U32, what="y")
    dy32 = rng.standard_normal(y32.shape).astype(np.float32)
    dx32 = global_avgpool_backward(dy32, c32).dx
    dx64 = global_avgpool_backward(dy32.astype(np.float64), c64).dx
    assert dx32.dtype == np.float32
    assert_within_dot_bound(dx32, dx64, np.abs(dx64), 1, u=U32, what="dx")  # one rounding (a division)


def test_inputs_are_not_modified_and_outputs_do_not_alias_them():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 5, 5))
    dy_max, dy_avg = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 2))
    before = snapshot(x, dy_max, dy_avg)
    outs = [*maxpool2d_forward(x)[:1], maxpool2d_vjp(x, dy_max).dx]
    outs += [global_avgpool_forward(x)[0], global_avgpool_vjp(x, dy_avg).dx]
    assert_unchanged(before, x, dy_max, dy_avg)
    assert_no_alias(outs, [x, dy_max, dy_avg])
    assert isinstance(maxpool2d_forward(x)[1], MaxPool2dCache)
    assert isinstance(global_avgpool_forward(x)[1], GlobalAvgPoolCache)


def _x():
    return np.zeros((1, 2, 6, 6))


ERRORS = [
    (lambda: maxpool2d_forward([1.0]), TypeError, r"maxpool2d: x must be a numpy.ndarray"),
    (lambda: maxpool2d_forward(_x().astype(int)), TypeError, r"maxpool2d: x must have dtype in"),
    (lambda: maxpool2d_forward(np.zeros((2, 6, 6))), ValueError, r"x must be 4-dimensional \(N, C, H, W\)"),
    (lambda: maxpool2d_forward(np.zeros((1, 0, 6, 6))), ValueError, r"x.shape\[1\] must be in \[1, inf\]"),
    (lambda: maxpool2d_forward(_x(), kernel_size=0), ValueError, r"kernel_size must be in \[1, inf\]"),
    (lambda: maxpool2d_forward(_x(), kernel_size=2.0), TypeError, r"kernel_size must be an integer"),
    (lambda: maxpool2d_forward(_x(), stride=(2,)), ValueError, r"stride must be an int or a pair of ints"),
    (lambda: maxpool2d_forward(_x(), padding=-1), ValueError, r"padding must be in \[0, inf\]"),
    (
        lambda: maxpool2d_forward(_x(), kernel_size=3, padding=(1, 2)),
        ValueError,
        r"maxpool2d: padding\[1\] \(=2\) must be at most half the kernel size kernel_size\[1\] // 2 \(=1\)",
    ),
    (
        lambda: maxpool2d_forward(np.zeros((1, 1, 2, 6)), kernel_size=5, padding=1),
        ValueError,
        r"the padded input \(=4x8\) must be at least the kernel size \(=5x5\)",
    ),
    (lambda: maxpool2d_backward(np.zeros((1, 2, 3, 3)), None), TypeError, r"cache must be a MaxPool2dCache"),
    (
        lambda: maxpool2d_backward(np.zeros((1, 2, 3, 3), np.float32), maxpool2d_forward(_x())[1]),
        TypeError,
        r"maxpool2d_backward: dy.dtype \(=float32\) must equal x.dtype \(=float64\)",
    ),
    (
        lambda: maxpool2d_backward(np.zeros((1, 2, 3, 3), int), maxpool2d_forward(_x())[1]),
        TypeError,
        r"maxpool2d_backward: dy must have dtype in",
    ),
    (
        lambda: maxpool2d_backward(np.zeros((1, 2, 3, 4)), maxpool2d_forward(_x())[1]),
        ValueError,
        r"dy must have shape \(1, 2, 3, 3\), got \(1, 2, 3, 4\)",
    ),
    (
        lambda: global_avgpool_forward(_x().astype(np.float16)),
        TypeError,
        r"global_avgpool: x must have dtype",
    ),
    (lambda: global_avgpool_forward(np.zeros((2, 6))), ValueError, r"x must be 4-dimensional"),
    (
        lambda: global_avgpool_forward(np.zeros((1, 2, 0, 6))),
        ValueError,
        r"x.shape\[2\] must be in \[1, inf\]",
    ),
    (
        lambda: global_avgpool_backward(np.zeros((1, 2)), None),
        TypeError,
        r"cache must be a GlobalAvgPoolCache",
    ),
    (
        lambda: global_avgpool_backward(np.zeros((1, 2), np.float32), global_avgpool_forward(_x())[1]),
        TypeError,
        r"global_avgpool_backward: dy.dtype \(=float32\) must equal x.dtype",
    ),
    (
        lambda: global_avgpool_backward("dy", global_avgpool_forward(_x())[1]),
        TypeError,
        r"global_avgpool_backward: dy must be a numpy.ndarray",
    ),
    (
        lambda: global_avgpool_backward(np.zeros((2, 1)), global_avgpool_forward(_x())[1]),
        ValueError,
        r"dy must have shape \(1, 2\), got \(2, 1\)",
    ),
]


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
