"""Teaching helpers: single flips against NumPy / ml_dtypes bit views, probabilities against exhaustive
enumeration of error patterns, exact rational arithmetic and Monte Carlo."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from saf_ref.bits.faults import inject_bit_errors
from saf_ref.bits.fixed import parse_fixed_format
from saf_ref.bits.ieee import get_ieee_format
from saf_ref.bits.quantize import Quantizer
from saf_ref.bits.teaching import (
    FlipTable,
    expected_corrupted,
    flip_table,
    flip_value,
    prob_nonfinite,
    resolve_format,
)

ALPHA = 1e-4

# Independent references: the NumPy / ml_dtypes dtype of each format and its unsigned view.
NUMPY_FORMATS = {
    "float64": (np.float64, np.uint64),
    "float32": (np.float32, np.uint32),
    "float16": (np.float16, np.uint16),
}


def ref_dtypes(name):
    if name in NUMPY_FORMATS:
        return NUMPY_FORMATS[name]
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return {
        "bfloat16": (ml_dtypes.bfloat16, np.uint16),
        "float8_e4m3fn": (ml_dtypes.float8_e4m3fn, np.uint8),
        "float8_e5m2": (ml_dtypes.float8_e5m2, np.uint8),
    }[name]


def ref_flip(x: float, bit: int, name: str) -> float:
    """Store x with the reference dtype (a single rounding from float32-exact x), flip, read back."""
    ftype, utype = ref_dtypes(name)
    word = np.array(x, dtype=ftype).view(utype) ^ utype(1 << bit)
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when a NaN pattern is widened; NaN is expected
        return float(np.asarray(word).view(ftype).astype(np.float64))


def same_float(a: float, b: float) -> bool:
    """Equal including the sign of zero; NaN equals NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def ref_class(v: float, name: str) -> str:
    ftype, _ = ref_dtypes(name)
    finfo = np.finfo if name in NUMPY_FORMATS else pytest.importorskip("ml_dtypes").finfo
    tiny = float(finfo(ftype).smallest_normal)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf"
    if v == 0:
        return "zero"
    return "subnormal" if abs(v) < tiny else "normal"


# float32-exact values, so a float64 -> float32 -> target double rounding (ml_dtypes < 0.7) cannot differ
VALUES = [0.1, -2.5, 0.0, -0.0, 1.0, 3.0e-3, 200.0, -1.5e-5, float("inf")]
FORMAT_NAMES = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]


# ---------------------------------------------------------------------------------------------------------
# flip_value and flip_table
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_flip_value_matches_reference_bit_views(name):
    fmt = get_ieee_format(name)
    for v in VALUES:
        x = float(np.float32(v))
        if name == "float8_e4m3fn" and math.isinf(x):
            continue  # e4m3fn has no inf: encode gives NaN, covered by the NaN rows
        for bit in range(fmt.nbits):
            got = flip_value(x, bit, name)
            assert isinstance(got, float)
            assert same_float(got, ref_flip(x, bit, name)), (name, x, bit, got)


def test_flip_value_on_arrays_and_format_objects():
    x = np.array([[0.1, -3.0], [7.0, 0.0]], dtype=np.float32)
    got = flip_value(x, 14, get_ieee_format("float16"))
    ref = (x.astype(np.float16).view(np.uint16) ^ np.uint16(1 << 14)).view(np.float16)
    assert got.dtype == np.float16 and got.shape == (2, 2)
    assert np.array_equal(got, ref)


def test_flip_value_fixed_point_against_integer_arithmetic():
    # q2.5: k = round_half_even(32 x), code = k mod 256, value of a code c = (c - 256 [c >= 128]) / 32
    for x in [1.5, -0.03125, 3.96875, -4.0, 0.0, 0.8]:
        k = round(Fraction(x) * 32)  # Python's round is half-to-even
        code = k % 256
        for bit in range(8):
            c = code ^ (1 << bit)
            expected = Fraction(c - 256 if c >= 128 else c, 32)
            assert Fraction(flip_value(x, bit, "q2.5")) == expected


