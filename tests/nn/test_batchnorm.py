"""batchnorm2d: naive loops (float64), central differences, float32 error bound, semantics, errors.

The float32 bound is derived in ``nn_helpers.bn_bounds``.
"""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import (
    NAIVE_RTOL,
    assert_gradient,
    assert_no_alias,
    assert_unchanged,
    bn_bounds,
    rel_error,
    snapshot,
)

from saf_ref.nn.batchnorm import BatchNorm2dCache, batchnorm2d_backward, batchnorm2d_forward, batchnorm2d_vjp
from saf_ref.nn.naive import batchnorm2d_naive
from saf_ref.testing.tolerance import assert_within_dot_bound

U32 = 2.0**-24


def make_inputs(rng, shape=(3, 4, 3, 2), offset=0.0, dtype=np.float64):
    """x (with a per-channel offset), weight, bias, running mean, running var (positive)."""
    c = shape[1]
    x = offset + rng.standard_normal(shape) * rng.uniform(0.5, 2.0, size=(1, c, 1, 1))
    arrays = (
        x,
        rng.standard_normal(c),
        rng.standard_normal(c),
        rng.standard_normal(c),
        rng.uniform(0.5, 2.0, size=c),
    )
    return tuple(a.astype(dtype) for a in arrays)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape, momentum", [((3, 4, 3, 2), 0.1), ((2, 3, 1, 1), 0.5), ((1, 2, 4, 5), 1.0)])
def test_forward_matches_naive_loops(shape, momentum, train):
    rng = np.random.default_rng(0)
    inputs = make_inputs(rng, shape, offset=1.5)
    y, mean, var, _ = batchnorm2d_forward(*inputs, train=train, momentum=momentum, eps=1e-3)
    ref = batchnorm2d_naive(*inputs, train=train, momentum=momentum, eps=1e-3)
    for name, got, want in zip(("y", "running_mean", "running_var"), (y, mean, var), ref, strict=True):
        assert rel_error(got, want) <= NAIVE_RTOL, name


@pytest.mark.parametrize("train", [True, False])
def test_gradients_match_central_differences(train):
    rng = np.random.default_rng(1)
    x, weight, bias, rm, rv = make_inputs(rng, (3, 2, 3, 2), offset=0.7)
    y, *_, cache = batchnorm2d_forward(x, weight, bias, rm, rv, train=train)
    dy = rng.standard_normal(y.shape)
    g = batchnorm2d_backward(dy, cache)

    def out(x_=x, w_=weight, b_=bias):
        return batchnorm2d_forward(x_, w_, b_, rm, rv, train=train)[0]

    assert_gradient(g.dx, lambda v: out(x_=v), x, dy, what="dx")
    assert_gradient(g.dweight, lambda v: out(w_=v), weight, dy, what="dweight")
    assert_gradient(g.dbias, lambda v: out(b_=v), bias, dy, what="dbias")


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape, offset", [((4, 3, 5, 5), 0.0), ((8, 2, 4, 4), 30.0), ((2, 3, 1, 1), 2.0)])
def test_float32_within_error_bound(shape, offset, train):
    rng = np.random.default_rng(2)
    inputs32 = make_inputs(rng, shape, offset=offset, dtype=np.float32)
    inputs64 = tuple(a.astype(np.float64) for a in inputs32)
    *outs32, cache32 = batchnorm2d_forward(*inputs32, train=train)
    *outs64, cache64 = batchnorm2d_forward(*inputs64, train=train)
    dy32 = rng.standard_normal(shape).astype(np.float32)
    g32 = batchnorm2d_backward(dy32, cache32)
    g64 = batchnorm2d_backward(dy32.astype(np.float64), cache64)
    bounds = bn_bounds(*inputs64, dy32, train=train)
    repro = f"seed 2, shape {shape}, offset {offset}, train={train}"
    for name, got, ref in zip(
        ("y", "mean", "var", "dx", "dweight", "dbias"), (*outs32, *g32), (*outs64, *g64), strict=True
    ):
        assert got.dtype == np.float32, name
        mag, k = bounds[name]
        assert_within_dot_bound(got, ref, mag, k, u=U32, c=2.0, what=f"batchnorm2d {name}", repro=repro)


