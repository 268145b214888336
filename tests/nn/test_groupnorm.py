"""groupnorm: PyTorch (float64, 1e-10), naive loops, central differences, float32, semantics, errors."""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import NAIVE_RTOL, assert_gradient, assert_no_alias, assert_unchanged, rel_error, snapshot

from saf_ref.nn.groupnorm import (
    GroupNormCache,
    default_num_groups,
    groupnorm_backward,
    groupnorm_forward,
    groupnorm_vjp,
)
from saf_ref.nn.naive import groupnorm_naive

SHAPES = [  # (shape, num_groups)
    ((3, 4, 3, 2), 2),
    ((2, 6, 4, 4), 3),
    ((2, 6, 4, 4), 6),  # instance norm
    ((2, 6, 4, 4), 1),  # layer norm with per-channel affine
    ((4, 8), 4),  # no spatial axes
    ((2, 4, 3), 2),  # one spatial axis
    ((1, 2, 1, 1), 2),  # one value per group: output = bias
]


def make_inputs(rng, shape, offset=0.0, dtype=np.float64):
    """x (with a per-channel scale and an offset), weight, bias."""
    c = shape[1]
    scale = rng.uniform(0.5, 2.0, size=(1, c) + (1,) * (len(shape) - 2))
    x = offset + rng.standard_normal(shape) * scale
    return tuple(a.astype(dtype) for a in (x, rng.standard_normal(c), rng.standard_normal(c)))


# ==================================================================================================
# Against PyTorch, float64
# ==================================================================================================


@pytest.mark.torch
@pytest.mark.parametrize("shape, groups", [sg for sg in SHAPES if sg[0] != (1, 2, 1, 1)])  # torch refuses
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_forward_and_backward_match_torch_float64(shape, groups, eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, weight, bias = make_inputs(rng, shape, offset=1.5)
    dy = rng.standard_normal(shape)
    y, cache = groupnorm_forward(x, weight, bias, num_groups=groups, eps=eps)
    g = groupnorm_backward(dy, cache)

    tx, tw, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, weight, bias))
    ty = torch.nn.functional.group_norm(tx, groups, tw, tb, eps)
    ty.backward(torch.tensor(dy))
    for name, got, want in (
        ("y", y, ty), ("dx", g.dx, tx.grad), ("dweight", g.dweight, tw.grad), ("dbias", g.dbias, tb.grad)
    ):  # fmt: skip
        want = want.detach().numpy()
        assert got.dtype == np.float64 and got.shape == want.shape, name
        assert rel_error(got, want) <= 1e-10, f"{name}: {rel_error(got, want):.3e}"


