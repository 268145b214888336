"""energy_saving / relative_energy: the V² law against hand-computed values and its argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.bits.energy import energy_saving, relative_energy


def test_values_by_hand():
    assert energy_saving(1.0) == 0.0
    assert energy_saving(0.5) == 0.75  # exact in binary
    assert energy_saving(0.9) == pytest.approx(0.19, abs=1e-15)
    assert relative_energy(0.6, 1.2) == pytest.approx(0.25, abs=1e-15)
    assert energy_saving(1.1) == pytest.approx(-0.21, abs=1e-15)  # above nominal costs energy
    # 20 % and 30 % savings: V = sqrt(0.8), sqrt(0.7) of nominal (the paper's claims)
    assert energy_saving(np.sqrt(0.8) * 0.9, 0.9) == pytest.approx(0.2, abs=1e-15)
    assert energy_saving(np.sqrt(0.7)) == pytest.approx(0.3, abs=1e-15)


def test_arrays_and_units():
    v = np.array([0.7, 0.8, 0.9])
    np.testing.assert_array_equal(energy_saving(v), 1.0 - (v / 1.0) ** 2)
    np.testing.assert_allclose(energy_saving([700, 800], 1000), [0.51, 0.36], rtol=1e-15)
    np.testing.assert_allclose(relative_energy(v * 1.2, 1.2), v**2, rtol=1e-15)
    assert isinstance(energy_saving(0.8), float)


@pytest.mark.parametrize(
    "args, exc, msg",
    [
        ((0.0,), ValueError, r"voltage must be finite and > 0, got 0.0"),
        ((-0.5,), ValueError, r"voltage must be finite and > 0, got -0.5"),
        ((float("nan"),), ValueError, r"voltage must be finite and > 0, got nan"),
        (([0.8, float("inf")],), ValueError, r"voltage must be finite and > 0, got inf"),
        (("0.8",), TypeError, r"voltage must be a real number, got str"),
        ((np.array(["a"]),), TypeError, r"voltage must be real numbers, got dtype <U1"),
        ((0.8, 0.0), ValueError, r"nominal must be finite and > 0, got 0.0"),
        ((0.8, [1.0]), TypeError, r"nominal must be a real number, got list"),
    ],
)
def test_bad_arguments(args, exc, msg):
    with pytest.raises(exc, match=r"^energy_saving: " + msg):
        energy_saving(*args)
    with pytest.raises(exc, match=r"^relative_energy: " + msg):
        relative_energy(*args)