def test_flip_value_quantizer_by_hand():
    # symmetric, fixed range [-1, 1], margin 0: delta = 1/127; offset binary code of 0 is 128
    q = Quantizer(8, scheme="symmetric", code="offset_binary", max_abs=1.0)
    assert flip_value(0.0, 7, q) == -1.0  # code 0: (0 - 128) / 127 clipped to -1
    assert flip_value(0.0, 0, q) == float(np.float32(1) / np.float32(127))  # code 129: level +1
    assert flip_value(0.0, 6, q) == float(np.float32(64) * (np.float32(1) / np.float32(127)))


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_flip_table_rows_match_independent_references(name):
    fmt = get_ieee_format(name)
    ftype, utype = ref_dtypes(name)
    x = float(np.float32(0.1))
    table = flip_table(x, name)
    assert isinstance(table, FlipTable)
    assert table.format_name == name and table.nbits == fmt.nbits and table.x == x
    code = int(np.array(x, dtype=ftype).view(utype))
    value = float(np.array(x, dtype=ftype).astype(np.float64))
    assert table.code == code and table.value == value and table.value_class == "normal"
    assert [r.bit for r in table.rows] == list(range(fmt.nbits - 1, -1, -1))  # MSB first
    m = fmt.mantissa_bits
    for r in table.rows:
        assert r.code == code ^ (1 << r.bit)
        assert same_float(r.value, ref_flip(x, r.bit, name))
        assert r.field == ("sign" if r.bit == fmt.nbits - 1 else "exponent" if r.bit >= m else "mantissa")
        assert r.value_class == ref_class(r.value, name)
        if math.isnan(r.value):
            assert r.relative_change is None
        elif math.isinf(r.value):
            assert r.relative_change == r.value
        else:
            assert r.relative_change == (r.value - value) / abs(value)


def test_flip_table_relative_change_undefined_cases():
    zero = flip_table(0.0, "float16")
    assert zero.value_class == "zero" and all(r.relative_change is None for r in zero.rows)
    assert {r.value_class for r in zero.rows} == {"zero", "normal", "subnormal"}
    inf = flip_table(float("inf"), "float16")
    assert inf.value_class == "inf" and all(r.relative_change is None for r in inf.rows)
    assert sum(r.value_class == "nan" for r in inf.rows) == 10  # every mantissa flip of inf is a NaN
    big = flip_table(1.0, "float16")  # 0 01111 0000000000: bit 14 gives exponent 11111, mantissa 0: inf
    row14 = next(r for r in big.rows if r.bit == 14)
    assert row14.value == math.inf and row14.relative_change == math.inf and row14.value_class == "inf"


def test_flip_table_fixed_point_and_quantizer():
    table = flip_table(1.5, "q2.5")  # k = 48 = 0b0011_0000
    assert table.code == 48 and table.value == 1.5 and table.value_class == "normal"
    fields = {r.bit: r.field for r in table.rows}
    assert fields == {
        7: "sign",
        6: "integer",
        5: "integer",
        4: "fraction",
        3: "fraction",
        2: "fraction",
        1: "fraction",
        0: "fraction",
    }
    sign_row = table.rows[0]
    assert sign_row.value == 1.5 - 4.0 and sign_row.relative_change == (1.5 - 4.0 - 1.5) / 1.5
    assert next(r for r in table.rows if r.bit == 4).value == 1.0  # 48 ^ 16 = 32 = 1.0 * 2**5
    lsb = flip_table(2**-5, "q2.5").rows[-1]  # k = 1: flipping bit 0 gives k = 0
    assert lsb.bit == 0 and lsb.value == 0.0 and lsb.value_class == "zero" and lsb.relative_change == -1.0
    q = Quantizer(4, scheme="symmetric", code="twos_complement", rounding="nearest_even", max_abs=0.7)
    qt = flip_table(0.0, q)
    assert qt.format_name == q.name and qt.nbits == 4 and qt.code == 0 and qt.value_class == "zero"
    assert [r.code for r in qt.rows] == [8, 4, 2, 1]
    assert all(r.value_class == "normal" for r in qt.rows)


