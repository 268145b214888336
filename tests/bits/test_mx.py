"""saf_ref.bits.mx and the MX element formats: exhaustive codes, blocks, stored layout and faults.

References: ml_dtypes (``float4_e2m1fn``, ``float6_e2m3fn``, ``float6_e3m2fn``, ``float8_e4m3fn``,
``float8_e5m2``, ``float8_e8m0fnu``: casts and views, probed here rather than assumed) and the independent
loop implementation of the specification in :mod:`saf_ref.testing.mx_reference` (exact fractions, "nearest
value of the table, ties to the even code"), which shares no code with saf_ref.bits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saf_ref.bits import (
    BitErrors,
    Codec,
    ExactCount,
    FaultList,
    NumberFormat,
    codec_from_json,
    flip_value,
    get_format,
)
from saf_ref.bits.formats import resolve_format
from saf_ref.bits.ieee import MX_ELEMENT_FORMATS
from saf_ref.bits.mx import E8M0, MX_FORMATS, MXContext, MXFormat, get_mx_format
from saf_ref.protect import StorageRule, StorageSpec, inject, load, store
from saf_ref.testing import mx_reference as ref

ml_dtypes = pytest.importorskip("ml_dtypes")

ELEMENT_NAMES = ["float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"]
MX_NAMES = list(MX_FORMATS)


def ml_type(name):
    return np.dtype(getattr(ml_dtypes, name))


def assert_same_values(got, expected):
    """Equal values, the sign of zero included; NaN where the other has NaN (the sign of a NaN is not
    part of the contract: an element NaN of either sign, or a NaN scale, reads as NaN)."""
    np.testing.assert_array_equal(got, expected)
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(expected[finite]))


def all_codes(nbits):
    return np.arange(1 << nbits, dtype=np.uint8)


# ============================================================================ element formats


@pytest.mark.parametrize("name", ELEMENT_NAMES)
def test_element_format_layout_and_range_match_ml_dtypes(name):
    fmt = get_format(name)
    fi = ml_dtypes.finfo(ml_type(name))
    assert fmt is MX_ELEMENT_FORMATS[name] and isinstance(fmt, NumberFormat) and isinstance(fmt, Codec)
    assert fmt.nbits == fi.bits and fmt.mantissa_bits == fi.nmant
    assert (fmt.has_infinity, fmt.has_nan) == (False, False)
    assert fmt.max_finite == float(fi.max)
    assert fmt.min_normal == float(fi.smallest_normal)
    assert fmt.min_subnormal == float(fi.smallest_subnormal)
    assert list(fmt.fields) == ["sign", "exponent", "mantissa"]
    assert sum(f.mask for f in fmt.fields.values()) == (1 << fmt.nbits) - 1


@pytest.mark.parametrize("name", ELEMENT_NAMES)
def test_element_decode_every_code_matches_ml_dtypes_and_the_loop(name):
    fmt = get_format(name)
    codes = all_codes(fmt.nbits)
    got = fmt.decode(codes)
    assert got.dtype == np.float32
    expected = codes.view(ml_type(name)).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))  # bit for bit, -0 too
    loop = [ref.element_value(name, int(c)) for c in codes]
    assert [float(v) for v, _ in loop] == got.astype(np.float64).tolist()
    assert [neg for _, neg in loop] == np.signbit(got).tolist()
    assert set(fmt.classify(codes)) <= {"zero", "subnormal", "normal"}
    assert fmt.is_finite(codes).all() and not fmt.is_nan(codes).any() and not fmt.is_inf(codes).any()


def _midpoints_and_neighbours(values: np.ndarray) -> np.ndarray:
    """Every value, every midpoint between neighbours (the ties), and points just beside them."""
    v = np.unique(values[np.isfinite(values)].astype(np.float64))
    mids = (v[:-1] + v[1:]) / 2
    pts = np.concatenate([v, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    return np.concatenate([pts, [v.max() * 1.5, v.max() * 100, np.inf, -np.inf, 1e-30, -1e-30]])


@pytest.mark.parametrize("name", ELEMENT_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_element_encode_ties_and_overflow_match_ml_dtypes_and_the_loop(name, dtype):
    fmt = get_format(name)
    x = _midpoints_and_neighbours(fmt.decode(all_codes(fmt.nbits))).astype(dtype)
    got = fmt.encode(x)
    sat = fmt.encode(x, overflow="saturate")
    np.testing.assert_array_equal(got, sat)  # no inf, no NaN: both policies saturate
    if dtype == np.float32:  # ml_dtypes casts float32 once (float64 goes through float32: double rounding)
        np.testing.assert_array_equal(got, x.astype(ml_type(name)).view(np.uint8))
    for xi, ci in zip(x.tolist(), got.tolist(), strict=True):
        y = math.copysign(1e300, xi) if math.isinf(xi) else xi
        from fractions import Fraction

        assert ci == ref.round_element(name, Fraction(y), math.copysign(1.0, xi) < 0), xi


@pytest.mark.parametrize("name", ELEMENT_NAMES)
def test_element_encode_round_trips_every_code(name):
    fmt = get_format(name)
    codes = all_codes(fmt.nbits)
    np.testing.assert_array_equal(fmt.encode(fmt.decode(codes)), codes)


@pytest.mark.parametrize("name", ELEMENT_NAMES)
def test_element_encode_random_matches_ml_dtypes(name):
    fmt = get_format(name)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(20_000) * np.exp2(rng.integers(-8, 6, 20_000))).astype(np.float32)
    np.testing.assert_array_equal(fmt.encode(x), x.astype(ml_type(name)).view(np.uint8))
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(fmt.encode(x16), fmt.encode(x16.astype(np.float32)))  # float16 is exact


@pytest.mark.parametrize("name", ELEMENT_NAMES)
def test_element_encode_nan_is_an_error(name):
    # ml_dtypes 0.7 casts NaN to -0 (code 0x8 for e2m1); our contract: no NaN code, a clear error.
    match = rf"{name}.encode: x must not contain NaN \({name} has no NaN code\), got 1"
    with pytest.raises(ValueError, match=match):
        get_format(name).encode(np.array([1.0, np.nan], np.float32))


def test_ieee_format_without_nan_must_have_no_infinity():
    from saf_ref.bits.ieee import IEEEFormat

    with pytest.raises(ValueError, match="IEEEFormat: has_infinity must be False when has_nan is False"):
        IEEEFormat("bad", 2, 1, True, np.dtype(np.float32), has_nan=False)


@pytest.mark.parametrize("name", MX_NAMES)
def test_every_element_code_of_every_mx_format_matches_the_loop_and_ml_dtypes(name):
    """All 256 / 64 / 16 element codes: the element format's decode against the textbook loop, and
    against ml_dtypes for the float elements (MXINT8's element is two's complement / 64)."""
    elem = MX_FORMATS[name].element
    codes = np.arange(1 << elem.nbits, dtype=np.uint8)
    got = np.asarray(elem.decode(codes), np.float64)
    ref_name = ref.MX_ELEMENT[name]
    for c, g in zip(codes.tolist(), got.tolist(), strict=True):
        v, negative = ref.element_value(ref_name, c)
        if v == ref.NAN:
            assert math.isnan(g), (name, c)
        elif v == ref.INF:
            assert g == (-math.inf if negative else math.inf), (name, c)
        else:
            assert g == float(v) and math.copysign(1.0, g) == (-1.0 if negative else 1.0), (name, c)
    if name != "mxint8":
        expected = codes.view(ml_type(elem.name)).astype(np.float64)
        assert_same_values(got, expected)
    else:
        np.testing.assert_array_equal(got, codes.view(np.int8).astype(np.float64) / 64)


# ==================================================================================== E8M0


def test_e8m0_decode_every_code_matches_ml_dtypes_and_the_formula():
    codes = all_codes(8)
    got = E8M0.decode(codes)
    expected = codes.view(ml_type("float8_e8m0fnu")).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32)[:255], expected.view(np.uint32)[:255])
    assert np.isnan(got[255]) and np.isnan(expected[255])
    assert [float(ref.scale_value(int(c))) for c in codes[:255]] == got[:255].astype(np.float64).tolist()
    assert get_format("float8_e8m0fnu") is E8M0 and E8M0.nbits == 8 and list(E8M0.fields) == ["exponent"]
    assert E8M0.classify(codes).tolist() == ["normal"] * 255 + ["nan"]
    assert E8M0.is_nan(codes).sum() == 1 and not E8M0.is_inf(codes).any()
    assert E8M0.is_finite(codes).sum() == 255


def test_e8m0_encode_matches_ml_dtypes_on_powers_ties_and_range_ends():
    k = np.arange(-127, 128, dtype=np.float64)
    p = np.exp2(k)
    x = np.concatenate([p, 1.5 * p, np.nextafter(1.5 * p, 0), np.nextafter(1.5 * p, np.inf), 1.2 * p, 1.9 * p,
                        [2.0**-128, 2.0**-140, 1e-300, 2.0**127 * 1.49, 2.0**127 * 1.5, 2.0**128, 1e300]])
    got = E8M0.encode(x)
    with np.errstate(over="ignore"):
        expected = x.astype(ml_type("float8_e8m0fnu")).view(np.uint8)
    np.testing.assert_array_equal(got, expected)
    # the rule, stated: the nearest power of two, ties to the larger one, 2**-127 below, NaN above
    assert E8M0.encode(np.float64(3.0)) == 0x81 and E8M0.encode(np.float64(2.99)) == 0x80
    assert E8M0.encode(np.float64(2.0**-200)) == 0x00 and E8M0.encode(np.float64(2.0**128)) == 0xFF
    assert E8M0.encode(np.float64(2.0**128), overflow="saturate") == 0xFE


def test_e8m0_encode_has_no_code_for_zero_negative_or_nan():
    x = np.array([0.0, -0.0, -1.0, np.nan, -np.inf, np.inf], np.float32)
    assert E8M0.encode(x).tolist() == [0xFF] * 6
    assert E8M0.encode(x, overflow="saturate").tolist() == [0xFF] * 5 + [0xFE]
    np.testing.assert_array_equal(E8M0.encode(x), x.astype(ml_type("float8_e8m0fnu")).view(np.uint8))


def test_e8m0_codec_protocol_and_errors():
    codes, ctx = E8M0.encode_tensor(np.array([1.0, 4.0], np.float32))
    assert ctx is None and codes.tolist() == [127, 129] and E8M0.to_json() == "float8_e8m0fnu"
    assert E8M0.decode_tensor(codes, None).tolist() == [1.0, 4.0]
    with pytest.raises(TypeError, match="float8_e8m0fnu.decode_tensor: context must be None, got int"):
        E8M0.decode_tensor(codes, 1)
    with pytest.raises(TypeError, match="float8_e8m0fnu.decode: codes must"):
        E8M0.decode(codes.astype(np.uint16))
    with pytest.raises(TypeError, match="float8_e8m0fnu.encode: x must"):
        E8M0.encode(np.array([1], np.int32))


# ================================================================================== MX blocks


def ref_encode(fmt: MXFormat, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The loop reference on every block of a 2-D ``x`` blocked along its last axis (padding: zeros)."""
    rows, n = x.shape
    bs = fmt.block_size
    per_row = -(-n // bs)
    scales = np.zeros((rows, per_row), np.uint8)
    elements = np.zeros((rows, per_row, bs), np.uint8)
    for r in range(rows):
        for b in range(per_row):
            block = x[r, b * bs : (b + 1) * bs].tolist()
            block += [0.0] * (bs - len(block))
            s, codes = ref.encode_block(fmt.base, block)
            scales[r, b] = s
            elements[r, b] = codes
    return scales, elements


def ref_decode(fmt: MXFormat, scales: np.ndarray, elements: np.ndarray) -> np.ndarray:
    out = np.zeros(elements.shape, np.float64)
    for r, b in np.ndindex(scales.shape):
        out[r, b] = ref.decode_block(fmt.base, int(scales[r, b]), elements[r, b].tolist())
    return out


def special_block(rng: np.random.Generator, name: str, n: int, dtype) -> np.ndarray:
    """A random block, sometimes with planted zeros, ties, huge/tiny ranges and subnormal inputs."""
    kind = rng.integers(6)
    x = rng.standard_normal(n) * np.exp2(rng.integers(-20, 20))
    if kind == 1:  # values on the element grid times a power of two, plus half-steps: ties
        elem = MX_FORMATS[name].element
        grid = elem.decode(rng.integers(0, 1 << elem.nbits, n).astype(elem.container)).astype(np.float64)
        grid = np.where(np.isfinite(grid), grid, 0.0)
        x = grid * 2.0 ** rng.integers(-5, 5) * (1 + 2.0 ** -rng.integers(1, 6, n))
    elif kind == 2:
        x[rng.random(n) < 0.5] = 0.0
    elif kind == 3:  # a wide dynamic range inside one block
        x = rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))
    elif kind == 4 and dtype == np.float32:  # float32 subnormals and tiny values
        x = rng.standard_normal(n) * 2.0**-140
    with np.errstate(over="ignore"):  # float16: the largest planted values overflow to inf (a NaN block)
        return x.astype(dtype)


