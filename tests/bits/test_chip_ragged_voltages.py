"""A ragged nested list of voltages is the templated ValueError naming the function and argument, in the
chip model's rate functions and in the energy model (it was NumPy's 'inhomogeneous shape' message)."""

import pytest

from saf_ref.bits.chip import ChipModel
from saf_ref.bits.energy import energy_saving, relative_energy

RAGGED = [[0.6], [0.7, 0.8]]


@pytest.mark.parametrize("call, fn", [
    (lambda v: ChipModel().failure_probability(v), "ChipModel.failure_probability"),
    (lambda v: ChipModel().bit_error_rate(v), "ChipModel.failure_probability"),
    (lambda v: energy_saving(v), "energy_saving"),
    (lambda v: relative_energy(v), "relative_energy"),
])  # fmt: skip
def test_ragged_voltages_are_a_templated_value_error(call, fn):
    match = rf"^{fn}: voltage must be a rectangular array of real numbers, got a ragged list$"
    with pytest.raises(ValueError, match=match):
        call(RAGGED)


def test_rectangular_nested_lists_still_work():
    assert energy_saving([[0.5], [0.6]]).tolist() == [[1 - 0.5**2], [1 - 0.6**2]]
    assert ChipModel().failure_probability([[0.6], [0.6]]).tolist() == [[0.5], [0.5]]  # Phi(0) at mu