# ---------------------------------------------------------------------------------------------------------
# expected_corrupted
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "nbits", "p"), [(1000, 32, 1e-3), (10**6, 8, 0.5), (7, 64, 1e-15), (0, 16, 0.3)]
)
def test_expected_corrupted_matches_exact_rational_arithmetic(n, nbits, p):
    exact = n * (1 - (1 - Fraction(p)) ** nbits)
    assert math.isclose(expected_corrupted(n, nbits, p), float(exact), rel_tol=1e-13, abs_tol=0.0)
    assert math.isclose(expected_corrupted(n, nbits, p), n * stats.binom.sf(0, nbits, p), rel_tol=1e-9)


def test_expected_corrupted_edges():
    assert expected_corrupted(10, 32, 0.0) == 0.0
    assert expected_corrupted(10, 32, 1.0) == 10.0
    for n, p in ((0, 0.5), (0, 0.0), (10, 0.0)):  # a count is never -0.0
        assert math.copysign(1.0, expected_corrupted(n, 8, p)) == 1.0, (n, p)


@pytest.mark.parametrize(("dtype", "p"), [(np.uint16, 2e-3), (np.uint32, 0.02), (np.uint8, 0.3)])
def test_expected_corrupted_against_monte_carlo(dtype, p):
    rng = np.random.default_rng(200)
    n = 100_000
    nbits = np.dtype(dtype).itemsize * 8
    codes = rng.integers(0, 2**nbits, size=n, dtype=np.uint64).astype(dtype)
    corrupted = int(np.count_nonzero(inject_bit_errors(codes, p, rng=rng) != codes))
    assert stats.binomtest(corrupted, n, expected_corrupted(n, nbits, p) / n).pvalue > ALPHA


