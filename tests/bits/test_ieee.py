"""saf_ref.bits.ieee: format attributes, exhaustive decode, round trips, classification, errors, properties.

The encode cross-checks against NumPy and ml_dtypes casts (random and boundary inputs) are in
``test_ieee_encode.py``. References here: NumPy's float16/32/64 (``view``), ml_dtypes' bfloat16 and
float8 types, ``np.finfo`` / ``ml_dtypes.finfo`` and the bit layouts written out by hand from IEEE 754
and the OCP 8-bit floating point specification.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.bits.fields import BitField, NumberFormat
from saf_ref.bits.ieee import IEEE_FORMATS, IEEEFormat, get_ieee_format

ALL = list(IEEE_FORMATS)
SMALL = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]  # small enough to enumerate every code


def reference_dtype(name: str) -> np.dtype:
    """The NumPy / ml_dtypes dtype with the same bit layout as format ``name``."""
    if name in ("float64", "float32", "float16"):
        return np.dtype(name)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return np.dtype(getattr(ml_dtypes, name))


def reference_finfo(name: str):
    if name in ("float64", "float32", "float16"):
        return np.finfo(name)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return ml_dtypes.finfo(getattr(ml_dtypes, name))


def all_codes(fmt: IEEEFormat) -> np.ndarray:
    return np.arange(1 << fmt.nbits, dtype=np.uint64).astype(fmt.container)


def reference_decode(fmt: IEEEFormat, codes: np.ndarray) -> np.ndarray:
    """Decode by reinterpreting with NumPy / ml_dtypes, then widening with their cast (exact)."""
    with np.errstate(invalid="ignore"):  # signalling NaN patterns warn when cast
        return codes.view(reference_dtype(fmt.name)).astype(np.float64)


# --------------------------------------------------------------------------------------- attributes


# Layouts written out from IEEE 754-2019 table 3.5 and the OCP OFP8 specification (1 + E + m bits).
LAYOUTS = {
    "float64": (11, 52, np.uint64, np.float64),
    "float32": (8, 23, np.uint32, np.float32),
    "float16": (5, 10, np.uint16, np.float16),
    "bfloat16": (8, 7, np.uint16, np.float32),
    "float8_e4m3fn": (4, 3, np.uint8, np.float32),
    "float8_e5m2": (5, 2, np.uint8, np.float32),
}


@pytest.mark.parametrize("name", ALL)
def test_layout(name):
    fmt = IEEE_FORMATS[name]
    E, m, container, decode_dtype = LAYOUTS[name]
    assert fmt.name == name
    assert (fmt.exponent_bits, fmt.mantissa_bits, fmt.nbits) == (E, m, 1 + E + m)
    assert fmt.container == np.dtype(container)
    assert fmt.decode_dtype == np.dtype(decode_dtype)
    assert fmt.has_infinity == (name != "float8_e4m3fn")
    assert isinstance(fmt, NumberFormat)
    # The fields are most significant first and tile the word exactly.
    assert list(fmt.fields) == ["sign", "exponent", "mantissa"]
    assert fmt.fields["sign"] == BitField("sign", E + m, 1)
    assert fmt.fields["exponent"] == BitField("exponent", m, E)
    assert fmt.fields["mantissa"] == BitField("mantissa", 0, m)
    masks = [f.mask for f in fmt.fields.values()]
    assert all(a & b == 0 for i, a in enumerate(masks) for b in masks[i + 1 :])  # disjoint
    assert sum(masks) == (1 << fmt.nbits) - 1  # and covering


def test_float16_fields_spelled_out():
    f = IEEE_FORMATS["float16"].fields
    assert f["sign"] == BitField("sign", 15, 1)
    assert f["exponent"] == BitField("exponent", 10, 5)
    assert f["mantissa"] == BitField("mantissa", 0, 10)
    assert f["exponent"].mask == 0x7C00


@pytest.mark.parametrize("name", ALL)
def test_range_constants_match_finfo(name):
    fmt, fi = IEEE_FORMATS[name], reference_finfo(name)
    assert fmt.max_finite == float(fi.max)
    assert fmt.min_normal == float(fi.smallest_normal)
    assert fmt.min_subnormal == float(fi.smallest_subnormal)
    assert fmt.emin == fi.minexp
    assert fmt.mantissa_bits == fi.nmant
    assert all(isinstance(v, float) for v in (fmt.max_finite, fmt.min_normal, fmt.min_subnormal))


def test_range_constants_by_hand():
    assert IEEE_FORMATS["float16"].max_finite == 65504.0
    assert IEEE_FORMATS["float8_e4m3fn"].max_finite == 448.0
    assert IEEE_FORMATS["float8_e5m2"].max_finite == 57344.0
    assert IEEE_FORMATS["float8_e4m3fn"].min_subnormal == 2.0**-9
    assert IEEE_FORMATS["float8_e5m2"].min_subnormal == 2.0**-16
    assert IEEE_FORMATS["bfloat16"].min_subnormal == 2.0**-133
    assert IEEE_FORMATS["float16"].bias == 15 and IEEE_FORMATS["float8_e4m3fn"].bias == 7


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("fp64", "float64"),
        ("fp32", "float32"),
        ("fp16", "float16"),
        ("bf16", "bfloat16"),
        ("e4m3", "float8_e4m3fn"),
        ("fp8_e4m3", "float8_e4m3fn"),
        ("e5m2", "float8_e5m2"),
        ("FP16", "float16"),
        ("float8_e5m2", "float8_e5m2"),
    ],
)
def test_aliases(alias, canonical):
    fmt = get_ieee_format(alias)
    assert fmt is IEEE_FORMATS[canonical]
    assert fmt.name == canonical


def test_get_format_passes_a_format_through_and_formats_are_frozen():
    fmt = IEEE_FORMATS["float16"]
    assert get_ieee_format(fmt) is fmt
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.mantissa_bits = 3  # type: ignore[misc]
    assert hash(fmt) == hash(get_ieee_format("half"))


# ----------------------------------------------------------------------------------- errors


def test_unknown_format_name():
    match = r"get_ieee_format: name must be one of \(float64, float32.*'float7'"
    with pytest.raises(ValueError, match=match):
        get_ieee_format("float7")
    with pytest.raises(TypeError, match="get_ieee_format: name must be a str"):
        get_ieee_format(16)


@pytest.mark.parametrize(
    "x",
    [
        np.arange(3),  # int64
        np.array([True, False]),
        np.array([1 + 2j]),
        np.array([1.0], dtype=object),
        np.array(["1.0"]),
        np.arange(3, dtype=np.uint8),
        np.array([1.0], dtype=np.longdouble) if np.dtype(np.longdouble).itemsize > 8 else np.arange(2),
        3,
        True,
        "1.0",
        [1.0, 2.0],
        None,
        1 + 0j,
    ],
    ids=lambda v: type(v).__name__ + (str(v.dtype) if isinstance(v, np.ndarray) else ""),
)
def test_encode_rejects_non_float(x):
    with pytest.raises(TypeError, match=r"float16\.encode: x must"):
        IEEE_FORMATS["float16"].encode(x)


def test_encode_rejects_unknown_overflow_policy():
    x = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=r"bfloat16\.encode: overflow must be one of \('ieee', 'saturate'\)"):
        IEEE_FORMATS["bfloat16"].encode(x, overflow="clip")
    with pytest.raises(ValueError, match="overflow must be one of"):
        IEEE_FORMATS["bfloat16"].encode(x, overflow=None)


@pytest.mark.parametrize("method", ["decode", "classify", "is_nan", "is_inf", "is_finite"])
def test_codes_validation(method):
    f16, e4 = IEEE_FORMATS["float16"], IEEE_FORMATS["float8_e4m3fn"]
    with pytest.raises(TypeError, match=rf"float16\.{method}: codes must be a numpy.ndarray, got list"):
        getattr(f16, method)([0, 1])
    match = rf"float16\.{method}: codes must have dtype in \(uint16, uint32, uint64\)"
    with pytest.raises(TypeError, match=match):
        getattr(f16, method)(np.zeros(2, np.int16))
    with pytest.raises(TypeError, match=r"codes must have dtype in"):
        getattr(f16, method)(np.zeros(2, np.uint8))  # too narrow for 16-bit words
    with pytest.raises(TypeError, match=r"codes must have dtype in"):
        getattr(f16, method)(np.zeros(2, np.float16))
    with pytest.raises(ValueError, match=rf"float8_e4m3fn\.{method}: codes must fit in 8 bits .* 0x100"):
        getattr(e4, method)(np.array([3, 0x100], np.uint16))


def test_wider_code_dtypes_accepted():
    e5 = IEEE_FORMATS["float8_e5m2"]
    codes = all_codes(e5)
    for dtype in (np.uint16, np.uint32, np.uint64):
        wide = codes.astype(dtype)
        np.testing.assert_array_equal(e5.decode(wide).view(np.uint32), e5.decode(codes).view(np.uint32))
        np.testing.assert_array_equal(e5.classify(wide), e5.classify(codes))


# ------------------------------------------------------------------------ exhaustive 8/16 bit


@pytest.mark.parametrize("name", SMALL)
def test_decode_exhaustive_matches_reference(name):
    fmt = IEEE_FORMATS[name]
    codes = all_codes(fmt)
    got = fmt.decode(codes)
    assert got.dtype == fmt.decode_dtype and got.shape == codes.shape
    ref = codes.view(reference_dtype(name)).astype(fmt.decode_dtype)  # exact widening by NumPy/ml_dtypes
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    # Bits, not values: signed zeros and infinities count.
    as_bits = np.dtype(f"u{got.itemsize}")
    np.testing.assert_array_equal(got[~nan].view(as_bits), ref[~nan].view(as_bits))
    # NaN codes decode to a NaN of their own sign.
    np.testing.assert_array_equal(np.signbit(got[nan]), (codes[nan] >> (fmt.nbits - 1)) == 1)


@pytest.mark.parametrize("name", SMALL)
def test_encode_decode_round_trip_exhaustive(name):
    fmt = IEEE_FORMATS[name]
    codes = all_codes(fmt)
    values = fmt.decode(codes)
    nan = fmt.is_nan(codes)
    for overflow in ("ieee", "saturate"):
        back = fmt.encode(values, overflow=overflow)
        assert back.dtype == fmt.container
        if fmt.has_infinity and overflow == "saturate":
            # Infinity saturates to the largest finite value of its sign (sign | 0b0.11..10.11..1).
            inf = fmt.is_inf(codes)
            expected = np.where(inf, codes - 1, codes)  # the code just below +-inf is +-max_finite
            np.testing.assert_array_equal(back[~nan], expected[~nan])
            np.testing.assert_array_equal(np.abs(fmt.decode(back[inf])), fmt.max_finite)
        else:
            np.testing.assert_array_equal(back[~nan], codes[~nan])
        # NaN comes back as the canonical quiet NaN of its sign.
        sign = codes[nan] >> (fmt.nbits - 1)
        quiet_bit = 1 << (fmt.mantissa_bits - 1)  # mantissa MSB
        canonical = 0x7F if name == "float8_e4m3fn" else fmt.fields["exponent"].mask | quiet_bit
        np.testing.assert_array_equal(back[nan], (sign << (fmt.nbits - 1)) | canonical)


@pytest.mark.parametrize("name", ["float32", "float64"])
def test_decode_wide_formats_on_random_codes(name):
    fmt = IEEE_FORMATS[name]
    rng = np.random.default_rng(3)
    codes = rng.integers(0, np.iinfo(fmt.container).max, size=200_000, dtype=fmt.container, endpoint=True)
    special = np.array(
        [
            0,
            1,
            2,
            fmt.fields["exponent"].mask - 1,
            fmt.fields["exponent"].mask,
            fmt.fields["exponent"].mask + 1,
            1 << fmt.mantissa_bits,
            (1 << fmt.mantissa_bits) - 1,
        ],
        dtype=fmt.container,
    )
    codes = np.concatenate([codes, special, special | fmt.container.type(1 << (fmt.nbits - 1))])
    got = fmt.decode(codes)
    ref = codes.view(reference_dtype(name))
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(fmt.container), codes[~nan])
    back = fmt.encode(got)
    np.testing.assert_array_equal(back[~nan], codes[~nan])


@pytest.mark.parametrize("name", ALL)
def test_classification_matches_reference(name):
    fmt = IEEE_FORMATS[name]
    if fmt.nbits <= 16:
        codes = all_codes(fmt)
    else:
        rng = np.random.default_rng(4)
        codes = rng.integers(0, np.iinfo(fmt.container).max, size=100_000, dtype=fmt.container, endpoint=True)
        exp_mask = fmt.container.type(fmt.fields["exponent"].mask)
        codes[:1000] &= ~exp_mask  # force zeros/subnormals and infs/NaNs to appear
        codes[1000:2000] |= exp_mask
        codes[2000:2100] &= fmt.container.type(1 << (fmt.nbits - 1))
        codes[2100:2110] = exp_mask  # +inf
        codes[2110:2120] = exp_mask | fmt.container.type(1 << (fmt.nbits - 1))  # -inf
    ref = reference_decode(fmt, codes)
    nan, inf = np.isnan(ref), np.isinf(ref)
    absval = np.abs(ref)
    expected = np.select(
        [nan, inf, absval == 0, absval < float(reference_finfo(name).smallest_normal)],
        ["nan", "inf", "zero", "subnormal"],
        default="normal",
    )
    np.testing.assert_array_equal(fmt.classify(codes), expected)
    np.testing.assert_array_equal(fmt.is_nan(codes), nan)
    np.testing.assert_array_equal(fmt.is_inf(codes), inf)
    np.testing.assert_array_equal(fmt.is_finite(codes), np.isfinite(ref))
    for cls in ("nan", "inf", "zero", "subnormal", "normal"):
        if cls == "inf" and not fmt.has_infinity:
            continue
        assert (expected == cls).any(), f"{name}: the test codes contain no {cls}"


def test_e4m3fn_special_values_spelled_out():
    e4 = IEEE_FORMATS["float8_e4m3fn"]
    codes = np.array([0x7E, 0x7F, 0xFF, 0x78, 0x80, 0x01, 0x08], np.uint8)
    got = e4.decode(codes)
    assert got[0] == 448.0 and np.isnan(got[1]) and np.isnan(got[2]) and np.signbit(got[2])
    assert got[3] == 256.0 and got[4] == 0 and np.signbit(got[4])
    assert got[5] == 2.0**-9 and got[6] == 2.0**-6
    assert list(e4.classify(codes)) == ["normal", "nan", "nan", "normal", "zero", "subnormal", "normal"]
    assert not e4.is_inf(codes).any()


# ------------------------------------------------------------------------ API behaviour


@pytest.mark.parametrize("name", ALL)
def test_scalars_shapes_and_no_mutation(name):
    fmt = IEEE_FORMATS[name]
    for scalar in (1.5, np.float64(-2.5), np.float32(0.375), np.float16(-0.0)):
        code = fmt.encode(scalar)
        assert isinstance(code, np.ndarray) and code.shape == () and code.dtype == fmt.container
        assert fmt.decode(code).shape == ()
        assert float(fmt.decode(code)) == float(scalar)
    assert np.signbit(fmt.decode(fmt.encode(-0.0)))
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    x_copy = x.copy()
    view = x[:, ::2, ::-1]  # non-contiguous
    codes = fmt.encode(view)
    assert codes.shape == view.shape and codes.dtype == fmt.container
    np.testing.assert_array_equal(codes, fmt.encode(np.ascontiguousarray(view)))
    np.testing.assert_array_equal(x, x_copy)
    codes_copy = codes.copy()
    fmt.decode(codes)
    fmt.classify(codes)
    np.testing.assert_array_equal(codes, codes_copy)
    assert fmt.encode(np.zeros((0, 3), np.float64)).shape == (0, 3)
    assert fmt.decode(np.zeros((0, 3), fmt.container)).shape == (0, 3)


# ------------------------------------------------------------------------ properties

# Finite floats: the whole float64 range, plus draws concentrated where the small formats live.
FINITE = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e5, max_value=1e5),
    st.floats(min_value=-1e-3, max_value=1e-3),
)


def quantize(fmt: IEEEFormat, x: float, overflow: str) -> float:
    return float(fmt.decode(fmt.encode(np.array([x]), overflow=overflow))[0])


@given(name=st.sampled_from(ALL), a=FINITE, b=FINITE, saturate=st.booleans())
def test_monotonic(name, a, b, saturate):
    fmt = IEEE_FORMATS[name]
    # e4m3fn has no infinity: under "ieee" an overflow is NaN, which is not ordered; saturate instead.
    overflow = "saturate" if saturate or not fmt.has_infinity else "ieee"
    lo, hi = min(a, b), max(a, b)
    assert quantize(fmt, lo, overflow) <= quantize(fmt, hi, overflow)


@given(
    name=st.sampled_from(ALL),
    x=FINITE | st.floats(allow_nan=True, allow_infinity=True),
    overflow=st.sampled_from(["ieee", "saturate"]),
    width=st.sampled_from([np.float32, np.float64]),
)
def test_sign_symmetry(name, x, overflow, width):
    fmt = IEEE_FORMATS[name]
    with np.errstate(over="ignore"):
        arr = np.array([x], dtype=width)
    sign = fmt.container.type(1 << (fmt.nbits - 1))
    pos, neg = fmt.encode(np.abs(arr), overflow=overflow), fmt.encode(-np.abs(arr), overflow=overflow)
    np.testing.assert_array_equal(neg, pos | sign)
    np.testing.assert_array_equal(pos & sign, 0)
