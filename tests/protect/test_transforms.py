"""Tests for saf_ref.protect.transforms.

References are independent of the code under test: high-precision ``decimal`` / ``fractions``
arithmetic (50 significant digits, with an arctan series written here), central finite differences in
float64, and PyTorch (``torch.tanh``, ``torch.atan``, ``F.softsign``, ``F.hardtanh`` and autograd).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.protect.transforms import IDENTITY, TRANSFORMS, Transform, get_transform

SMOOTH = ("tanh", "arctan", "softsign")
SATURATING = ("tanh", "arctan", "softsign", "hardtanh")
DTYPES = (np.float32, np.float64)
SCALES = (1.0, 0.37, 2.5)
PREC = 50  # decimal digits of the high-precision references


# ------------------------------------------------------------------------------------------------
# High-precision references (never calling NumPy's transcendental kernels)
# ------------------------------------------------------------------------------------------------


def _dec_atan(x: Decimal) -> Decimal:
    """arctan(x), x >= 0: halve the argument (atan x = 2 atan(x / (1 + sqrt(1 + x^2)))), then Taylor."""
    halvings = 0
    while x > Decimal("0.05"):
        x = x / (1 + (1 + x * x).sqrt())
        halvings += 1
    term, total, n, x2 = x, x, 1, x * x
    while abs(term) > Decimal(10) ** (-PREC - 5):
        term = -term * x2
        n += 2
        total += term / n
    return total * (2**halvings)


def ref_f(name: str, x: float) -> Decimal:
    """Unit-scale f(x) in high precision, for finite x."""
    with localcontext() as ctx:
        ctx.prec = PREC
        d = Decimal(x)
        s = -1 if d < 0 else 1
        a = abs(d)
        if name == "tanh":
            t = (-2 * a).exp()
            return s * (1 - t) / (1 + t)
        if name == "arctan":
            return s * _dec_atan(a)
        if name == "softsign":
            return d / (1 + a)
        if name == "hardtanh":
            return s * min(a, Decimal(1))
        return d


def ref_grad(name: str, x: float) -> Decimal:
    """Unit-scale f'(x) in high precision, for finite x (hardtanh: 0 at |x| = 1, as torch)."""
    with localcontext() as ctx:
        ctx.prec = PREC
        a = abs(Decimal(x))
        if name == "tanh":  # sech^2 = 4 e^{-2a} / (1 + e^{-2a})^2
            t = (-2 * a).exp()
            return 4 * t / ((1 + t) * (1 + t))
        if name == "arctan":
            return 1 / (1 + a * a)
        if name == "softsign":
            return 1 / ((1 + a) * (1 + a))
        if name == "hardtanh":
            return Decimal(1) if a < 1 else Decimal(0)
        return Decimal(1)


def round_decimal(d: Decimal, dtype) -> float:
    """Round a Decimal to the nearest value of dtype (ties to even), without double rounding."""
    c = np.dtype(dtype).type(float(d))
    cands = [c, np.nextafter(c, dtype(np.inf)), np.nextafter(c, dtype(-np.inf))]
    with localcontext() as ctx:
        ctx.prec = PREC + 20
        errs = [abs(Decimal(float(v)) - d) for v in cands]
    best = min(errs)
    ties = [v for v, e in zip(cands, errs, strict=True) if e == best]
    if len(ties) > 1:  # an exact midpoint: pick the even significand
        ties = [v for v in ties if int(np.array(v).view(f"u{np.dtype(dtype).itemsize}")) % 2 == 0]
    return float(ties[0])


def ref_forward(t: Transform, u: float) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = PREC
        a = Decimal(t.scale)
        return a * ref_f(t.name, float(Decimal(u) / a)) if t.name != "hardtanh" else _ref_hardtanh(u, a)


def _ref_hardtanh(u: float, a: Decimal) -> Decimal:
    d = Decimal(u)
    return max(-a, min(a, d))