# ---------------------------------------------------------------------------------------------------------
# prob_nonfinite
# ---------------------------------------------------------------------------------------------------------
def enumerated_probabilities(x: float, name: str, p: float) -> dict[str, float]:
    """Sum over all 2**nbits error patterns of P(pattern) * [result is nan / inf], with reference dtypes."""
    ftype, utype = ref_dtypes(name)
    nbits = np.dtype(utype).itemsize * 8
    code = np.array(x, dtype=ftype).view(utype)
    patterns = np.arange(2**nbits, dtype=np.uint64).astype(utype)
    with np.errstate(invalid="ignore"):  # NaN patterns widened on purpose
        values = (code ^ patterns).view(ftype).astype(np.float64)
    flips = np.unpackbits(patterns.view(np.uint8).reshape(-1, nbits // 8), axis=1).sum(axis=1)
    weight = np.power(p, flips) * np.power(1 - p, nbits - flips)
    nan, inf = float(weight[np.isnan(values)].sum()), float(weight[np.isinf(values)].sum())
    return {"nan": nan, "inf": inf, "nonfinite": nan + inf}


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("p", [1e-3, 0.1, 0.5])
def test_prob_nonfinite_equals_exhaustive_enumeration(name, p):
    for v in [0.1, -2.5, 0.0, 1.0, 3.0e-3, 200.0, float("inf"), float("nan")]:
        x = float(np.float32(v))
        ref = enumerated_probabilities(x, name, p)
        for kind in ("nonfinite", "nan", "inf"):
            got = prob_nonfinite(x, name, p, kind=kind)
            assert math.isclose(got, ref[kind], rel_tol=1e-10, abs_tol=1e-300), (
                name,
                x,
                kind,
                got,
                ref[kind],
            )


@pytest.mark.parametrize(
    ("name", "x", "p"),
    [("float32", 1.0, 0.2), ("float32", 0.1, 0.3), ("float64", 1.0, 0.3), ("float16", 0.1, 0.2)],
)
def test_prob_nonfinite_against_monte_carlo(name, x, p):
    ftype, utype = ref_dtypes(name)
    n = 100_000
    codes = np.full(n, np.array(x, dtype=ftype).view(utype))
    read = inject_bit_errors(codes, p, rng=300).view(ftype)
    for kind, count in (("nonfinite", (~np.isfinite(read)).sum()), ("inf", np.isinf(read).sum())):
        prob = prob_nonfinite(x, name, p, kind=kind)
        assert 0 < prob < 1
        assert stats.binomtest(int(count), n, prob).pvalue > ALPHA, (kind, count / n, prob)


def test_prob_nonfinite_closed_form_examples():
    p = 1e-3
    # float32 1.0: exponent 01111111, one 0 bit must flip and seven 1 bits must not
    assert math.isclose(prob_nonfinite(1.0, "float32", p), p * (1 - p) ** 7, rel_tol=1e-15)
    # 0.1 = 0x3DCCCCCD: exponent 01111011, two zero bits
    assert math.isclose(prob_nonfinite(0.1, "float32", p), p**2 * (1 - p) ** 6, rel_tol=1e-15)
    # e4m3fn 1.0 = 0.0111.000: the 7 low bits must all end at 1: four flips, three kept
    assert math.isclose(prob_nonfinite(1.0, "float8_e4m3fn", p), p**4 * (1 - p) ** 3, rel_tol=1e-15)
    assert prob_nonfinite(1.0, "float8_e4m3fn", p, kind="inf") == 0.0


def test_prob_nonfinite_fixed_point_and_quantizers_are_zero():
    fmt = parse_fixed_format("q2.5")
    all_codes = np.arange(256, dtype=np.uint8)
    assert np.isfinite(fmt.decode(all_codes)).all()  # no code is non-finite: probability 0
    assert prob_nonfinite(1.5, fmt, 0.5) == 0.0
    q = Quantizer(8, scheme="symmetric", max_abs=1.0)
    assert prob_nonfinite(0.3, q, 0.5) == 0.0
    out = prob_nonfinite(np.array([0.1, 1.0], dtype=np.float32), "q2.5", 0.1)
    assert out.shape == (2,) and not out.any()


def test_prob_nonfinite_on_arrays():
    x = np.array([1.0, 0.1, np.inf], dtype=np.float32)
    got = prob_nonfinite(x, "float32", 0.01)
    assert got.shape == (3,) and got.dtype == np.float64
    for xi, gi in zip(x, got, strict=True):
        assert gi == prob_nonfinite(float(xi), "float32", 0.01)


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------
BAD_CALLS = [
    (lambda: flip_value(1.0, 16, "float16"), ValueError, r"flip_value: bit must be in \[0, 15\]"),
    (lambda: flip_value(1.0, -1, "float16"), ValueError, r"bit must be in \[0, 15\]"),
    (lambda: flip_value(1.0, 1.0, "float16"), TypeError, "bit must be an integer"),
    (lambda: flip_value("1.0", 1, "float16"), TypeError, "flip_value: x must be a real number"),
    (lambda: flip_value(True, 1, "float16"), TypeError, "x must be a real number"),
    (lambda: flip_value(1.0, 1, "float17"), ValueError, "flip_value: fmt must be an IEEE format name"),
    (lambda: flip_value(1.0, 1, 16), TypeError, "flip_value: fmt must be a format name"),
    (lambda: flip_table(np.zeros(2), "float16"), ValueError, "flip_table: x must be a scalar"),
    (lambda: flip_table(1.0, None), TypeError, "flip_table: fmt must be"),
    (
        lambda: expected_corrupted(-1, 8, 0.1),
        ValueError,
        r"expected_corrupted: n_values must be in \[0, inf\]",
    ),
    (lambda: expected_corrupted(1, 0, 0.1), ValueError, r"nbits must be in \[1, 64\]"),
    (lambda: expected_corrupted(1, 65, 0.1), ValueError, r"nbits must be in \[1, 64\]"),
    (lambda: expected_corrupted(1, 8, 1.1), ValueError, "p must be a probability"),
    (lambda: expected_corrupted(1.5, 8, 0.1), TypeError, "n_values must be an integer"),
    (lambda: prob_nonfinite(1.0, "float16", -0.1), ValueError, "prob_nonfinite: p must be a probability"),
    (lambda: prob_nonfinite(1.0, "float16", 0.1, kind="finite"), ValueError, "kind must be one of"),
    (lambda: prob_nonfinite(1.0, [], 0.1), TypeError, "prob_nonfinite: fmt must be"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_resolve_format_names():
    assert resolve_format("fp16") is get_ieee_format("float16")
    assert resolve_format("q2.5").name == "q2.5"
    q = Quantizer(8)
    assert resolve_format(q) is q
