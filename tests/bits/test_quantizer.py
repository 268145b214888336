"""Per-tensor quantizer: hand-checked vectors, an exact rational reference of the issue's formulas,
properties (bounds, monotonicity, round trips, rounding error), contexts and errors.

The reference ``ref_quantize`` never calls the code under test: it evaluates the formulas with Python
``Fraction`` arithmetic and rounds explicitly where the specification rounds (``r64``: a float64 scalar
operation; ``r32``: a float32 operation or cast, implemented here with integers, round half to even).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.bits.quantize import CODES, QUANT_ROUNDINGS, SCHEMES, QuantContext, Quantizer

F32 = np.float32
BIG = float(F32(3e38))  # a float32 value; BIG - (-BIG) overflows float32


# ----------------------------------------------------------------------------------------------------------
# Exact rounding helpers and the reference quantizer
# ----------------------------------------------------------------------------------------------------------
def r64(v: Fraction) -> Fraction:
    """Round a rational to the nearest float64 (CPython's int / int true division is correctly rounded)."""
    return Fraction(v.numerator / v.denominator)


def r32(v: Fraction) -> Fraction:
    """Round a rational to the nearest float32, ties to even (normal and subnormal range; no overflow)."""
    if v == 0:
        return Fraction(0)
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()  # 2**(e-1) < a < 2**(e+1)
    if a < Fraction(2) ** e:
        e -= 1  # now 2**e <= a < 2**(e+1)
    ulp = Fraction(2) ** (max(e, -126) - 23)  # 24-bit significand; subnormals share 2**-149
    rounded = round(a / ulp) * ulp  # round() of a Fraction rounds half to even
    assert rounded <= Fraction(float(np.finfo(np.float32).max)), "float32 overflow in the reference"
    return rounded if v > 0 else -rounded


def clip(v: Fraction, lo: Fraction, hi: Fraction) -> Fraction:
    return min(max(v, lo), hi)


@dataclass
class Ref:
    codes: list[int]
    decoded: list[Fraction]
    q: Fraction
    step: Fraction
    lo: Fraction | None = None
    hi: Fraction | None = None


def ref_decode(codes, nbits, code, q, step, lo=None, hi=None) -> list[Fraction]:
    """The decode formulas, one float32 rounding per operation."""
    half, top = 2 ** (nbits - 1), 2**nbits - 1
    out = []
    for c in codes:
        k = min(c, top) - half if code == "offset_binary" else (c - 2**nbits if c >= half else c)
        y = clip(r32(k * step), -q, q)
        if lo is not None:  # asymmetric: y = (y + 1) / 2; y = y * (max - min) + min; clip to [min, max]
            width = r32(r64(hi - lo))
            y = r32(r32(y + 1) / 2)
            y = clip(r32(r32(y * width) + lo), lo, hi)
        out.append(y)
    return out


def ref_quantize(x, nbits, *, scheme, code, rounding, clip_=None, max_abs=None, margin=0.0) -> Ref:
    """The issue's encode formulas on float32 values ``x`` (a list of Python floats)."""
    big_l = 2 ** (nbits - 1) - 1
    xs = [Fraction(v) for v in x]
    margin = Fraction(margin)
    lo = hi = None
    if scheme == "symmetric":
        if max_abs is not None:
            q64 = Fraction(max_abs)
            step = r32(r64(r64(q64 + margin) / big_l))  # (max_abs + margin) / L in float64, cast once
        else:
            q64 = r64(max(abs(v) for v in xs) + margin)  # max|x| + margin in float64
            if clip_ is not None:
                q64 = min(q64, Fraction(clip_))
            step = r32(r64(q64 / big_l))
        q = r32(q64)
        ts = xs
    else:
        if clip_ is not None:
            c = r32(Fraction(clip_))
            xs = [clip(v, -c, c) for v in xs]
        lo, hi = min(xs), max(xs)
        width = r32(r64(hi - lo))  # the divisor: formed in float64, cast once
        # t = (x - min) / (max - min), each op rounded to float32; then t = 2 t - 1 (2 t is exact)
        ts = [r32(2 * r32(r32(v - lo) / width) - 1) for v in xs] if width else [Fraction(0)] * len(xs)
        q = Fraction(1)
        step = r32(r64(r64(1 + margin) / big_l))
    codes = []
    for t in ts:
        s = r32(clip(t, -q, q) / step) if step else Fraction(0)  # divide by the step
        if code == "offset_binary":
            u = clip(r32(s + 2 ** (nbits - 1)), 0, 2**nbits - 1)  # 0 binds only for a subnormal step
            u = round(u) if rounding == "nearest_even" else math.floor(u)  # u >= 0: truncation = floor
            codes.append(int(u))
        else:
            v = round(s) if rounding == "nearest_even" else math.trunc(s)
            v = clip(v, -(2 ** (nbits - 1)), 2 ** (nbits - 1) - 1)  # binds only for a subnormal step
            codes.append(v % 2**nbits)  # two's complement bit pattern
    decoded = ref_decode(codes, nbits, code, q, step, lo, hi)
    return Ref(codes, decoded, q, step, lo, hi)


def fractions_of(a: np.ndarray) -> list[Fraction]:
    return [Fraction(float(v)) for v in a.ravel()]


def test_r32_matches_numpy_casts():
    """The helper itself: r32 of float64 values equals NumPy's (correctly rounded) float64 -> float32 cast."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(size=3000) * 10.0 ** rng.integers(-40, 38, size=3000),
            (rng.integers(-(2**25), 2**25, size=1000) + 0.5) * 2.0**-24,  # ties at float32 precision
            np.array([2.0**-149, 2.0**-150, 3 * 2.0**-151, 2.0**-126 - 2.0**-151, 1.5 * 2.0**-149]),
        ]
    )
    with np.errstate(over="ignore"):
        x = x[np.isfinite(x.astype(np.float32))]
    assert [r32(Fraction(float(v))) for v in x] == [Fraction(float(v)) for v in x.astype(np.float32)]


# ----------------------------------------------------------------------------------------------------------
# Hand-checked vectors (exact arithmetic: every step below is a multiple of 2**-k)
# ----------------------------------------------------------------------------------------------------------
def test_hand_symmetric_fixed_range():
    # nbits 4: L = 7, H = 2**3 = 8; max_abs = 0.875, margin 0: delta = 0.875 / 7 = 0.125, q = 0.875.
    x = np.array([0.0, 0.3125, -0.3125, 0.4375, 2.0, -2.0, 0.1], dtype=np.float32)
    # x / delta:    0,  2.5,    -2.5,    3.5,    7 (x clipped to 0.875), -7, 0.8 (float32 0.1 / 0.125)
    cases = {
        # offset: u = x / delta + 8 = 8, 10.5, 5.5, 11.5, 15, 1, 8.8; rint (ties to even) then truncate
        ("offset_binary", "nearest_even"): [8, 10, 6, 12, 15, 1, 9],
        # offset, truncate u: 8, 10, 5, 11, 15, 1, 8  (so -2.5 goes to level -3: down, not toward zero)
        ("offset_binary", "toward_zero"): [8, 10, 5, 11, 15, 1, 8],
        # two's complement: rint(2.5) = 2, rint(-2.5) = -2 -> 0b1110, rint(3.5) = 4, -7 -> 0b1001
        ("twos_complement", "nearest_even"): [0, 2, 14, 4, 7, 9, 1],
        # truncate toward zero: 2, -2, 3, 7, -7, 0
        ("twos_complement", "toward_zero"): [0, 2, 14, 3, 7, 9, 0],
    }
    expected_values = {
        ("offset_binary", "nearest_even"): [0, 0.25, -0.25, 0.5, 0.875, -0.875, 0.125],
        ("offset_binary", "toward_zero"): [0, 0.25, -0.375, 0.375, 0.875, -0.875, 0],
        ("twos_complement", "nearest_even"): [0, 0.25, -0.25, 0.5, 0.875, -0.875, 0.125],
        ("twos_complement", "toward_zero"): [0, 0.25, -0.25, 0.375, 0.875, -0.875, 0],
    }
    for (code, rounding), expected in cases.items():
        qz = Quantizer(4, scheme="symmetric", code=code, rounding=rounding, max_abs=0.875)
        codes, ctx = qz.encode(x)
        assert codes.dtype == np.uint8 and codes.tolist() == expected, (code, rounding)
        assert (ctx.q, ctx.step, ctx.min, ctx.max) == (0.875, 0.125, None, None)
        assert qz.decode(codes, ctx).tolist() == expected_values[(code, rounding)]


def test_hand_symmetric_margin_widens_step_but_not_bound():
    # max_abs = 0.75, margin = 0.125: delta = (0.75 + 0.125) / 7 = 0.125, but q stays 0.75.
    qz = Quantizer(4, scheme="symmetric", code="offset_binary", max_abs=0.75, margin=0.125)
    codes, ctx = qz.encode(np.array([1.0, 0.75, -0.8], dtype=np.float32))
    # 1.0 -> clipped 0.75 -> 6 -> u = 14; -0.8 -> -0.75 -> -6 -> u = 2
    assert codes.tolist() == [14, 14, 2] and (ctx.q, ctx.step) == (0.75, 0.125)
    # Code 15 (level 7, a flip away from 14) decodes to 7 * 0.125 = 0.875, clipped to q = 0.75;
    # code 0 (level -8) to -1.0, clipped to -0.75; code 9 to 0.125.
    assert qz.decode(np.array([15, 0, 9], dtype=np.uint8), ctx).tolist() == [0.75, -0.75, 0.125]


def test_hand_symmetric_adaptive_and_clipped():
    x = np.array([0.5, -0.25, 0.125], dtype=np.float32)
    # Adaptive: q = max|x| + margin = 0.5 + 0.375 = 0.875, delta = 0.125. 0.5 -> 4 -> 12, -0.25 -> -2 -> 6
    codes, ctx = Quantizer(4, scheme="symmetric", margin=0.375).encode(x)
    assert codes.tolist() == [12, 6, 9] and (ctx.q, ctx.step) == (0.875, 0.125)
    # Clipped: q = min(0.875, 0.4375) = 0.4375, delta = 0.0625. 0.5 -> 0.4375 -> 7 -> 15; -0.25 -> -4 -> 4
    qz = Quantizer(4, scheme="symmetric", margin=0.375, clip=0.4375, code="twos_complement")
    codes, ctx = qz.encode(x)
    assert codes.tolist() == [7, 0b1100, 2] and (ctx.q, ctx.step) == (0.4375, 0.0625)
    assert qz.decode(codes, ctx).tolist() == [0.4375, -0.25, 0.125]


def test_hand_asymmetric():
    # nbits 4 (L = 7), margin 0.75: delta = (1 + 0.75) / 7 = 0.25.
    x = np.array([-1.0, 0.0, 3.0, 0.5, 1.25, 0.75], dtype=np.float32)
    # min = -1, max = 3, width 4; t = (x + 1) / 4 = 0, .25, 1, .375, .5625, .4375
    # 2t - 1 = -1, -.5, 1, -.25, .125, -.125;  / 0.25 = -4, -2, 4, -1, .5, -.5
    cases = {
        ("offset_binary", "nearest_even"): [4, 6, 12, 7, 8, 8],  # 8.5 -> 8, 7.5 -> 8 (ties to even)
        ("offset_binary", "toward_zero"): [4, 6, 12, 7, 8, 7],  # 8.5 -> 8, 7.5 -> 7
        ("twos_complement", "nearest_even"): [12, 14, 4, 15, 0, 0],  # rint(.5) = 0, rint(-.5) = -0
        ("twos_complement", "toward_zero"): [12, 14, 4, 15, 0, 0],
    }
    # decode: level * 0.25 -> (y + 1) / 2 -> * 4 - 1:  -4 -> -1,  -2 -> 0,  4 -> 3,  -1 -> 0.5,
    # 0 -> 1, 1 -> 1.5 (not used), -1 -> 0.5
    values = {-4: -1.0, -2: 0.0, 4: 3.0, -1: 0.5, 0: 1.0}
    for (code, rounding), expected in cases.items():
        qz = Quantizer(4, scheme="asymmetric", code=code, rounding=rounding, margin=0.75)
        codes, ctx = qz.encode(x)
        assert codes.tolist() == expected, (code, rounding)
        assert (ctx.q, ctx.step, ctx.min, ctx.max) == (1.0, 0.25, -1.0, 3.0)
        levels = [c - 8 if code == "offset_binary" else (c - 16 if c >= 8 else c) for c in expected]
        assert qz.decode(codes, ctx).tolist() == [values[k] for k in levels]


def test_hand_asymmetric_clipped():
    # clip = 1: x -> -1, 0, 1, min -1, max 1, width 2; t = (x + 1) / 2 = 0, .5, 1 -> -1, 0, 1 -> -4, 0, 4
    qz = Quantizer(4, scheme="asymmetric", clip=1.0, margin=0.75)
    codes, ctx = qz.encode(np.array([-1.0, 0.0, 3.0], dtype=np.float32))
    assert codes.tolist() == [4, 8, 12] and (ctx.min, ctx.max) == (-1.0, 1.0)
    assert qz.decode(codes, ctx).tolist() == [-1.0, 0.0, 1.0]


def test_hand_inexact_step_is_rounded_once_from_float64():
    # max_abs = 1, margin = 1e-3, nbits 8: delta = float32(1.001 / 127) (one rounding of the float64
    # quotient), not float32(1.001) / 127 in float32 (two roundings).
    qz = Quantizer(8, scheme="symmetric", max_abs=1.0, margin=1e-3)
    _, ctx = qz.encode(np.zeros(1, dtype=np.float32))
    assert ctx.step == float(r32(r64(r64(Fraction(1) + Fraction(1e-3)) / 127)))
    assert ctx.step == float(F32(1.001 / 127))


# ----------------------------------------------------------------------------------------------------------
# The reference on random inputs
# ----------------------------------------------------------------------------------------------------------
@st.composite
def configs(draw):
    nbits = draw(st.integers(2, 16))
    scheme = draw(st.sampled_from(SCHEMES))
    kw = {
        "scheme": scheme,
        "code": draw(st.sampled_from(CODES)),
        "rounding": draw(st.sampled_from(QUANT_ROUNDINGS)),
        "margin": draw(st.one_of(st.just(0.0), st.just(1e-3), st.floats(0.0, 0.5))),
    }
    positive = st.floats(1e-3, 1e3)
    mode = draw(
        st.sampled_from(["fixed", "adaptive", "clipped"] if scheme == "symmetric" else ["", "clipped"])
    )
    if mode == "fixed":
        kw["max_abs"] = draw(positive)
    elif mode == "clipped":
        kw["clip"] = draw(positive)
    return nbits, kw


def float32_arrays(min_size=1, max_size=24):
    scale = st.sampled_from([1e-40, 1e-6, 1e-3, 0.1, 1.0, 30.0, 1e4])
    unit = st.floats(-1.0, 1.0, width=32)
    value = st.one_of(
        st.tuples(unit, scale).map(lambda p: p[0] * p[1]),
        st.just(0.0),
        st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    )
    return st.lists(value, min_size=min_size, max_size=max_size).map(lambda v: np.array(v, dtype=np.float32))


@given(configs(), float32_arrays())
def test_matches_exact_reference(config, x):
    nbits, kw = config
    qz = Quantizer(nbits, **kw)
    before = x.copy()
    codes, ctx = qz.encode(x)
    np.testing.assert_array_equal(x, before)  # the caller's array is untouched
    ref = ref_quantize(
        x.tolist(), nbits, scheme=kw["scheme"], code=kw["code"], rounding=kw["rounding"],
        clip_=kw.get("clip"), max_abs=kw.get("max_abs"), margin=kw["margin"],
    )  # fmt: skip
    assert codes.dtype == qz.container and codes.shape == x.shape
    assert codes.tolist() == ref.codes, (qz, x.tolist())
    assert (Fraction(ctx.q), Fraction(ctx.step)) == (ref.q, ref.step)
    if kw["scheme"] == "asymmetric":
        assert (Fraction(ctx.min), Fraction(ctx.max)) == (ref.lo, ref.hi)
    decoded = qz.decode(codes, ctx)
    assert decoded.dtype == np.float32 and fractions_of(decoded) == ref.decoded
    # Any code (as after bit errors) decodes as the reference says.
    all_codes = np.arange(2**nbits, dtype=qz.container)[:: max(1, 2**nbits // 256)]
    expected = ref_decode(all_codes.tolist(), nbits, kw["code"], ref.q, ref.step, ref.lo, ref.hi)
    assert fractions_of(qz.decode(all_codes, ctx)) == expected


def test_scalars_formed_in_float64_and_cast_once():
    """q and delta for 600 random ranges and margins against the reference's roundings; the same scalars
    formed in float32 arithmetic differ in a good fraction of the cases, so this can tell them apart."""
    rng = np.random.default_rng(11)
    differs = 0
    for i in range(600):
        nbits = int(rng.integers(2, 17))
        big_l = 2 ** (nbits - 1) - 1
        margin = float(rng.uniform(0, 0.1)) if i % 3 else 1e-3
        bound = float(F32(10 ** rng.uniform(-3, 3)))
        mode = ["fixed", "adaptive", "clipped", "asymmetric"][i % 4]
        if mode == "fixed":
            qz = Quantizer(nbits, scheme="symmetric", max_abs=bound, margin=margin)
            q64, step = Fraction(bound), r32(r64(r64(Fraction(bound) + Fraction(margin)) / big_l))
            step32 = F32(F32(bound) + F32(margin)) / F32(big_l)
        elif mode == "asymmetric":
            qz = Quantizer(nbits, margin=margin)
            q64, step = Fraction(1), r32(r64(r64(1 + Fraction(margin)) / big_l))
            step32 = F32(F32(1.0) + F32(margin)) / F32(big_l)
        else:
            clip_ = float(rng.uniform(0.5, 1.5)) * bound if mode == "clipped" else None
            qz = Quantizer(nbits, scheme="symmetric", margin=margin, clip=clip_)
            q64 = r64(Fraction(bound) + Fraction(margin))  # max|x| = bound, plus the margin in float64
            if clip_ is not None:
                q64 = min(q64, Fraction(clip_))
            step = r32(r64(q64 / big_l))
            q32 = F32(bound) + F32(margin) if clip_ is None else min(F32(bound) + F32(margin), F32(clip_))
            step32 = q32 / F32(big_l)
        _, ctx = qz.encode(np.array([bound, -bound / 3], dtype=np.float32))
        assert (Fraction(ctx.q), Fraction(ctx.step)) == (r32(q64), step), (mode, nbits, bound, margin)
        differs += Fraction(float(step32)) != step
    assert differs > 60, differs


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("rounding", QUANT_ROUNDINGS)
@pytest.mark.parametrize(("max_abs", "margin"), [(1.0, 1e-3), (0.1, 1e-3), (1.0, 0.0)])
def test_near_ties_divide_by_the_step(code, rounding, max_abs, margin):
    """Inputs a few ulps around the rounding boundaries, where x / delta and x * (1 / delta) disagree."""
    nbits, big_l = 8, 127
    step = F32((max_abs + margin) / big_l)
    offset = 0.5 if rounding == "nearest_even" else 0.0
    centres = np.array([(k + offset) * float(step) for k in range(-big_l, big_l + 1)], dtype=np.float32)
    x = np.concatenate([centres + i * np.spacing(centres) for i in range(-4, 5)]).astype(np.float32)
    x = x[np.abs(x) <= F32(max_abs)]
    qz = Quantizer(nbits, scheme="symmetric", code=code, rounding=rounding, max_abs=max_abs, margin=margin)
    ref = ref_quantize(x.tolist(), nbits, scheme="symmetric", code=code, rounding=rounding, max_abs=max_abs,
                       margin=margin)  # fmt: skip
    codes, _ = qz.encode(x)
    assert codes.tolist() == ref.codes
    # The case discriminates: multiplying by the float32 reciprocal gives different codes somewhere.
    with_reciprocal = ref_quantize_reciprocal(x, nbits, code, rounding, step)
    assert with_reciprocal != ref.codes


def ref_quantize_reciprocal(x, nbits, code, rounding, step):
    """The wrong implementation (x * (1 / delta)), to show the near-tie test can tell the difference."""
    s = x * (F32(1.0) / step)
    if code == "offset_binary":
        u = np.minimum(s + F32(2 ** (nbits - 1)), F32(2**nbits - 1))
        return (np.rint(u) if rounding == "nearest_even" else np.trunc(u)).astype(int).tolist()
    v = (np.rint(s) if rounding == "nearest_even" else np.trunc(s)).astype(int)
    return (v % 2**nbits).tolist()


# ----------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------
def _levels(qz: Quantizer, codes: np.ndarray) -> np.ndarray:
    """Signed levels of codes, computed independently (offset: c - H; two's complement: int view)."""
    c = codes.astype(np.int64)
    if qz.code == "offset_binary":
        return c - 2 ** (qz.nbits - 1)
    return np.where(c >= 2 ** (qz.nbits - 1), c - 2**qz.nbits, c)


@given(configs(), float32_arrays(max_size=32))
def test_bounds_monotonicity_and_rounding_error(config, x):
    nbits, kw = config
    qz = Quantizer(nbits, **kw)
    x = np.sort(x)
    codes, ctx = qz.encode(x)
    y = qz.decode(codes, ctx)
    levels = _levels(qz, codes)
    big_l = 2 ** (nbits - 1) - 1
    # Bounds: codes fit in nbits; levels in [-L, L] (offset + truncation may reach -L - 1, see docs; so
    # may anything when the step is a subnormal float32, where the division is imprecise).
    normal_step = ctx.step >= np.finfo(np.float32).tiny
    assert int(codes.max()) < 2**nbits
    strict = kw["code"] == "twos_complement" and normal_step
    assert levels.max() <= big_l and levels.min() >= (-big_l if strict else -big_l - 1)
    lo, hi = (-ctx.q, ctx.q) if ctx.scheme == "symmetric" else (ctx.min, ctx.max)
    assert np.all((y >= lo) & (y <= hi))
    # Monotone: x sorted -> levels and decoded values non-decreasing.
    assert np.all(np.diff(levels) >= 0) and np.all(np.diff(y) >= 0)
    # Rounding error inside the range, exactly (Fractions), with the float32 rounding slack of the
    # arithmetic: <= delta / 2 (nearest), < delta (truncation), in units of x.
    if ctx.scheme == "symmetric":
        scale, inside = Fraction(1), np.abs(x) <= ctx.q
        slack = Fraction(2.0 ** (nbits - 21)) * Fraction(ctx.step)
    else:
        c = F32(kw["clip"]) if "clip" in kw else F32(np.inf)
        scale, inside = Fraction(ctx.max - ctx.min) / 2, np.abs(x) <= c
        slack = scale * Fraction(2.0 ** (nbits - 21)) * Fraction(ctx.step) + Fraction(2.0**-20) * max(
            abs(Fraction(ctx.min)), abs(Fraction(ctx.max))
        )
    slack += Fraction(8, 2**149)  # absolute float32 rounding floor (subnormal results)
    half = Fraction(1, 2) if kw["rounding"] == "nearest_even" else Fraction(1)
    bound = half * scale * Fraction(ctx.step) + slack
    if not normal_step:
        return  # a subnormal step has too few significant bits for an error bound in steps
    for xi, yi in zip(x[inside], y[inside], strict=True):
        assert abs(Fraction(float(yi)) - Fraction(float(xi))) <= bound, (qz, xi, yi, ctx)


@pytest.mark.parametrize("nbits", [2, 3, 4, 5, 8, 11, 16])
@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("rounding", QUANT_ROUNDINGS)
def test_round_trip_decode_encode_decode(nbits, code, rounding):
    """decode(encode(decode(c))) == decode(c) for nearest rounding, over every code encode can produce
    (levels -L..L; the extra level -2**(m-1) decodes to -q, which re-encodes as -L). Truncation is not
    idempotent in float32: k * delta rounds, divides back to just below k and truncates to the next level
    down, so there the round trip moves by at most one level, in the truncation direction."""
    rng = np.random.default_rng(nbits)
    big_l = 2 ** (nbits - 1) - 1
    for max_abs in [1.0, 0.1, *F32(10.0 ** rng.uniform(-3, 3, size=20)).tolist()]:
        for margin in (0.0, 1e-3):
            qz = Quantizer(nbits, scheme="symmetric", code=code, rounding=rounding, max_abs=max_abs,
                           margin=margin)  # fmt: skip
            codes = np.arange(2**nbits, dtype=qz.container)
            codes = codes[np.abs(_levels(qz, codes)) <= big_l]
            _, ctx = qz.encode(np.zeros(1, dtype=np.float32))
            y = qz.decode(codes, ctx)
            y2 = qz.decode(qz.encode(y)[0], ctx)
            if rounding == "nearest_even" and margin == 0.0:
                np.testing.assert_array_equal(y2, y)
            elif rounding == "nearest_even":  # with a margin, values clipped to q may move one level
                unclipped = np.abs(y) < F32(ctx.q)
                np.testing.assert_array_equal(y2[unclipped], y[unclipped])
            diff = np.abs(y2.astype(np.float64) - y.astype(np.float64))
            assert np.all(diff <= ctx.step * (1 + 2.0**-10))
            if rounding == "toward_zero" and code == "offset_binary":
                assert np.all(y2 <= y)
            elif rounding == "toward_zero":
                assert np.all(np.abs(y2) <= np.abs(y))


def test_toward_zero_offset_binary_can_reach_code_zero():
    """Documented quirk of the reference formulas: -q / delta lands just below -L, u just below 1."""
    qz = Quantizer(8, scheme="symmetric", rounding="toward_zero", max_abs=0.001)
    codes, ctx = qz.encode(np.array([-0.001, 0.001], dtype=np.float32))
    ref = ref_quantize([float(F32(-0.001)), float(F32(0.001))], 8, scheme="symmetric", code="offset_binary",
                       rounding="toward_zero", max_abs=0.001)  # fmt: skip
    assert codes.tolist() == ref.codes == [0, 255]
    assert qz.decode(codes, ctx).tolist() == [-ctx.q, ctx.q]


# ----------------------------------------------------------------------------------------------------------
# Degenerate ranges, containers, scalars
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", CODES)
def test_constant_tensor_asymmetric(code):
    qz = Quantizer(6, scheme="asymmetric", code=code, margin=1e-3)
    x = np.full((2, 3), 0.7, dtype=np.float32)
    codes, ctx = qz.encode(x)
    assert ctx.min == ctx.max == float(F32(0.7))
    assert set(codes.ravel().tolist()) == {32 if code == "offset_binary" else 0}  # level 0
    np.testing.assert_array_equal(qz.decode(codes, ctx), x)  # everything decodes to min
    # Any code decodes to min: the range has width 0.
    assert set(qz.decode(np.arange(64, dtype=np.uint8), ctx).tolist()) == {float(F32(0.7))}


@pytest.mark.parametrize("x", [[0.0, -0.0, 0.0], [1e-44, -1e-45]])
def test_zero_step_adaptive(x):
    """All zeros with margin 0 (q = 0), or |x| so small that q / L underflows float32: step 0, level 0."""
    qz = Quantizer(8, scheme="symmetric", code="offset_binary")
    codes, ctx = qz.encode(np.array(x, dtype=np.float32))
    assert ctx.step == 0.0 and codes.tolist() == [128] * len(x)
    assert qz.decode(codes, ctx).tolist() == [0.0] * len(x)


@pytest.mark.parametrize("code", CODES)
def test_subnormal_step_saturates_instead_of_wrapping(code):
    """max|x| = 1.1e-44: delta = float32(1.1e-44 / 7) = 2**-149 and x / delta = 8 > L = 7. The stored
    integer saturates (to level 7) rather than wrapping to level -8, the opposite sign."""
    qz = Quantizer(4, scheme="symmetric", code=code)
    x = np.array([1.1e-44, -1.1e-44], dtype=np.float32)
    codes, ctx = qz.encode(x)
    assert ctx.step == 2.0**-149
    ref = ref_quantize(x.tolist(), 4, scheme="symmetric", code=code, rounding="nearest_even")
    assert codes.tolist() == ref.codes == ([15, 0] if code == "offset_binary" else [7, 8])
    # Decoded: 7 * 2**-149 (sign kept) and -8 * 2**-149 = -q.
    assert fractions_of(qz.decode(codes, ctx)) == ref.decoded == [Fraction(7, 2**149), Fraction(-8, 2**149)]


def test_offset_binary_decode_clamps_bits_above_nbits():
    qz = Quantizer(4, scheme="symmetric", max_abs=0.875)
    _, ctx = qz.encode(np.zeros(1, dtype=np.float32))
    # 0xff and 0x1f (bits above nbits set) clamp to 15 (level 7): 7 * 0.125 = 0.875.
    assert qz.decode(np.array([0xFF, 0x1F, 15], dtype=np.uint8), ctx).tolist() == [0.875] * 3
    wide = qz.decode(np.array([2**40, 3], dtype=np.uint64), ctx)
    assert wide.tolist() == [0.875, -0.625]  # (3 - 8) * 0.125
    # Where float32(L * delta) < q (an adaptive range), the clamp is visible through the final clip:
    # code 16 clamps to 15 and decodes to 7 * delta, not to min(8 * delta, q) = q.
    qz = Quantizer(4, scheme="symmetric", code="offset_binary")
    for bound in F32(np.linspace(0.1, 1.0, 200)):
        _, ctx = qz.encode(np.array([bound], dtype=np.float32))
        if F32(7) * F32(ctx.step) < F32(ctx.q):
            break
    else:
        pytest.fail("no adaptive range with float32(7 * delta) < q found")
    got = qz.decode(np.array([16, 0xFF, 15], dtype=np.uint8), ctx)
    assert fractions_of(got) == [r32(7 * Fraction(ctx.step))] * 3 and got[0] < ctx.q


def test_layout_name_fields_and_containers():
    assert Quantizer(8).name == "quant8_asym_offset_rounded"
    assert Quantizer(8, scheme="symmetric", code="twos_complement", rounding="toward_zero",
                     max_abs=1.0).name == "quant8_sym_twos_trunc_maxabs1"  # fmt: skip
    assert Quantizer(4, scheme="symmetric", clip=0.1).name == "quant4_sym_offset_rounded_clip0.1"
    for nbits in range(2, 17):
        qz = Quantizer(nbits, code="twos_complement")
        assert qz.container == (np.uint8 if nbits <= 8 else np.uint16)
        assert list(qz.fields) == ["sign", "low"]
        assert qz.fields["sign"].lsb == nbits - 1 and qz.fields["low"].width == nbits - 1
    assert list(Quantizer(8).fields) == ["msb", "low"]
    assert "Quantizer(8, scheme='asymmetric'" in repr(Quantizer(8))


def test_zero_dimensional_and_empty():
    qz = Quantizer(8, scheme="symmetric", max_abs=1.0)
    codes, ctx = qz.encode(np.float32(0.5))
    assert isinstance(codes, np.ndarray) and codes.shape == () and codes.dtype == np.uint8
    assert isinstance(qz.decode(codes, ctx), np.ndarray) and qz.decode(codes, ctx).shape == ()
    codes, ctx = qz.encode(np.zeros((0, 3), dtype=np.float32))  # a fixed range needs no data
    assert codes.shape == (0, 3) and qz.decode(codes, ctx).shape == (0, 3)


# ----------------------------------------------------------------------------------------------------------
# Contexts
# ----------------------------------------------------------------------------------------------------------
@given(configs(), float32_arrays())
def test_context_json_round_trip(config, x):
    nbits, kw = config
    qz = Quantizer(nbits, **kw)
    codes, ctx = qz.encode(x)
    again = QuantContext.from_dict(json.loads(json.dumps(ctx.to_dict())))
    assert again == ctx
    np.testing.assert_array_equal(qz.decode(codes, again), qz.decode(codes, ctx))


def test_context_validation():
    ok = {"scheme": "asymmetric", "code": "offset_binary", "nbits": 8, "q": 1.0, "step": 0.0078125,
          "min": -1.0, "max": 2.0}  # fmt: skip
    assert QuantContext.from_dict(ok).to_dict() == ok
    bad = [
        ({"scheme": "sym"}, ValueError, r"QuantContext: scheme must be one of"),
        ({"code": "unsigned"}, ValueError, r"QuantContext: code must be one of"),
        ({"nbits": 17}, ValueError, r"QuantContext: nbits must be in \[2, 16\]"),
        ({"nbits": 8.0}, TypeError, r"QuantContext: nbits must be an integer"),
        ({"q": "1"}, TypeError, r"QuantContext: q must be a real number"),
        ({"q": -1.0}, ValueError, r"QuantContext: q must be a finite non-negative float32 value"),
        ({"step": 0.1}, ValueError, r"QuantContext: step must be a finite non-negative float32 value"),
        ({"step": math.inf}, ValueError, r"QuantContext: step must be a finite non-negative float32"),
        ({"min": 0.1}, ValueError, r"QuantContext: min must be a finite float32 value"),
        ({"max": None}, TypeError, r"QuantContext: max must be a real number"),
        ({"min": 3.0}, ValueError, r"QuantContext: min \(=3.0\) must be <= max \(=2.0\)"),
        (
            {"min": -BIG, "max": BIG},
            ValueError,
            r"QuantContext: max - min \(=6\.0.*e\+38\) must fit in float32",
        ),
        ({"scheme": "symmetric"}, ValueError, r"QuantContext: min and max must be None for scheme"),
    ]
    for change, error, message in bad:
        with pytest.raises(error, match=message):
            QuantContext.from_dict({**ok, **change})
    with pytest.raises(ValueError, match=r"QuantContext.from_dict: data must have exactly the keys"):
        QuantContext.from_dict({k: v for k, v in ok.items() if k != "min"})
    with pytest.raises(ValueError, match=r"QuantContext.from_dict: data must have exactly the keys"):
        QuantContext.from_dict({**ok, "extra": 1})
    with pytest.raises(TypeError, match=r"QuantContext.from_dict: data must be a dict"):
        QuantContext.from_dict([("scheme", "symmetric")])


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"nbits": 1}, ValueError, r"Quantizer: nbits must be in \[2, 16\], got 1"),
        ({"nbits": 17}, ValueError, r"Quantizer: nbits must be in \[2, 16\], got 17"),
        ({"nbits": 8.0}, TypeError, r"Quantizer: nbits must be an integer"),
        ({"scheme": "sym"}, ValueError, r"Quantizer: scheme must be one of \('symmetric', 'asymmetric'\)"),
        ({"code": "signed"}, ValueError, r"Quantizer: code must be one of"),
        ({"rounding": "floor"}, ValueError, r"Quantizer: rounding must be one of"),
        ({"clip": 0.0}, ValueError, r"Quantizer: clip must be a positive number that is finite in float32"),
        ({"clip": -1.0}, ValueError, r"Quantizer: clip must be a positive number"),
        ({"clip": math.nan}, ValueError, r"Quantizer: clip must be a positive number"),
        ({"clip": 1e39}, ValueError, r"Quantizer: clip must be a positive number that is finite in float32"),
        ({"clip": 1e-50}, ValueError, r"Quantizer: clip must be a positive number"),
        ({"clip": "0.1"}, TypeError, r"Quantizer: clip must be a real number"),
        ({"scheme": "symmetric", "max_abs": -1.0}, ValueError, r"Quantizer: max_abs must be a positive"),
        ({"scheme": "symmetric", "max_abs": True}, TypeError, r"Quantizer: max_abs must be a real number"),
        ({"max_abs": 1.0}, ValueError, r"Quantizer: max_abs must be None for scheme 'asymmetric'"),
        ({"scheme": "symmetric", "max_abs": 1.0, "clip": 0.5}, ValueError,
         r"Quantizer: clip must be None when max_abs is given"),
        ({"margin": -1e-3}, ValueError, r"Quantizer: margin must be a finite number >= 0, got -0.001"),
        ({"margin": math.inf}, ValueError, r"Quantizer: margin must be a finite number >= 0"),
        ({"margin": None}, TypeError, r"Quantizer: margin must be a real number"),
        ({"scheme": "symmetric", "max_abs": 1e-44}, ValueError,
         r"Quantizer: \(range \+ margin\) / L must be a positive finite float32"),
        ({"margin": 1e41}, ValueError, r"Quantizer: \(range \+ margin\) / L must be a positive finite"),
    ],
)  # fmt: skip
def test_constructor_errors(kwargs, error, message):
    kwargs = {"nbits": 8, **kwargs}
    with pytest.raises(error, match=message):
        Quantizer(kwargs.pop("nbits"), **kwargs)


