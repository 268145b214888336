"""conv2d: naive loops (float64), central differences, float32 dot-product bound, properties, errors."""

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
    float32_and_64,
    rel_error,
    snapshot,
)

from saf_ref.nn import conv as conv_module
from saf_ref.nn.conv import Conv2dCache, conv2d_backward, conv2d_forward, conv2d_vjp
from saf_ref.nn.naive import conv2d_backward_naive, conv2d_naive
from saf_ref.testing.tolerance import assert_within_dot_bound

U32 = 2.0**-24

# (x shape, w shape, stride, padding): the ResNet cases (3x3 same, 3x3 stride 2, 1x1 stride 2) and
# awkward ones (rectangular kernels, per-axis stride and padding, floor dropping trailing rows).
CONFIGS = [
    ((2, 3, 6, 6), (4, 3, 3, 3), 1, 1),
    ((2, 3, 7, 7), (4, 3, 3, 3), 2, 1),
    ((2, 3, 6, 6), (5, 3, 1, 1), 2, 0),
    ((1, 2, 5, 8), (3, 2, 2, 3), (2, 1), (0, 2)),
    ((2, 1, 9, 6), (2, 1, 4, 2), 3, (2, 1)),
    ((1, 2, 3, 3), (2, 2, 3, 3), 1, 0),
]


def _data(rng, x_shape, w_shape, bias=True):
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if bias else None
    return x, w, b


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONFIGS)
def test_forward_and_backward_match_naive_loops(x_shape, w_shape, stride, padding, bias):
    rng = np.random.default_rng(0)
    x, w, b = _data(rng, x_shape, w_shape, bias)
    y, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
    assert rel_error(y, conv2d_naive(x, w, b, stride=stride, padding=padding)) <= NAIVE_RTOL
    dy = rng.standard_normal(y.shape)
    grads = conv2d_backward(dy, cache)
    dx, dw, db = conv2d_backward_naive(x, w, dy, stride=stride, padding=padding)
    assert rel_error(grads.dx, dx) <= NAIVE_RTOL
    assert rel_error(grads.dw, dw) <= NAIVE_RTOL
    if bias:
        assert rel_error(grads.db, db) <= NAIVE_RTOL
    else:
        assert grads.db is None


@given(data=st.data())
def test_random_configurations_match_naive_loops(data):
    n = data.draw(st.integers(1, 2), label="N")
    c = data.draw(st.integers(1, 3), label="C")
    o = data.draw(st.integers(1, 3), label="O")
    kh, kw = data.draw(st.integers(1, 3), label="kh"), data.draw(st.integers(1, 3), label="kw")
    sh, sw = data.draw(st.integers(1, 3), label="sh"), data.draw(st.integers(1, 3), label="sw")
    ph, pw = data.draw(st.integers(0, 2), label="ph"), data.draw(st.integers(0, 2), label="pw")
    h = data.draw(st.integers(max(1, kh - 2 * ph), 7), label="H")
    w_ = data.draw(st.integers(max(1, kw - 2 * pw), 7), label="W")
    bias = data.draw(st.booleans(), label="bias")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x, w, b = _data(rng, (n, c, h, w_), (o, c, kh, kw), bias)
    stride, padding = (sh, sw), (ph, pw)
    y, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
    assert rel_error(y, conv2d_naive(x, w, b, stride=stride, padding=padding)) <= NAIVE_RTOL
    dy = rng.standard_normal(y.shape)
    got = conv2d_backward(dy, cache)
    ref = conv2d_backward_naive(x, w, dy, stride=stride, padding=padding)
    assert rel_error(got.dx, ref[0]) <= NAIVE_RTOL
    assert rel_error(got.dw, ref[1]) <= NAIVE_RTOL
    if bias:
        assert rel_error(got.db, ref[2]) <= NAIVE_RTOL


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONFIGS[:5])
def test_gradients_match_central_differences(x_shape, w_shape, stride, padding):
    rng = np.random.default_rng(1)
    x, w, b = _data(rng, x_shape, w_shape)
    y, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
    dy = rng.standard_normal(y.shape)
    g = conv2d_backward(dy, cache)
    kw = {"stride": stride, "padding": padding}
    assert_gradient(g.dx, lambda v: conv2d_forward(v, w, b, **kw)[0], x, dy, what="dx")
    assert_gradient(g.dw, lambda v: conv2d_forward(x, v, b, **kw)[0], w, dy, what="dw")
    assert_gradient(g.db, lambda v: conv2d_forward(x, w, v, **kw)[0], b, dy, what="db")


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONFIGS[:5])
def test_float32_within_dot_product_bound(x_shape, w_shape, stride, padding):
    rng = np.random.default_rng(2)
    (x32, x64), (w32, w64), (b32, b64) = float32_and_64(rng, x_shape, w_shape, (w_shape[0],))
    kw = {"stride": stride, "padding": padding}
    y32, cache32 = conv2d_forward(x32, w32, b32, **kw)
    y64, cache64 = conv2d_forward(x64, w64, b64, **kw)
    dy32 = rng.standard_normal(y32.shape).astype(np.float32)
    dy64 = dy32.astype(np.float64)
    g32, g64 = conv2d_backward(dy32, cache32), conv2d_backward(dy64, cache64)
    # |x|.|w| for every output and gradient: the float64 op on absolute values.
    mag_y, _ = conv2d_forward(np.abs(x64), np.abs(w64), np.abs(b64), **kw)
    mag = conv2d_vjp(np.abs(x64), np.abs(w64), np.abs(b64), np.abs(dy64), **kw)
    c, (o, _, kh, kwid) = x_shape[1], w_shape
    n_out = y32.shape[0] * y32.shape[2] * y32.shape[3]
    repro = f"seed 2, x {x_shape}, w {w_shape}, {kw}"
    assert all(a.dtype == np.float32 for a in (y32, *g32))
    assert_within_dot_bound(y32, y64, mag_y, c * kh * kwid + 1, u=U32, what="conv2d y", repro=repro)
    assert_within_dot_bound(g32.dx, g64.dx, mag.dx, o * kh * kwid, u=U32, what="conv2d dx", repro=repro)
    assert_within_dot_bound(g32.dw, g64.dw, mag.dw, n_out, u=U32, what="conv2d dw", repro=repro)
    assert_within_dot_bound(g32.db, g64.db, mag.db, n_out, u=U32, what="conv2d db", repro=repro)