@pytest.mark.parametrize("name", MX_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_mx_quantize_matches_the_loop_reference(name, dtype):
    fmt = MX_FORMATS[name]
    rng = np.random.default_rng(10 + MX_NAMES.index(name))
    x = np.stack([special_block(rng, name, 70, dtype) for _ in range(24)])  # 3 blocks per row, last padded
    scales, elements = fmt.quantize(x)
    ref_s, ref_e = ref_encode(fmt, x)
    np.testing.assert_array_equal(scales, ref_s)
    np.testing.assert_array_equal(elements, ref_e)
    values = fmt.dequantize(scales, elements, x.shape)
    expected = ref_decode(fmt, scales, elements).reshape(24, -1)[:, :70]
    assert_same_values(values, expected)


@pytest.mark.parametrize("name", MX_NAMES)
def test_mx_decode_of_arbitrary_bytes_matches_the_loop(name):
    """Faults make any byte pattern possible: decoding must follow the specification for all of them."""
    fmt = MX_FORMATS[name]
    rng = np.random.default_rng(1)
    shape = (5, 64)
    lay = fmt.layout(shape)
    codes = rng.integers(0, 256, lay.n_bytes).astype(np.uint8)
    codes[:3] = [0x00, 0xFE, 0xFF]  # the smallest, largest and NaN scales
    scales, elements = fmt.unpack(codes, shape)
    got = fmt.decode_tensor(codes, MXContext(shape))
    expected = ref_decode(fmt, scales, elements).reshape(shape)
    assert_same_values(got, expected)
    assert np.isnan(got[1, :32]).all() and not np.isnan(got[0]).all()  # block 2 = row 1, first block: NaN


@pytest.mark.parametrize("name", MX_NAMES)
def test_mx_pack_unpack_round_trip_and_bit_order(name):
    fmt = MX_FORMATS[name]
    rng = np.random.default_rng(2)
    shape = (3, 64)
    lay = fmt.layout(shape)
    codes = rng.integers(0, 256, lay.n_bytes).astype(np.uint8)
    scales, elements = fmt.unpack(codes, shape)
    np.testing.assert_array_equal(fmt.pack(scales, elements), codes)
    # the element stream, bit by bit: element j's bit c is stream bit j * w + c (little-endian bytes)
    w = fmt.element_bits
    stream = np.unpackbits(codes[lay.n_blocks :], bitorder="little")
    weights = 1 << np.arange(w)
    np.testing.assert_array_equal((stream.reshape(-1, w) * weights).sum(axis=1), elements.reshape(-1))
    np.testing.assert_array_equal(codes[: lay.n_blocks], scales.reshape(-1))


def canonical_block(scale, name, rng):
    """A scale and element codes that encode gives back for their own values: every element code is
    one encode produces (no NaN/inf, no -2 for INT8) and one element is in the top binade
    ``[2**emax_elem, 2**(emax_elem + 1))`` (so the scale is the one encode chooses)."""
    fmt = MX_FORMATS[name]
    elem = fmt.element
    values = elem.decode(np.arange(1 << elem.nbits, dtype=np.uint8)).astype(np.float64)
    allowed = np.flatnonzero(np.isfinite(values) & (np.abs(values) <= fmt.element_max))
    top = np.flatnonzero(np.isfinite(values) & (np.abs(values) >= 2.0**fmt.emax_elem)
                         & (np.abs(values) <= fmt.element_max))
    codes = rng.choice(allowed, fmt.block_size).astype(np.uint8)
    codes[rng.integers(fmt.block_size)] = rng.choice(top)
    return np.uint8(scale), codes


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(MX_NAMES), scale=st.integers(0, 254), seed=st.integers(0, 2**32 - 1))
def test_mx_round_trip_of_representable_blocks(name, scale, seed):
    fmt = MX_FORMATS[name]
    s, codes = canonical_block(scale, name, np.random.default_rng(seed))
    values = fmt.dequantize(np.array([[s]]), codes[None, None, :], (32,))
    s2, codes2 = fmt.quantize(values)
    assert int(s2[0, 0]) == int(s)
    np.testing.assert_array_equal(codes2.reshape(-1), codes)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(MX_NAMES),
    values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=40),
)
def test_mx_block_property_against_the_loop(name, values):
    fmt = MX_FORMATS[name]
    x = np.array(values, np.float32)
    scales, elements = fmt.quantize(x)
    ref_s, ref_e = ref_encode(fmt, x[None, :])
    np.testing.assert_array_equal(scales, ref_s)
    np.testing.assert_array_equal(elements, ref_e)
    back = fmt.dequantize(scales, elements, x.shape)
    expected = ref_decode(fmt, scales, elements).reshape(-1)[: x.size]
    assert_same_values(back, expected)


