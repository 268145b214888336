"""relu and relu_clipped: exact against the naive loops (signed zeros, NaN), gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import assert_gradient, assert_no_alias, assert_unchanged, snapshot

from saf_ref.nn.activations import (
    relu_backward,
    relu_clipped_backward,
    relu_clipped_forward,
    relu_clipped_vjp,
    relu_forward,
    relu_vjp,
)
from saf_ref.nn.naive import relu_clipped_naive, relu_naive

SPECIALS = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 6.0, 6.5, 5.999]


def bits(a):
    """Bit patterns (signed zeros and NaN compare exactly)."""
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_is_bit_exact_against_naive_loops(dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(50), SPECIALS]).astype(dtype)
    y, _ = relu_forward(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(bits(y), bits(relu_naive(x).astype(dtype)))
    assert np.signbit(relu_forward(np.array([-0.0], dtype))[0][0])  # relu(-0) = -0, as torch.relu


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ceiling", [6.0, 0.25, 1e-3])
def test_relu_clipped_is_bit_exact_against_naive_loops(dtype, ceiling):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(50) * 4 * ceiling, SPECIALS, [ceiling, -ceiling]]).astype(dtype)
    y, _ = relu_clipped_forward(x, ceiling=ceiling)
    assert y.dtype == dtype
    # The ceiling is rounded to the dtype first; the naive loop gets the same rounded ceiling.
    np.testing.assert_array_equal(bits(y), bits(relu_clipped_naive(x, dtype(ceiling)).astype(dtype)))


def test_relu_gradient_masks():
    """ReLU'(0) = 0; NaN passes its gradient (PyTorch); the clipped form is zero at both kinks."""
    x = np.array([-1.0, -0.0, 0.0, 0.5, 6.0, 7.0, np.nan, np.inf])
    dy = np.arange(1.0, 9.0)
    np.testing.assert_array_equal(relu_vjp(x, dy).dx, [0, 0, 0, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(relu_clipped_vjp(x, dy, ceiling=6.0).dx, [0, 0, 0, 4, 0, 0, 7, 0])
    # Masked positions get +0.0 (never -0.0), whatever the sign of dy.
    assert not np.signbit(relu_vjp(np.array([-1.0]), np.array([-3.0])).dx).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_dtype_and_shape(dtype):
    x = np.linspace(-2, 8, 24, dtype=dtype).reshape(2, 3, 4)
    for grads in (relu_vjp(x, np.ones_like(x)), relu_clipped_vjp(x, np.ones_like(x), ceiling=6)):
        assert grads.dx.dtype == dtype and grads.dx.shape == x.shape


def test_gradients_match_central_differences_away_from_kinks():
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 9, size=(3, 4, 5))
    x = x[(np.abs(x) > 1e-3) & (np.abs(x - 6) > 1e-3)].reshape(-1)  # central differences need smoothness
    dy = rng.standard_normal(x.shape)
    assert_gradient(relu_vjp(x, dy).dx, lambda v: relu_forward(v)[0], x, dy, what="relu dx")
    assert_gradient(
        relu_clipped_vjp(x, dy, ceiling=6.0).dx,
        lambda v: relu_clipped_forward(v, ceiling=6.0)[0],
        x,
        dy,
        what="relu_clipped dx",
    )


def test_inputs_are_not_modified():
    """The classic ``dout[x <= 0] = 0`` bug writes into the caller's gradient: not here."""
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    before = snapshot(x, dy)
    y, cache = relu_forward(x)
    dx = relu_backward(dy, cache).dx
    y2, cache2 = relu_clipped_forward(x, ceiling=0.5)
    dx2 = relu_clipped_backward(dy, cache2).dx
    assert_unchanged(before, x, dy)
    assert_no_alias([y, dx, y2, dx2, cache.passes, cache2.passes], [x, dy])


def _cache():
    return relu_forward(np.zeros(3))[1]


def _ccache():
    return relu_clipped_forward(np.zeros(3), ceiling=1.0)[1]


ERRORS = [
    (lambda: relu_forward([1.0]), TypeError, r"relu: x must be a numpy.ndarray"),
    (lambda: relu_forward(np.zeros(3, int)), TypeError, r"relu: x must have dtype in"),
    (lambda: relu_backward(np.zeros(3), "c"), TypeError, r"relu_backward: cache must be a ReluCache"),
    (
        lambda: relu_backward(np.zeros(3, np.float16), _cache()),
        TypeError,
        r"relu_backward: dy must have dtype",
    ),
    (
        lambda: relu_backward(np.zeros(3, np.float32), _cache()),
        TypeError,
        r"dy.dtype \(=float32\) must equal",
    ),
    (lambda: relu_backward(np.zeros(4), _cache()), ValueError, r"dy must have shape \(3,\), got \(4,\)"),
    (
        lambda: relu_clipped_forward(np.zeros(3, int), ceiling=1),
        TypeError,
        r"relu_clipped: x must have dtype",
    ),
    (lambda: relu_clipped_forward(np.zeros(3), ceiling="6"), TypeError, r"ceiling must be a real number"),
    (lambda: relu_clipped_forward(np.zeros(3), ceiling=0.0), ValueError, r"ceiling must be finite and > 0"),
    (lambda: relu_clipped_forward(np.zeros(3), ceiling=-1), ValueError, r"ceiling must be finite and > 0"),
    (lambda: relu_clipped_forward(np.zeros(3), ceiling=np.inf), ValueError, r"ceiling must be finite"),
    (lambda: relu_clipped_forward(np.zeros(3), ceiling=np.nan), ValueError, r"ceiling must be finite"),
    (  # finite in float64 but inf in float32: it would silently become a plain ReLU
        lambda: relu_clipped_forward(np.zeros(3, np.float32), ceiling=1e39),
        ValueError,
        r"relu_clipped: ceiling must be finite and > 0 in float32, the dtype of x, got 1e\+39, which rounds",
    ),
    (
        lambda: relu_clipped_vjp(np.zeros(3, np.float32), np.zeros(3, np.float32), ceiling=1e-50),
        ValueError,
        r"ceiling must be finite and > 0 in float32",
    ),
    (lambda: relu_clipped_backward(np.zeros(3), _cache()), TypeError, r"cache must be a ReluClippedCache"),
    (
        lambda: relu_clipped_backward([0.0], _ccache()),
        TypeError,
        r"relu_clipped_backward: dy must be a numpy",
    ),
    (lambda: relu_clipped_backward(np.zeros(3, np.float32), _ccache()), TypeError, r"must equal x.dtype"),
    (lambda: relu_clipped_backward(np.zeros((3, 1)), _ccache()), ValueError, r"dy must have shape \(3,\)"),
]


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitmask_implementation_is_np_where_on_every_bit_pattern_class(dtype):
    """The bitwise-AND implementation against the np.where specification, on random bit patterns (every
    sign, exponent and NaN payload), non-contiguous and 0-d inputs, for values and gradient masks."""
    uint = np.uint32 if dtype == np.float32 else np.uint64
    rng = np.random.default_rng(4)
    x = rng.integers(0, np.iinfo(uint).max, 20_000, dtype=uint, endpoint=True).view(dtype)
    x = np.concatenate([x, np.array(SPECIALS + [0.25, -0.25], dtype=dtype)])
    zero = dtype(0)
    for v in (x, x[::-3], x[:600].reshape(20, 30).T, x[-1:].reshape(()), x[-5:-4].reshape(())):
        dy = rng.integers(0, np.iinfo(uint).max, v.shape, dtype=uint, endpoint=True).view(dtype)
        y, cache = relu_forward(v)
        np.testing.assert_array_equal(bits(y), bits(np.where(v < 0, zero, v)))
        np.testing.assert_array_equal(cache.passes, ~(v <= 0))
        np.testing.assert_array_equal(bits(relu_backward(dy, cache).dx), bits(np.where(~(v <= 0), dy, zero)))
        for ceiling in (0.25, 6.0):
            c = dtype(ceiling)
            y, cache = relu_clipped_forward(v, ceiling=ceiling)
            np.testing.assert_array_equal(bits(y), bits(np.where(v < 0, zero, np.where(v > c, c, v))))
            passes = ~((v <= 0) | (v >= c))
            np.testing.assert_array_equal(cache.passes, passes)
            dx = relu_clipped_backward(dy, cache).dx
            np.testing.assert_array_equal(bits(dx), bits(np.where(passes, dy, zero)))
