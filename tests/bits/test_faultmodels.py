"""The fault models (BitErrors, ExactCount, Bursts, StuckAt, Replay) against independent references.

References: a plain-Python loop of the geometric-gap sampler that draws the same random numbers (BitErrors),
bit counting by hand (ExactCount, Bursts), the stuck-at formula evaluated bit by bit (StuckAt), and
replays through FaultList.apply (every model's FaultList must reproduce its output).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import (
    BitErrors,
    Bursts,
    ExactCount,
    FaultModel,
    Replay,
    StuckAt,
    Target,
    as_fault_model,
)
from saf_ref.bits.faults import (
    StuckAtMap,
    inject_bit_errors,
    inject_bursts,
    inject_exact_k,
    sample_stuck_at_map,
)


def naive_bit_errors(codes: np.ndarray, p: float, seed: int, nbits: int) -> np.ndarray:
    """Independent flips at rate p by a Python loop over geometric gaps, drawing what the library draws.

    The library draws exponentials in rounds of ``m = min(int(e + 6 sqrt(e) + 16), 2**22)`` with
    ``e = (n - start) p``; the gap before each flip is ``floor(E / -log1p(-p))``.
    """
    if p in (0.0, 1.0):  # no draws: nothing, or every bit
        return codes.copy() if p == 0.0 else codes ^ codes.dtype.type((1 << nbits) - 1)
    rng = np.random.default_rng(seed)
    n = codes.size * nbits
    lam = -math.log1p(-p)
    flat = [int(c) for c in codes.reshape(-1)]
    start = 0
    while start < n:
        expect = (n - start) * p
        m = min(int(expect + 6.0 * math.sqrt(expect) + 16), 1 << 22)
        pos = start - 1
        for e in rng.standard_exponential(m):
            pos += 1 + min(math.floor(e / lam), n)
            if pos >= n:
                break
            flat[pos // nbits] ^= 1 << (pos % nbits)
        start = pos + 1
    return np.array(flat, dtype=codes.dtype).reshape(codes.shape)


def replayed(codes: np.ndarray, faults: FaultList, nbits: int) -> np.ndarray:
    return faults.apply(codes, nbits=nbits) if len(faults) else codes


CODES = np.random.default_rng(0).integers(0, 2**16, size=(40, 7), dtype=np.uint16)


# ---------------------------------------------------------------------------------------------------------
# BitErrors
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("p", "seed"), [(0.0, 1), (0.003, 2), (0.05, 3), (0.5, 4), (1.0, 5)])
def test_bit_errors_match_a_naive_loop_and_the_array_function(p, seed):
    out, faults = BitErrors(p).apply(CODES, rng=seed, format_name="float16", tensor="w")
    expected = naive_bit_errors(CODES, p, seed, 16)
    assert np.array_equal(out, expected)
    assert np.array_equal(inject_bit_errors(CODES, p, rng=seed), expected)  # the same draws, same bits
    # the records are exactly the differing bits, sorted by (index, bit), carrying tensor and format
    diff = np.bitwise_xor(CODES, expected).reshape(-1)
    ref = [(i, b) for i in range(diff.size) for b in range(16) if int(diff[i]) >> b & 1]
    assert list(zip(faults.index.tolist(), faults.bit.tolist(), strict=True)) == ref
    assert set(faults.kind) <= {"flip"} and set(faults.tensor) <= {"w"} and set(faults.format) <= {"float16"}
    assert np.array_equal(replayed(CODES, faults, 16), out)


def test_bit_errors_asymmetric_and_masked_match_the_array_function():
    for kwargs in ({"p01": 0.2, "p10": 0.05}, {"p": 0.3, "bit_mask": 0b1010_0000_0000_0001}):
        model_kwargs = dict(kwargs)
        p = model_kwargs.pop("p", None)
        out, faults = BitErrors(p, **model_kwargs).apply(CODES, rng=7, nbits=16)
        assert np.array_equal(out, inject_bit_errors(CODES, p, rng=7, **model_kwargs))
        assert np.array_equal(replayed(CODES, faults, 16), out)
    # masked: only the three allowed bits ever change
    assert not np.any(np.bitwise_xor(out, CODES) & ~np.uint16(0b1010_0000_0000_0001))


# ---------------------------------------------------------------------------------------------------------
# ExactCount, Bursts
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 33, 280, 4480])
def test_exact_count_flips_exactly_k_distinct_bits(k):
    out, faults = ExactCount(k).apply(CODES, rng=k, nbits=16)
    changed = sum(bin(int(d)).count("1") for d in np.bitwise_xor(out, CODES).reshape(-1))
    assert changed == k == len(faults)
    assert len({(int(i), int(b)) for i, b in zip(faults.index, faults.bit, strict=True)}) == k
    assert np.array_equal(out, inject_exact_k(CODES, k, rng=k))
    assert np.array_equal(replayed(CODES, faults, 16), out)


def test_exact_count_with_bit_mask_hits_only_candidate_bits():
    out, faults = ExactCount(50, bit_mask=[0, 15]).apply(CODES, rng=3)
    assert set(faults.bit.tolist()) <= {0, 15} and len(faults) == 50
    assert not np.any(np.bitwise_xor(out, CODES) & np.uint16(0x7FFE))


def test_bursts_flip_contiguous_runs_and_replay():
    out, faults = Bursts(0.3, 4).apply(CODES, rng=11, nbits=12)
    diff = np.bitwise_xor(out, CODES).reshape(-1)
    for d in diff[diff != 0]:  # each hit word: one run of exactly 4 adjacent ones below bit 12
        d = int(d)
        low = (d & -d).bit_length() - 1
        assert d == 0b1111 << low and low + 4 <= 12
    assert len(faults) == 4 * int(np.count_nonzero(diff))
    assert np.array_equal(out, inject_bursts(CODES, 0.3, 4, rng=11, nbits=12))
    assert np.array_equal(replayed(CODES, faults, 12), out)


# ---------------------------------------------------------------------------------------------------------
# StuckAt, Replay
# ---------------------------------------------------------------------------------------------------------
def test_stuck_at_is_the_formula_bit_by_bit_and_replays():
    chip = sample_stuck_at_map(CODES.shape, 16, 0.1, rng=5, dtype=np.uint16)
    out, faults = StuckAt(chip).apply(CODES, format_name="float16", tensor="w")
    for c, a, o, got in zip(CODES.reshape(-1), chip.and_mask.reshape(-1), chip.or_mask.reshape(-1),
                            out.reshape(-1), strict=True):
        ref = 0
        for b in range(16):
            bit = (int(c) >> b) & 1
            if not (int(a) >> b) & 1:
                bit = 0
            if (int(o) >> b) & 1:
                bit = 1
            ref |= bit << b
        assert int(got) == ref
    assert len(faults) == chip.n_stuck0 + chip.n_stuck1
    assert np.array_equal(faults.apply(CODES, "w"), out)
    # a dict of maps applies by name; a tensor without a map is untouched and gets no records
    by_name = StuckAt({"w": chip})
    assert np.array_equal(by_name.apply(CODES, tensor="w", format_name="float16")[0], out)
    other = Target("v", CODES.shape, CODES.dtype, 16, "float16")
    out2, none = by_name.corrupt(CODES, None, other)
    assert np.array_equal(out2, CODES) and len(none) == 0


def test_replay_round_trips():
    _, faults = BitErrors(0.02).apply(CODES, rng=2, tensor="w", format_name="float16")
    faults = faults + FaultList([("w", 3, 15, "stuck1", "float16"), ("w", 4, 0, "stuck0", "float16")])
    out, again = Replay(faults).apply(CODES, tensor="w", format_name="float16")
    assert again == faults
    assert np.array_equal(out, faults.apply(CODES, "w"))
    # a bare FaultList is Replay for as_fault_model
    assert isinstance(as_fault_model(faults, "f"), Replay)


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------
CHIP8 = StuckAtMap(np.full(4, 0xFF, np.uint8), np.zeros(4, np.uint8), 8)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: BitErrors(), ValueError, "BitErrors: p must be given"),
        (lambda: BitErrors(1.5), ValueError, "BitErrors: p must be a probability"),
        (lambda: BitErrors(0.1, p10=-1.0), ValueError, "BitErrors: p10 must be a probability"),
        (lambda: BitErrors(0.1, bit_mask="exp"), TypeError, "BitErrors: bit_mask must be None"),
        (lambda: ExactCount(-1), ValueError, "ExactCount: k must be"),
        (lambda: ExactCount(1.5), TypeError, "ExactCount: k must be an integer"),
        (lambda: Bursts(2.0, 3), ValueError, "Bursts: rate must be a probability"),
        (lambda: Bursts(0.1, 0), ValueError, r"Bursts: burst_len must be in \[1, 64\]"),
        (lambda: StuckAt([CHIP8]), TypeError, "StuckAt: maps must be a StuckAtMap or a dict"),
        (lambda: StuckAt({"w": 3}), TypeError, r"StuckAt: maps\['w'\] must be a StuckAtMap, got int"),
        (lambda: StuckAt({1: CHIP8}), TypeError, "StuckAt: maps keys must be str"),
        (lambda: Replay([("w", 0, 0, "flip", "raw8")]), TypeError, "Replay: faults must be a FaultList"),
        (lambda: as_fault_model(0.1, "inject"), TypeError, "inject: faults must be a fault model"),
        # against the array they are applied to
        (lambda: BitErrors(0.1, bit_mask=0x100).apply(CODES[0].astype(np.uint8), rng=0), ValueError,
         r"BitErrors.apply: bit_mask must be an integer mask in \[0, 2\*\*8\)"),
        (lambda: ExactCount(9).apply(np.zeros(1, np.uint8), rng=0), ValueError,
         r"ExactCount.apply: k must be at most the candidate bits of tensor '' \(=8\), got 9"),
        (lambda: Bursts(0.1, 9).apply(np.zeros(1, np.uint8), rng=0), ValueError,
         r"Bursts.apply: burst_len must be at most the nbits of tensor '' \(=8\), got 9"),
        (lambda: BitErrors(0.1).apply(CODES), TypeError, "BitErrors.apply: rng must be a numpy.random"),
        (lambda: StuckAt(CHIP8).apply(np.zeros(4, np.uint8), rng=0), ValueError,
         "StuckAt.apply: rng must be None for StuckAt"),
        (lambda: StuckAt(CHIP8).apply(np.zeros(4, np.uint16)), TypeError,
         r"StuckAt.apply: the stuck-at map of tensor '' must have dtype uint16 \(the codes'\), got uint8"),
        (lambda: StuckAt(CHIP8).apply(np.zeros(5, np.uint8)), ValueError, "stuck-at map of tensor '' shape"),
        (lambda: StuckAt(CHIP8).apply(np.zeros(4, np.uint8), nbits=7), ValueError, "map of tensor '' nbits"),
        (lambda: StuckAt({"x": CHIP8}).apply(np.zeros(4, np.uint8), tensor="w"), ValueError,
         r"StuckAt.apply: the stuck-at maps must name stored tensors \('w'\), got 'x'"),
        (lambda: Replay(FaultList([("x", 0, 0, "flip", "raw8")])).apply(np.zeros(4, np.uint8)), ValueError,
         r"Replay.apply: faults must name stored tensors \(''\), got 'x'"),
        (lambda: Replay(FaultList([("", 0, 0, "flip", "float16")])).apply(np.zeros(4, np.uint8)), ValueError,
         "Replay.apply: faults for '' must carry its format 'raw8', got 'float16'"),
        (lambda: Replay(FaultList([("", 4, 0, "flip", "raw8")])).apply(np.zeros(4, np.uint8)), ValueError,
         r"Replay.apply: faults for '' must have index < its size \(=4\), got 4"),
        (lambda: Replay(FaultList([("", 0, 7, "flip", "raw8")])).apply(np.zeros(4, np.uint8), nbits=7,
                                                                        format_name="raw8"),
         ValueError, r"Replay.apply: faults for '' must have bit < its nbits \(=7\), got 7"),
        (lambda: Replay(FaultList()).apply(np.zeros(4, np.uint8), rng=1), ValueError,
         "Replay.apply: rng must be None for Replay"),
        (lambda: BitErrors(0.1).apply(np.zeros(4, np.int8), rng=0), TypeError, "BitErrors.apply: codes must"),
    ],
)
def test_bad_arguments_raise_templated_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_unexposed_targets_are_refused_by_name_and_skipped_otherwise():
    targets = {"w": Target("w", (4,), np.dtype(np.uint8), 8, "raw8", exposed=False)}
    with pytest.raises(ValueError, match="f: faults must only hit exposed tensors, got the unexposed tensor"):
        Replay(FaultList([("w", 0, 0, "flip", "raw8")])).check_targets(targets, "f")
    with pytest.raises(ValueError, match="f: the stuck-at maps must only hit exposed tensors"):
        StuckAt({"w": CHIP8}).check_targets(targets, "f")
    ExactCount(10**6).check_targets(targets, "f")  # never applied to an unexposed tensor: no constraint


def test_a_new_model_only_implements_corrupt():
    class SetTopBit(FaultModel):
        needs_rng = False

        def corrupt(self, codes, rng, target):
            top = codes.dtype.type(1 << (target.nbits - 1))
            hit = np.flatnonzero((codes & top) == 0)
            flips = FaultList.from_arrays(hit, np.full(hit.size, target.nbits - 1), tensor=target.name,
                                          format_name=target.format)
            return codes | top, flips

    codes = np.array([0, 0x80, 3], np.uint8)
    out, faults = SetTopBit().apply(codes)
    assert out.tolist() == [0x80, 0x80, 0x83] and faults.index.tolist() == [0, 2]
    assert np.array_equal(faults.apply(codes), out)


@pytest.mark.parametrize("model", [BitErrors, ExactCount])
def test_bit_mask_is_the_models_own(model):
    """A mask the caller changes afterwards, or an iterator (read once by the constructor's check), used
    to change which bits flip: [3] then appended 14 flipped bits 3 and 14; a generator flipped none."""
    arg = 0.5 if model is BitErrors else 40
    codes = np.zeros(64, np.uint16)

    def flipped_bits(m):
        _, faults = m.apply(codes, rng=1)
        return set(faults.bit.tolist())

    mask = [3]
    m = model(arg, bit_mask=mask)
    mask.append(14)
    assert flipped_bits(m) == {3}
    assert flipped_bits(model(arg, bit_mask=(b for b in (3, 14)))) == {3, 14}
    as_bools = np.zeros(16, bool)
    as_bools[[3, 14]] = True  # one entry per bit of the uint16 words
    m = model(arg, bit_mask=as_bools)
    as_bools[5] = True
    assert flipped_bits(m) == {3, 14}
    with pytest.raises(ValueError, match=rf"^{model.__name__}: bit_mask as a bool array must have shape"):
        model(arg, bit_mask=np.ones((2, 8), bool))