@pytest.mark.torch
def test_module_matches_torch_group_norm_module_with_reference_group_counts():
    """``nn.GroupNorm(default_num_groups(C), C)`` after loading the same weight and bias."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    for c in (8, 16, 12, 10):
        x, weight, bias = make_inputs(rng, (2, c, 3, 3))
        module = torch.nn.GroupNorm(default_num_groups(c), c).double()
        module.load_state_dict({"weight": torch.tensor(weight), "bias": torch.tensor(bias)})
        want = module(torch.tensor(x)).detach().numpy()
        got, _ = groupnorm_forward(x, weight, bias, num_groups=default_num_groups(c))
        assert rel_error(got, want) <= 1e-10


# ==================================================================================================
# Naive loops, central differences, float32
# ==================================================================================================


@pytest.mark.parametrize("shape, groups", SHAPES)
def test_forward_matches_naive_loops(shape, groups):
    rng = np.random.default_rng(1)
    x, weight, bias = make_inputs(rng, shape, offset=3.0)
    y, _ = groupnorm_forward(x, weight, bias, num_groups=groups, eps=1e-3)
    assert rel_error(y, groupnorm_naive(x, weight, bias, num_groups=groups, eps=1e-3)) <= NAIVE_RTOL


@pytest.mark.parametrize("shape, groups", [((3, 4, 3, 2), 2), ((2, 6, 2, 2), 3), ((3, 4), 1)])
def test_gradients_match_central_differences(shape, groups):
    rng = np.random.default_rng(2)
    x, weight, bias = make_inputs(rng, shape, offset=0.7)
    y, cache = groupnorm_forward(x, weight, bias, num_groups=groups)
    dy = rng.standard_normal(y.shape)
    g = groupnorm_backward(dy, cache)

    def out(x_=x, w_=weight, b_=bias):
        return groupnorm_forward(x_, w_, b_, num_groups=groups)[0]

    assert_gradient(g.dx, lambda v: out(x_=v), x, dy, what="dx")
    assert_gradient(g.dweight, lambda v: out(w_=v), weight, dy, what="dweight")
    assert_gradient(g.dbias, lambda v: out(b_=v), bias, dy, what="dbias")


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_float32_stays_float32_and_is_as_accurate_as_float32_allows(offset):
    """float32 in, float32 out; the error against the float64 result is a few float32 roundings of the
    output's scale (each value passes through O(m) sums of m = 2*4*4 terms: 64 u is generous)."""
    rng = np.random.default_rng(3)
    x32, w32, b32 = make_inputs(rng, (4, 4, 4, 4), offset=offset, dtype=np.float32)
    dy32 = rng.standard_normal(x32.shape).astype(np.float32)
    y32, c32 = groupnorm_forward(x32, w32, b32, num_groups=2)
    g32 = groupnorm_backward(dy32, c32)
    y64, c64 = groupnorm_forward(*(a.astype(np.float64) for a in (x32, w32, b32)), num_groups=2)
    g64 = groupnorm_backward(dy32.astype(np.float64), c64)
    # Relative to the input's offset too: centring x = offset + noise loses log2(offset) bits.
    cond = 1.0 + offset
    for name, got, want in zip(("y", "dx", "dweight", "dbias"), (y32, *g32), (y64, *g64), strict=True):
        assert got.dtype == np.float32, name
        assert rel_error(got, want) <= 64 * 2.0**-24 * cond, f"{name}: {rel_error(got, want):.3e}"


# ==================================================================================================
# Semantics
# ==================================================================================================


def test_each_sample_and_group_is_normalised_on_its_own():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 4, 4)) * np.array([0.1, 1, 10, 0.5, 5, 50])[None, :, None, None] + 4.0
    y, _ = groupnorm_forward(x, np.ones(6), np.zeros(6), num_groups=3, eps=1e-5)
    for n in range(3):
        for g in range(3):
            group, out = x[n, 2 * g : 2 * g + 2], y[n, 2 * g : 2 * g + 2]
            var = group.var()
            np.testing.assert_allclose(out.mean(), 0.0, atol=1e-12)
            np.testing.assert_allclose(out.var(), var / (var + 1e-5), rtol=1e-12)
    # A sample's output does not depend on the other samples (no batch statistics).
    y0, _ = groupnorm_forward(x[:1], np.ones(6), np.zeros(6), num_groups=3)
    np.testing.assert_array_equal(y0, y[:1])


def test_one_value_per_sample_is_accepted_where_torch_refuses():
    """torch.nn.functional.group_norm refuses N * H * W == 1 (a batch-norm check); the definition does not
    need it: a group of one value has x_hat = 0 (output = bias), a larger group is normalised."""
    x, w, b = np.array([[[[2.0]], [[5.0]]]]), np.array([3.0, 4.0]), np.array([0.5, -0.5])
    np.testing.assert_array_equal(groupnorm_forward(x, w, b, num_groups=2)[0], [[[[0.5]], [[-0.5]]]])
    y, _ = groupnorm_forward(x, w, b, num_groups=1, eps=1e-300)  # mean 3.5, var 2.25: x_hat = -1, 1
    np.testing.assert_allclose(y, [[[[-2.5]], [[3.5]]]], rtol=1e-15)


def test_default_num_groups_is_the_reference_rule():
    # The reference: first min(k, C // 2) for k in (32, 24, 16, 8) that divides C; written out by hand.
    expected = {2: 1, 3: 1, 4: 2, 6: 3, 8: 4, 10: 5, 12: 6, 16: 8, 24: 12, 32: 16, 48: 24, 64: 32,
                96: 32, 128: 32, 256: 32, 512: 32, 40: 20, 72: 24, 80: 16}  # fmt: skip
    for c, g in expected.items():
        assert default_num_groups(c) == g, c
    # Where the reference divides by zero or finds no candidate: the largest divisor up to C // 2.
    assert default_num_groups(1) == 1 and default_num_groups(7) == 1 and default_num_groups(9) == 3
    assert default_num_groups(50) == 25 and default_num_groups(14) == 7
    with pytest.raises(ValueError, match=r"default_num_groups: channels must be in \[1, inf\], got 0"):
        default_num_groups(0)
    with pytest.raises(TypeError, match="default_num_groups: channels must be an int"):
        default_num_groups(8.0)


