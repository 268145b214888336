"""Statistical tests of the fault samplers: they draw the distributions their docstrings state.

Every test uses fixed seeds, so it passes or fails deterministically; the thresholds (p-value > 1e-4)
are chosen so that a correct sampler fails with a tiny probability for a given seed. Each test checks a
property a plausible bug would break: a wrong per-bit rate, a count that is not binomial, repeated
positions, a rate applied to the wrong direction, a non-uniform subset, a broken nesting.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from saf_ref.bits import faults as faults_module
from saf_ref.bits.faultmodels import BitErrors, ExactCount
from saf_ref.bits.faults import (
    flip_by_uniform,
    inject_bit_errors,
    inject_bursts,
    inject_exact_k,
    sample_nested_flips,
    sample_stuck_at_map,
)

ALPHA = 1e-4


def bit_matrix(diff: np.ndarray, nbits: int) -> np.ndarray:
    """Boolean (size, nbits) matrix: bit j of element i set in ``diff``."""
    flat = diff.reshape(-1).astype(np.uint64)
    return ((flat[:, None] >> np.arange(nbits, dtype=np.uint64)) & np.uint64(1)).astype(bool)


def binomial_counts_pvalue(counts: np.ndarray, trials: int, p: float) -> float:
    """p-value of independent counts ~ Binomial(trials, p): sum of squared z-scores ~ chi2(len)."""
    mean, var = trials * p, trials * p * (1 - p)
    statistic = float(np.sum((counts - mean) ** 2 / var))
    return float(stats.chi2.sf(statistic, df=counts.size))


def histogram_pvalue(samples: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square p-value of integer samples against a pmf on 0..len(pmf)-1, pooling bins below 5."""
    n = samples.size
    observed = np.bincount(samples, minlength=pmf.size)[: pmf.size].astype(float)
    assert observed.sum() == n, "samples outside the support"
    expected = n * pmf / pmf.sum()
    # pool adjacent bins from both tails until every bin expects at least 5
    obs_bins, exp_bins, o_acc, e_acc = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        o_acc, e_acc = o_acc + o, e_acc + e
        if e_acc >= 5:
            obs_bins.append(o_acc)
            exp_bins.append(e_acc)
            o_acc = e_acc = 0.0
    obs_bins[-1] += o_acc
    exp_bins[-1] += e_acc
    return float(stats.chisquare(obs_bins, exp_bins).pvalue)