def test_encode_errors():
    qz = Quantizer(8, scheme="symmetric")
    name = r"quant8_sym_offset_rounded\.encode"
    with pytest.raises(TypeError, match=name + r": x must have dtype in \(float32\), got float64"):
        qz.encode(np.zeros(3))
    with pytest.raises(TypeError, match=name + r": x must have dtype in \(float32\), got float16"):
        qz.encode(np.zeros(3, dtype=np.float16))
    with pytest.raises(TypeError, match=name + r": x must be a numpy.ndarray"):
        qz.encode([0.5])
    with pytest.raises(ValueError, match=name + r": x must be finite, got NaN or inf"):
        qz.encode(np.array([0.5, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match=name + r": x must be finite"):
        qz.encode(np.array([-np.inf], dtype=np.float32))
    with pytest.raises(ValueError, match=name + r": x must be non-empty for an adaptive range"):
        qz.encode(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"quant8_asym_offset_rounded\.encode: x must be non-empty"):
        Quantizer(8).encode(np.zeros((2, 0), dtype=np.float32))
    with pytest.raises(ValueError, match=name + r": max\|x\| \+ margin \(=.*\) must fit in float32"):
        Quantizer(8, scheme="symmetric", margin=1e38).encode(np.array([3.4e38], dtype=np.float32))
    big = np.array([-3e38, 3e38], dtype=np.float32)
    with pytest.raises(
        ValueError, match=r"asym_offset_rounded\.encode: max\(x\) - min\(x\) .* must fit in float32"
    ):
        Quantizer(8).encode(big)


def test_decode_errors():
    qz = Quantizer(9, scheme="symmetric", code="twos_complement")
    codes, ctx = qz.encode(np.array([0.5, -0.25], dtype=np.float32))
    name = r"quant9_sym_twos_rounded\.decode"
    with pytest.raises(TypeError, match=name + r": codes must have dtype in \(uint16, uint32, uint64\)"):
        qz.decode(codes.astype(np.uint8), ctx)
    with pytest.raises(TypeError, match=name + r": codes must have dtype in"):
        qz.decode(codes.astype(np.int16), ctx)
    with pytest.raises(TypeError, match=name + r": codes must be a numpy.ndarray"):
        qz.decode(codes.tolist(), ctx)
    with pytest.raises(
        ValueError, match=name + r": codes must fit in 9 bits \(at most 0x1ff\), got a code 0x200"
    ):
        qz.decode(np.array([0x200], dtype=np.uint16), ctx)
    with pytest.raises(TypeError, match=name + r": context must be a QuantContext, got dict"):
        qz.decode(codes, ctx.to_dict())
    with pytest.raises(ValueError, match=name + r": context.nbits \(=8\) must equal quantizer.nbits \(=9\)"):
        qz.decode(codes, Quantizer(8, scheme="symmetric", code="twos_complement").encode(np.ones(1, F32))[1])
    with pytest.raises(ValueError, match=name + r": context.code \('offset_binary'|=offset_binary\)"):
        qz.decode(codes, Quantizer(9, scheme="symmetric").encode(np.ones(1, F32))[1])
    with pytest.raises(ValueError, match=name + r": context.scheme \(=asymmetric\) must equal"):
        qz.decode(codes, Quantizer(9, code="twos_complement").encode(np.ones(1, F32))[1])


def test_inputs_not_mutated():
    x = np.array([[0.3, -0.2], [0.9, 0.0]], dtype=np.float32)
    before = x.copy()
    for kw in ({}, {"clip": 0.25}, {"scheme": "symmetric", "clip": 0.25}):
        qz = Quantizer(8, **kw)
        codes, ctx = qz.encode(x)
        kept = codes.copy()
        qz.decode(codes, ctx)
        np.testing.assert_array_equal(x, before)
        np.testing.assert_array_equal(codes, kept)


def test_quantizers_compare_and_hash_by_their_settings():
    from saf_ref.protect import StorageRule, StorageSpec

    a = Quantizer(8, scheme="symmetric", clip=0.5)
    same = Quantizer(8, scheme="symmetric", clip=0.5)
    assert a == same and hash(a) == hash(same) and len({a, same}) == 1
    for other in (
        Quantizer(7, scheme="symmetric", clip=0.5),
        Quantizer(8, scheme="symmetric", clip=0.25),
        Quantizer(8, scheme="symmetric", clip=0.5, margin=0.1),
        Quantizer(8, scheme="symmetric", clip=0.5, code="twos_complement"),
        Quantizer(8, scheme="symmetric", clip=0.5, rounding="toward_zero"),
        Quantizer(8, scheme="symmetric", max_abs=0.5),
        Quantizer(8, clip=0.5),
    ):
        assert a != other
    assert a != "quant8_sym_offset_rounded_clip0.5" and a != 8
    # a storage spec with a quantizer reads back from its dict form equal to itself
    spec = StorageSpec((StorageRule("*.weight", format=a), StorageRule("*", format="float32")))
    assert StorageSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert Quantizer.from_json(json.loads(json.dumps(a.to_json()))) == a