def test_training_output_is_normalised_per_channel():
    """Independent check of the definition: per channel, the output of weight=1, bias=0 has mean 0 and
    (biased) variance var / (var + eps); channels with different scales are normalised separately."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 4, 4)) * np.array([0.1, 1.0, 10.0])[None, :, None, None] + 4.0
    ones, zeros = np.ones(3), np.zeros(3)
    y, *_ = batchnorm2d_forward(x, ones, zeros, zeros, ones, train=True, eps=1e-5)
    var = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), var / (var + 1e-5), rtol=1e-12)


def test_running_statistics_use_unbiased_variance_and_momentum_weights_the_new_value():
    rng = np.random.default_rng(4)
    x, weight, bias, rm, rv = make_inputs(rng, (4, 2, 3, 3))
    _, mean, var, _ = batchnorm2d_forward(x, weight, bias, rm, rv, train=True, momentum=0.25)
    np.testing.assert_allclose(mean, 0.75 * rm + 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-14)
    unbiased = np.array([np.var(x[:, c].ravel(), ddof=1) for c in range(2)])
    np.testing.assert_allclose(var, 0.75 * rv + 0.25 * unbiased, rtol=1e-14)
    _, mean0, var0, _ = batchnorm2d_forward(x, weight, bias, rm, rv, train=True, momentum=0.0)
    np.testing.assert_array_equal(mean0, rm)
    np.testing.assert_array_equal(var0, rv)


def test_eval_mode_uses_running_statistics():
    """With the batch's own statistics as running statistics, evaluation reproduces training output."""
    rng = np.random.default_rng(5)
    x, weight, bias, _, _ = make_inputs(rng, (4, 3, 2, 2), offset=1.0)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    y_train, *_ = batchnorm2d_forward(x, weight, bias, mean, var, train=True)
    y_eval, m, v, _ = batchnorm2d_forward(x, weight, bias, mean, var, train=False)
    assert rel_error(y_eval, y_train) <= 1e-14
    np.testing.assert_array_equal(m, mean)
    np.testing.assert_array_equal(v, var)


@pytest.mark.parametrize("train", [True, False])
def test_inputs_are_not_modified_and_outputs_are_new_arrays(train):
    rng = np.random.default_rng(6)
    inputs = make_inputs(rng, (2, 3, 2, 2))
    dy = rng.standard_normal((2, 3, 2, 2))
    before = snapshot(*inputs, dy)
    y, mean, var, cache = batchnorm2d_forward(*inputs, train=train)
    grads = batchnorm2d_backward(dy, cache)
    vjp = batchnorm2d_vjp(*inputs, dy, train=train)
    assert_unchanged(before, *inputs, dy)
    assert_no_alias([y, mean, var, *grads], [*inputs, dy])
    for got, want in zip(vjp, grads, strict=True):
        np.testing.assert_array_equal(got, want)
    assert isinstance(cache, BatchNorm2dCache) and cache.train is train


def _inputs(dtype=np.float64, c=3):
    return (np.zeros((2, c, 2, 2), dtype), *(np.ones(c, dtype) for _ in range(4)))


def _with(i, value):
    args = list(_inputs())
    args[i] = value
    return args


FORWARD_ERRORS = [
    (dict(args=_with(0, [1.0])), TypeError, r"batchnorm2d: x must be a numpy.ndarray"),
    (dict(args=_with(1, np.ones(3, int))), TypeError, r"batchnorm2d: weight must have dtype in"),
    (dict(args=_with(2, np.ones(3, np.float16))), TypeError, r"batchnorm2d: bias must have dtype in"),
    (dict(args=_with(3, np.ones(3, np.float32))), TypeError, r"running_mean.dtype \(=float32\) must equal"),
    (dict(args=_with(4, np.ones(3, np.float32))), TypeError, r"running_var.dtype \(=float32\) must equal"),
    (dict(args=_with(0, np.zeros((2, 3, 2)))), ValueError, r"x must be 4-dimensional \(N, C, H, W\)"),
    (dict(args=_with(0, np.zeros((2, 3, 0, 2)))), ValueError, r"x.shape\[2\] must be in \[1, inf\], got 0"),
    (dict(args=_with(1, np.ones(4))), ValueError, r"weight must have shape \(3,\), got \(4,\)"),
    (dict(args=_with(2, np.ones((3, 1)))), ValueError, r"bias must have shape \(3,\), got \(3, 1\)"),
    (dict(args=_with(3, np.ones(2))), ValueError, r"running_mean must have shape \(3,\)"),
    (dict(args=_with(4, np.ones(1))), ValueError, r"running_var must have shape \(3,\)"),
    (dict(train=1), TypeError, r"batchnorm2d: train must be a bool, got int"),
    (dict(momentum="0.1"), TypeError, r"momentum must be a real number"),
    (dict(momentum=1.5), ValueError, r"momentum must be in \[0, 1\], got 1.5"),
    (dict(momentum=float("nan")), ValueError, r"momentum must be in \[0, 1\], got nan"),
    (dict(eps=None), TypeError, r"eps must be a real number"),
    (dict(eps=0.0), ValueError, r"eps must be > 0, got 0.0"),
    (
        dict(args=_with(0, np.zeros((1, 3, 1, 1)))),
        ValueError,
        r"training mode needs more than one value per channel \(N\*H\*W > 1\), got N\*H\*W = 1",
    ),
]


