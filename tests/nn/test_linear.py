"""linear: naive loops (float64), central differences, float32 dot-product bound, errors."""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import (
    NAIVE_RTOL,
    assert_gradient,
    assert_no_alias,
    assert_unchanged,
    float32_and_64,
    rel_error,
    snapshot,
)

from saf_ref.nn.linear import LinearCache, linear_backward, linear_forward, linear_vjp
from saf_ref.nn.naive import linear_naive
from saf_ref.testing.tolerance import assert_within_dot_bound

U32 = 2.0**-24


@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_naive_loops(bias):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 7)), rng.standard_normal((3, 7))
    b = rng.standard_normal(3) if bias else None
    y, cache = linear_forward(x, w, b)
    assert rel_error(y, linear_naive(x, w, b)) <= NAIVE_RTOL
    assert isinstance(cache, LinearCache) and cache.has_bias is bias
    assert (linear_vjp(x, w, b, np.ones_like(y)).db is None) is not bias


def test_gradients_match_central_differences():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((4, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    dy = rng.standard_normal((4, 3))
    g = linear_vjp(x, w, b, dy)
    assert_gradient(g.dx, lambda v: linear_forward(v, w, b)[0], x, dy, what="dx")
    assert_gradient(g.dw, lambda v: linear_forward(x, v, b)[0], w, dy, what="dw")
    assert_gradient(g.db, lambda v: linear_forward(x, w, v)[0], b, dy, what="db")


def test_float32_within_dot_product_bound():
    rng = np.random.default_rng(2)
    n, d_in, d_out = 16, 300, 10
    (x32, x64), (w32, w64), (b32, b64), (dy32, dy64) = float32_and_64(
        rng, (n, d_in), (d_out, d_in), (d_out,), (n, d_out)
    )
    y32, c32 = linear_forward(x32, w32, b32)
    y64, c64 = linear_forward(x64, w64, b64)
    g32, g64 = linear_backward(dy32, c32), linear_backward(dy64, c64)
    abs_args = (np.abs(x64), np.abs(w64), np.abs(b64))
    mag_y = linear_forward(*abs_args)[0]
    mag = linear_vjp(*abs_args, np.abs(dy64))
    assert all(a.dtype == np.float32 for a in (y32, *g32))
    assert_within_dot_bound(y32, y64, mag_y, d_in + 1, u=U32, what="linear y")
    assert_within_dot_bound(g32.dx, g64.dx, mag.dx, d_out, u=U32, what="linear dx")
    assert_within_dot_bound(g32.dw, g64.dw, mag.dw, n, u=U32, what="linear dw")
    assert_within_dot_bound(g32.db, g64.db, mag.db, n, u=U32, what="linear db")


def test_inputs_are_not_modified_and_outputs_do_not_alias_them():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3)), rng.standard_normal((4, 3)), rng.standard_normal(4)
    dy = rng.standard_normal((2, 4))
    before = snapshot(x, w, b, dy)
    y, cache = linear_forward(x, w, b)
    grads = linear_backward(dy, cache)
    assert_unchanged(before, x, w, b, dy)
    assert_no_alias([y, *grads], [x, w, b, dy])


ERRORS = [
    (lambda: linear_forward([[1.0]], np.zeros((2, 1))), TypeError, r"linear: x must be a numpy.ndarray"),
    (
        lambda: linear_forward(np.zeros((2, 3), int), np.zeros((4, 3))),
        TypeError,
        r"linear: x must have dtype",
    ),
    (
        lambda: linear_forward(np.zeros((2, 3)), np.zeros((4, 3), int)),
        TypeError,
        r"linear: w must have dtype",
    ),
    (
        lambda: linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(4, int)),
        TypeError,
        r"linear: b must have dtype",
    ),
    (
        lambda: linear_forward(np.zeros((2, 3), np.float32), np.zeros((4, 3))),
        TypeError,
        r"w.dtype \(=float64\) must equal x.dtype \(=float32\)",
    ),
    (
        lambda: linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(4, np.float32)),
        TypeError,
        r"b.dtype \(=float32\) must equal x.dtype",
    ),
    (lambda: linear_forward(np.zeros(3), np.zeros((4, 3))), ValueError, r"x must be 2-dimensional \(N, in_"),
    (lambda: linear_forward(np.zeros((2, 3)), np.zeros(3)), ValueError, r"w must be 2-dimensional \(out_"),
    (lambda: linear_forward(np.zeros((0, 3)), np.zeros((4, 3))), ValueError, r"x.shape\[0\] must be in \[1,"),
    (lambda: linear_forward(np.zeros((2, 3)), np.zeros((0, 3))), ValueError, r"w.shape\[0\] must be in \[1,"),
    (
        lambda: linear_forward(np.zeros((2, 3)), np.zeros((4, 5))),
        ValueError,
        r"linear: w.shape\[1\] \(=5\) must equal x.shape\[1\] \(=3\), the input features",
    ),
    (
        lambda: linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(3)),
        ValueError,
        r"b must have shape \(4,\), got \(3,\)",
    ),
    (lambda: linear_backward(np.zeros((2, 4)), None), TypeError, r"cache must be a LinearCache"),
    (
        lambda: linear_backward(np.zeros((2, 4), int), linear_forward(np.zeros((2, 3)), np.zeros((4, 3)))[1]),
        TypeError,
        r"linear_backward: dy must have dtype",
    ),
    (
        lambda: linear_backward(
            np.zeros((2, 4), np.float32), linear_forward(np.zeros((2, 3)), np.zeros((4, 3)))[1]
        ),
        TypeError,
        r"dy.dtype \(=float32\) must equal x.dtype \(=float64\)",
    ),
    (
        lambda: linear_backward(np.zeros((2, 3)), linear_forward(np.zeros((2, 3)), np.zeros((4, 3)))[1]),
        ValueError,
        r"dy must have shape \(2, 4\), got \(2, 3\)",
    ),
]


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