# ---------------------------------------------------------------------------------------------------------
# inject_bit_errors: per-bit rate, positions, counts, independence within a word
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "nbits", "n", "p", "calls"),
    [
        (np.uint16, 16, 20_000, 0.02, 5),  # dense regime
        (np.uint8, 6, 30_000, 0.2, 3),  # nbits below the container
        (np.uint32, 32, 500_000, 2e-5, 4),  # sparse regime: about 1,300 flips among 64 million bits
    ],
)
def test_every_bit_flips_at_rate_p(dtype, nbits, n, p, calls):
    rng = np.random.default_rng(100)
    codes = rng.integers(0, 2**nbits, size=n, dtype=np.uint64).astype(dtype)
    per_bit = np.zeros(nbits)
    per_region = np.zeros(16)  # where in the array the flips land: 16 equal blocks of elements
    for _ in range(calls):
        out, faults = BitErrors(p).apply(codes, rng=rng, nbits=nbits)
        per_bit += np.bincount(faults.bit, minlength=nbits)[:nbits]
        per_region += np.bincount(faults.index * 16 // n, minlength=16)
        assert np.all(out >> np.array(nbits, dtype=dtype) == codes >> np.array(nbits, dtype=dtype))
    assert per_bit.sum() == per_region.sum()
    # each bit position: Binomial(n * calls, p), independently
    assert binomial_counts_pvalue(per_bit, n * calls, p) > ALPHA
    # each block of n/16 elements: Binomial(n/16 * nbits * calls, p)
    assert binomial_counts_pvalue(per_region, n // 16 * nbits * calls, p) > ALPHA


def test_flips_per_word_are_binomial_nbits_p():
    """Within a word the bits flip independently: popcount of the XOR ~ Binomial(nbits, p)."""
    rng = np.random.default_rng(101)
    codes = rng.integers(0, 2**16, size=100_000, dtype=np.uint16)
    p = 0.15
    out = inject_bit_errors(codes, p, rng=rng)
    popcount = bit_matrix(out ^ codes, 16).sum(axis=1)
    assert histogram_pvalue(popcount, stats.binom.pmf(np.arange(17), 16, p)) > ALPHA


@pytest.mark.parametrize(
    ("n_words", "dtype", "p", "calls"),
    [
        (8, np.uint8, 0.1, 20_000),  # N = 64 bits, mean 6.4
        (31_250, np.uint32, 3e-6, 4_000),  # N = 10**6 bits, mean 3: the sparse path
    ],
)
def test_number_of_flips_is_binomial(n_words, dtype, p, calls):
    rng = np.random.default_rng(102)
    codes = np.zeros(n_words, dtype=dtype)
    nbits = np.dtype(dtype).itemsize * 8
    n_bits = n_words * nbits
    counts = np.array(
        [len(BitErrors(p).apply(codes, rng=rng)[1]) for _ in range(calls)]
    )
    support = int(n_bits * p + 12 * np.sqrt(n_bits * p) + 20)
    assert counts.max() < support
    assert histogram_pvalue(counts, stats.binom.pmf(np.arange(support), n_bits, p)) > ALPHA


@pytest.mark.parametrize("p", [0.3, 0.7, 0.999])
def test_no_duplicate_positions(p):
    rng = np.random.default_rng(103)
    codes = rng.integers(0, 2**32, size=3_000, dtype=np.uint32)
    out, faults = BitErrors(p).apply(codes, rng=rng)
    keys = faults.index * 64 + faults.bit
    assert np.unique(keys).size == keys.size
    assert np.all(np.diff(keys) > 0)  # sorted by (index, bit)
    # a repeated position would cancel in the XOR: the number of changed bits equals the record count
    assert bit_matrix(out ^ codes, 32).sum() == len(faults)


def test_asymmetric_rates_apply_per_direction():
    rng = np.random.default_rng(104)
    codes = rng.integers(0, 2**12, size=40_000, dtype=np.uint16)
    p01, p10 = 0.01, 0.05
    out = inject_bit_errors(codes, rng=rng, nbits=12, p01=p01, p10=p10)
    before, after = bit_matrix(codes, 12), bit_matrix(out, 12)
    zeros, ones = ~before, before
    rose, fell = int((zeros & after).sum()), int((ones & ~after).sum())
    assert stats.binomtest(rose, int(zeros.sum()), p01).pvalue > ALPHA
    assert stats.binomtest(fell, int(ones.sum()), p10).pvalue > ALPHA
    # per bit position too: the rates do not depend on the position
    rose_per_bit = (zeros & after).sum(axis=0)
    assert rose_per_bit.sum() == rose
    expected = zeros.sum(axis=0) * p01
    chi2 = np.sum((rose_per_bit - expected) ** 2 / (expected * (1 - p01)))
    assert stats.chi2.sf(chi2, df=12) > ALPHA


def test_flip_by_uniform_rate_with_random_uniforms():
    rng = np.random.default_rng(105)
    codes = np.zeros(20_000, dtype=np.uint8)
    uniform = rng.random((20_000, 8), dtype=np.float32)
    p = 0.07
    flips = bit_matrix(flip_by_uniform(codes, uniform, p, protected=0x80), 8)
    assert not flips[:, 7].any()
    assert binomial_counts_pvalue(flips[:, :7].sum(axis=0), 20_000, p) > ALPHA


# ---------------------------------------------------------------------------------------------------------
# Exact k: a uniformly random k-subset
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [3, 13])  # 13 > 16 / 2 takes the complement path
def test_exact_k_subsets_are_uniform(k):
    rng = np.random.default_rng(106)
    codes = np.zeros(2, dtype=np.uint8)  # 16 bits
    subsets = {frozenset(c): i for i, c in enumerate(itertools.combinations(range(16), k))}  # 560 each
    draws = 20_000
    counts = np.zeros(len(subsets))
    for _ in range(draws):
        out = inject_exact_k(codes, k, rng=rng)
        word = int(out[0]) | int(out[1]) << 8
        counts[subsets[frozenset(b for b in range(16) if word >> b & 1)]] += 1
    assert stats.chisquare(counts).pvalue > ALPHA


def test_exact_k_per_bit_frequency_on_a_large_array():
    rng = np.random.default_rng(107)
    codes = np.zeros(5_000, dtype=np.uint16)
    k, calls = 4_000, 10
    per_bit = np.zeros(16)
    for _ in range(calls):
        _, faults = ExactCount(k).apply(codes, rng=rng)
        assert len(faults) == k and np.unique(faults.index * 16 + faults.bit).size == k
        per_bit += np.bincount(faults.bit, minlength=16)
    # each bit position gets a multinomial share k / 16 per call; with N = 80,000 bits the counts are
    # hypergeometric, close to binomial (variance smaller by (N - k) / (N - 1) = 0.95: conservative)
    assert binomial_counts_pvalue(per_bit, 5_000 * calls, k / 80_000) > ALPHA


# ---------------------------------------------------------------------------------------------------------
# Stuck-at maps, bursts, nested sampling
# ---------------------------------------------------------------------------------------------------------
def test_stuck_at_rates():
    rng = np.random.default_rng(108)
    n, nbits, p, p1 = 20_000, 12, 0.03, 0.3
    chip = sample_stuck_at_map(n, nbits, p, rng=rng, p_stuck1=p1)
    stuck0 = bit_matrix(~chip.and_mask, nbits)
    stuck1 = bit_matrix(chip.or_mask, nbits)
    n_stuck = int(stuck0.sum() + stuck1.sum())
    assert stats.binomtest(n_stuck, n * nbits, p).pvalue > ALPHA
    assert stats.binomtest(int(stuck1.sum()), n_stuck, p1).pvalue > ALPHA
    assert binomial_counts_pvalue((stuck0 | stuck1).sum(axis=0), n, p) > ALPHA


def test_burst_hits_and_start_positions():
    rng = np.random.default_rng(109)
    n, rate, length, nbits = 50_000, 0.1, 3, 16
    codes = np.zeros(n, dtype=np.uint16)
    out = inject_bursts(codes, rate, length, rng=rng)
    hit = out != 0
    assert stats.binomtest(int(hit.sum()), n, rate).pvalue > ALPHA
    words = out[hit].astype(np.int64)
    start = np.log2(words & -words).astype(np.int64)  # lowest flipped bit
    assert np.all(words == 0b111 << start)
    counts = np.bincount(start, minlength=nbits - length + 1)
    assert counts.size == nbits - length + 1  # never crosses the word boundary
    assert stats.chisquare(counts).pvalue > ALPHA


def test_nested_flips_marginal_rates_and_nesting():
    rng = np.random.default_rng(110)
    shape, nbits = (20_000,), 16
    n_bits = 20_000 * nbits
    rates = [0.05, 0.001, 0.01]
    flips = sample_nested_flips(shape, nbits, rates, rng=rng)
    sizes = [f.index.size for f in flips]
    for r, size in zip(rates, sizes, strict=True):
        assert stats.binomtest(size, n_bits, r).pvalue > ALPHA
    keys = [set((f.index * 64 + f.bit).tolist()) for f in flips]
    assert keys[1] <= keys[2] <= keys[0]
    # given the pattern at 0.05, each of its flips is kept at 0.01 with probability 0.01 / 0.05
    assert stats.binomtest(sizes[2], sizes[0], 0.01 / 0.05).pvalue > ALPHA
    per_bit = np.bincount(flips[2].bit, minlength=nbits)
    assert binomial_counts_pvalue(per_bit, 20_000, 0.01) > ALPHA


def test_many_rounds_of_the_gap_sampler_give_the_same_law(monkeypatch):
    """With a tiny draw budget per round the sampler loops many times; the law must not change."""
    monkeypatch.setattr(faults_module, "_MAX_DRAWS", 7)
    rng = np.random.default_rng(111)
    codes = np.zeros(4_000, dtype=np.uint8)
    p = 0.02
    out, faults = BitErrors(p).apply(codes, rng=rng)
    keys = faults.index * 8 + faults.bit
    assert np.all(np.diff(keys) > 0)
    assert stats.binomtest(len(faults), 32_000, p).pvalue > ALPHA
    assert binomial_counts_pvalue(np.bincount(faults.bit, minlength=8), 4_000, p) > ALPHA
    counts = [len(BitErrors(0.3).apply(codes[:4], rng=rng)[1]) for _ in range(3_000)]
    assert histogram_pvalue(np.array(counts), stats.binom.pmf(np.arange(33), 32, 0.3)) > ALPHA
