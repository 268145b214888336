"""cross_entropy: naive loops, central differences, label smoothing, stability, float32, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nn_helpers import NAIVE_RTOL, assert_gradient, assert_unchanged, rel_error, snapshot

from saf_ref.nn.loss import (
    CrossEntropyCache,
    cross_entropy_backward,
    cross_entropy_forward,
    cross_entropy_vjp,
)
from saf_ref.nn.naive import cross_entropy_backward_naive, cross_entropy_naive
from saf_ref.testing.tolerance import assert_within_dot_bound

U32 = 2.0**-24


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_forward_and_backward_match_naive_loops(smoothing):
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, 6)
    loss, cache = cross_entropy_forward(logits, labels, label_smoothing=smoothing)
    assert isinstance(loss, np.float64)
    ref = cross_entropy_naive(logits, labels, label_smoothing=smoothing)
    assert abs(loss - ref) <= NAIVE_RTOL * abs(ref)
    dlogits = cross_entropy_backward(0.5, cache).dlogits
    ref_d = cross_entropy_backward_naive(logits, labels, label_smoothing=smoothing, dloss=0.5)
    assert rel_error(dlogits, ref_d) <= NAIVE_RTOL


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_gradient_matches_central_differences(smoothing):
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    g = cross_entropy_vjp(logits, labels, 1.0, label_smoothing=smoothing).dlogits

    def f(v):
        return cross_entropy_forward(v, labels, label_smoothing=smoothing)[0]

    assert_gradient(g, f, logits, 1.0, what="dlogits")


def test_known_values():
    """Uniform logits give log K whatever the label and the smoothing; a confident correct prediction
    gives ~0 without smoothing and eps * (K-1)/K * margin with it."""
    k = 7
    loss, _ = cross_entropy_forward(np.zeros((3, k)), np.array([0, 3, 6]), label_smoothing=0.3)
    assert abs(loss - math.log(k)) <= 1e-15
    logits = np.array([[40.0, 0.0, 0.0]])
    loss0, _ = cross_entropy_forward(logits, np.array([0]))
    assert 0 <= loss0 < 1e-16  # the true value 2 exp(-40) ~ 8.5e-18 is below 1 ulp of the log-sum
    loss_s, _ = cross_entropy_forward(logits, np.array([0]), label_smoothing=0.3)
    assert abs(loss_s - 0.3 * 2 / 3 * 40.0) <= 1e-12


def test_stable_for_huge_logits():
    """exp(1000) overflows; the max-shifted log-softmax does not."""
    logits = np.array([[1000.0, 0.0], [-1000.0, 1000.0]])
    loss, cache = cross_entropy_forward(logits, np.array([1, 1]))
    assert abs(loss - 500.0) <= 1e-12
    assert np.all(np.isfinite(cross_entropy_backward(1.0, cache).dlogits))
    # float32 logits at the top of the range are fine too (the log-softmax runs in float64).
    loss32, _ = cross_entropy_forward(np.array([[3e38, -3e38]], np.float32), np.array([0]))
    assert loss32 == 0.0 and loss32.dtype == np.float32


def test_minus_inf_logit_in_another_class_without_smoothing():
    loss, _ = cross_entropy_forward(np.array([[0.0, -np.inf]]), np.array([0]))
    assert loss == 0.0  # no 0 * inf = NaN from the (skipped) smoothing term


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_float32_is_the_float64_result_rounded_once(smoothing):
    rng = np.random.default_rng(2)
    logits32 = (4 * rng.standard_normal((16, 10))).astype(np.float32)
    labels = rng.integers(0, 10, 16).astype(np.uint8)  # any integer dtype is accepted
    loss32, c32 = cross_entropy_forward(logits32, labels, label_smoothing=smoothing)
    loss64, c64 = cross_entropy_forward(logits32.astype(np.float64), labels, label_smoothing=smoothing)
    assert isinstance(loss32, np.float32)
    assert_within_dot_bound(np.array(loss32), np.array(loss64), np.abs(np.array(loss64)), 1, u=U32)
    d32 = cross_entropy_backward(1.0, c32).dlogits
    d64 = cross_entropy_backward(1.0, c64).dlogits
    assert d32.dtype == np.float32
    assert_within_dot_bound(d32, d64, np.abs(d64), 1, u=U32, what="dlogits")


def test_inputs_are_not_modified_and_the_cache_does_not_alias_labels():
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    before = snapshot(logits, labels)
    _, cache = cross_entropy_forward(logits, labels, label_smoothing=0.1)
    d = cross_entropy_backward(1.0, cache).dlogits
    assert_unchanged(before, logits, labels)
    assert isinstance(cache, CrossEntropyCache)
    assert not np.shares_memory(cache.labels, labels) and not np.shares_memory(d, logits)


def _logits():
    return np.zeros((3, 4))


def _labels():
    return np.array([0, 1, 3])


ERRORS = [
    (lambda: cross_entropy_forward([[0.0]], _labels()), TypeError, r"cross_entropy: logits must be a numpy"),
    (lambda: cross_entropy_forward(_logits().astype(int), _labels()), TypeError, r"logits must have dtype"),
    (
        lambda: cross_entropy_forward(np.zeros(4), _labels()),
        ValueError,
        r"logits must be 2-dimensional \(N, K\)",
    ),
    (lambda: cross_entropy_forward(np.zeros((3, 0)), _labels()), ValueError, r"logits.shape\[1\] must be in"),
    (lambda: cross_entropy_forward(_logits(), [0, 1, 3]), TypeError, r"labels must be a numpy.ndarray"),
    (
        lambda: cross_entropy_forward(_logits(), np.array([0.0, 1.0, 3.0])),
        TypeError,
        r"labels must have an integer dtype \(class indices\), got float64",
    ),
    (
        lambda: cross_entropy_forward(_logits(), np.array([True, False, True])),
        TypeError,
        r"labels must have an integer dtype",
    ),
    (
        lambda: cross_entropy_forward(_logits(), np.array([0, 1])),
        ValueError,
        r"labels must have shape \(3,\)",
    ),
    (
        lambda: cross_entropy_forward(_logits(), np.array([0, -1, 3])),
        ValueError,
        r"labels must be class indices in \[0, 3\] \(logits.shape\[1\] = 4 classes\), got values from -1",
    ),
    (lambda: cross_entropy_forward(_logits(), np.array([0, 4, 3])), ValueError, r"got values from 0 to 4"),
    (
        lambda: cross_entropy_forward(_logits(), _labels(), label_smoothing="0.1"),
        TypeError,
        r"label_smoothing must be a real number",
    ),
    (
        lambda: cross_entropy_forward(_logits(), _labels(), label_smoothing=1.5),
        ValueError,
        r"label_smoothing must be in \[0, 1\], got 1.5",
    ),
    (lambda: cross_entropy_backward(1.0, (1, 2)), TypeError, r"cache must be a CrossEntropyCache"),
    (
        lambda: cross_entropy_backward(np.ones(1), cross_entropy_forward(_logits(), _labels())[1]),
        TypeError,
        r"cross_entropy_backward: dloss must be a real number",
    ),
]


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
