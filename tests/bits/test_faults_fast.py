"""The fast injection path gives the bits of the code before it, draw for draw.

``inject_bit_errors`` (symmetric rates) now flips while it draws (:func:`inject_chunked`), the gap sampler
works in chunks (:func:`bernoulli_chunks`) and ``xor_flips`` uses fancy indexing on sorted positions
(:func:`xor_sorted`). Two independent checks that nothing changed:

- the old algorithm, kept here verbatim as the naive reference (one ``standard_exponential`` call per
  round, ``np.divmod`` and ``np.bitwise_xor.at``), compared on random arrays, rates and bit masks,
  including the generator's state afterwards, with tiny chunks, blocks and rounds so that every seam
  is crossed on small arrays;
- SHA-256 digests of the outputs of the public samplers, recorded by running the code of commit
  d7501e2 (before the change) on the cases of :func:`recorded_cases`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.bits import faults as faults_module
from saf_ref.bits.faultmodels import BitErrors
from saf_ref.bits.faults import (
    FlipPositions,
    apply_flips,
    bernoulli_chunks,
    bernoulli_positions,
    inject_bit_errors,
    inject_bursts,
    inject_exact_k,
    sample_nested_flips,
    sample_stuck_at_map,
    xor_sorted,
)

UINTS = (np.uint8, np.uint16, np.uint32, np.uint64)


# ---------------------------------------------------------------------------------------------------------
# The old algorithm (commit d7501e2), verbatim but for names
# ---------------------------------------------------------------------------------------------------------
def old_bernoulli_positions(n: int, p: float, rng: np.random.Generator, max_draws: int = 1 << 22):
    if p == 0.0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if p == 1.0:
        return np.arange(n, dtype=np.int64)
    lam = -np.log1p(-p)
    chunks = []
    start = 0
    while start < n:
        expect = (n - start) * p
        m = min(int(expect + 6.0 * np.sqrt(expect) + 16), max_draws)
        gaps = rng.standard_exponential(m)
        gaps /= lam
        np.floor(gaps, out=gaps)
        np.minimum(gaps, n, out=gaps)
        pos = gaps.astype(np.int64)
        pos += 1
        np.cumsum(pos, out=pos)
        pos += start - 1
        chunks.append(pos[: np.searchsorted(pos, n)])
        start = int(pos[-1]) + 1
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def old_inject(codes, p, rng, bits, max_draws=1 << 22):
    """inject_bit_errors(codes, p, rng=rng, bit_mask=bits) as it was: positions, divmod, ufunc.at."""
    pos = old_bernoulli_positions(codes.size * bits.size, p, rng, max_draws)
    index, slot = np.divmod(pos, bits.size)
    out = np.array(codes, order="C", copy=True)
    masks = np.left_shift(codes.dtype.type(1), bits[slot].astype(np.uint8).astype(codes.dtype))
    np.bitwise_xor.at(out.reshape(-1), index, masks)
    return out


def random_codes(seed, shape, dtype):
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(0, info.max, size=shape, dtype=dtype, endpoint=True)


def small_pieces(monkeypatch, chunk, block_bytes, max_draws):
    """Tiny chunks, copy blocks and rounds, so that small arrays cross every seam of the fast path."""
    monkeypatch.setattr(faults_module, "_CHUNK", chunk)
    monkeypatch.setattr(faults_module, "_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(faults_module, "_BLOCK_FLIPS", 1)
    monkeypatch.setattr(faults_module, "_MAX_DRAWS", max_draws)


# ---------------------------------------------------------------------------------------------------------
# Against the old algorithm
# ---------------------------------------------------------------------------------------------------------
@given(
    dtype=st.sampled_from(UINTS),
    shape=st.sampled_from([(0,), (), (1,), (5,), (3, 7), (2, 3, 11), (400,)]),
    p=st.sampled_from([0.0, 1e-4, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0]),
    mask=st.sampled_from(["all", "low", "high", "sparse", "one", "none"]),
    pieces=st.sampled_from([None, (1, 1, 1 << 22), (3, 2, 5), (7, 16, 9), (64, 8, 1 << 22)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_inject_matches_the_old_algorithm_draw_for_draw(dtype, shape, p, mask, pieces, seed):
    nbits = np.dtype(dtype).itemsize * 8
    bits = {
        "all": np.arange(nbits),
        "low": np.arange(nbits // 2),
        "high": np.arange(nbits // 2, nbits),
        "sparse": np.array([0, 3, nbits - 1]),
        "one": np.array([nbits - 2]),
        "none": np.zeros(0, dtype=np.int64),
    }[mask]
    codes = random_codes(seed, shape, dtype)
    with pytest.MonkeyPatch.context() as mp:
        max_draws = 1 << 22
        if pieces is not None:
            small_pieces(mp, *pieces)
            max_draws = pieces[2]
        new_rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        new = inject_bit_errors(codes, p, rng=new_rng, bit_mask=bits.tolist())
        old = old_inject(codes, p, old_rng, bits, max_draws)
    assert new.dtype == old.dtype and new.shape == old.shape and new.flags.c_contiguous
    np.testing.assert_array_equal(new, old)
    assert new_rng.bit_generator.state == old_rng.bit_generator.state  # the same draws, no more


@pytest.mark.parametrize("dtype", UINTS)
def test_inject_on_non_contiguous_and_fortran_arrays_matches_the_old_algorithm(dtype):
    base = random_codes(5, (40, 30), dtype)
    bits = np.arange(np.dtype(dtype).itemsize * 8)
    for codes in (base[::3, 1::2], base.T, np.asfortranarray(base)):
        new = inject_bit_errors(codes, 0.05, rng=9)
        old = old_inject(codes, 0.05, np.random.default_rng(9), bits)
        np.testing.assert_array_equal(new, old)
        assert new.flags.c_contiguous


@pytest.mark.parametrize("p", [1e-3, 0.05])
@pytest.mark.parametrize("dense_runs", [0, 8, 10**9])
def test_large_array_many_chunks_matches_the_old_algorithm(monkeypatch, p, dense_runs):
    """3 million float32 words at 1e-3 (about 96,000 flips, two chunks, many copy blocks) and 0.05 (many
    chunks), with the merge of runs forced (0), left to decide (8) or never done (10**9)."""
    monkeypatch.setattr(faults_module, "_DENSE_RUNS", dense_runs)
    codes = random_codes(1, 3_000_001 if p < 0.01 else 300_001, np.uint32)
    bits = np.arange(32)
    new = inject_bit_errors(codes, p, rng=np.random.default_rng(2))
    old = old_inject(codes, p, np.random.default_rng(2), bits)
    np.testing.assert_array_equal(new, old)


@given(
    n=st.integers(0, 5000),
    p=st.sampled_from([0.0, 1e-3, 0.02, 0.4, 0.97, 1.0]),
    pieces=st.sampled_from([None, (1, 1, 1 << 22), (4, 1, 3), (50, 1, 1 << 22)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_bernoulli_chunks_are_the_old_positions_in_sorted_pieces(n, p, pieces, seed):
    with pytest.MonkeyPatch.context() as mp:
        max_draws = 1 << 22
        if pieces is not None:
            small_pieces(mp, *pieces)
            max_draws = pieces[2]
        rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        chunks = [c.copy() for c in bernoulli_chunks(n, p, rng)]
        old = old_bernoulli_positions(n, p, old_rng, max_draws)
        assert rng.bit_generator.state == old_rng.bit_generator.state
        both = np.random.default_rng(seed)
        np.testing.assert_array_equal(bernoulli_positions(n, p, both), old)
    assert all(c.size > 0 and c.dtype == np.int64 for c in chunks)
    joined = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    np.testing.assert_array_equal(joined, old)


@given(
    dtype=st.sampled_from(UINTS),
    size=st.integers(1, 60),
    k=st.integers(0, 300),
    always_merge=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_xor_sorted_equals_ufunc_at_with_repeats(dtype, size, k, always_merge, seed):
    """Sorted indices with runs of any length, the same bit repeated too (it cancels, as ufunc.at does);
    with the merge of runs forced, or left to decline when runs are dense."""
    if always_merge:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(faults_module, "_DENSE_RUNS", 0)
            _check_xor_sorted(dtype, size, k, seed)
    else:
        _check_xor_sorted(dtype, size, k, seed)


def _check_xor_sorted(dtype, size, k, seed):
    rng = np.random.default_rng(seed)
    nbits = np.dtype(dtype).itemsize * 8
    index = np.sort(rng.integers(0, size, k))
    masks = np.left_shift(dtype(1), rng.integers(0, nbits, k).astype(dtype))
    flat = random_codes(seed, size, dtype)
    expect = flat.copy()
    np.bitwise_xor.at(expect, index, masks)
    xor_sorted(flat, index, masks.copy())
    np.testing.assert_array_equal(flat, expect)


def test_apply_flips_sorted_or_not_gives_the_same_words():
    rng = np.random.default_rng(4)
    codes = random_codes(3, 50, np.uint16)
    index, bit = rng.integers(0, 50, 500), rng.integers(0, 16, 500)
    order = np.lexsort((bit, index))
    unsorted = apply_flips(codes, FlipPositions(index, bit))
    sorted_ = apply_flips(codes, FlipPositions(index[order], bit[order]))
    expect = codes.copy()
    for i, b in zip(index.tolist(), bit.tolist(), strict=True):  # one flip at a time
        expect[i] ^= np.uint16(1 << b)
    np.testing.assert_array_equal(unsorted, expect)
    np.testing.assert_array_equal(sorted_, expect)


# ---------------------------------------------------------------------------------------------------------
# Digests recorded with the code before the change
# ---------------------------------------------------------------------------------------------------------
def _mask(mask, nbits):
    return None if mask is None else list(range(nbits // 2)) if mask == "low" else [0, 3, nbits - 1]


def recorded_cases():
    """(group, outputs, rng after) for the public samplers; each group is hashed as one digest."""
    for dt in UINTS:
        name, nbits = np.dtype(dt).name, np.dtype(dt).itemsize * 8
        for shape in ((0,), (), (7,), (3, 5, 4), (200_003,)):
            for p in (0.0, 1e-7, 1e-3, 0.05, 0.5, 1.0):
                for mask in (None, "low", "sparse"):
                    rng = np.random.default_rng(7)
                    codes = random_codes(1, shape, dt)
                    out = inject_bit_errors(codes, p, rng=rng, bit_mask=_mask(mask, nbits))
                    yield f"inject_bit_errors {name}", (out,), rng
        c = random_codes(2, (300, 301), dt)
        rng = np.random.default_rng(8)
        yield f"variants {name}", (inject_bit_errors(c, 0.01, rng=rng, nbits=5),), rng
        rng = np.random.default_rng(9)
        yield f"variants {name}", (inject_bit_errors(c[::3, 1::2].T, 0.02, rng=rng),), rng
        rng = np.random.default_rng(10)
        yield f"variants {name}", (inject_bit_errors(c, rng=rng, p01=0.003, p10=0.03),), rng
        rng = np.random.default_rng(11)
        out, faults = BitErrors(2e-3).apply(c, rng=rng)
        yield f"variants {name}", (out, faults.index, faults.bit), rng
        rng = np.random.default_rng(12)
        yield f"variants {name}", (inject_exact_k(c, 1000, rng=rng),), rng
        rng = np.random.default_rng(13)
        yield f"variants {name}", (inject_bursts(c, 0.01, 3, rng=rng),), rng
        rng = np.random.default_rng(14)
        chip = sample_stuck_at_map(c.shape, nbits, 0.01, rng=rng, dtype=dt)
        yield f"variants {name}", (chip.and_mask, chip.or_mask), rng
        rng = np.random.default_rng(15)
        nested = sample_nested_flips(c.shape, nbits, [0.01, 0.001, 0.1], rng=rng)
        yield f"variants {name}", tuple(a for f in nested for a in f), rng
    rng = np.random.default_rng(16)
    yield "large", (inject_bit_errors(random_codes(3, 3_000_001, np.uint32), 1e-3, rng=rng),), rng
    rng = np.random.default_rng(17)
    yield "large", (inject_bit_errors(random_codes(4, 1_000_000, np.uint8), 0.1, rng=rng),), rng
    rng = np.random.default_rng(18)
    index, bit = rng.integers(0, 50, 400), rng.integers(0, 16, 400)
    yield "apply_flips", (apply_flips(random_codes(5, 50, np.uint16), FlipPositions(index, bit)),), rng


def small_rounds_cases():
    """Cases run with 7 draws per round (many rounds of the gap sampler)."""
    c = random_codes(6, 4000, np.uint8)
    rng = np.random.default_rng(19)
    yield "rounds", (inject_bit_errors(c, 0.02, rng=rng),), rng
    rng = np.random.default_rng(20)
    out, faults = BitErrors(0.02).apply(c, rng=rng)
    yield "rounds", (out, faults.index, faults.bit), rng


def digests(cases) -> dict[str, str]:
    hashes: dict[str, hashlib._Hash] = {}
    for group, arrays, rng in cases:
        h = hashes.setdefault(group, hashlib.sha256())
        for a in arrays:
            a = np.asarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(int(rng.integers(0, 2**63))).encode())  # the generator's state after the call
    return {group: h.hexdigest()[:20] for group, h in hashes.items()}


# printed by running digests(recorded_cases()) and digests(small_rounds_cases()) (the latter with
# faults._MAX_DRAWS = 7) on the tree of commit d7501e2, before the fast path
RECORDED = {
    "inject_bit_errors uint8": "128c0164600ea7d46636",
    "variants uint8": "81389f059f7705ca0b0f",
    "inject_bit_errors uint16": "6482364bf39cb37681f5",
    "variants uint16": "39b12a472fb43879d038",
    "inject_bit_errors uint32": "8a4594a902a88574d9b7",
    "variants uint32": "2d7e228a637d90d708cc",
    "inject_bit_errors uint64": "2e3efdd580e4c42738fd",
    "variants uint64": "262ff527335580aaa8be",
    "large": "7c83cb27fd6f208ad699",
    "apply_flips": "62d9962617e7400ee325",
    "rounds": "713e8fefcada4587494c",
}


def test_public_samplers_reproduce_the_digests_of_the_old_code(monkeypatch):
    got = digests(recorded_cases())
    monkeypatch.setattr(faults_module, "_MAX_DRAWS", 7)
    got.update(digests(small_rounds_cases()))
    assert got == RECORDED