@pytest.mark.parametrize("name", MX_NAMES)
def test_mx_scale_edge_cases(name):
    fmt = MX_FORMATS[name]
    # all-zero block: floor(log2 0) = -inf, clamped: scale 0x00, elements zero (signs kept)
    zeros = np.array([0.0] * 16 + [-0.0] * 16, np.float32)
    s, e = fmt.quantize(zeros)
    assert s.tolist() == [[0]] and np.array_equal(fmt.dequantize(s, e, (32,)), zeros)
    if name != "mxint8":
        assert np.signbit(fmt.dequantize(s, e, (32,)))[16:].all()
    # NaN or inf anywhere in a block: scale NaN (0xFF), element codes 0, every value NaN; other blocks fine
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(64, np.float32)
        x[40] = bad
        s, e = fmt.quantize(x)
        assert s[0, 1] == 0xFF and not e[0, 1].any() and s[0, 0] != 0xFF
        v = fmt.dequantize(s, e, (64,))
        assert np.isnan(v[32:]).all() and (v[:32] == 1.0).all()
    # the largest scale 0xFE = 2**127 (float64 input), and beyond it NaN
    top = 2.0 ** (127 + fmt.emax_elem)
    assert fmt.quantize(np.array([top], np.float64))[0][0, 0] == 0xFE
    assert fmt.quantize(np.array([2 * top], np.float64))[0][0, 0] == 0xFF
    assert fmt.dequantize(*fmt.quantize(np.array([top], np.float64)), (1,))[0] == top
    # the smallest scale 0x00 = 2**-127: tiny blocks clamp to it and their elements round
    tiny = np.array([2.0**-140, 2.0**-126], np.float64)
    s, e = fmt.quantize(tiny)
    assert s[0, 0] == max(0, -126 - fmt.emax_elem + 127)
    # float32's largest values fit: floor(log2 max) - emax_elem <= 127
    s, _ = fmt.quantize(np.array([np.finfo(np.float32).max], np.float32))
    assert s[0, 0] == 127 - fmt.emax_elem + 127


