"""SRAM access energy against supply voltage: what lowering the voltage saves.

The dynamic energy of one CMOS switching event is ``alpha * C * V²`` (the load capacitance ``C`` charged
to the supply ``V`` through a transistor, ``alpha`` the activity): J. M. Rabaey, A. Chandrakasan,
B. Nikolic, *Digital Integrated Circuits: A Design Perspective*, 2nd ed., Prentice Hall 2003, chapter 5
(dynamic power ``P = alpha C V² f``). It is the usual first-order model of what low-voltage operation of
an accelerator's SRAM saves (Chandramoorthy et al., HPCA 2019; Stutz et al., MLSys 2021, who report
20 % / 30 % savings). Those papers' own numbers come from their hardware's energy figures; this module is
the first-order model only: leakage, peripheral circuits and the logic outside the memory are ignored, so
it is an estimate of the *memory's dynamic* energy, to be replaced by measured figures where available.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from saf_ref import validation

__all__ = ["energy_saving", "relative_energy"]


def _positive(value: Any, name: str, fn: str) -> Any:
    """A finite real > 0, or an array of them (returned as float64)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        a = validation.check_real_array(value, name, fn)
        bad = ~(np.isfinite(a) & (a > 0))
        if np.any(bad):
            raise ValueError(f"{fn}: {name} must be finite and > 0, got {float(a[bad].reshape(-1)[0])!r}")
        return a
    v = validation.check_real(value, name, fn)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{fn}: {name} must be finite and > 0, got {value!r}")
    return v


def relative_energy(voltage: Any, nominal: float = 1.0) -> Any:
    """Dynamic access energy at ``voltage`` relative to that at ``nominal``: ``(V / V_nominal)²``.

    No PyTorch equivalent.

    Parameters
    ----------
    voltage : float > 0 or array_like of them
        Supply voltage, in the unit of ``nominal``.
    nominal : float > 0
        Nominal supply voltage (default 1.0: ``voltage`` is relative to nominal).

    Returns
    -------
    float, or float64 ndarray of ``voltage``'s shape

    Math
    ----
    ``E(V) = alpha C V²`` per access (Rabaey et al. 2003, chapter 5), so
    ``E(V) / E(V_nominal) = (V / V_nominal)²``; ``alpha`` and ``C`` cancel.

    Notes
    -----
    Leakage (static) energy and the energy of the logic outside the memory are not modelled; a voltage
    above nominal gives a ratio above 1.
    """
    return _ratio(voltage, nominal, "relative_energy")


def _ratio(voltage: Any, nominal: Any, fn: str) -> Any:
    """``(voltage / nominal)²`` after validating both (messages name ``fn``)."""
    if isinstance(nominal, (list, tuple, np.ndarray)):
        raise TypeError(f"{fn}: nominal must be a real number, got {validation.describe(nominal)}")
    n = _positive(nominal, "nominal", fn)
    v = _positive(voltage, "voltage", fn)
    return (v / n) ** 2


def energy_saving(voltage: Any, nominal: float = 1.0) -> Any:
    """Fraction of the dynamic memory energy saved by running at ``voltage`` instead of ``nominal``.

    No PyTorch equivalent. ``energy_saving(0.9) == 0.19`` (up to rounding): 10 % less voltage saves 19 %.

    Parameters
    ----------
    voltage : float > 0 or array_like of them
        Supply voltage, in the unit of ``nominal``.
    nominal : float > 0
        Nominal supply voltage (default 1.0).

    Returns
    -------
    float, or float64 ndarray of ``voltage``'s shape
        Negative above nominal (more energy).

    Math
    ----
    ``saving(V) = 1 - E(V) / E(V_nominal) = 1 - (V / V_nominal)²`` with the dynamic energy
    ``E = alpha C V²`` (Rabaey, Chandrakasan, Nikolic, *Digital Integrated Circuits*, 2003, chapter 5;
    see the module docstring for what it leaves out). Inverse: ``V = V_nominal
    sqrt(1 - saving)``; 20 % saved at ``V = 0.894 V_nominal``, 30 % at ``0.837 V_nominal``.
    """
    return 1.0 - _ratio(voltage, nominal, "energy_saving")
