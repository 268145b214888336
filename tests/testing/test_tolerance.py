"""The dot-product error bound helper: values, pass/fail behaviour, failure messages, errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from saf_ref.testing.tolerance import assert_within_dot_bound, dot_bound, gamma, unit_roundoff


def test_unit_roundoff_is_half_an_ulp_of_one():
    for dtype in (np.float32, np.float64):
        assert unit_roundoff(dtype) == np.finfo(dtype).eps / 2


def test_gamma_matches_exact_rational_arithmetic():
    for k, u in ((1, 2.0**-24), (576, 2.0**-24), (256, 2.0**-11), (10**6, 2.0**-53)):
        exact = Fraction(k) * Fraction(u) / (1 - Fraction(k) * Fraction(u))
        assert abs(Fraction(gamma(k, u)) - exact) <= exact * Fraction(2.0**-52)
    assert gamma(0, 2.0**-24) == 0.0


def test_a_real_float32_dot_product_is_within_the_bound_and_the_bound_is_not_vacuous():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 512)).astype(np.float32)
    w = rng.standard_normal(512).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64)
    mag = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64)
    assert_within_dot_bound(x @ w, ref, mag, 512, u=2.0**-24, what="float32 matvec")
    # float16-sized errors are far outside the float32 bound.
    rough = (x.astype(np.float16) @ w.astype(np.float16)).astype(np.float64)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within_dot_bound(rough, ref, mag, 512, u=2.0**-24)


def test_failure_message_names_where_how_much_bound_and_repro():
    ref = np.zeros((2, 3))
    got = ref.copy()
    got[1, 2] = 1e-3
    with pytest.raises(AssertionError) as info:
        assert_within_dot_bound(got, ref, np.ones((2, 3)), 10, u=2.0**-24, what="conv2d dx", repro="seed=7")
    msg = str(info.value)
    for part in ("conv2d dx", "index (1, 2)", "1.000e-03", "K=10", "1 of 6", "seed=7"):
        assert part in msg, (part, msg)


def test_non_finite_values():
    ref = np.array([np.inf, np.nan, 1.0])
    mag = np.ones(3)
    assert_within_dot_bound(np.array([np.inf, np.nan, 1.0]), ref, mag, 1, u=2.0**-24)
    with pytest.raises(AssertionError, match=r"got -inf but the reference is inf"):
        assert_within_dot_bound(np.array([-np.inf, np.nan, 1.0]), ref, mag, 1, u=2.0**-24)
    with pytest.raises(AssertionError, match="exceeds"):  # NaN where the reference is finite
        assert_within_dot_bound(np.array([np.inf, np.nan, np.nan]), ref, mag, 1, u=2.0**-24)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_within_dot_bound(np.zeros(2), ref, mag, 1, u=2.0**-24)


def test_dot_bound_scales_the_magnitude():
    np.testing.assert_array_equal(dot_bound(np.array([0.0, 2.0]), 3, u=0.01, c=2.0), [0.0, 4 * 0.03 / 0.97])


ERRORS = [
    (lambda: unit_roundoff(np.float16), TypeError, r"unit_roundoff: dtype must be float32 .*, got float16"),
    (lambda: unit_roundoff(None), TypeError, r"unit_roundoff: dtype must be float32 or float64, got None"),
    (lambda: unit_roundoff("fp99"), TypeError, r"unit_roundoff: dtype must be float32 or .*, got 'fp99'"),
    (lambda: gamma(-1, 0.1), ValueError, r"gamma: k must be in \[0, inf\]"),
    (lambda: gamma(1.5, 0.1), TypeError, r"gamma: k must be an integer"),
    (lambda: gamma(1, "u"), TypeError, r"gamma: u must be a real number"),
    (lambda: gamma(1, 0.0), ValueError, r"gamma: u must be in \(0, 1\)"),
    (lambda: gamma(2**24, 2.0**-24), ValueError, r"k\*u must be < 1"),
    (lambda: dot_bound([1.0], 1, u=0.1), TypeError, r"dot_bound: magnitude must be a numpy.ndarray"),
    (lambda: dot_bound(np.ones(1), 1, u=0.1, c=0), ValueError, r"dot_bound: c must be > 0"),
    (lambda: dot_bound(np.ones(1), 1, u=0.1, c="2"), TypeError, r"dot_bound: c must be a real number"),
]


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