@pytest.mark.parametrize("name", MX_NAMES)
def test_mx_saturation_as_the_specification_states(name):
    """max|V| / X lies in [2**emax, 2**(emax+1)), above the element's largest value: those saturate."""
    fmt = MX_FORMATS[name]
    x = np.array([2.0 ** (fmt.emax_elem + 1) * 0.999], np.float64)  # just under the next binade
    s, e = fmt.quantize(x)
    assert s[0, 0] == 127
    assert fmt.dequantize(s, e, (1,))[0] == fmt.element_max


def test_mx_blocks_along_an_axis_and_padding():
    x = np.random.default_rng(4).standard_normal((3, 40, 5)).astype(np.float32)
    fmt = get_mx_format("mxfp8_e4m3_axis1")
    assert fmt.axis == 1 and fmt.name == "mxfp8_e4m3_axis1"
    codes, ctx = fmt.encode_tensor(x)
    moved = np.moveaxis(x, 1, -1).reshape(15, 40)
    ref_s, ref_e = ref_encode(fmt, moved)
    lay = fmt.layout(x.shape)
    assert (lay.rows, lay.row_length, lay.blocks_per_row, lay.n_blocks) == (15, 40, 2, 30)
    assert codes.shape == (30 + 30 * 32,) and ctx == MXContext((3, 40, 5))
    np.testing.assert_array_equal(codes, fmt.pack(ref_s, ref_e))
    back = fmt.decode_tensor(codes, ctx)
    expected = np.moveaxis(ref_decode(fmt, ref_s, ref_e).reshape(15, 64)[:, :40].reshape(3, 5, 40), -1, 1)
    np.testing.assert_array_equal(back, expected)
    # default: rows = first axis, blocks along the rest flattened
    d = MX_FORMATS["mxfp8_e4m3"]
    s, e = d.quantize(x)
    np.testing.assert_array_equal(s, ref_encode(d, x.reshape(3, 200))[0])
    # 0-d and 1-d tensors are one row; an empty tensor stores nothing
    assert d.layout(()).n_bytes == 33 and d.layout((7,)).n_blocks == 1 and d.layout((0, 4)).n_bytes == 0
    assert d.decode_tensor(*d.encode_tensor(np.float32(1.5) * np.ones((), np.float32))).shape == ()