def sample(rng: np.random.Generator, n: int) -> np.ndarray:
    """Latents spanning tiny, moderate and huge magnitudes, both signs (float64)."""
    mags = np.concatenate(
        [
            rng.uniform(0, 4, n // 2),
            10.0 ** rng.uniform(-30, 3, n // 4),
            10.0 ** rng.uniform(3, 30, n - n // 2 - n // 4),
        ]
    )
    return mags * rng.choice([-1.0, 1.0], mags.size)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units of the last place between same-dtype finite arrays (monotone integer view)."""
    bits = {4: np.int32, 8: np.int64}[a.dtype.itemsize]

    def key(x):
        i = x.view(bits).astype(np.int64)
        return np.where(i < 0, np.iinfo(bits).min - i, i)

    return np.abs(key(a) - key(b))


# ------------------------------------------------------------------------------------------------
# Forward, grad and vjp against high precision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_forward_float64_against_high_precision(name, scale):
    t = Transform(name, scale)
    u = sample(np.random.default_rng(1), 400)
    got = t.forward(u)
    ref = np.array([float(ref_forward(t, x)) for x in u])
    # Computed from several correctly rounded-ish float64 steps (u / a, f, a * .): a few ulps.
    assert ulp_distance(got, ref).max() <= 4, name


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_forward_float32_is_the_correctly_rounded_value(name, scale):
    # The float64 computation is rounded once; it sits far below half a float32 ulp, so the result is
    # the correctly rounded float32 of the exact value (barring a ~2**-27-probability near-midpoint).
    t = Transform(name, scale)
    u = sample(np.random.default_rng(2), 400).astype(np.float32)
    got = t.forward(u)
    ref = np.array([round_decimal(ref_forward(t, float(x)), np.float32) for x in u], dtype=np.float32)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_grad_against_high_precision(name, scale):
    t = Transform(name, scale)
    u = sample(np.random.default_rng(3), 400)
    # Add points where tanh(u) rounds to 1 in float64 (1 - tanh^2 would give 0) and beyond.
    u = np.concatenate([u, [19.5, -25.0, 40.0, 300.0, -700.0, 1e154, 1e160]])
    if name == "hardtanh":  # stay off the kink, tested separately
        u = u[np.abs(np.abs(u) - scale) > 1e-9]
    got = t.grad(u)
    ref = np.array([float(ref_grad(name, float(Decimal(x) / Decimal(scale)))) for x in u])
    np.testing.assert_allclose(got, ref, rtol=8 * 2**-52, atol=0)
    u32 = u[np.abs(u) < 1e38].astype(np.float32)
    got32 = t.grad(u32)
    ref32 = [round_decimal(ref_grad(name, float(Decimal(float(x)) / Decimal(scale))), np.float32)
             for x in u32]
    np.testing.assert_array_equal(got32, np.array(ref32, dtype=np.float32))


def test_tanh_grad_large_u_does_not_cancel():
    # The textbook 1 - tanh(u)^2 is exactly 0 for u >= 19.1 in float64; the true value is 4e-17 there.
    u = np.array([19.5, 30.0, 100.0, 354.0])
    got = Transform("tanh").grad(u)
    assert np.all(1.0 - np.tanh(u) ** 2 == 0.0)  # the trap this guards against
    asymptotic = 4.0 * np.exp(-2.0 * u)  # sech^2 u = 4 e^{-2u} (1 + O(e^{-2u}))
    np.testing.assert_allclose(got, asymptotic, rtol=1e-15)


@pytest.mark.parametrize("name", ("tanh", "arctan", "softsign", "hardtanh", "identity"))
@pytest.mark.parametrize("scale", (1.0, 0.5, 3.0))
def test_grad_against_central_differences(name, scale):
    t = Transform(name, scale)
    u = np.random.default_rng(4).uniform(-4 * scale, 4 * scale, 300)
    if name == "hardtanh":
        u = u[np.abs(np.abs(u) - scale) > 1e-3]
    h = 1e-6 * np.maximum(1.0, np.abs(u))
    fd = (t.forward(u + h) - t.forward(u - h)) / (2 * h)
    np.testing.assert_allclose(t.grad(u), fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_vjp_is_grad_times_dw_rounded_once(name, dtype):
    rng = np.random.default_rng(5)
    t = Transform(name, 1.7)
    u = sample(rng, 300).astype(dtype)
    dw = rng.standard_normal(u.size).astype(dtype)
    got = t.vjp(u, dw)
    assert got.dtype == dtype
    with localcontext() as ctx:
        ctx.prec = PREC
        ref = [
            round_decimal(ref_grad(name, float(Decimal(float(x)) / Decimal(1.7))) * Decimal(float(g)), dtype)
            for x, g in zip(u, dw, strict=True)
        ]
    if dtype == np.float32:
        np.testing.assert_array_equal(got, np.array(ref, dtype=dtype))
    else:
        np.testing.assert_allclose(got, ref, rtol=8 * 2**-52, atol=0)


# ------------------------------------------------------------------------------------------------
# Against PyTorch
# ------------------------------------------------------------------------------------------------


def _torch_f(name, x):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    return {
        "identity": lambda v: v * 1.0,
        "tanh": torch.tanh,
        "arctan": torch.atan,
        "softsign": F.softsign,
        "hardtanh": F.hardtanh,
    }[name](x)


@pytest.mark.torch
@pytest.mark.parametrize("scale", (1.0, 2.0))
@pytest.mark.parametrize("name", TRANSFORMS)
def test_forward_and_grad_against_torch_float64(name, scale):
    torch = pytest.importorskip("torch")
    u = np.random.default_rng(6).uniform(-5 * scale, 5 * scale, 500)
    # Exactly at the hardtanh kink: torch's backward gives 0 there, and so do we.
    u = np.concatenate([u, [-scale, scale, 0.0]])
    tu = torch.tensor(u, dtype=torch.float64, requires_grad=True)
    tw = scale * _torch_f(name, tu / scale)
    (tg,) = torch.autograd.grad(tw.sum(), tu)
    t = Transform(name, scale)
    np.testing.assert_allclose(t.forward(u), tw.detach().numpy(), rtol=4 * 2**-52, atol=0)
    # torch differentiates tanh as 1 - y^2, which loses ~|log10(1 - y^2)| digits: loose rtol at |u| <= 5.
    np.testing.assert_allclose(t.grad(u), tg.numpy(), rtol=1e-11, atol=1e-300)


@pytest.mark.torch
@pytest.mark.parametrize("name", TRANSFORMS)
def test_forward_float32_against_torch(name):
    torch = pytest.importorskip("torch")
    u = np.random.default_rng(7).uniform(-6, 6, 1000).astype(np.float32)
    ref = _torch_f(name, torch.from_numpy(u)).numpy()
    got = Transform(name).forward(u)
    # torch's float32 kernels are not correctly rounded; we are, so allow torch's error (<= 2 ulp).
    assert ulp_distance(got, ref).max() <= 2


# ------------------------------------------------------------------------------------------------
# Inverse
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SMOOTH)
def test_inverse_round_trips_within_documented_tolerance(name, dtype, scale):
    t = Transform(name, scale)
    eps = float(np.finfo(dtype).eps)
    rng = np.random.default_rng(8)
    # forward(inverse(w)) ~= w over the open range.
    w = (rng.uniform(-0.999, 0.999, 2000) * t.bound).astype(dtype)
    w2 = t.forward(t.inverse(w)).astype(np.float64)
    w64 = w.astype(np.float64)
    assert np.all(np.abs(w2 - w64) <= 2 * eps * np.abs(w64) + np.finfo(dtype).smallest_subnormal)
    # inverse(forward(u)) ~= u with the error amplified by 1 / f'(u / a), where f is not saturated.
    u = (rng.uniform(-6, 6, 2000) * scale).astype(dtype)
    fw = t.forward(u)
    u64 = u.astype(np.float64)
    keep = np.abs(fw.astype(np.float64)) / scale < 0.9999 * t.bound / scale
    u2 = t.inverse(fw).astype(np.float64)
    slope = np.array([float(ref_grad(name, x / scale)) for x in u64])
    tol = 2 * eps * (np.abs(fw.astype(np.float64)) / slope + np.abs(u64))
    assert np.all((np.abs(u2 - u64) <= tol)[keep])
    assert keep.mean() > 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_against_high_precision(dtype):
    # atanh(y) = log((1 + y) / (1 - y)) / 2, tan = sin / cos (series in Decimal), softsign^-1 exact.
    w = np.random.default_rng(9).uniform(-0.99, 0.99, 200).astype(dtype)
    for name in SMOOTH:
        got = Transform(name).inverse(w)
        ref = []
        for x in w:
            with localcontext() as ctx:
                ctx.prec = PREC
                d = Decimal(float(x))
                if name == "tanh":
                    v = ((1 + d) / (1 - d)).ln() / 2
                elif name == "softsign":
                    v = d / (1 - abs(d))
                else:
                    v = _dec_tan(d)
            ref.append(round_decimal(v, dtype))
        if dtype == np.float32:
            np.testing.assert_array_equal(got, np.array(ref, dtype=dtype), err_msg=name)
        else:
            np.testing.assert_allclose(got, ref, rtol=4 * 2**-52, err_msg=name)


def _dec_tan(x: Decimal) -> Decimal:
    """tan by Taylor series of sin and cos (|x| < 1 here)."""
    s, c, term, n = Decimal(0), Decimal(0), Decimal(1), 0
    while n < 80:
        if n % 2 == 0:
            c += term if n % 4 == 0 else -term
        else:
            s += term if n % 4 == 1 else -term
        n += 1
        term = term * x / n
    return s / c


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_clipping_is_the_largest_value_below_the_bound(dtype):
    one_below = float(np.nextafter(dtype(1), dtype(0)))
    expect_clip = {"tanh": one_below, "softsign": one_below}
    # float64(pi/2) is below the true pi/2; float32(pi/2) is above it, so float32 steps one ulp down.
    pi2 = dtype(np.pi / 2)
    assert (Decimal(float(pi2)) > Decimal("1.5707963267948966192313216916")) == (dtype == np.float32)
    expect_clip["arctan"] = float(pi2) if dtype == np.float64 else float(np.nextafter(pi2, dtype(0)))
    for name in SMOOTH:
        for scale in (1.0, 3.0):
            t = Transform(name, scale)
            w = np.array([np.inf, -np.inf, 5.0 * t.bound, t.bound, -t.bound], dtype=dtype)
            got = t.inverse(w)
            assert np.all(np.isfinite(got)), (name, got)
            m = Decimal(expect_clip[name])
            with localcontext() as ctx:
                ctx.prec = PREC
                v = {"tanh": lambda y: ((1 + y) / (1 - y)).ln() / 2, "softsign": lambda y: y / (1 - y),
                     "arctan": _dec_tan_near_pole}[name](m)
            expected = round_decimal(Decimal(scale) * v, dtype)
            # float64 tan near its pole amplifies the kernel's argument error (condition ~ 1e16 * 1e-16).
            rtol = 1e-6 if name == "arctan" and dtype == np.float64 else 4e-16
            np.testing.assert_allclose(got, [expected, -expected, expected, expected, -expected], rtol=rtol)
            # And the result maps back to (almost) the bound.
            np.testing.assert_allclose(np.abs(t.forward(got).astype(float)), t.bound, rtol=2e-7)


def _dec_tan_near_pole(x: Decimal) -> Decimal:
    """tan(x) = cot(pi/2 - x) for x near pi/2, with pi from a Machin formula (no float pi)."""
    with localcontext() as ctx:
        ctx.prec = PREC + 10
        pi = 4 * (4 * _dec_atan(Decimal(1) / 5) - _dec_atan(Decimal(1) / 239))
        return 1 / _dec_tan(pi / 2 - x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hardtanh_inverse_is_only_a_right_inverse(dtype):
    t = Transform("hardtanh", 2.0)
    w = np.array([-2.0, -0.5, 0.0, 1.25, 2.0], dtype=dtype)
    np.testing.assert_array_equal(t.forward(t.inverse(w)), w)  # right inverse on [-a, a]
    u = np.array([-3.0, 5.0, np.inf], dtype=dtype)
    np.testing.assert_array_equal(t.inverse(t.forward(u)), [-2.0, 2.0, 2.0])  # not a left inverse


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_is_exact_for_any_scale(dtype):
    u = np.array([-np.inf, -1e30, -0.0, 0.3, np.finfo(dtype).max, np.inf], dtype=dtype)
    for scale in (1.0, 1e-3, 7.0):
        t = Transform("identity", scale)
        np.testing.assert_array_equal(t.forward(u), u)
        np.testing.assert_array_equal(t.inverse(u), u)
        np.testing.assert_array_equal(t.grad(u), np.ones_like(u))
        assert np.signbit(t.forward(u)[2])


# ------------------------------------------------------------------------------------------------
# Infinities, NaN, signed zero
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", (1.0, 2.5))
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_at_infinity(dtype, scale):
    u = np.array([np.inf, -np.inf], dtype=dtype)
    limit = {"tanh": 1.0, "softsign": 1.0, "hardtanh": 1.0, "arctan": math.pi / 2}
    for name in SATURATING:
        t = Transform(name, scale)
        w = t.forward(u)
        expected = dtype(scale * limit[name])  # the limit, rounded once to the dtype
        np.testing.assert_array_equal(w, [expected, -expected], err_msg=name)
        np.testing.assert_array_equal(t.grad(u), [0.0, 0.0], err_msg=name)
        assert t.bound == scale * limit[name]
    t = Transform("identity", scale)
    np.testing.assert_array_equal(t.forward(u), u)
    np.testing.assert_array_equal(t.grad(u), [1.0, 1.0])
    assert t.bound == math.inf


def test_softsign_at_infinity_is_not_nan_unlike_the_naive_formula():
    u = np.array([np.inf, -np.inf, 1e308, np.finfo(np.float64).max])
    with np.errstate(invalid="ignore"):
        assert np.isnan(u[0] / (1 + np.abs(u[0])))  # the trap
    np.testing.assert_array_equal(Transform("softsign").forward(u), [1.0, -1.0, 1.0, 1.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_nan_propagates_and_signed_zero_is_kept(name, dtype):
    t = Transform(name, 1.5)
    u = np.array([np.nan, -np.nan, 0.0, -0.0], dtype=dtype)
    w = t.forward(u)
    assert np.isnan(w[:2]).all()
    assert np.signbit(w[1]) and not np.signbit(w[0])
    assert w[2] == 0 and not np.signbit(w[2]) and np.signbit(w[3])
    assert np.isnan(t.grad(u)[:2]).all()
    np.testing.assert_array_equal(t.grad(u)[2:], [1.0, 1.0])
    assert np.isnan(t.inverse(u)[:2]).all()
    assert np.signbit(t.inverse(u)[3]) and not np.signbit(t.inverse(u)[2])
    assert np.isnan(t.vjp(u, np.ones_like(u))[:2]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_hardtanh_grad_at_the_kink_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    a = dtype(1.25)
    below, above = np.nextafter(a, dtype(0)), np.nextafter(a, dtype(9))
    u = np.array([-a, a, below, -below, above], dtype=dtype)
    tu = torch.tensor(u, requires_grad=True)
    (tg,) = torch.autograd.grad(torch.nn.functional.hardtanh(tu, -float(a), float(a)).sum(), tu)
    np.testing.assert_array_equal(Transform("hardtanh", float(a)).grad(u), tg.numpy())
    np.testing.assert_array_equal(tg.numpy(), [0, 0, 1, 1, 0])


# ------------------------------------------------------------------------------------------------
# Layout independence, dtype policy, no mutation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_strided_and_elementwise_results_are_bitwise_identical(name, dtype):
    t = Transform(name, 0.8)
    base = sample(np.random.default_rng(10), 3 * 337).astype(dtype).reshape(3, 337)
    strided = base.T[::2]  # non-contiguous, transposed, stepped
    contiguous = np.ascontiguousarray(strided)
    assert not strided.flags.c_contiguous
    for method in (t.forward, t.grad, t.inverse):
        a, b = method(strided), method(contiguous)
        np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))
        assert a.flags.c_contiguous
        # One element at a time (0-d arrays) takes NumPy's scalar/tail path instead of the SIMD body.
        flat = contiguous.ravel()[:40]
        one = np.array([method(np.array(x)) for x in flat], dtype=dtype)
        np.testing.assert_array_equal(one.view(f"u{a.itemsize}"), method(flat).view(f"u{a.itemsize}"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_dtype_shape_and_no_mutation(name, dtype):
    t = Transform(name, 1.3)
    u = sample(np.random.default_rng(11), 24).astype(dtype).reshape(2, 3, 4)
    dw = np.ones_like(u)
    keep = u.copy()
    u.flags.writeable = False  # any in-place write would raise
    outs = [t.forward(u), t(u), t.grad(u), t.inverse(u), t.vjp(u, dw)]
    for out in outs:
        assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == u.shape
        assert not np.shares_memory(out, u)
    np.testing.assert_array_equal(u, keep)
    zero_d = t.forward(np.array(0.5, dtype=dtype))
    assert isinstance(zero_d, np.ndarray) and zero_d.shape == () and zero_d.dtype == dtype


@pytest.mark.parametrize("name", TRANSFORMS)
def test_dtype_errors(name):
    t = Transform(name)
    for method in ("forward", "grad", "inverse"):
        with pytest.raises(TypeError, match=rf"{name}\.{method}: .* must have dtype in"):
            getattr(t, method)(np.ones(3, dtype=np.float16))
        with pytest.raises(TypeError, match=rf"{name}\.{method}: .* must have dtype in"):
            getattr(t, method)(np.ones(3, dtype=np.int64))
        with pytest.raises(TypeError, match=rf"{name}\.{method}: .* must be a numpy.ndarray, got list"):
            getattr(t, method)([1.0, 2.0])
    u = np.ones(3, np.float32)
    with pytest.raises(TypeError, match=rf"{name}\.vjp: dw.dtype \(=float64\) must equal u.dtype"):
        t.vjp(u, np.ones(3))
    with pytest.raises(ValueError, match=rf"{name}\.vjp: dw must have shape \(3,\), got \(4,\)"):
        t.vjp(u, np.ones(4, np.float32))
    with pytest.raises(TypeError, match=rf"{name}\.vjp: dw must be a numpy.ndarray"):
        t.vjp(u, 1.0)


# ------------------------------------------------------------------------------------------------
# Construction and lookup
# ------------------------------------------------------------------------------------------------


def test_construction_errors():
    with pytest.raises(ValueError, match=r"Transform: name must be one of \('identity', 'tanh', 'arctan'"):
        Transform("sigmoid")
    with pytest.raises(TypeError, match="Transform: name must be a str, got int 3"):
        Transform(3)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="Transform: scale must be a finite positive number"):
            Transform("tanh", bad)
    with pytest.raises(TypeError, match="Transform: scale must be a real number, got str"):
        Transform("tanh", "2")
    with pytest.raises(TypeError, match="Transform: scale must be a real number"):
        Transform("tanh", True)


def test_get_transform():
    assert TRANSFORMS == ("identity", "tanh", "arctan", "softsign", "hardtanh")
    assert get_transform("tanh") == Transform("tanh", 1.0)
    assert get_transform("arctan", scale=2) == Transform("arctan", 2.0)
    assert isinstance(get_transform("arctan", scale=2).scale, float)
    assert get_transform(None) == IDENTITY == Transform("identity")
    t = Transform("softsign", 0.5)
    assert get_transform(t) is t
    with pytest.raises(ValueError, match=r"get_transform: name_or_transform must be one of \('identity'"):
        get_transform("relu")
    with pytest.raises(ValueError, match="get_transform: scale must not be given with a Transform"):
        get_transform(t, scale=2.0)
    with pytest.raises(TypeError, match="get_transform: name_or_transform must be a str, a Transform or"):
        get_transform(3)
    with pytest.raises(ValueError, match="Transform: scale must be a finite positive number"):
        get_transform("tanh", scale=-1.0)
    with pytest.raises(AttributeError):
        t.scale = 3.0  # frozen
    assert [Transform(n).saturating for n in TRANSFORMS] == [False, True, True, True, True]


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ------------------------------------------------------------------------------------------------

floats64 = st.floats(allow_nan=False, width=64)
floats32 = st.floats(allow_nan=False, width=32)
names = st.sampled_from(TRANSFORMS)
scales = st.sampled_from(SCALES)


def _float64_monotone_slack(w: np.ndarray) -> np.ndarray:
    """How far a float64 transform may step backwards: 2 ulps.

    In float64 the formulas are evaluated in float64 itself, with two roundings (``x / (1 + x)``: the
    sum and the quotient; tanh/arctan: NumPy's libm, faithful but not correctly rounded), so sorted
    inputs can give outputs that step back by an ulp or two: ``x / (1 + x)`` does so for thousands of
    consecutive floats near 1.5 (counted in :func:`test_float64_softsign_steps_back_at_most_two_ulps`).
    PyTorch's ``softsign`` is the same formula. float32 results are float64 values rounded once, which
    are monotone unless a float64 step-back straddles a float32 rounding boundary (never seen).
    """
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(w), 2 * np.spacing(np.abs(w)), 0.0)  # spacing(inf) is NaN


@given(names, scales, st.sampled_from(DTYPES), st.data())
def test_monotone_bounded_odd(name, scale, dtype, data):
    xs = data.draw(st.lists(floats32 if dtype == np.float32 else floats64, min_size=2, max_size=8))
    u = np.sort(np.array(xs, dtype=dtype))
    t = Transform(name, scale)
    w = t.forward(u)
    slack = 0 if dtype == np.float32 else _float64_monotone_slack(w[1:])
    assert np.all(w[:-1] <= w[1:] + slack), (u, w)  # monotone non-decreasing (up to rounding)
    assert np.all(np.abs(w) <= dtype(t.bound)), (u, w)  # bound, rounded to the dtype
    neg = t.forward(-u)
    np.testing.assert_array_equal(neg.view(f"u{w.itemsize}"), (-w).view(f"u{w.itemsize}"))  # odd, bitwise
    g = t.grad(u)
    assert np.all((g >= 0) & (g <= 1))
    np.testing.assert_array_equal(t.grad(-u), g)  # even


@given(st.sampled_from(SMOOTH), scales, floats64)
def test_inverse_is_finite_and_monotone(name, scale, w0):
    t = Transform(name, scale)
    w = np.sort(np.array([w0, w0 / 2, 0.9 * t.bound, -np.inf, np.inf]))
    u = t.inverse(w)
    assert np.all(np.isfinite(u))
    assert np.all(u[:-1] <= u[1:])


def test_float64_softsign_steps_back_at_most_two_ulps():
    """The bound of the monotonicity check above, measured on 2 million consecutive float64 around each
    point where the denominator's rounding changes: steps back exist (so the slack is needed) and
    never exceed 2 ulps (so it is not too generous); exact consecutive floats, no sampling."""
    t = Transform("softsign")
    worst, steps_back = 0.0, 0
    for center in (0.5, 1.5, 3.0, 2.0**30, 2.0**53, 1e16):
        bits = np.float64(center).view(np.int64) + np.arange(-10**6, 10**6, dtype=np.int64)
        w = t.forward(bits.view(np.float64))
        back = w[:-1] - w[1:]
        steps_back += int(np.sum(back > 0))
        worst = max(worst, float(np.max(back / np.spacing(w[1:]))))
    assert steps_back > 0 and worst <= 2