def test_float32_bound_holds_where_outputs_cancel():
    """A nearly constant image and a kernel whose taps sum to zero: outputs cancel to ~1e-6 while
    |x|.|w| is ~4. A flat relative tolerance fails there; the dot-product bound, which scales with
    |x|.|w|, holds, and still rejects an error of bfloat16 size (2**-9 |x|.|w|)."""
    rng = np.random.default_rng(5)
    x32 = (1.1 + 1e-6 * rng.standard_normal((1, 1, 5, 5))).astype(np.float32)
    w32 = np.array([[[[1.3, -1.3], [0.7, -0.7]]]], dtype=np.float32)
    y32, _ = conv2d_forward(x32, w32)
    y64, _ = conv2d_forward(x32.astype(np.float64), w32.astype(np.float64))
    mag, _ = conv2d_forward(np.abs(x32).astype(np.float64), np.abs(w32).astype(np.float64))
    assert not np.allclose(y32, y64, rtol=1e-4, atol=0)
    assert_within_dot_bound(y32, y64, mag, 4, u=U32, what="conv2d y")
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within_dot_bound(y64 + mag * 2.0**-9, y64, mag, 4, u=U32, what="conv2d y")


def test_non_contiguous_inputs_give_the_same_result():
    rng = np.random.default_rng(3)
    x, w, b = _data(rng, (2, 3, 6, 6), (4, 3, 3, 3))
    x_t = np.asfortranarray(x)[:, :, ::-1, :][:, :, ::-1, :]  # same values, odd strides
    w_t = np.asfortranarray(w)
    y, _ = conv2d_forward(x, w, b, stride=2, padding=1)
    y_t, _ = conv2d_forward(x_t, w_t, b, stride=2, padding=1)
    np.testing.assert_array_equal(y, y_t)
    assert y.flags.c_contiguous


@pytest.mark.parametrize("padding", [0, 1])
def test_inputs_are_not_modified_and_outputs_do_not_alias_them(padding):
    rng = np.random.default_rng(4)
    x, w, b = _data(rng, (2, 3, 5, 5), (4, 3, 3, 3))
    y, cache = conv2d_forward(x, w, b, padding=padding)
    dy = rng.standard_normal(y.shape)
    before = snapshot(x, w, b, dy)
    y, cache = conv2d_forward(x, w, b, padding=padding)
    grads = conv2d_backward(dy, cache)
    assert_unchanged(before, x, w, b, dy)
    assert_no_alias([y, *grads], [x, w, b, dy])