def test_mx_block_size_option():
    fmt = get_mx_format("mxfp4_k16")
    assert fmt.block_size == 16 and fmt.bits_per_value == 4.5
    x = np.random.default_rng(5).standard_normal((2, 48)).astype(np.float32)
    s, e = fmt.quantize(x)
    assert s.shape == (2, 3)
    np.testing.assert_array_equal(s, ref_encode(fmt, x)[0])
    np.testing.assert_array_equal(e, ref_encode(fmt, x)[1])


# ======================================================================= storage and faults


def _params(rng):
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "fc.weight": rng.standard_normal((10, 40)).astype(np.float32),
        "fc.bias": rng.standard_normal(10).astype(np.float32),
    }


@pytest.mark.parametrize("name", MX_NAMES)
def test_mx_in_a_storage_spec(name):
    rng = np.random.default_rng(6)
    params = _params(rng)
    spec = StorageSpec((StorageRule("*", format=name),))
    assert StorageSpec.from_dict(spec.to_dict()) == spec and codec_from_json(name) == MX_FORMATS[name]
    stored = store(params, spec)
    fmt = MX_FORMATS[name]
    for k, u in params.items():
        t = stored[k]
        assert t.shape == u.shape and t.code_shape == fmt.stored_shape(u.shape) and t.nbits == 8
        assert t.bits == 8 * fmt.layout(u.shape).n_bytes
    w = load(stored)
    for k, u in params.items():
        expected = fmt.dequantize(*fmt.quantize(u), u.shape).astype(np.float32)
        np.testing.assert_array_equal(w[k], expected)
    # faults: BitErrors counts the stored bits (scales + elements + padding); the FaultList replays
    result = inject(stored, BitErrors(0.01), rng=3)
    assert len(result.faults) > 0 and set(result.faults.format) == {name}
    flipped = sum(int(np.unpackbits(result.stored[k].codes ^ stored[k].codes).sum()) for k in stored)
    assert flipped == len(result.faults)
    again = inject(stored, FaultList.from_json(result.faults.to_json()))
    for k in stored:
        np.testing.assert_array_equal(again.stored[k].codes, result.stored[k].codes)


