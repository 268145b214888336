"""Confidence intervals for campaign metrics.

- :func:`wilson_interval` and :func:`clopper_pearson_interval` for a proportion ``k / n`` (the fraction of
  trials whose outputs contain NaN/inf, an accuracy measured on ``n`` examples).
- :func:`mean_interval` for a mean over trials (Student-t interval).
- :func:`pooled_rate_interval` for a rate counted over several trials (the SDC rate of a campaign cell):
  Wilson on the pooled counts when every example is independent, a cluster (ratio) t-interval when the
  examples of a trial share one fault pattern.

All functions take plain numbers and return Python floats ``(low, high)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from saf_ref.validation import check_int, check_real

__all__ = ["wilson_interval", "clopper_pearson_interval", "mean_interval", "pooled_rate_interval"]


def _check_counts(k, n, confidence, fn: str) -> tuple[int, int, float]:
    n = check_int(n, "n", fn, low=1)
    k = check_int(k, "k", fn, low=0, high=n)
    confidence = check_real(confidence, "confidence", fn)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"{fn}: confidence must be in (0, 1), got {confidence}")
    return k, n, confidence


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Math
    ----
    With ``p = k / n`` and ``z`` the ``(1 + confidence) / 2`` normal quantile::

        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    The interval is ``[centre - half, centre + half]``; unlike the Wald interval it stays inside [0, 1]
    and does not collapse to a point at ``k = 0`` or ``k = n``.
    """
    k, n, confidence = _check_counts(k, n, confidence, "wilson_interval")
    z = stats.norm.ppf(0.5 + confidence / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson ("exact") interval for a binomial proportion, from Beta quantiles.

    Math
    ----
    With ``alpha = 1 - confidence``: ``low = B(alpha/2; k, n-k+1)`` (0 when ``k = 0``) and
    ``high = B(1 - alpha/2; k+1, n-k)`` (1 when ``k = n``), ``B(q; a, b)`` the Beta quantile.
    """
    k, n, confidence = _check_counts(k, n, confidence, "clopper_pearson_interval")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2.0, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return low, high


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and its Student-t confidence interval: ``(mean, low, high)``.

    Math
    ----
    ``mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (``ddof=1``). With a single value the interval is that value (no spread can be estimated).
    """
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"mean_interval: values must be a sequence of real numbers, got {values!r}") from None
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_interval: values must be a non-empty 1-D sequence, got shape {x.shape}")
    confidence = check_real(confidence, "confidence", "mean_interval")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"mean_interval: confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1 or not np.all(np.isfinite(x)):
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def pooled_rate_interval(
    ks: Sequence[int], ns: Sequence[int], *, clustered: bool, confidence: float = 0.95
) -> tuple[float, float, float]:
    """A rate counted over trials, ``K / N`` with ``K = sum(ks)``, ``N = sum(ns)``, and its interval:
    ``(rate, low, high)``.

    Parameters
    ----------
    ks, ns : sequence of int
        Per trial: the events (e.g. examples with a silent data corruption) and the examples (``ns >= 1``).
    clustered : bool
        ``False``: the ``N`` examples are independent (activation faults, drawn afresh for every example's
        activations): Wilson interval of ``K`` out of ``N``. ``True``: the examples of one trial share one
        fault pattern (weight faults: one faulty model per trial), so trials are the independent units:
        a ratio-estimator t-interval over trials.
    confidence : float in (0, 1)

    Math
    ----
    Clustered, with ``T`` trials and ``r = K / N``::

        se^2 = T / (T - 1) * sum_t (k_t - r n_t)^2 / N^2,      r +- t_{(1+confidence)/2, T-1} se

    clipped to [0, 1]. With equal ``n_t`` this is exactly :func:`mean_interval` of the per-trial rates
    ``k_t / n_t``. With a single trial no spread can be estimated and the interval is the point ``r``
    (as in :func:`mean_interval`).
    """
    fn = "pooled_rate_interval"
    if isinstance(ks, (str, bytes)) or isinstance(ns, (str, bytes)):
        raise TypeError(f"{fn}: ks and ns must be sequences of integers, got {ks!r}, {ns!r}")
    ks = [check_int(k, "ks[i]", fn, low=0) for k in ks]
    ns = [check_int(n, "ns[i]", fn, low=1) for n in ns]
    if len(ks) != len(ns) or not ks:
        raise ValueError(
            f"{fn}: ks and ns must be non-empty and of equal length, got {len(ks)} and {len(ns)}"
        )
    for k, n in zip(ks, ns, strict=True):
        if k > n:
            raise ValueError(f"{fn}: ks[i] must be at most ns[i], got {k} > {n}")
    if not isinstance(clustered, bool):
        raise TypeError(f"{fn}: clustered must be a bool, got {type(clustered).__name__}")
    k_total, n_total = sum(ks), sum(ns)
    rate = k_total / n_total
    if not clustered:
        low, high = wilson_interval(k_total, n_total, confidence=confidence)
        return rate, low, high
    confidence = check_real(confidence, "confidence", fn)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"{fn}: confidence must be in (0, 1), got {confidence}")
    t = len(ks)
    if t == 1:
        return rate, rate, rate
    resid = np.asarray(ks, dtype=np.float64) - rate * np.asarray(ns, dtype=np.float64)
    se = math.sqrt(t / (t - 1) * float(np.sum(resid**2))) / n_total
    half = float(stats.t.ppf(0.5 + confidence / 2.0, t - 1)) * se
    return rate, max(0.0, rate - half), min(1.0, rate + half)