def test_single_pixel_identity_kernel():
    """Independent of any loop: a 1x1 identity kernel copies the input, padding adds zero borders."""
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float64).reshape(2, 2, 3, 3)
    w = np.eye(2).reshape(2, 2, 1, 1)
    y, _ = conv2d_forward(x, w, padding=1)
    np.testing.assert_array_equal(y[:, :, 1:-1, 1:-1], x)
    assert not y[:, :, 0].any() and not y[:, :, :, -1].any()


def _x():
    return np.zeros((2, 3, 5, 5))


def _w():
    return np.zeros((4, 3, 3, 3))


FORWARD_ERRORS = [
    (lambda: conv2d_forward([[1.0]], _w()), TypeError, r"conv2d: x must be a numpy.ndarray"),
    (lambda: conv2d_forward(_x().astype(np.int32), _w()), TypeError, r"conv2d: x must have dtype in"),
    (lambda: conv2d_forward(_x(), _w().astype(np.float16)), TypeError, r"conv2d: w must have dtype in"),
    (lambda: conv2d_forward(_x(), _w(), np.zeros(4, int)), TypeError, r"conv2d: b must have dtype in"),
    (lambda: conv2d_forward(_x().astype(np.float32), _w()), TypeError, r"w.dtype \(=float64\) must equal"),
    (lambda: conv2d_forward(_x(), _w(), np.zeros(4, np.float32)), TypeError, r"b.dtype \(=float32\)"),
    (lambda: conv2d_forward(np.zeros((3, 5, 5)), _w()), ValueError, r"x must be 4-dimensional \(N, C, H"),
    (lambda: conv2d_forward(_x(), np.zeros((4, 3, 3))), ValueError, r"w must be 4-dimensional \(O, C, kh"),
    (lambda: conv2d_forward(np.zeros((0, 3, 5, 5)), _w()), ValueError, r"x.shape\[0\] must be in \[1, inf\]"),
    (lambda: conv2d_forward(_x(), np.zeros((0, 3, 3, 3))), ValueError, r"w.shape\[0\] must be in \[1, inf\]"),
    (
        lambda: conv2d_forward(_x(), np.zeros((4, 4, 3, 3))),
        ValueError,
        r"conv2d: w.shape\[1\] \(=4\) must equal x.shape\[1\] \(=3\), the input channels",
    ),
    (lambda: conv2d_forward(_x(), _w(), np.zeros(5)), ValueError, r"b must have shape \(4,\), got \(5,\)"),
    (lambda: conv2d_forward(_x(), _w(), stride=1.0), TypeError, r"stride must be an integer, got float"),
    (lambda: conv2d_forward(_x(), _w(), stride=True), TypeError, r"stride must be an integer"),
    (lambda: conv2d_forward(_x(), _w(), stride=0), ValueError, r"stride must be in \[1, inf\], got 0"),
    (lambda: conv2d_forward(_x(), _w(), stride=(1, 2, 3)), ValueError, r"stride must be an int or a pair"),
    (lambda: conv2d_forward(_x(), _w(), stride=(1, 0)), ValueError, r"stride\[1\] must be in \[1, inf\]"),
    (lambda: conv2d_forward(_x(), _w(), stride=(0, 1)), ValueError, r"stride\[0\] must be in \[1, inf\]"),
    (lambda: conv2d_forward(_x(), _w(), padding=-1), ValueError, r"padding must be in \[0, inf\], got -1"),
    (lambda: conv2d_forward(_x(), _w(), padding=(0, "1")), TypeError, r"padding\[1\] must be an integer"),
    (
        lambda: conv2d_forward(np.zeros((1, 3, 2, 5)), _w()),
        ValueError,
        r"padded input height \(=2, x.shape\[2\] \+ 2\*padding\) must be at least the kernel height \(=3\)",
    ),
    (
        lambda: conv2d_forward(np.zeros((1, 3, 5, 1)), _w(), padding=(0, 0)),
        ValueError,
        r"padded input width \(=1, .*\) must be at least the kernel width \(=3\)",
    ),
]


@pytest.mark.parametrize("call, exc, match", FORWARD_ERRORS)
def test_forward_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _cache():
    return conv2d_forward(_x(), _w(), padding=1)[1]


