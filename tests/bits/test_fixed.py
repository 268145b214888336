"""Fixed point qM.N: layout, exhaustive decode tables, encode against an exact Fraction reference.

The references here never call the code under test: signed integers come from NumPy views or from
arithmetic shifts, expected encodings from Python ``Fraction`` arithmetic with Python integers.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.bits.fields import NumberFormat
from saf_ref.bits.fixed import (
    OVERFLOWS,
    ROUNDINGS,
    FixedPointFormat,
    is_fixed_format_name,
    parse_fixed_format,
)

MODES = [(r, o) for r in ROUNDINGS for o in OVERFLOWS]


# ----------------------------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------------------------
def ref_round(v: Fraction, rounding: str) -> int:
    """Exact rounding of a rational to an integer (Python's round() on a Fraction is half-to-even)."""
    return {"nearest_even": round, "toward_zero": math.trunc, "floor": math.floor}[rounding](v)


def ref_encode(x: float, m: int, n: int, rounding: str, overflow: str) -> int:
    """The qM.N code of the float ``x``, computed with Fractions and Python integers."""
    nbits = 1 + m + n
    lo, hi = -(2 ** (nbits - 1)), 2 ** (nbits - 1) - 1
    if math.isinf(x):  # only reached under "saturate"
        k = hi if x > 0 else lo
    else:
        k = ref_round(Fraction(x) * 2**n, rounding)
    k = min(max(k, lo), hi) if overflow == "saturate" else k % 2**nbits
    return k % 2**nbits  # the two's complement bit pattern of k


def ref_signed(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Sign-extend nbits-bit words by an arithmetic shift in a signed 64-bit word (not the code's method)."""
    shift = 64 - nbits
    return (codes.astype(np.uint64) << np.uint64(shift)).view(np.int64) >> shift


def format_strategy(max_bits: int = 32):
    return st.integers(2, max_bits).flatmap(
        lambda nbits: st.integers(0, nbits - 1).map(lambda m: FixedPointFormat(m, nbits - 1 - m))
    )


# ----------------------------------------------------------------------------------------------------------
# Names and layout
# ----------------------------------------------------------------------------------------------------------
def test_q2_5_layout():
    fmt = parse_fixed_format("q2.5")
    assert isinstance(fmt, NumberFormat)
    assert (fmt.name, fmt.nbits, fmt.int_bits, fmt.frac_bits) == ("q2.5", 8, 2, 5)
    assert fmt.container == np.uint8 and fmt.decode_dtype == np.float32
    # Range [-4, 4 - 2**-5], step 2**-5 (the example).
    assert (fmt.min_value, fmt.max_value, fmt.step) == (-4.0, 4.0 - 1 / 32, 1 / 32)
    assert list(fmt.fields) == ["sign", "integer", "fraction"]
    assert fmt.fields["sign"].mask == 0b1000_0000
    assert fmt.fields["integer"].mask == 0b0110_0000
    assert fmt.fields["fraction"].mask == 0b0001_1111


@pytest.mark.parametrize(
    ("name", "fields", "container", "decode_dtype"),
    [
        ("q0.7", ["sign", "fraction"], np.uint8, np.float32),
        ("q7.0", ["sign", "integer"], np.uint8, np.float32),
        ("q0.1", ["sign", "fraction"], np.uint8, np.float32),
        ("q1.0", ["sign", "integer"], np.uint8, np.float32),
        ("q3.5", ["sign", "integer", "fraction"], np.uint16, np.float32),
        ("q8.16", ["sign", "integer", "fraction"], np.uint32, np.float32),  # 25 bits: float32 exact
        ("q9.16", ["sign", "integer", "fraction"], np.uint32, np.float64),  # 26 bits: not
        ("q0.31", ["sign", "fraction"], np.uint32, np.float64),
        ("Q15.16", ["sign", "integer", "fraction"], np.uint32, np.float64),
    ],
)
def test_layout_table(name, fields, container, decode_dtype):
    fmt = parse_fixed_format(name)
    assert fmt.name == name.lower()
    assert list(fmt.fields) == fields
    assert fmt.container == container and fmt.decode_dtype == decode_dtype
    # The fields tile the word exactly: their masks are disjoint and add up to 2**nbits - 1.
    masks = [f.mask for f in fmt.fields.values()]
    assert sum(masks) == 2**fmt.nbits - 1
    assert all(a & b == 0 for i, a in enumerate(masks) for b in masks[i + 1 :])


def test_name_predicates():
    assert is_fixed_format_name("q2.5") and is_fixed_format_name("Q0.31") and is_fixed_format_name("q1.0")
    for bad in ["q0.0", "q16.16", "q2", "2.5", "q-1.5", "q2.5 ", "float16", "", 2.5, None]:
        assert not is_fixed_format_name(bad), bad


@pytest.mark.parametrize("bad", ["q2", "2.5", "q2.5.1", "q-1.5", "q2.x", "fixed8", " q2.5"])
def test_parse_rejects_malformed_names(bad):
    with pytest.raises(ValueError, match=r"parse_fixed_format: name must have the form 'qM.N'"):
        parse_fixed_format(bad)


@pytest.mark.parametrize("bad", ["q0.0", "q16.16", "q31.1"])
def test_parse_rejects_widths(bad):
    with pytest.raises(ValueError, match=r"parse_fixed_format: name .* bits, expected 2..32"):
        parse_fixed_format(bad)


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError, match=r"parse_fixed_format: name must be a str"):
        parse_fixed_format(25)


def test_constructor_validation():
    with pytest.raises(TypeError, match=r"FixedPointFormat: int_bits must be an integer"):
        FixedPointFormat(2.0, 5)
    with pytest.raises(ValueError, match=r"FixedPointFormat: frac_bits must be in \[0, 31\]"):
        FixedPointFormat(2, -1)
    with pytest.raises(ValueError, match=r"FixedPointFormat: 1 \+ int_bits \+ frac_bits must be in"):
        FixedPointFormat(0, 0)
    with pytest.raises(ValueError, match=r"FixedPointFormat: 1 \+ int_bits \+ frac_bits must be in"):
        FixedPointFormat(20, 20)
    assert FixedPointFormat(2, 5) == parse_fixed_format("Q2.5")


# ----------------------------------------------------------------------------------------------------------
# Exhaustive decode tables
# ----------------------------------------------------------------------------------------------------------
def test_q2_5_exhaustive_table():
    fmt = parse_fixed_format("q2.5")
    codes = np.arange(256, dtype=np.uint8)
    k = codes.view(np.int8).astype(np.int64)  # NumPy's own two's complement reading of the byte
    values = fmt.decode(codes)
    assert values.dtype == np.float32
    # Every one of the 256 codes decodes to exactly k * 2**-5, compared as exact rationals.
    assert [Fraction(float(v)) for v in values] == [Fraction(int(i), 32) for i in k]
    np.testing.assert_array_equal(fmt.to_int(codes), k)
    np.testing.assert_array_equal(fmt.from_int(k), codes)
    # The extremes: 0x7f = 127/32 = 4 - 2**-5, 0x80 = -128/32 = -4.
    assert values[0x7F] == 4 - 2**-5 and values[0x80] == -4.0 and values[0xFF] == -(2**-5)
    classes = fmt.classify(codes)
    assert classes[0] == "zero" and set(classes[1:]) == {"normal"}
    for rounding, overflow in MODES:
        np.testing.assert_array_equal(fmt.encode(values, rounding=rounding, overflow=overflow), codes)


@pytest.mark.parametrize("nbits", range(2, 17))
def test_exhaustive_decode_all_splits_up_to_16_bits(nbits):
    """Every code of every qM.N with M + N = nbits - 1: decode == k * 2**-N and encode(decode(c)) == c."""
    codes = np.arange(2**nbits, dtype=np.uint64)
    k = ref_signed(codes, nbits)
    for m in range(nbits):
        fmt = FixedPointFormat(m, nbits - 1 - m)
        c = codes.astype(fmt.container)
        values = fmt.decode(c)
        # k * 2**-N is exact in float64 (|k| <= 2**15), so this float64 expectation is exact.
        np.testing.assert_array_equal(
            values.astype(np.float64), np.ldexp(k.astype(np.float64), -fmt.frac_bits)
        )
        for rounding, overflow in MODES:
            np.testing.assert_array_equal(fmt.encode(values, rounding=rounding, overflow=overflow), c)


@pytest.mark.parametrize("name", ["q8.16", "q9.16", "q0.31", "q31.0", "q15.16", "q0.24"])
def test_wide_formats_decode_exactly(name):
    fmt = parse_fixed_format(name)
    rng = np.random.default_rng(7)
    extremes = np.array([0, 1, 2 ** (fmt.nbits - 1) - 1, 2 ** (fmt.nbits - 1), 2**fmt.nbits - 1])
    codes = np.concatenate([extremes, rng.integers(0, 2**fmt.nbits, size=2000)]).astype(fmt.container)
    values = fmt.decode(codes)
    assert values.dtype == fmt.decode_dtype
    k = ref_signed(codes, fmt.nbits)
    assert [Fraction(float(v)) for v in values] == [Fraction(int(i), 2**fmt.frac_bits) for i in k]
    np.testing.assert_array_equal(fmt.encode(values), codes)


def test_decode_accepts_wider_unsigned_containers():
    fmt = parse_fixed_format("q2.5")
    codes = np.arange(256, dtype=np.uint8)
    for dtype in (np.uint16, np.uint32, np.uint64):
        np.testing.assert_array_equal(fmt.decode(codes.astype(dtype)), fmt.decode(codes))


# ----------------------------------------------------------------------------------------------------------
# Encode against the Fraction reference
# ----------------------------------------------------------------------------------------------------------
def test_hand_checked_vectors():
    fmt = parse_fixed_format("q2.5")
    x = np.array([0.015625, 0.046875, -0.015625, -0.046875, 3.99, 4.5, -4.01, -5.0, 0.1], dtype=np.float64)
    # x * 32:     0.5, 1.5, -0.5, -1.5, 127.68, 144, -128.32, -160, 3.2
    # nearest:    0,   2,   -0,   -2,   128->sat 127, 144->127, -128, -160->-128, 3
    assert fmt.encode(x).tolist() == [0, 2, 0, 0xFE, 0x7F, 0x7F, 0x80, 0x80, 3]
    # toward 0:   0,   1,    0,   -1,   127,   144->127, -128, -128, 3
    assert fmt.encode(x, rounding="toward_zero").tolist() == [0, 1, 0, 0xFF, 0x7F, 0x7F, 0x80, 0x80, 3]
    # floor:      0,   1,   -1,   -2,   127,   127, -129->sat -128, -128, 3
    assert fmt.encode(x, rounding="floor").tolist() == [0, 1, 0xFF, 0xFE, 0x7F, 0x7F, 0x80, 0x80, 3]
    # wrap (nearest): 128 -> 128 = 0x80 (-4.0); 144 -> 0x90; -128 -> 0x80; -160 + 256 = 96 = 0x60
    wrapped = fmt.encode(x, overflow="wrap")
    assert wrapped.tolist() == [0, 2, 0, 0xFE, 0x80, 0x90, 0x80, 0x60, 3]
    # 4.5 wraps to 4.5 - 8 = -3.5; -5.0 wraps to -5 + 8 = 3.0
    assert fmt.decode(wrapped)[[5, 7]].tolist() == [-3.5, 3.0]


def _float_values(dtype: np.dtype, fmt: FixedPointFormat, allow_inf: bool):
    """Floats of ``dtype``: arbitrary ones, exact ties (k + 1/2) 2**-N, and grid points near the range."""
    width = 8 * dtype.itemsize
    arbitrary = st.floats(width=width, allow_nan=False, allow_infinity=allow_inf)
    scale = 2 ** (fmt.nbits + 1)
    ties = st.integers(-scale, scale).map(lambda k: (k + 0.5) * 2.0**-fmt.frac_bits)
    grid = st.integers(-scale, scale).map(lambda k: k * 2.0**-fmt.frac_bits)
    near = st.floats(-4 * 2.0**fmt.int_bits, 4 * 2.0**fmt.int_bits)
    return st.one_of(arbitrary, ties, grid, near).map(lambda v: _cast(v, dtype))


def _cast(v: float, dtype: np.dtype) -> float:
    """``v`` rounded to ``dtype`` (NumPy's cast; may overflow to inf for float16)."""
    with np.errstate(over="ignore"):
        return float(dtype.type(v))


@st.composite
def encode_cases(draw):
    fmt = draw(format_strategy())
    dtype = np.dtype(draw(st.sampled_from([np.float16, np.float32, np.float64])))
    rounding, overflow = draw(st.sampled_from(MODES))
    values = draw(st.lists(_float_values(dtype, fmt, overflow == "saturate"), min_size=1, max_size=24))
    # A value cast to float16 may overflow to inf; "wrap" rejects inf, so keep those finite.
    values = [v for v in values if overflow == "saturate" or math.isfinite(v)] or [0.0]
    return fmt, np.array(values, dtype=dtype), rounding, overflow


@given(encode_cases())
def test_encode_matches_fraction_reference(case):
    fmt, x, rounding, overflow = case
    before = x.copy()
    codes = fmt.encode(x, rounding=rounding, overflow=overflow)
    np.testing.assert_array_equal(x, before)  # the caller's array is untouched
    assert codes.dtype == fmt.container and codes.shape == x.shape
    expected = [ref_encode(float(v), fmt.int_bits, fmt.frac_bits, rounding, overflow) for v in x]
    assert codes.tolist() == expected, (fmt.name, rounding, overflow, x.tolist())


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_wrap_of_huge_values(rounding):
    """x = 1e300 etc. overflow x * 2**N in float64; wrap must still give the exact residue."""
    fmt = parse_fixed_format("q3.12")
    x = np.array([1e300, -1e300, 3.0e38, 2.0**55 + 8.0, -(2.0**60) - 0.75, 12345.678], dtype=np.float64)
    expected = [ref_encode(float(v), 3, 12, rounding, "wrap") for v in x]
    assert fmt.encode(x, rounding=rounding, overflow="wrap").tolist() == expected
    assert expected[3] != 0  # (2**55 + 8) * 2**12 = 2**67 + 2**15: residue 2**15, not trivial


def test_infinities_saturate():
    fmt = parse_fixed_format("q0.31")
    x = np.array([np.inf, -np.inf, 1e300, -1e300], dtype=np.float64)
    assert fmt.encode(x).tolist() == [2**31 - 1, 2**31, 2**31 - 1, 2**31]
    # float16 input: 1.0 * 2**31 overflows float16 but not the computation (which widens first).
    assert fmt.encode(np.array([1.0, -1.0], dtype=np.float16)).tolist() == [2**31 - 1, 2**31]


def test_scalar_inputs_give_0d_arrays():
    fmt = parse_fixed_format("q2.5")
    out = fmt.encode(0.5)
    assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.uint8 and int(out) == 16
    assert int(fmt.encode(np.float32(-0.5))) == 0xF0
    assert fmt.decode(np.array(16, dtype=np.uint8)).shape == ()


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:.*quantize_per_tensor.*:UserWarning")
def test_encode_agrees_with_torch_quantize_per_tensor():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for m in range(8):
        fmt = FixedPointFormat(m, 7 - m)
        scale = 2.0**-fmt.frac_bits
        ties = (rng.integers(-300, 300, size=500) + 0.5) * scale
        x = np.concatenate([rng.normal(0, 2.0**m, size=5000), ties]).astype(np.float32)
        ref = torch.quantize_per_tensor(torch.from_numpy(x), scale, 0, torch.qint8).int_repr().numpy()
        np.testing.assert_array_equal(fmt.encode(x), ref.view(np.uint8))


# ----------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------
@given(
    format_strategy(24),
    st.sampled_from(ROUNDINGS),
    st.lists(st.floats(-1.0, 1.0, width=64), min_size=1, max_size=32),
)
def test_rounding_error_and_monotonicity(fmt, rounding, fractions_of_range):
    # Values inside the representable range [min_value, max_value].
    x = np.sort(np.array(fractions_of_range) * (-fmt.min_value)).clip(fmt.min_value, fmt.max_value)
    y = fmt.decode(fmt.encode(x, rounding=rounding)).astype(np.float64)
    err = [Fraction(float(a)) - Fraction(float(b)) for a, b in zip(y, x, strict=True)]  # exact errors
    step = Fraction(fmt.step)
    if rounding == "nearest_even":
        assert all(abs(e) <= step / 2 for e in err)
    elif rounding == "toward_zero":
        assert all(abs(e) < step for e in err) and np.all(np.abs(y) <= np.abs(x))
    else:
        assert all(-step < e <= 0 for e in err)
    assert np.all(np.diff(y) >= 0)  # monotone non-decreasing in x
    assert np.all((y >= fmt.min_value) & (y <= fmt.max_value))


@given(format_strategy(), st.data())
def test_int_round_trips(fmt, data):
    lo, hi = -(2 ** (fmt.nbits - 1)), 2 ** (fmt.nbits - 1) - 1
    ints = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=32)), dtype=np.int64)
    codes = fmt.from_int(ints)
    assert codes.dtype == fmt.container
    assert codes.tolist() == [int(i) % 2**fmt.nbits for i in ints]
    np.testing.assert_array_equal(fmt.to_int(codes), ints)
    # decode(c) == k * 2**-N exactly, and decode(encode(decode(c))) == decode(c) in every mode.
    values = fmt.decode(codes)
    assert [Fraction(float(v)) for v in values] == [Fraction(int(i), 2**fmt.frac_bits) for i in ints]
    for rounding, overflow in MODES:
        again = fmt.decode(fmt.encode(values, rounding=rounding, overflow=overflow))
        np.testing.assert_array_equal(again, values)


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
def test_encode_errors():
    fmt = parse_fixed_format("q2.5")
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises(TypeError, match=r"q2\.5\.encode: x must have dtype in \(float16, float32, float64\)"):
        fmt.encode(np.zeros(3, dtype=np.int32))
    with pytest.raises(TypeError, match=r"q2\.5\.encode: x must be a numpy.ndarray"):
        fmt.encode([0.5, 1.0])
    with pytest.raises(ValueError, match=r"q2\.5\.encode: rounding must be one of"):
        fmt.encode(x, rounding="nearest")
    with pytest.raises(ValueError, match=r"q2\.5\.encode: overflow must be one of"):
        fmt.encode(x, overflow="ieee")
    with pytest.raises(ValueError, match=r"q2\.5\.encode: x must not contain NaN"):
        fmt.encode(np.array([0.5, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match=r'q2\.5\.encode: x must be finite with overflow="wrap"'):
        fmt.encode(np.array([np.inf], dtype=np.float64), overflow="wrap")


def test_code_errors():
    fmt = parse_fixed_format("q3.5")  # 9 bits in uint16
    with pytest.raises(
        TypeError, match=r"q3\.5\.to_int: codes must have dtype in \(uint16, uint32, uint64\)"
    ):
        fmt.decode(np.zeros(2, dtype=np.uint8))
    with pytest.raises(TypeError, match=r"q3\.5\.to_int: codes must have dtype in"):
        fmt.to_int(np.zeros(2, dtype=np.int16))
    with pytest.raises(TypeError, match=r"q3\.5\.to_int: codes must be a numpy.ndarray"):
        fmt.classify([1, 2])
    with pytest.raises(ValueError, match=r"q3\.5\.to_int: codes must fit in 9 bits \(at most 0x1ff\), got"):
        fmt.decode(np.array([0x200], dtype=np.uint16))
    with pytest.raises(TypeError, match=r"q3\.5\.from_int: ints must have an integer dtype, got float64"):
        fmt.from_int(np.array([1.0]))
    with pytest.raises(TypeError, match=r"q3\.5\.from_int: ints must be a numpy.ndarray"):
        fmt.from_int([1])
    with pytest.raises(ValueError, match=r"q3\.5\.from_int: ints must be in \[-256, 255\], got values in"):
        fmt.from_int(np.array([0, 256]))
    with pytest.raises(ValueError, match=r"q3\.5\.from_int: ints must be in \[-256, 255\]"):
        fmt.from_int(np.array([-257]))