@pytest.mark.parametrize("kwargs, exc, match", FORWARD_ERRORS)
def test_forward_validation(kwargs, exc, match):
    kwargs = dict(kwargs)
    args = kwargs.pop("args", _inputs())
    kwargs.setdefault("train", True)
    with pytest.raises(exc, match=match):
        batchnorm2d_forward(*args, **kwargs)


def test_single_value_per_channel_is_fine_in_eval_mode():
    y, *_ = batchnorm2d_forward(*_with(0, np.full((1, 3, 1, 1), 2.0)), train=False)
    np.testing.assert_allclose(y, 2.0 / np.sqrt(1.0 + 1e-5) * 1.0 + 1.0 - 1.0 / np.sqrt(1 + 1e-5))


def _cache():
    return batchnorm2d_forward(*_inputs(), train=True)[3]


BACKWARD_ERRORS = [
    (lambda: batchnorm2d_backward(np.zeros((2, 3, 2, 2)), None), TypeError, r"must be a BatchNorm2dCache"),
    (lambda: batchnorm2d_backward(1.0, _cache()), TypeError, r"batchnorm2d_backward: dy must be a numpy"),
    (
        lambda: batchnorm2d_backward(np.zeros((2, 3, 2, 2), np.float32), _cache()),
        TypeError,
        r"dy.dtype \(=float32\) must equal x.dtype \(=float64\)",
    ),
    (
        lambda: batchnorm2d_backward(np.zeros((2, 3, 2, 1)), _cache()),
        ValueError,
        r"dy must have shape \(2, 3, 2, 2\), got \(2, 3, 2, 1\)",
    ),
]


@pytest.mark.parametrize("call, exc, match", BACKWARD_ERRORS)
def test_backward_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False])
def test_in_place_arithmetic_is_the_plain_formulas_bit_for_bit(dtype, train):
    """The implementation computes in place; the plain NumPy expressions of the docstring, written here,
    must give the same bits (forward, running statistics, backward), also for a non-contiguous x."""
    rng = np.random.default_rng(9)
    x, w, b, rm, rv = make_inputs(rng, (6, 5, 7, 4), offset=3.0, dtype=dtype)
    x = x[:, :, ::-1]
    dy = rng.standard_normal(x.shape).astype(dtype)
    per = lambda v: v[None, :, None, None]  # noqa: E731
    if train:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x.mean(axis=(0, 2, 3))
        centred = x - per(mean)
        var = np.mean(centred * centred, axis=(0, 2, 3))
        inv_std = 1.0 / np.sqrt(var + 1e-5)
        x_hat = centred * per(inv_std)
        new_mean, new_var = 0.9 * rm + 0.1 * mean, 0.9 * rv + 0.1 * (var * (n / (n - 1)))
    else:
        inv_std = 1.0 / np.sqrt(rv + 1e-5)
        x_hat = (x - per(rm)) * per(inv_std)
        new_mean, new_var = rm, rv
    y_ref = x_hat * per(w) + per(b)
    dbias, dweight = dy.sum(axis=(0, 2, 3)), (dy * x_hat).sum(axis=(0, 2, 3))
    scale = per(w * inv_std)
    if train:
        dx_ref = scale * (dy - per(dbias / n) - x_hat * per(dweight / n))
    else:
        dx_ref = scale * dy
    y, m, v, cache = batchnorm2d_forward(x, w, b, rm, rv, train=train)
    grads = batchnorm2d_backward(dy, cache)
    for got, ref in [(y, y_ref), (m, new_mean), (v, new_var), (cache.x_hat, x_hat), (grads.dx, dx_ref)]:
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(grads.dweight, dweight)
    np.testing.assert_array_equal(grads.dbias, dbias)