BACKWARD_ERRORS = [
    (lambda: conv2d_backward(np.zeros((2, 4, 5, 5)), (1, 2)), TypeError, r"cache must be a Conv2dCache"),
    (lambda: conv2d_backward([0.0], _cache()), TypeError, r"conv2d_backward: dy must be a numpy.ndarray"),
    (lambda: conv2d_backward(np.zeros((2, 4, 5, 5), int), _cache()), TypeError, r"dy must have dtype in"),
    (
        lambda: conv2d_backward(np.zeros((2, 4, 5, 5), np.float32), _cache()),
        TypeError,
        r"dy.dtype \(=float32\) must equal x.dtype \(=float64\)",
    ),
    (
        lambda: conv2d_backward(np.zeros((2, 4, 4, 5)), _cache()),
        ValueError,
        r"conv2d_backward: dy must have shape \(2, 4, 5, 5\), got \(2, 4, 4, 5\)",
    ),
]


@pytest.mark.parametrize("call, exc, match", BACKWARD_ERRORS)
def test_backward_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cache_is_inspectable():
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3))
    _, cache = conv2d_forward(x, w, padding=(1, 2))
    assert isinstance(cache, Conv2dCache)
    assert cache.x_padded.shape == (1, 1, 5, 7) and cache.padding == (1, 2) and cache.stride == (1, 1)
    assert cache.has_bias is False


# --------------------------------------------------------------------------------------------------
# The fast paths: chunks, the grid layout, threads
# --------------------------------------------------------------------------------------------------

PATH_CONFIGS = [  # (x shape, w shape, stride, padding): stride-1 grid, 1x1, im2col (strided, big padding)
    ((7, 3, 5, 6), (4, 3, 3, 3), 1, 1),
    ((5, 2, 6, 5), (3, 2, 3, 2), 1, (2, 0)),
    ((6, 3, 7, 7), (5, 3, 1, 1), 2, 0),
    ((6, 2, 7, 6), (3, 2, 3, 3), 2, 1),
    ((5, 2, 4, 4), (2, 2, 2, 2), 1, 3),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", PATH_CONFIGS)
def test_many_chunks_match_naive_loops(monkeypatch, x_shape, w_shape, stride, padding):
    """With chunks of one image (forced), every path still matches the loops."""
    monkeypatch.setattr(conv_module, "_CHUNK_COLUMNS", 10)
    rng = np.random.default_rng(6)
    x, w, b = _data(rng, x_shape, w_shape)
    y, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
    assert len(conv_module._chunks(x_shape[0], y.shape[2] * y.shape[3])) >= 3
    assert rel_error(y, conv2d_naive(x, w, b, stride=stride, padding=padding)) <= NAIVE_RTOL
    dy = rng.standard_normal(y.shape)
    got = conv2d_backward(dy, cache)
    ref = conv2d_backward_naive(x, w, dy, stride=stride, padding=padding)
    for name, g, r in zip(("dx", "dw", "db"), got, ref, strict=True):
        assert rel_error(g, r) <= NAIVE_RTOL, name


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", PATH_CONFIGS)
def test_cached_padded_input_is_numpy_pad(x_shape, w_shape, stride, padding):
    """``cache.x_padded`` (a read-only view of the grid on the stride-1 path) is ``np.pad`` of x."""
    rng = np.random.default_rng(7)
    x, w, _ = _data(rng, x_shape, w_shape, bias=False)
    _, cache = conv2d_forward(x, w, stride=stride, padding=padding)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    np.testing.assert_array_equal(cache.x_padded, np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))))
    # (few output channels: the grid path always pays for these shapes when it applies)
    assert (cache.grid is not None) == (stride == 1 and w_shape[2] > ph and w_shape[3] > pw)
    if cache.grid is not None:
        assert not cache.x_padded.flags.writeable


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", PATH_CONFIGS)
def test_same_bits_for_one_and_two_threads(monkeypatch, dtype, x_shape, w_shape, stride, padding):
    """With BLAS allowed two threads (which the chunk loops pin to one) the bits are those of one."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(conv_module, "_CHUNK_COLUMNS", 10)
    rng = np.random.default_rng(8)
    x, w, b = (a.astype(dtype) for a in _data(rng, x_shape, w_shape))
    dy = None
    results = []
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="blas"):
            openblas = conv_module.determinism._bundled_openblas()
            if openblas is None or openblas[0]() != threads:
                pytest.skip(f"NumPy's BLAS does not take {threads} threads here")
            y, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
            dy = rng.standard_normal(y.shape).astype(dtype) if dy is None else dy
            results.append((y, *conv2d_backward(dy, cache)))
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one.view(np.uint8), two.view(np.uint8))
