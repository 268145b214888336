"""Golden vectors of the published bit-error-robustness code (Stutz et al., PyTorch float32).

``tests/data/golden/stutz_quantizer.json`` holds, for six quantizer configurations, the 64 input weights,
the expected codes and decoded values, and the codes and decoded values after ``flip_by_uniform`` with
a stored uniform array at p = 0.01 and p = 0.1. Everything must agree bit for bit.

How the six cases map onto the reference classes (``common/quantization.py`` of the published code):

- ``normal_unsigned_global_m8``: fixed-range symmetric, offset binary, truncation (max_abs = 1).
- ``rquant_clipped_asym_unsigned_rounded_wmax0.1_m8``: clipped asymmetric, offset binary, rounded.
- ``adaptive_asym_unsigned_rounded_m8``: adaptive asymmetric, offset binary, rounded.
- ``clipped_sym_unsigned_rounded_wmax0.1_m8``: clipped adaptive symmetric, offset binary, rounded.
- ``signed_global_trunc_m8``: fixed-range symmetric, two's complement (int8), truncation.
- ``signed_adaptive_trunc_m8``: adaptive symmetric, two's complement, truncation.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from saf_ref.bits.faults import flip_by_uniform
from saf_ref.bits.quantize import Quantizer

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "stutz_quantizer.json"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "golden" / "stutz_quantizer.json"
DATA = json.loads(GOLDEN.read_text())
CASES = sorted(DATA["cases"])
RATES = ("0.01", "0.1")


def _quantizer(case: dict) -> Quantizer:
    return Quantizer(
        case["nbits"], scheme=case["scheme"], code=case["code"], rounding=case["rounding"],
        clip=case["clip"], max_abs=case["max_abs"], margin=case["margin"],
    )  # fmt: skip


def _float32(values: list[float]) -> np.ndarray:
    """The stored decimals are exact float32 values: the float64 parse must survive the cast unchanged."""
    wide = np.array(values, dtype=np.float64)
    narrow = wide.astype(np.float32)
    np.testing.assert_array_equal(narrow.astype(np.float64), wide)
    return narrow


def _assert_bits_equal(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.float32
    bad = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    assert bad.size == 0, (
        f"{bad.size} values differ, first at {bad[:5]}: {got[bad[:5]]} != {expected[bad[:5]]}"
    )


def test_copy_matches_shared_file():
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is not present in this checkout")
    assert filecmp.cmp(GOLDEN, SHARED, shallow=False)


def test_file_shape():
    assert len(CASES) == 6
    assert np.array(DATA["weights"]).shape == (64,)
    assert np.array(DATA["uniform"]).shape == (64, 8)
    for name in CASES:
        case = DATA["cases"][name]
        assert case["nbits"] == 8 and case["margin"] == 1e-3
        for key in ("codes", "decoded", *(f"flipped_{w}_p{p}" for w in ("codes", "decoded") for p in RATES)):
            assert len(case[key]) == 64, (name, key)


@pytest.mark.parametrize("name", CASES)
def test_codes_and_decoded_bit_exact(name):
    case = DATA["cases"][name]
    qz = _quantizer(case)
    weights = _float32(DATA["weights"])
    codes, context = qz.encode(weights)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, np.array(case["codes"], dtype=np.uint8))
    _assert_bits_equal(qz.decode(codes, context), _float32(case["decoded"]))


@pytest.mark.parametrize("p", RATES)
@pytest.mark.parametrize("name", CASES)
def test_flipped_codes_and_decoded_bit_exact(name, p):
    case = DATA["cases"][name]
    qz = _quantizer(case)
    codes, context = qz.encode(_float32(DATA["weights"]))
    uniform = _float32([u for row in DATA["uniform"] for u in row]).reshape(64, 8)
    flipped = flip_by_uniform(codes, uniform, float(p))
    expected = np.array(case[f"flipped_codes_p{p}"], dtype=np.uint8)
    np.testing.assert_array_equal(flipped, expected)
    assert np.any(flipped != codes)  # the case exercises flips at all
    _assert_bits_equal(qz.decode(flipped, context), _float32(case[f"flipped_decoded_p{p}"]))
