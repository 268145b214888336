"""Confidence intervals against scipy's independent implementations and Monte Carlo coverage."""

import math

import numpy as np
import pytest
from scipy import stats

from saf_ref.experiments.stats import clopper_pearson_interval, mean_interval, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (37, 200), (999, 1000), (0, 1)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_proportion_intervals_match_scipy_binomtest(k, n, confidence):
    result = stats.binomtest(k, n)
    wilson = result.proportion_ci(confidence_level=confidence, method="wilson")
    exact = result.proportion_ci(confidence_level=confidence, method="exact")
    assert wilson_interval(k, n, confidence=confidence) == pytest.approx((wilson.low, wilson.high), abs=1e-12)
    assert clopper_pearson_interval(k, n, confidence=confidence) == pytest.approx(
        (exact.low, exact.high), abs=1e-10
    )


def test_mean_interval_matches_hand_formula():
    x = [0.81, 0.79, 0.85, 0.80, 0.77]
    mean = sum(x) / len(x)
    s = math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1))
    half = 2.7764451051977987 * s / math.sqrt(len(x))  # t_{0.975, 4}, from tables
    got = mean_interval(x)
    assert got == pytest.approx((mean, mean - half, mean + half), rel=1e-9)


def test_mean_interval_single_value_is_degenerate():
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)


def test_wilson_coverage_by_monte_carlo():
    rng = np.random.default_rng(1234)
    n, p, reps = 50, 0.1, 4000
    ks = rng.binomial(n, p, size=reps)
    covered = sum(lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in ks))
    # Wilson's coverage at n=50, p=0.1 is close to nominal; 4000 reps give a standard error of ~0.35%.
    assert 0.92 <= covered / reps <= 0.98


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: wilson_interval(3, 0), ValueError, "n must be in"),
        (lambda: wilson_interval(11, 10), ValueError, "k must be in"),
        (lambda: wilson_interval(1.5, 10), TypeError, "k must be an integer"),
        (lambda: clopper_pearson_interval(1, 10, confidence=1.0), ValueError, "confidence"),
        (lambda: mean_interval([]), ValueError, "non-empty"),
        (lambda: mean_interval(["a", 0.5]), TypeError, r"mean_interval: values must be a sequence of real"),
        (lambda: mean_interval([1.0], confidence=0.0), ValueError, "confidence"),
        (lambda: mean_interval([1.0], confidence="95%"), TypeError, "mean_interval: confidence must be a"),
        (lambda: wilson_interval(1, 10, confidence=None), TypeError, "wilson_interval: confidence must be"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------ pooled rates
from saf_ref.experiments.stats import pooled_rate_interval  # noqa: E402


def test_pooled_rate_independent_is_wilson_of_the_sums_as_scipy():
    got = pooled_rate_interval([3, 0, 5], [100, 100, 50], clustered=False, confidence=0.9)
    ci = stats.binomtest(8, 250).proportion_ci(confidence_level=0.9, method="wilson")
    assert got == pytest.approx((8 / 250, ci.low, ci.high), abs=1e-12)


def test_pooled_rate_clustered_with_equal_sizes_is_the_t_interval_of_trial_rates():
    ks, n = [3, 7, 1, 4, 0], 80
    rates = np.array(ks) / n
    half = stats.t.ppf(0.975, len(ks) - 1) * rates.std(ddof=1) / math.sqrt(len(ks))
    got = pooled_rate_interval(ks, [n] * len(ks), clustered=True)
    assert got == pytest.approx((rates.mean(), max(0.0, rates.mean() - half), rates.mean() + half), rel=1e-12)


def test_pooled_rate_clustered_unequal_sizes_hand_formula_and_one_trial():
    ks, ns = [2, 10], [40, 60]
    r = 12 / 100
    se = math.sqrt(2 / 1 * ((2 - r * 40) ** 2 + (10 - r * 60) ** 2)) / 100
    half = 12.706204736174698 * se  # t_{0.975, 1}, from tables
    assert pooled_rate_interval(ks, ns, clustered=True) == pytest.approx((r, max(0, r - half), r + half))
    assert pooled_rate_interval([3], [9], clustered=True) == (1 / 3, 1 / 3, 1 / 3)


def test_pooled_rate_errors():
    with pytest.raises(ValueError, match="equal length"):
        pooled_rate_interval([1], [2, 3], clustered=True)
    with pytest.raises(ValueError, match="ks\\[i\\] must be at most ns\\[i\\], got 5 > 3"):
        pooled_rate_interval([5], [3], clustered=False)
    with pytest.raises(ValueError, match="ns\\[i\\]"):
        pooled_rate_interval([0], [0], clustered=False)
    with pytest.raises(TypeError, match="clustered must be a bool"):
        pooled_rate_interval([0], [1], clustered=1)
    with pytest.raises(ValueError, match="confidence"):
        pooled_rate_interval([0, 1], [1, 1], clustered=True, confidence=1.0)