def test_inputs_are_not_modified_and_outputs_are_new_arrays():
    rng = np.random.default_rng(6)
    inputs = make_inputs(rng, (2, 4, 2, 2))
    dy = rng.standard_normal((2, 4, 2, 2))
    before = snapshot(*inputs, dy)
    y, cache = groupnorm_forward(*inputs, num_groups=2)
    grads = groupnorm_backward(dy, cache)
    vjp = groupnorm_vjp(*inputs, dy, num_groups=2)
    assert_unchanged(before, *inputs, dy)
    assert_no_alias([y, *grads], [*inputs, dy])
    for got, want in zip(vjp, grads, strict=True):
        np.testing.assert_array_equal(got, want)
    assert isinstance(cache, GroupNormCache) and cache.num_groups == 2


# ==================================================================================================
# Errors
# ==================================================================================================


def _inputs(dtype=np.float64, c=4):
    return np.zeros((2, c, 2, 2), dtype), np.ones(c, dtype), np.zeros(c, dtype)


def _with(i, value):
    args = list(_inputs())
    args[i] = value
    return args


FORWARD_ERRORS = [
    (dict(args=_with(0, [1.0])), TypeError, r"groupnorm: x must be a numpy.ndarray"),
    (dict(args=_with(1, np.ones(4, int))), TypeError, r"groupnorm: weight must have dtype in"),
    (dict(args=_with(2, np.ones(4, np.float32))), TypeError, r"bias.dtype \(=float32\) must equal"),
    (dict(args=_with(0, np.zeros(4))), ValueError, r"groupnorm: x must have at least 2 dimensions"),
    (dict(args=_with(0, np.zeros((2, 4, 0)))), ValueError, r"groupnorm: x.shape\[2\] must be in \[1, inf\]"),
    (dict(args=_with(1, np.ones(3))), ValueError, r"groupnorm: weight must have shape \(4,\), got \(3,\)"),
    (dict(args=_with(2, np.ones((4, 1)))), ValueError, r"groupnorm: bias must have shape \(4,\)"),
    (dict(num_groups=3), ValueError, r"groupnorm: num_groups \(=3\) must divide x.shape\[1\] \(=4\)"),
    (dict(num_groups=0), ValueError, r"groupnorm: num_groups must be in \[1, inf\], got 0"),
    (dict(num_groups=2.0), TypeError, r"groupnorm: num_groups must be an int"),
    (dict(eps=None), TypeError, r"groupnorm: eps must be a real number"),
    (dict(eps=0.0), ValueError, r"groupnorm: eps must be > 0, got 0.0"),
    (dict(eps=float("nan")), ValueError, r"groupnorm: eps must be > 0, got nan"),
]


@pytest.mark.parametrize("kwargs, exc, match", FORWARD_ERRORS)
def test_forward_validation(kwargs, exc, match):
    kwargs = dict(kwargs)
    args = kwargs.pop("args", _inputs())
    kwargs.setdefault("num_groups", 2)
    with pytest.raises(exc, match=match):
        groupnorm_forward(*args, **kwargs)


def _cache():
    return groupnorm_forward(*_inputs(), num_groups=2)[1]


@pytest.mark.parametrize("call, exc, match", [
    (lambda: groupnorm_backward(np.zeros((2, 4, 2, 2)), None), TypeError, r"must be a GroupNormCache"),
    (lambda: groupnorm_backward(1.0, _cache()), TypeError, r"groupnorm_backward: dy must be a numpy"),
    (lambda: groupnorm_backward(np.zeros((2, 4, 2, 2), np.float32), _cache()), TypeError,
     r"groupnorm_backward: dy.dtype \(=float32\) must equal"),
    (lambda: groupnorm_backward(np.zeros((2, 4, 2)), _cache()), ValueError,
     r"groupnorm_backward: dy must have shape \(2, 4, 2, 2\)"),
])  # fmt: skip
def test_backward_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
