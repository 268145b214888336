"""Fault models: exact behaviour against naive references, purity, determinism and validation.

The statistical properties of the samplers are in ``test_faults_stats.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import BitErrors, Bursts, ExactCount
from saf_ref.bits.faults import (
    FlipPositions,
    StuckAtMap,
    apply_flips,
    field_mask,
    flip_bit,
    flip_by_uniform,
    inject_bit_errors,
    inject_bursts,
    inject_exact_k,
    sample_nested_flips,
    sample_stuck_at_map,
)
from saf_ref.bits.fields import BitField
from saf_ref.bits.ieee import get_ieee_format

UINTS = (np.uint8, np.uint16, np.uint32, np.uint64)


# ---------------------------------------------------------------------------------------------------------
# Naive references: Python ints, one bit at a time
# ---------------------------------------------------------------------------------------------------------
def naive_diff_bits(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """Every (flat index, bit) where a and b differ, by a loop over Python ints."""
    out = []
    for i, (x, y) in enumerate(zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True)):
        d = x ^ y
        out.extend((i, bit) for bit in range(64) if d >> bit & 1)
    return out


def naive_flip_by_uniform(codes, uniform, p, protected_bits=()):
    out = codes.reshape(-1).tolist()
    u = uniform.reshape(len(out), -1)
    p32 = np.float32(p)
    for k in range(len(out)):
        for j in range(u.shape[1]):
            if j not in protected_bits and u[k, j] < p32:
                out[k] ^= 1 << j
    return np.array(out, dtype=codes.dtype).reshape(codes.shape)


def random_codes(rng, shape, dtype, nbits=None):
    nbits = np.dtype(dtype).itemsize * 8 if nbits is None else nbits
    return rng.integers(0, 2**nbits, size=shape, dtype=np.uint64).astype(dtype)


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


def readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


# ---------------------------------------------------------------------------------------------------------
# inject_bit_errors
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", UINTS)
def test_inject_faults_list_matches_the_bits_that_changed(dtype):
    rng = np.random.default_rng(1)
    codes = random_codes(rng, (7, 9), dtype)
    out, faults = BitErrors(0.05).apply(codes, rng=2, format_name="f", tensor="w")
    assert out.dtype == codes.dtype and out.shape == codes.shape
    assert list(zip(faults.index.tolist(), faults.bit.tolist(), strict=True)) == naive_diff_bits(codes, out)
    assert set(faults.kind) <= {"flip"} and set(faults.tensor) <= {"w"} and set(faults.format) <= {"f"}
    assert len(faults) > 0


def test_inject_p0_is_a_copy_and_p1_flips_every_candidate_bit():
    rng = np.random.default_rng(3)
    codes = random_codes(rng, (50,), np.uint16, nbits=12)
    out0 = inject_bit_errors(codes, 0.0, rng=0, nbits=12)
    assert np.array_equal(out0, codes) and out0 is not codes
    out1 = inject_bit_errors(codes, 1.0, rng=0, nbits=12)
    assert np.array_equal(out1, codes ^ np.uint16(0xFFF))
    out_mask = inject_bit_errors(codes, 1.0, rng=0, nbits=12, bit_mask=0b1010_0000_0001)
    assert np.array_equal(out_mask, codes ^ np.uint16(0b1010_0000_0001))


@pytest.mark.parametrize(
    ("p01", "p10", "expect"),
    [(1.0, 0.0, "ones"), (0.0, 1.0, "zeros"), (1.0, 1.0, "inverted"), (0.0, 0.0, "same")],
)
def test_inject_asymmetric_extreme_rates(p01, p10, expect):
    rng = np.random.default_rng(4)
    codes = random_codes(rng, (40,), np.uint8)
    out = inject_bit_errors(codes, rng=5, p01=p01, p10=p10)
    ref = {
        "ones": np.full_like(codes, 0xFF),
        "zeros": np.zeros_like(codes),
        "inverted": ~codes,
        "same": codes,
    }
    assert np.array_equal(out, ref[expect])


def test_inject_asymmetric_rate_defaults_to_p():
    codes = np.zeros(64, dtype=np.uint8)  # all bits 0: only p01 matters
    # p10 = 1 given, p01 defaults to p = 0: nothing flips on an all-zero array
    assert np.array_equal(inject_bit_errors(codes, 0.0, rng=1, p10=1.0), codes)
    # p01 defaults to p = 1: every bit rises
    assert np.array_equal(inject_bit_errors(codes, 1.0, rng=1, p10=0.0), ~codes)
    # p not given: the missing rate is 0
    assert np.array_equal(inject_bit_errors(~codes, rng=1, p01=1.0), ~codes)


def test_inject_respects_nbits_and_bit_mask_forms():
    rng = np.random.default_rng(6)
    codes = random_codes(rng, (300,), np.uint32, nbits=20)
    fmt16 = get_ieee_format("float16")
    exponent = fmt16.fields["exponent"]
    for mask, allowed in [
        (None, set(range(20))),
        (0b1000_0000_0000_0001_0001, {0, 4, 19}),
        (exponent, set(exponent.bits())),
        ([1, 3, exponent], {1, 3} | set(exponent.bits())),
        (np.array([b % 3 == 0 for b in range(20)]), {b for b in range(20) if b % 3 == 0}),
    ]:
        out = inject_bit_errors(codes, 0.3, rng=7, nbits=20, bit_mask=mask)
        changed = {bit for _, bit in naive_diff_bits(codes, out)}
        assert changed and changed <= allowed


def test_field_mask_names_format_fields():
    fmt = get_ieee_format("float16")
    assert field_mask(fmt, "exponent") == 0x7C00
    assert field_mask(fmt, "sign", "mantissa") == 0x83FF
    codes = np.zeros(500, dtype=np.uint16)
    out = inject_bit_errors(codes, 0.5, rng=0, bit_mask=field_mask(fmt, "exponent"))
    assert np.all((out & ~np.uint16(0x7C00)) == 0) and np.any(out != 0)


def test_inject_same_seed_same_bits_different_seed_different():
    codes = random_codes(np.random.default_rng(8), (1000,), np.uint32)
    a = inject_bit_errors(codes, 1e-2, rng=11)
    b = inject_bit_errors(codes, 1e-2, rng=np.random.default_rng(11))
    c = inject_bit_errors(codes, 1e-2, rng=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_inject_works_on_0d_empty_noncontiguous_and_uint64():
    rng = np.random.default_rng(9)
    zero_d = np.array(5, dtype=np.uint8)
    assert (
        inject_bit_errors(zero_d, 1.0, rng=0).shape == ()
        and int(inject_bit_errors(zero_d, 1.0, rng=0)) == 250
    )
    empty = np.zeros((0, 3), dtype=np.uint16)
    assert inject_bit_errors(empty, 0.5, rng=0).shape == (0, 3)
    big = random_codes(rng, (10, 8), np.uint32)
    view = big[:, ::2].T  # non-contiguous, transposed
    out, faults = BitErrors(0.1).apply(view, rng=1)
    # flat indices are C order of the view's own shape
    assert list(zip(faults.index.tolist(), faults.bit.tolist(), strict=True)) == naive_diff_bits(view, out)
    u64 = random_codes(rng, (20,), np.uint64)
    out64 = inject_bit_errors(u64, 1.0, rng=0)
    assert np.array_equal(out64, ~u64)


# ---------------------------------------------------------------------------------------------------------
# Purity: no function writes into its inputs
# ---------------------------------------------------------------------------------------------------------
def _calls(codes, uniform):
    return [
        lambda: inject_bit_errors(codes, 0.3, rng=0),
        lambda: BitErrors(p01=0.2, p10=0.5).apply(codes, rng=0),
        lambda: flip_by_uniform(codes, uniform, 0.3, protected=0b1),
        lambda: inject_exact_k(codes, 7, rng=0),
        lambda: flip_bit(codes, 3, 2),
        lambda: inject_bursts(codes, 0.5, 3, rng=0),
        lambda: apply_flips(codes, FlipPositions(np.array([0, 0, 1]), np.array([1, 1, 2]))),
        lambda: sample_stuck_at_map(codes.shape, 8, 0.3, rng=0).apply(codes),
    ]


def test_no_function_writes_into_its_inputs():
    rng = np.random.default_rng(10)
    codes = readonly(random_codes(rng, (6, 5), np.uint8))
    uniform = readonly(rng.random((6, 5, 8), dtype=np.float32))
    before = digest(codes), digest(uniform)
    for call in _calls(codes, uniform):  # a write into a read-only array would raise
        result = call()
        out = result[0] if isinstance(result, tuple) else result
        assert out is not codes and out.flags.writeable
    assert (digest(codes), digest(uniform)) == before


def test_inputs_unchanged_when_writeable():
    rng = np.random.default_rng(11)
    codes = random_codes(rng, (6, 5), np.uint8)
    uniform = rng.random((6, 5, 8), dtype=np.float32)
    before = digest(codes), digest(uniform)
    for call in _calls(codes, uniform):
        call()
    assert (digest(codes), digest(uniform)) == before


# ---------------------------------------------------------------------------------------------------------
# flip_by_uniform
# ---------------------------------------------------------------------------------------------------------
@given(
    dtype=st.sampled_from(UINTS),
    shape=st.sampled_from([(), (5,), (3, 4)]),
    nbits_frac=st.floats(0.1, 1.0),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    n_protected=st.integers(0, 3),
)
def test_flip_by_uniform_matches_naive_loop(dtype, shape, nbits_frac, p, seed, n_protected):
    rng = np.random.default_rng(seed)
    width = np.dtype(dtype).itemsize * 8
    nbits = max(1, int(width * nbits_frac))
    codes = random_codes(rng, shape, dtype, nbits)
    uniform = rng.random(shape + (nbits,), dtype=np.float32)
    protected = sorted({int(b) for b in rng.integers(0, nbits, n_protected)})
    out = flip_by_uniform(codes, uniform, p, protected=protected or None)
    assert out.dtype == codes.dtype and out.shape == codes.shape
    assert np.array_equal(out, naive_flip_by_uniform(codes, uniform, p, protected))


def test_flip_by_uniform_protected_forms_agree():
    rng = np.random.default_rng(12)
    codes = random_codes(rng, (30,), np.uint16)
    uniform = rng.random((30, 16), dtype=np.float32)
    ref = naive_flip_by_uniform(codes, uniform, 0.5, protected_bits={15, 10, 11, 12, 13, 14})
    for protected in (0xFC00, np.arange(16) >= 10, [BitField("s", 15, 1), BitField("e", 10, 5)]):
        assert np.array_equal(flip_by_uniform(codes, uniform, 0.5, protected=protected), ref)


def test_flip_by_uniform_compares_in_float32_strictly():
    codes = np.zeros(4, dtype=np.uint8)
    u32 = np.float32(0.1)
    uniform = np.full((4, 1), u32, dtype=np.float32)
    # strict: u == float32(p) does not flip
    assert not flip_by_uniform(codes, uniform, 0.1).any()
    # p a hair above u in float64, but float32(p) == u: still no flip (a float64 comparison would flip)
    p = float(u32) + 1e-12
    assert float(u32) < p and np.float32(p) == u32
    assert not flip_by_uniform(codes, uniform, p).any()
    # the next float32 above u flips
    assert flip_by_uniform(codes, uniform, float(np.nextafter(u32, np.float32(1)))).all()


def test_flip_by_uniform_nested_in_p():
    rng = np.random.default_rng(13)
    codes = random_codes(rng, (200,), np.uint32)
    uniform = rng.random((200, 32), dtype=np.float32)
    rates = [0.0, 1e-3, 0.01, 0.05, 0.1, 0.3, 1.0]
    diffs = [flip_by_uniform(codes, uniform, p) ^ codes for p in rates]
    for lo, hi in zip(diffs, diffs[1:], strict=False):
        assert np.all(lo & ~hi == 0)  # every flip at the lower rate is a flip at the higher rate
    assert not diffs[0].any() and np.all(diffs[-1] == np.uint32(0xFFFFFFFF))


# The in-repo copy of the shared golden file (tests/bits/test_golden_quantizer.py checks that the copy is
# identical to the shared one when that is present), so this test runs everywhere and never skips.
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "stutz_quantizer.json"


def test_flip_by_uniform_reproduces_golden_reference_flips():
    data = json.loads(GOLDEN.read_text())
    uniform = np.array(data["uniform"], dtype=np.float64).astype(np.float32)  # stored as exact float32
    for name, case in data["cases"].items():
        codes = np.array(case["codes"], dtype=np.uint64).astype(np.uint8 if case["nbits"] <= 8 else np.uint16)
        for p in (0.01, 0.1):
            got = flip_by_uniform(codes, uniform[:, : case["nbits"]], p)
            assert got.tolist() == case[f"flipped_codes_p{p}"], (name, p)


# ---------------------------------------------------------------------------------------------------------
# Exact k, single flips, stuck-at, bursts, nested, apply_flips
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 17, 100, 150, 160])
def test_inject_exact_k_flips_exactly_k_distinct_bits(k):
    rng = np.random.default_rng(14)
    codes = random_codes(rng, (4, 5), np.uint16, nbits=8)
    out, faults = ExactCount(k).apply(codes, rng=k, nbits=8)
    diff = naive_diff_bits(codes, out)
    assert len(diff) == k == len(faults)
    assert list(zip(faults.index.tolist(), faults.bit.tolist(), strict=True)) == diff
    assert all(bit < 8 for _, bit in diff)


def test_inject_exact_k_with_bit_mask():
    codes = np.zeros(10, dtype=np.uint8)
    out = inject_exact_k(codes, 20, rng=0, bit_mask=0b1000_0001)  # all 20 candidate bits
    assert np.all(out == 0b1000_0001)


def test_flip_bit_matches_numpy_reference():
    rng = np.random.default_rng(15)
    codes = random_codes(rng, (3, 4), np.uint32)
    for index, bit in [(0, 0), (5, 31), (11, 7)]:
        ref = codes.copy()
        ref.reshape(-1)[index] ^= np.uint32(1 << bit)
        assert np.array_equal(flip_bit(codes, index, bit), ref)
        assert np.array_equal(flip_bit(codes, np.unravel_index(index, codes.shape), bit), ref)
    assert int(flip_bit(np.array(0, dtype=np.uint8), (), 7)) == 128


def test_stuck_at_map_applies_like_a_bit_loop():
    rng = np.random.default_rng(16)
    chip = sample_stuck_at_map((8, 6), 10, 0.2, rng=17, p_stuck1=0.4)
    assert chip.and_mask.dtype == np.uint16 and chip.shape == (8, 6)
    codes = random_codes(rng, (8, 6), np.uint16, nbits=10)
    out = chip.apply(codes)
    faults = chip.to_faultlist(format_name="q4.5")
    ref = codes.reshape(-1).tolist()
    for f in faults:
        ref[f.index] = ref[f.index] | (1 << f.bit) if f.kind == "stuck1" else ref[f.index] & ~(1 << f.bit)
    assert out.tolist() == np.array(ref, dtype=np.uint16).reshape(8, 6).tolist()
    assert np.array_equal(chip.apply(out), out)  # idempotent: reading back twice changes nothing
    assert np.array_equal(faults.apply(codes, nbits=10), out)
    assert chip.n_stuck0 == faults.kind.count("stuck0") and chip.n_stuck1 == faults.kind.count("stuck1")
    assert chip.n_stuck0 > 0 and chip.n_stuck1 > 0
    assert not chip.and_mask.flags.writeable and not chip.or_mask.flags.writeable
    # nothing is stuck above nbits
    assert np.all(chip.or_mask >> 10 == 0) and np.all(~chip.and_mask >> 10 == 0)


def test_stuck_at_map_extremes_and_bit_mask():
    codes = random_codes(np.random.default_rng(18), (5,), np.uint8)
    all1 = sample_stuck_at_map(5, 8, 1.0, rng=0, p_stuck1=1.0)
    all0 = sample_stuck_at_map(5, 8, 1.0, rng=0, p_stuck1=0.0)
    none = sample_stuck_at_map(5, 8, 0.0, rng=0)
    assert np.all(all1.apply(codes) == 0xFF) and np.all(all0.apply(codes) == 0)
    assert np.array_equal(none.apply(codes), codes)
    top = sample_stuck_at_map(5, 8, 1.0, rng=0, p_stuck1=1.0, bit_mask=0x80)
    assert np.array_equal(top.apply(codes), codes | 0x80)
    wide = sample_stuck_at_map(5, 8, 1.0, rng=0, p_stuck1=1.0, dtype=np.uint32)
    assert wide.and_mask.dtype == np.uint32 and np.all(wide.or_mask == 0xFF)


def test_bursts_flip_one_contiguous_run_per_hit_word():
    rng = np.random.default_rng(19)
    codes = random_codes(rng, (400,), np.uint16, nbits=12)
    out, faults = Bursts(0.3, 4).apply(codes, rng=20, nbits=12)
    diff = (out ^ codes).tolist()
    hit = [d for d in diff if d]
    assert 60 < len(hit) < 180
    for d in hit:
        low = (d & -d).bit_length() - 1
        assert d == 0b1111 << low and low + 4 <= 12  # 4 adjacent bits inside the 12-bit word
    assert list(zip(faults.index.tolist(), faults.bit.tolist(), strict=True)) == naive_diff_bits(codes, out)
    full = inject_bursts(codes, 1.0, 12, rng=0, nbits=12)
    assert np.array_equal(full, codes ^ np.uint16(0xFFF))


def test_nested_flips_are_subsets_and_independent_of_rate_order():
    rates = [0.3, 0.0, 1e-2, 0.1, 0.3]
    flips = sample_nested_flips((50, 7), 16, rates, rng=21)
    sets = [set(zip(f.index.tolist(), f.bit.tolist(), strict=True)) for f in flips]
    by_rate = sorted(zip(rates, sets, strict=True), key=lambda t: t[0])
    for (_, lo), (_, hi) in zip(by_rate, by_rate[1:], strict=False):
        assert lo <= hi
    assert sets[1] == set() and sets[0] == sets[4] and len(sets[0]) > 0
    again = sample_nested_flips((50, 7), 16, [0.1, 0.3, 1e-2], rng=21)
    assert [set(zip(f.index.tolist(), f.bit.tolist(), strict=True)) for f in again] == [
        sets[3],
        sets[0],
        sets[2],
    ]
    codes = np.zeros((50, 7), dtype=np.uint16)
    out = apply_flips(codes, flips[3])
    assert set(naive_diff_bits(codes, out)) == sets[3]
    assert sample_nested_flips(4, 8, [], rng=0) == []
    top = sample_nested_flips(4, 8, [0.5, 1.0], rng=0, bit_mask=0xF0)[1]
    assert set(top.bit.tolist()) == {4, 5, 6, 7} and top.index.size == 16


def test_apply_flips_duplicates_cancel():
    codes = np.array([0, 0], dtype=np.uint8)
    out = apply_flips(codes, FlipPositions(np.array([0, 0, 1, 0]), np.array([1, 1, 2, 3])))
    assert out.tolist() == [8, 4]


# ---------------------------------------------------------------------------------------------------------
# Validation: every check raises the documented error naming its argument
# ---------------------------------------------------------------------------------------------------------
C8 = np.zeros(8, dtype=np.uint8)
U8 = np.zeros((8, 8), dtype=np.float32)

BAD_CALLS = [
    (
        lambda: inject_bit_errors(C8.astype(np.float32), 0.1, rng=0),
        TypeError,
        "inject_bit_errors: codes must have dtype",
    ),
    (lambda: inject_bit_errors(C8.astype(np.int8), 0.1, rng=0), TypeError, "codes must have dtype"),
    (lambda: inject_bit_errors([1, 2], 0.1, rng=0), TypeError, "codes must be a numpy.ndarray"),
    (lambda: inject_bit_errors(C8, -0.1, rng=0), ValueError, "p must be a probability"),
    (lambda: inject_bit_errors(C8, 1.5, rng=0), ValueError, "p must be a probability"),
    (lambda: inject_bit_errors(C8, float("nan"), rng=0), ValueError, "p must be a probability"),
    (lambda: inject_bit_errors(C8, "0.1", rng=0), TypeError, "p must be a real number"),
    (lambda: inject_bit_errors(C8, rng=0), ValueError, "p must be given"),
    (lambda: inject_bit_errors(C8, rng=0, p01=2.0), ValueError, "p01 must be a probability"),
    (lambda: inject_bit_errors(C8, 0.1, rng=0, p10=-1.0), ValueError, "p10 must be a probability"),
    (lambda: inject_bit_errors(C8, 0.1, rng=0, nbits=9), ValueError, r"nbits must be in \[1, 8\]"),
    (lambda: inject_bit_errors(C8, 0.1, rng=0, nbits=0), ValueError, r"nbits must be in \[1, 8\]"),
    (
        lambda: inject_bit_errors(C8, 0.1, rng=0, nbits=4, bit_mask=0x10),
        ValueError,
        "bit_mask must be an integer mask",
    ),
    (lambda: inject_bit_errors(C8, 0.1, rng=0, bit_mask=-1), ValueError, "bit_mask must be an integer mask"),
    (lambda: inject_bit_errors(C8, 0.1, rng=0, bit_mask=BitField("e", 4, 5)), ValueError, "exceeds nbits=8"),
    (
        lambda: inject_bit_errors(C8, 0.1, rng=0, bit_mask=np.ones(7, bool)),
        ValueError,
        r"bit_mask must have shape \(8,\)",
    ),
    (lambda: inject_bit_errors(C8, 0.1, rng=0, bit_mask="exp"), TypeError, "bit_mask must be None"),
    (
        lambda: inject_bit_errors(C8, 0.1, rng=0, bit_mask=[1, 8]),
        ValueError,
        r"bit_mask entry must be in \[0, 7\]",
    ),
    (
        lambda: inject_bit_errors(C8, 0.1, rng=None),
        TypeError,
        "inject_bit_errors: rng must be a numpy.random.Generator",
    ),
    (lambda: inject_bit_errors(C8, 0.1, rng=-3), ValueError, "rng must be"),
    (
        lambda: BitErrors(0.1).apply(C8, rng=0, format_name=""),
        TypeError,
        "BitErrors.apply: format_name must be a non-empty str",
    ),
    (lambda: BitErrors(0.1).apply(C8, rng=0, tensor=3), TypeError, "BitErrors.apply: tensor must be a str"),
    (
        lambda: flip_by_uniform(C8.astype(np.float32), U8, 0.1),
        TypeError,
        "flip_by_uniform: codes must have dtype",
    ),
    (lambda: flip_by_uniform(C8, U8.astype(np.float64), 0.1), TypeError, "uniform must have dtype float32"),
    (lambda: flip_by_uniform(C8, U8.tolist(), 0.1), TypeError, "uniform must be a numpy.ndarray"),
    (lambda: flip_by_uniform(C8, U8[:7], 0.1), ValueError, "uniform must have shape codes.shape"),
    (lambda: flip_by_uniform(C8, U8[:, 0], 0.1), ValueError, "uniform must have shape codes.shape"),
    (
        lambda: flip_by_uniform(C8, np.zeros((8, 9), np.float32), 0.1),
        ValueError,
        r"uniform.shape\[-1\] \(=nbits\)",
    ),
    (
        lambda: flip_by_uniform(C8, np.zeros((8, 0), np.float32), 0.1),
        ValueError,
        r"uniform.shape\[-1\] \(=nbits\)",
    ),
    (lambda: flip_by_uniform(C8, U8, 1.1), ValueError, "flip_by_uniform: p must be a probability"),
    (
        lambda: flip_by_uniform(C8, U8, 0.1, protected=np.ones(9, bool)),
        ValueError,
        r"protected must have shape \(8,\)",
    ),
    (lambda: flip_by_uniform(C8, U8, 0.1, protected=0x100), ValueError, "protected must be an integer mask"),
    (lambda: inject_exact_k(C8, 65, rng=0), ValueError, r"inject_exact_k: k must be in \[0, 64\]"),
    (lambda: inject_exact_k(C8, 9, rng=0, bit_mask=0b1), ValueError, r"k must be in \[0, 8\]"),
    (lambda: inject_exact_k(C8, -1, rng=0), ValueError, r"k must be in \[0, 64\]"),
    (lambda: inject_exact_k(C8, 1.0, rng=0), TypeError, "k must be an integer"),
    (lambda: flip_bit(C8, 8, 0), ValueError, r"flip_bit: index must be in \[0, 7\]"),
    (lambda: flip_bit(C8, -1, 0), ValueError, r"index must be in \[0, 7\]"),
    (lambda: flip_bit(C8, 0, 8), ValueError, r"bit must be in \[0, 7\]"),
    (lambda: flip_bit(C8, 0, 5, nbits=4), ValueError, r"bit must be in \[0, 3\]"),
    (lambda: flip_bit(C8, (0, 1), 0), ValueError, r"len\(index\) \(=2\) must equal codes.ndim \(=1\)"),
    (lambda: flip_bit(C8, (8,), 0), ValueError, r"index\[0\] must be in \[0, 7\]"),
    (
        lambda: apply_flips(C8, FlipPositions(np.array([8]), np.array([0]))),
        ValueError,
        "flips.index must be in",
    ),
    (
        lambda: apply_flips(C8, FlipPositions(np.array([0]), np.array([8]))),
        ValueError,
        "flips.bit must be in",
    ),
    (
        lambda: apply_flips(C8, FlipPositions(np.array([0]), np.array([1, 2]))),
        ValueError,
        "1-d of equal length",
    ),
    (lambda: apply_flips(C8, [1, 2, 3]), TypeError, "flips must be a FlipPositions"),
    (
        lambda: sample_stuck_at_map(8, 65, 0.1, rng=0),
        ValueError,
        r"sample_stuck_at_map: nbits must be in \[1, 64\]",
    ),
    (lambda: sample_stuck_at_map(8, 8, 1.1, rng=0), ValueError, "p must be a probability"),
    (
        lambda: sample_stuck_at_map(8, 8, 0.1, rng=0, p_stuck1=-0.5),
        ValueError,
        "p_stuck1 must be a probability",
    ),
    (lambda: sample_stuck_at_map(8, 8, 0.1, rng=0, dtype=np.float32), TypeError, "dtype must be an unsigned"),
    (lambda: sample_stuck_at_map(8, 9, 0.1, rng=0, dtype=np.uint8), ValueError, "nbits must be at most 8"),
    (lambda: sample_stuck_at_map((8, -1), 8, 0.1, rng=0), ValueError, r"shape\[1\] must be in"),
    (lambda: sample_stuck_at_map("8", 8, 0.1, rng=0), TypeError, "shape must be a tuple of ints"),
    (
        lambda: sample_stuck_at_map(8, 8, 0.1, rng=0).apply(C8.astype(np.uint16)),
        TypeError,
        "codes must have dtype uint8",
    ),
    (
        lambda: sample_stuck_at_map(8, 8, 0.1, rng=0).apply(C8[:4]),
        ValueError,
        r"codes must have shape \(8,\)",
    ),
    (
        lambda: StuckAtMap(np.array([0xFF, 0xFE], np.uint8), np.array([0, 1], np.uint8), 8),
        ValueError,
        r"both stuck-at-0 \(and_mask\) and stuck-at-1 \(or_mask\), got element 1, bits 0x1",
    ),
    (
        lambda: StuckAtMap(np.array([0xFF], np.uint8), np.array([0x10], np.uint8), 4),
        ValueError,
        r"StuckAtMap: stuck bits must be below nbits \(=4\), got element 0, bits 0x10",
    ),
    (lambda: StuckAtMap(np.array([0xFF], np.uint8), np.array([0], np.uint16), 8), TypeError, "mixed dtypes"),
    (
        lambda: StuckAtMap(np.array([0xFF], np.uint8), np.array([0, 0], np.uint8), 8),
        ValueError,
        r"StuckAtMap: or_mask must have shape \(1,\), got \(2,\)",
    ),
    (lambda: sample_stuck_at_map(8, 8, 0.1, rng=None), TypeError, "sample_stuck_at_map: rng must be"),
    (lambda: inject_bursts(C8, 0.1, 2, rng=-1), ValueError, "inject_bursts: rng must be"),
    (lambda: inject_bursts(C8, 0.1, 0, rng=0), ValueError, r"inject_bursts: burst_len must be in \[1, 8\]"),
    (lambda: inject_bursts(C8, 0.1, 5, rng=0, nbits=4), ValueError, r"burst_len must be in \[1, 4\]"),
    (lambda: inject_bursts(C8, 2.0, 2, rng=0), ValueError, "rate must be a probability"),
    (lambda: sample_nested_flips(8, 8, [0.1, 1.2], rng=0), ValueError, r"rates\[1\] must be a probability"),
    (lambda: sample_nested_flips(8, 8, "0.1", rng=0), TypeError, "rates must be a sequence"),
    (lambda: sample_nested_flips(8, 8, [0.1], rng=None), TypeError, "sample_nested_flips: rng must be"),
    (lambda: field_mask(get_ieee_format("float16"), "fraction"), ValueError, "field name must be one of"),
    (lambda: field_mask(object(), "exponent"), TypeError, "fmt must have a dict attribute 'fields'"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_faults_returned_are_a_faultlist_that_replays():
    codes = random_codes(np.random.default_rng(22), (30,), np.uint16)
    for out, faults in (
        BitErrors(0.1).apply(codes, rng=1),
        ExactCount(40).apply(codes, rng=1),
        Bursts(0.5, 3).apply(codes, rng=1),
    ):
        assert isinstance(faults, FaultList)
        assert faults.formats == ("raw16",)
        assert np.array_equal(faults.apply(codes), out)
