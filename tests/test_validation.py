"""saf_ref.validation.check_rng: the one gate of every seed argument."""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.validation import check_rng


def test_check_rng_takes_a_generator_as_is_and_a_seed_as_default_rng():
    g = np.random.default_rng(5)
    assert check_rng(g, "f") is g
    for seed in (0, 7, np.int64(7), np.uint8(3)):
        want = np.random.default_rng(int(seed)).random(4)
        np.testing.assert_array_equal(check_rng(seed, "f").random(4), want)


@pytest.mark.parametrize("bad", [None, 1.0, "3", True, np.bool_(False), np.random.RandomState(0)])
def test_check_rng_refuses_other_types_with_a_type_error(bad):
    with pytest.raises(TypeError, match=r"^f: seed must be a numpy.random.Generator or a non-negative "):
        check_rng(bad, "f", "seed")


@pytest.mark.parametrize("bad", [-1, np.int64(-5)])
def test_check_rng_refuses_a_negative_seed_with_a_value_error(bad):
    with pytest.raises(ValueError, match=rf"^f: rng must be a numpy.random.Generator or a non-negative "
                       rf"integer seed, got {int(bad)}$"):
        check_rng(bad, "f")


def test_check_rate_sequence_takes_sequences_and_1d_arrays_in_order():
    from saf_ref.validation import check_rate_sequence

    for rates in ([1e-3, 0.0, 1.0], (1e-3, 0, 1), np.array([1e-3, 0.0, 1.0])):
        got = check_rate_sequence(rates, "f")
        assert got == (1e-3, 0.0, 1.0) and all(type(r) is float for r in got)
    f32 = check_rate_sequence(np.array([1e-3, 1.0], np.float32), "f")
    assert f32 == (0.0010000000474974513, 1.0)  # the float32 nearest 1e-3, exactly widened
    assert check_rate_sequence([], "f", nonempty=False) == ()
    assert check_rate_sequence([0.1, 0.1], "f") == (0.1, 0.1)  # repeats allowed unless distinct


@pytest.mark.parametrize(
    ("rates", "kw", "error", "message"),
    [
        ("0.1", {}, TypeError, r"f: rates must be a non-empty sequence of bit-error rates, got str"),
        (0.1, {}, TypeError, r"f: rates must be a non-empty sequence of bit-error rates, got float"),
        ({0.1}, {}, TypeError, r"f: rates must be a non-empty sequence of bit-error rates, got set"),
        ((r for r in [0.1]), {}, TypeError, r"f: rates must be a non-empty sequence of bit-error rates"),
        ([], {}, ValueError, r"f: rates must be a non-empty sequence of bit-error rates, got \[\]"),
        (np.zeros((2, 2)), {}, ValueError, r"f: rates must be .* \(1-D\), got an array of shape \(2, 2\)"),
        (np.array(0.1), {}, ValueError, r"f: rates must be .* \(1-D\), got an array of shape \(\)"),
        (np.float64(0.1), {}, TypeError, r"f: rates must be a non-empty sequence of bit-error rates, got"),
        ([0.1, 2.0], {}, ValueError, r"f: rates\[1\] must be a probability in \[0, 1\], got 2.0"),
        ([0.1, float("nan")], {}, ValueError, r"f: rates\[1\] must be"),
        ([0.1, 0.1], {"distinct": True}, ValueError, r"f: rates must be distinct bit-error rates, got"),
        ("ab", {"nonempty": False}, TypeError, r"f: rates must be a sequence of bit-error rates, got str"),
    ],
)
def test_check_rate_sequence_refuses(rates, kw, error, message):
    from saf_ref.validation import check_rate_sequence

    with pytest.raises(error, match=message):
        check_rate_sequence(rates, "f", **kw)


def test_check_real_array_returns_a_new_float64_array():
    from saf_ref.validation import check_real_array

    a = np.array([1, 2], np.int8)
    got = check_real_array(a, "v", "f")
    assert got.dtype == np.float64 and got.tolist() == [1.0, 2.0] and not np.shares_memory(got, a)
    assert check_real_array([[0.5], [0.25]], "v", "f").tolist() == [[0.5], [0.25]]


RAGGED = r"^f: v must be a rectangular array of real numbers, got a ragged "


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([[0.6], [0.7, 0.8]], ValueError, RAGGED + r"list$"),
        (([1.0], [1.0, 2.0]), ValueError, RAGGED + r"tuple$"),
        (np.array([True]), TypeError, r"^f: v must be real numbers, got dtype bool$"),
        (["a"], TypeError, r"^f: v must be real numbers, got dtype <U1$"),
        (np.zeros(2, complex), TypeError, r"^f: v must be real numbers, got dtype complex128$"),
    ],
)
def test_check_real_array_refuses(value, error, message):
    from saf_ref.validation import check_real_array

    with pytest.raises(error, match=message):
        check_real_array(value, "v", "f")
