"""The public building blocks of saf_ref.nn.blocks: conv + batch norm, (clipped) ReLU, checks, init.

References are independent of the code under test:

- ``conv_bn_forward`` / ``conv_bn_backward`` against the composition of ``conv2d`` and ``batchnorm2d``
  (bit for bit: the composite must add nothing), against the naive loops of :mod:`saf_ref.nn.naive`
  (float64), and against float64 central differences of ``sum(y * dy)`` at every element;
- ``act_forward`` / ``act_backward`` against the naive ReLU and clipped ReLU and their masks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from nn_helpers import NAIVE_RTOL, assert_gradient, rel_error

from saf_ref.nn.activations import ReluCache, ReluClippedCache, relu_forward
from saf_ref.nn.batchnorm import batchnorm2d_backward, batchnorm2d_forward
from saf_ref.nn.blocks import (
    ConvBNCache,
    act_backward,
    act_forward,
    check_act_clip,
    check_named_arrays,
    conv_bn_backward,
    conv_bn_forward,
    init_from_shapes,
)
from saf_ref.nn.conv import conv2d_backward, conv2d_forward
from saf_ref.nn.naive import batchnorm2d_naive, conv2d_naive, relu_clipped_naive, relu_naive
from saf_ref.nn.resnet import init_resnet, resnet_shapes


def _layer(rng, dtype, c_in=2, c_out=3, k=3):
    """Parameters and running statistics of one conv (``c.weight``) + BN (``b.*``) layer."""
    params = {
        "c.weight": rng.standard_normal((c_out, c_in, k, k)).astype(dtype),
        "b.weight": rng.uniform(0.5, 1.5, c_out).astype(dtype),
        "b.bias": rng.normal(0, 0.3, c_out).astype(dtype),
    }
    state = {
        "b.running_mean": rng.normal(0, 0.5, c_out).astype(dtype),
        "b.running_var": rng.uniform(0.5, 2.0, c_out).astype(dtype),
    }
    return params, state


# --------------------------------------------------------------------------------------------------
# conv_bn_forward / conv_bn_backward
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("stride", "padding"), [(1, 1), (2, 1), (2, 0)])
def test_conv_bn_is_conv2d_then_batchnorm2d_bit_for_bit(dtype, train, stride, padding):
    rng = np.random.default_rng(0)
    params, state = _layer(rng, dtype)
    x = rng.standard_normal((3, 2, 7, 7)).astype(dtype)
    before = {k: v.copy() for k, v in (params | state).items()}
    new_state = {"other.running_mean": np.zeros(1, dtype)}  # the caller's dict: only b.* is written
    y, cache = conv_bn_forward(
        x, params, state, new_state, "c", "b", stride=stride, padding=padding, train=train
    )
    assert isinstance(cache, ConvBNCache) and (cache.conv_name, cache.bn_name) == ("c", "b")

    # The composition of the two ops.
    h, conv_cache = conv2d_forward(x, params["c.weight"], None, stride=stride, padding=padding)
    ref_y, ref_mean, ref_var, bn_cache = batchnorm2d_forward(
        h, params["b.weight"], params["b.bias"], state["b.running_mean"], state["b.running_var"], train=train
    )
    assert y.dtype == dtype and y.tobytes() == ref_y.tobytes()
    assert list(new_state) == ["other.running_mean", "b.running_mean", "b.running_var"]
    assert new_state["b.running_mean"].tobytes() == ref_mean.tobytes()
    assert new_state["b.running_var"].tobytes() == ref_var.tobytes()

    dy = rng.standard_normal(y.shape).astype(dtype)
    grads = {}
    dx = conv_bn_backward(dy, cache, grads)
    bn_grads = batchnorm2d_backward(dy, bn_cache)
    conv_grads = conv2d_backward(bn_grads.dx, conv_cache)
    assert set(grads) == {"c.weight", "b.weight", "b.bias"}
    assert dx.shape == x.shape and dx.tobytes() == conv_grads.dx.tobytes()
    assert grads["c.weight"].tobytes() == conv_grads.dw.tobytes()
    assert grads["b.weight"].tobytes() == bn_grads.dweight.tobytes()
    assert grads["b.bias"].tobytes() == bn_grads.dbias.tobytes()
    # Never mutates what it reads.
    assert all((params | state)[k].tobytes() == v.tobytes() for k, v in before.items())


@pytest.mark.parametrize("train", [True, False])
def test_conv_bn_forward_matches_the_naive_loops(train):
    rng = np.random.default_rng(1)
    params, state = _layer(rng, np.float64)
    x = rng.standard_normal((2, 2, 6, 6))
    new_state = {}
    y, _ = conv_bn_forward(x, params, state, new_state, "c", "b", stride=2, padding=1, train=train)
    h = conv2d_naive(x, params["c.weight"], stride=2, padding=1)
    ref_y, ref_mean, ref_var = batchnorm2d_naive(
        h, params["b.weight"], params["b.bias"], state["b.running_mean"], state["b.running_var"], train=train
    )
    assert rel_error(y, ref_y) <= NAIVE_RTOL
    assert rel_error(new_state["b.running_mean"], ref_mean) <= NAIVE_RTOL
    assert rel_error(new_state["b.running_var"], ref_var) <= NAIVE_RTOL


@pytest.mark.parametrize("train", [True, False])
def test_conv_bn_backward_finite_differences(train):
    """Every element of dL/dx, dL/dw, dL/dgamma, dL/dbeta against float64 central differences."""
    rng = np.random.default_rng(2)
    params, state = _layer(rng, np.float64)
    x = rng.standard_normal((2, 2, 5, 5))
    kw = {"stride": 2, "padding": 1, "train": train}
    y, cache = conv_bn_forward(x, params, state, {}, "c", "b", **kw)
    dy = rng.standard_normal(y.shape)
    grads = {}
    dx = conv_bn_backward(dy, cache, grads)

    def run(p, xx):
        return conv_bn_forward(xx, p, state, {}, "c", "b", **kw)[0]

    assert_gradient(dx, lambda xx: run(params, xx), x, dy, what=f"conv_bn dx train={train}")
    for name in params:
        assert_gradient(
            grads[name], lambda v, name=name: run({**params, name: v}, x), params[name], dy,
            what=f"conv_bn d{name} train={train}",
        )  # fmt: skip


def test_conv_bn_backward_detects_a_wrong_gradient():
    """The central-difference check is sharp: dropping the BN scale from dx is caught."""
    rng = np.random.default_rng(3)
    params, state = _layer(rng, np.float64)
    x = rng.standard_normal((2, 2, 5, 5))
    y, cache = conv_bn_forward(x, params, state, {}, "c", "b", stride=1, padding=1, train=True)
    dy = rng.standard_normal(y.shape)
    dx = conv_bn_backward(dy, cache, {})
    with pytest.raises(AssertionError, match="central differences"):
        assert_gradient(
            2.0 * dx,
            lambda xx: conv_bn_forward(xx, params, state, {}, "c", "b", stride=1, padding=1, train=True)[0],
            x, dy, what="scaled dx",
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# act_forward / act_backward / check_act_clip
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_act_forward_and_backward_dispatch(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x[0, 0, :3] = [0.0, 0.5, -0.0]  # the kinks themselves
    dy = rng.standard_normal(x.shape).astype(dtype)

    y, cache = act_forward(x, None)
    assert isinstance(cache, ReluCache) and y.dtype == dtype
    assert y.tobytes() == relu_forward(x)[0].tobytes()
    np.testing.assert_array_equal(y, relu_naive(x).astype(dtype))
    np.testing.assert_array_equal(act_backward(dy, cache), np.where(x > 0, dy, 0))

    c = 0.5
    y, cache = act_forward(x, c)
    assert isinstance(cache, ReluClippedCache) and y.dtype == dtype
    np.testing.assert_array_equal(y, relu_clipped_naive(x, c).astype(dtype))
    assert y.max() == dtype(c) and y.min() == 0
    # Zero gradient at both kinks (z = 0 and z = c), PyTorch's hardtanh_backward convention.
    np.testing.assert_array_equal(act_backward(dy, cache), np.where((x > 0) & (x < c), dy, 0))


def test_check_act_clip():
    assert check_act_clip(None, "f") is None
    for good, want in ((6, 6.0), (0.5, 0.5), (np.float32(0.25), 0.25)):
        got = check_act_clip(good, "f")
        assert type(got) is float and got == want
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"f: act_clip must be None or a finite number > 0, got"):
            check_act_clip(bad, "f")
    for bad in ("6", True, [6.0]):
        with pytest.raises(TypeError, match=r"f: act_clip must be a real number, got"):
            check_act_clip(bad, "f")


# --------------------------------------------------------------------------------------------------
# check_named_arrays / init_from_shapes
# --------------------------------------------------------------------------------------------------


def test_check_named_arrays():
    shapes = {"a.weight": (2, 3), "a.bias": (2,)}
    good = {"a.weight": np.zeros((2, 3)), "a.bias": np.zeros(2)}
    check_named_arrays("f", "params", good, shapes, np.dtype(np.float64))
    with pytest.raises(TypeError, match="f: params must be a dict of numpy arrays, got list"):
        check_named_arrays("f", "params", [], shapes)
    with pytest.raises(
        ValueError, match=r"f: params must have the keys .*missing \['a.bias'\]; unexpected \['b'\]"
    ):
        check_named_arrays("f", "params", {"a.weight": good["a.weight"], "b": np.zeros(1)}, shapes)
    with pytest.raises(TypeError, match=r"f: params\['a.bias'\] must be a numpy.ndarray, got list"):
        check_named_arrays("f", "params", {**good, "a.bias": [0.0, 0.0]}, shapes)
    with pytest.raises(TypeError, match=r"params\['a.bias'\].dtype \(=float32\) must equal x.dtype"):
        check_named_arrays("f", "params", {**good, "a.bias": np.zeros(2, np.float32)}, shapes, np.float64)
    with pytest.raises(ValueError, match=r"f: params\['a.weight'\] must have shape \(2, 3\), got \(3, 2\)"):
        check_named_arrays("f", "params", {**good, "a.weight": np.zeros((3, 2))}, shapes)


def test_init_from_shapes_is_what_init_resnet_draws():
    """Same shapes and seed: init_resnet is init_from_shapes (drawn in state_dict order)."""
    ps, ss = resnet_shapes("resnet20", width=2, num_classes=3)
    params, state = init_from_shapes(ps, ss, np.random.default_rng(5), np.dtype(np.float32))
    ref_params, ref_state = init_resnet("resnet20", width=2, num_classes=3, rng=5)
    assert list(params) == list(ps) and list(state) == list(ss)
    assert all(params[k].tobytes() == ref_params[k].tobytes() for k in ref_params)
    assert all(state[k].tobytes() == ref_state[k].tobytes() for k in ref_state)
    # The rules, by shape: BN gamma 1 / beta 0, linear weight and bias within 1/sqrt(in).
    assert np.all(params["bn1.weight"] == 1) and np.all(params["bn1.bias"] == 0)
    bound = 1 / np.sqrt(ps["fc.weight"][1])
    assert np.all(np.abs(params["fc.weight"]) <= bound) and np.all(np.abs(params["fc.bias"]) <= bound)
