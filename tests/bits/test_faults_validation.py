"""Review fixes in saf_ref.bits.faults: argument checks at the public entry points, 0-d chips.

Each test failed before its fix: ``apply_flips`` truncated float (and bool, object) positions silently
(index 1.7 flipped word 1); ``sample_stuck_at_map`` raised on the 0-d shape ``()`` its shape check accepts
(``~`` of a 0-d array is a NumPy scalar) and let NumPy's own message through for a dtype it cannot parse;
``inject_bit_errors`` raised OverflowError for a valid rate below ~1e-307 and the samplers warned.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from saf_ref.bits.faults import (
    FlipPositions,
    apply_flips,
    inject_bit_errors,
    sample_nested_flips,
    sample_stuck_at_map,
)


@pytest.mark.parametrize(
    "index, bit, which, dtype",
    [
        (np.array([1.7]), np.array([0]), "index", "float64"),
        (np.array([1]), np.array([2.9]), "bit", "float64"),
        (np.array([True]), np.array([0]), "index", "bool"),
        (np.array([1]), np.array([True]), "bit", "bool"),
        (np.array([1], dtype=object), np.array([0]), "index", "object"),
        (np.array(["1"]), np.array([0]), "index", "<U1"),
    ],
)
def test_apply_flips_refuses_non_integer_positions(index, bit, which, dtype):
    codes = np.zeros(4, np.uint8)
    match = rf"^apply_flips: flips.{which} must hold integers, got dtype {dtype}$"
    with pytest.raises(TypeError, match=match):
        apply_flips(codes, FlipPositions(index, bit))


def test_apply_flips_still_takes_integer_and_empty_positions():
    codes = np.arange(4, dtype=np.uint8)
    out = apply_flips(codes, FlipPositions(np.array([1, 3], np.uint32), np.array([7, 0], np.int16)))
    np.testing.assert_array_equal(out, [0, 1 ^ 0x80, 2, 3 ^ 1])  # by hand
    empty = apply_flips(codes, ([], []))  # np.asarray([]) is float64, but holds no position
    np.testing.assert_array_equal(empty, codes)
    assert empty is not codes


def test_stuck_at_map_of_a_0d_tensor():
    # every bit stuck (p = 1), at 1 or at 0: the masks are known without the sampler
    ones = sample_stuck_at_map((), 8, 1.0, rng=0, p_stuck1=1.0)
    zeros = sample_stuck_at_map((), 8, 1.0, rng=0, p_stuck1=0.0)
    assert ones.shape == () and zeros.shape == ()
    word = np.array(0x5A, np.uint8)
    assert int(ones.apply(word)) == 0xFF and int(zeros.apply(word)) == 0x00
    assert (ones.n_stuck1, ones.n_stuck0, zeros.n_stuck1, zeros.n_stuck0) == (8, 0, 0, 8)
    assert len(ones.to_faultlist()) == 8 and set(ones.to_faultlist().kind) == {"stuck1"}
    # a 0-d tensor is one word: the same draws as a one-word vector
    a, b = sample_stuck_at_map((), 7, 0.5, rng=3), sample_stuck_at_map((1,), 7, 0.5, rng=3)
    np.testing.assert_array_equal(a.and_mask.reshape(1), b.and_mask)
    np.testing.assert_array_equal(a.or_mask.reshape(1), b.or_mask)


def test_stuck_at_map_dtype_error_is_templated():
    with pytest.raises(TypeError, match=r"^sample_stuck_at_map: dtype must be an unsigned integer dtype "
                                        r"\(uint8/16/32/64\), got 'foo'$"):
        sample_stuck_at_map(4, 8, 0.1, rng=0, dtype="foo")


@pytest.mark.parametrize("p", [5e-324, 1e-310, 2.2e-308, 1e-307])
def test_tiny_rates_flip_nothing_without_error_or_warning(p):
    # Before the fix: OverflowError ("cannot convert float infinity to integer", the block size of
    # inject_chunked) for p * nbits below ~1e-305, and a RuntimeWarning (E / lam overflowing) in every
    # sampler. Expected flips over these 32,000 bits: below 1e-301, so none (the reference: no flip).
    codes = np.arange(1000, dtype=np.uint32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(inject_bit_errors(codes, p, rng=0), codes)
        np.testing.assert_array_equal(inject_bit_errors(codes, p, p01=p / 2, rng=0), codes)  # thinning path
        nested = sample_nested_flips(codes.shape, 32, [p, p / 4, 0.0], rng=0)
        assert [f.index.size for f in nested] == [0, 0, 0]
        # the rng still makes the draws of a normal rate after such a call: a 1e-2 pattern follows
        gen = np.random.default_rng(5)
        inject_bit_errors(codes, p, rng=gen)
        assert not np.array_equal(inject_bit_errors(codes, 1e-2, rng=gen), codes)
