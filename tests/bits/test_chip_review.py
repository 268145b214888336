"""Review fixes of saf_ref.bits.chip: malformed chip metadata, ErrorMap.read's bits, error names.

- Chip.load: metadata JSON nested deeper than the recursion limit was json's RecursionError, not the
  documented ValueError naming the file.
- ErrorMap.read: a written value other than 0 or 1 was silently reduced to its lowest bit (2 read as 0,
  0.7 as 0); complex or object arrays were cast.
- Chip.from_failure_voltages: a failure_voltage that is not 3-d was reported as ``Chip: v01``.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.bits.chip import Chip


def _chip():
    fv = np.array([[[0.9, 0.9, 0.9, -np.inf]]])
    kind = np.array([[[0, 1, 2, 0]]], dtype=np.int8)  # stuck0, stuck1, flip, healthy
    return Chip.from_failure_voltages(fv, kind, voltage_range=(0.5, 1.0))


def test_chip_load_refuses_deeply_nested_metadata_with_a_value_error(tmp_path):
    chip = _chip()
    path = chip.save(tmp_path / "c.npz")
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    members["metadata.json"] = np.frombuffer(b"[" * 100_000, dtype=np.uint8)
    np.savez(tmp_path / "deep.npz", **members)
    with pytest.raises(ValueError, match=r"Chip.load: path .*deep.npz' must hold UTF-8 JSON metadata, got "
                                         r"RecursionError"):  # fmt: skip
        Chip.load(tmp_path / "deep.npz")


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int64, np.float32, np.float64])
def test_error_map_read_of_bits_in_any_real_dtype(dtype):
    em = _chip().error_map(0.6)
    # by hand: stuck0 reads 0, stuck1 reads 1, flip reads the complement, healthy reads what was written
    cases = (([0, 0, 0, 0], [0, 1, 1, 0]), ([1, 1, 1, 1], [0, 1, 0, 1]), ([1, 0, 1, 0], [0, 1, 0, 0]))
    for written, want in cases:
        got = em.read(np.array([[written]], dtype=dtype))
        assert got.dtype == np.uint8 and got.tolist() == [[want]]


@pytest.mark.parametrize("value", [2, -1, 0.7, np.nan])
def test_error_map_read_refuses_values_that_are_not_bits(value):
    em = _chip().error_map(0.6)
    written = np.array([[[0, 1, value, 0]]], dtype=np.float64 if isinstance(value, float) else np.int64)
    shown = "nan" if value != value else repr(value)  # the value itself, not NumPy's np.int64(2)
    match = rf"^ErrorMap.read: written must hold bits 0 or 1, got {shown} \(1 values neither 0 nor 1\)$"
    with pytest.raises(ValueError, match=match):
        em.read(written)


@pytest.mark.parametrize("written", [np.zeros((1, 1, 4), complex), np.zeros((1, 1, 4), object)])
def test_error_map_read_refuses_non_real_dtypes(written):
    with pytest.raises(TypeError, match=r"ErrorMap.read: written must hold bits .*got dtype"):
        _chip().error_map(0.6).read(written)


def test_from_failure_voltages_names_its_own_argument():
    match = r"^Chip.from_failure_voltages: failure_voltage must be 3-dimensional .* got shape \(1, 2\)$"
    with pytest.raises(ValueError, match=match):
        Chip.from_failure_voltages(np.zeros((1, 2)), np.zeros((1, 2), np.int8), voltage_range=(0, 1))