@pytest.mark.parametrize("name", MX_NAMES)
def test_every_single_bit_flip_lands_where_locate_says(name):
    """Flip each stored bit of a small tensor, decode, and compare what changed with locate()."""
    fmt = MX_FORMATS[name]
    shape = (2, 40)  # 2 rows x 2 blocks; the second block of each row has 24 padding elements
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    codes, ctx = fmt.encode_tensor(x)
    clean = fmt.decode_tensor(codes, ctx).reshape(-1)
    lay = fmt.layout(shape)
    index = np.repeat(np.arange(lay.n_bytes), 8)
    bit = np.tile(np.arange(8), lay.n_bytes)
    is_scale, number, field_bit = fmt.locate(shape, index, bit)
    assert is_scale.sum() == 8 * lay.n_blocks
    for i, b, sc, num, fb in zip(index, bit, is_scale, number, field_bit, strict=True):
        c = codes.copy()
        c[i] ^= np.uint8(1 << b)
        v = fmt.decode_tensor(c, ctx).reshape(-1)
        changed = set(np.flatnonzero(~((v == clean) | (np.isnan(v) & np.isnan(clean)))).tolist())
        if sc:
            block = set(fmt.block_elements(shape, int(num)).tolist())
            assert changed <= block and (changed or not np.any(clean[list(block)]))
            s_old = codes[num]
            s_new = s_old ^ (1 << fb)
            if s_new != 0xFF:  # a scale flip multiplies the block by exactly 2**(new - old)
                idx = sorted(block)
                np.testing.assert_array_equal(v[idx], clean[idx] * 2.0 ** (int(s_new) - int(s_old)))
        else:
            flat = int(fmt.element_index(shape, int(num)))
            assert changed <= ({flat} if flat >= 0 else set())
            if flat >= 0 and not np.isnan(v[flat]):  # the element's own code changed in bit fb
                _, e = fmt.unpack(c, shape)
                _, e0 = fmt.unpack(codes, shape)
                assert (e.reshape(-1) ^ e0.reshape(-1)).tolist().count(1 << fb) == 1


def test_exact_count_on_mx_targets_the_byte_array():
    rng = np.random.default_rng(8)
    stored = store(_params(rng), StorageSpec((StorageRule("*", format="mxfp4"),)))
    result = inject(stored, ExactCount(5), rng=1)
    for k in stored:
        diff = np.unpackbits(result.stored[k].codes ^ stored[k].codes)
        assert diff.sum() == 5


# ================================================================================= names, errors


def test_names_and_lookups():
    assert resolve_format("MXFP4") is not None and resolve_format("mxfp4") == MX_FORMATS["mxfp4"]
    assert get_mx_format("mxint8_k16_axis-2") == MXFormat("mxint8", 16, -2)
    assert MXFormat("mxint8", 16, -2).name == "mxint8_k16_axis-2"
    assert [f.element.name for f in MX_FORMATS.values()] == [
        "float8_e4m3fn", "float8_e5m2", "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn", "q1.6"]
    assert [f.bits_per_value for f in MX_FORMATS.values()] == [8.25, 8.25, 6.25, 6.25, 4.25, 8.25]
    assert isinstance(MX_FORMATS["mxfp4"], Codec)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: get_format("mxfp4"), ValueError, "get_format: name must be a per-word number format, got"),
        (lambda: flip_value(0.1, 3, "mxfp4"), ValueError,
         "flip_value: fmt must be a per-word number format, got the MX block format 'mxfp4'"),
        (lambda: get_mx_format("mxfp5"), ValueError,
         r"get_mx_format: name must be an MX format name .* got 'mxfp5'"),
        (lambda: get_mx_format(3), TypeError, "get_mx_format: name must be a str, got int"),
        (lambda: MXFormat("mxfp6_e2m3", 30), ValueError,
         "MXFormat: block_size must be a multiple of 4 for 6-bit elements"),
        (lambda: MXFormat("mxfp4", 0), ValueError, r"MXFormat: block_size must be in \[1"),
        (lambda: MXFormat("fp4"), ValueError, "MXFormat: base must be one of"),
        (lambda: get_mx_format("mxfp4_axis3").encode_tensor(np.zeros((2, 2), np.float32)), ValueError,
         r"mxfp4_axis3.layout: axis 3 must be an axis of the tensor of shape \(2, 2\)"),
        (lambda: MX_FORMATS["mxfp4"].decode_tensor(np.zeros(3, np.uint8), MXContext((2,))), ValueError,
         "mxfp4.unpack: codes must have shape"),
        (lambda: MX_FORMATS["mxfp4"].decode_tensor(np.zeros(17, np.uint8), None), TypeError,
         "mxfp4.decode_tensor: context must be an MXContext"),
        (lambda: MX_FORMATS["mxfp4"].decode_tensor(np.zeros(17, np.uint16), MXContext((2,))), TypeError,
         "mxfp4.unpack: codes must"),
        (lambda: MX_FORMATS["mxfp4"].quantize(np.zeros(3, np.int64)), TypeError, "mxfp4.quantize: x must"),
        (lambda: MX_FORMATS["mxfp4"].layout((2, -1)), TypeError, "mxfp4.layout: shape must be a tuple"),
        (lambda: MX_FORMATS["mxfp4"].locate((2,), 17, 0), ValueError,
         r"mxfp4.locate: index must be in \[0, 17\)"),
        (lambda: MX_FORMATS["mxfp4"].locate((2,), 0, 8), ValueError,
         r"mxfp4.locate: bit must be in \[0, 7\]"),
        (lambda: StorageRule("*", format="mxfp9"), ValueError,
         "StorageRule: rule '\\*' format must be an IEEE"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("name", MX_NAMES)
@pytest.mark.parametrize("shape", [(0,), (0, 32), (3, 0), (0, 0, 5)])
def test_empty_tensors_store_and_load(name, shape):
    """A tensor with no values loads back empty, in its shape and dtype, also after an injection (a
    tensor with zero rows used to fail in dequantize's reshape)."""
    x = np.ones(shape, np.float32)
    spec = StorageSpec((StorageRule("*", format=name),))
    stored = store({"w": x}, spec)
    back = load(stored)["w"]
    assert back.shape == shape and back.dtype == np.float32
    assert load(inject(stored, BitErrors(0.5), rng=0).stored)["w"].shape == shape
