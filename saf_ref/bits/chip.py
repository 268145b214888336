"""Persistent low-voltage SRAM faults: a chip of bit cells, each failing below its own voltage.

The bit errors of low-voltage SRAM are not coin flips drawn afresh at every read. At a supply voltage
``V`` the same weak cells fail every time (persistent), a failing cell usually reads one fixed value
whatever was written (so the direction of its error depends on the stored bit), the number of failing
cells grows steeply as ``V`` drops, and two chips of one design fail in different cells (Chandramoorthy et
al. 2019 and Stutz et al. 2021 on profiled SRAM arrays; Kim et al. 2018 on a 65 nm chip). A
:class:`Chip` is that memory, ``arrays x rows x columns`` bit cells; :class:`ChipModel` draws one
from a statistical model and a seed (different seeds are different chips); :func:`load_profile` reads a
*measured* chip, so real hardware data drops in.

Representation
--------------
Every cell has two failure voltages: ``v01`` (below it, a cell written 0 reads 1) and ``v10`` (below it,
a cell written 1 reads 0); ``-inf`` means "never, in the voltage range". At voltage ``V`` a cell is

============  ===============================  =========================================================
behaviour     condition                        what a read returns
============  ===============================  =========================================================
``stuck1``    ``V < v01`` and ``V >= v10``     1, whatever was written (a written 1 reads correctly)
``stuck0``    ``V < v10`` and ``V >= v01``     0, whatever was written (a written 0 reads correctly)
``flip``      ``V < v01`` and ``V < v10``      the complement of what was written, at every read
(healthy)     ``V >= v01`` and ``V >= v10``    what was written
============  ===============================  =========================================================

A cell's failure voltage is ``max(v01, v10)``; a stuck-at-1 cell has ``v10 = -inf``, a flip-on-read cell
``v01 = v10``. The failing cells at ``V`` are those with ``V < max(v01, v10)``, so the error maps are
monotone: a cell failing at ``V`` fails at every ``V' < V``.

Voltages are plain numbers in one unit of your choice; the defaults of :class:`ChipModel` are relative to
the nominal supply (``V / V_nominal``, nominal = 1.0). Every chip has a ``voltage_range`` ``[lo, hi]``
where its map is defined (for a measured chip: the measured voltages); asking outside it is an error.

File format (:meth:`Chip.save`, :meth:`Chip.load`): one ``.npz`` (read with ``allow_pickle=False``) with
members ``v01`` and ``v10`` (float64, shape ``(arrays, rows, columns)``) and ``metadata.json`` (UTF-8
JSON as a 1-d uint8 array): ``{"schema": "saf_ref.chip", "version": 1, "shape": [A, R, C],
"voltage_range": [lo, hi], "sha256": {"v01": ..., "v10": ...}, "source": {...}}``. Written atomically
(temporary file, then ``os.replace``); every member is checked on load (shape, dtype, checksum).

Measured profiles (:func:`load_profile`): an ``.npz`` in one of two layouts, shapes ``(A, R, C)``:

- per-cell failure voltage: ``failure_voltage`` (float, ``-inf`` = never fails in the range),
  ``kind`` (integer codes ``0`` = stuck0, ``1`` = stuck1, ``2`` = flip) and ``voltage_range`` (float,
  ``[lo, hi]``);
- per-bit flip probabilities: ``voltages`` (float, shape ``(K,)``, strictly increasing), ``p01`` and
  ``p10`` (float in ``[0, 1]``, shape ``(K, A, R, C)``): the measured probability that a cell written 0
  reads 1 (and 1 reads 0) at each voltage, as profiling with all-0 and all-1 patterns reports.

References
----------
- N. Chandramoorthy et al., "Resilient Low Voltage Accelerators for High Energy Efficiency", HPCA 2019.
- D. Stutz, N. Chandramoorthy, M. Hein, B. Schiele, "Bit Error Robustness for Energy-Efficient DNN
  Accelerators", MLSys 2021 (bit errors profiled on SRAM arrays: persistent at a given voltage, their
  direction depending on the stored value, their rate rising steeply as the voltage drops, different
  from chip to chip).
- S. Kim et al., "Energy-Efficient Neural Network Acceleration in the Presence of Bit-Level Memory
  Errors", IEEE TCAS-I 65(12), 2018 (MATIC: bit-level SRAM failures measured on a 65 nm accelerator).
- M. Pelgrom et al., "Matching properties of MOS transistors", IEEE JSSC 24(5), 1989 (random mismatch is
  Gaussian; it is why a cell's minimum operating voltage is modelled as a Gaussian variable).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation

__all__ = [
    "BEHAVIOURS",
    "Chip",
    "ChipModel",
    "ErrorMap",
    "load_profile",
]

#: Failure behaviours, in the order of their integer codes in a profile's ``kind`` array.
BEHAVIOURS = ("stuck0", "stuck1", "flip")
SCHEMA = "saf_ref.chip"
VERSION = 1
METADATA_KEY = "metadata.json"
_CHIP_MEMBERS = frozenset({"v01", "v10", METADATA_KEY})
_CELL_PROFILE = frozenset({"failure_voltage", "kind", "voltage_range"})
_PROB_PROFILE = frozenset({"voltages", "p01", "p10"})
# What reading a damaged or truncated zip member can raise (CRC mismatch, bad header, short stream).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError)
_MAX_CELLS = 2**34  # 16 Gi cells (2 GiB of SRAM): far beyond any profiled array; guards typos


class ErrorMap(NamedTuple):
    """The persistent faults of a chip at one voltage: boolean arrays of shape ``(arrays, rows, columns)``.

    Attributes
    ----------
    stuck0, stuck1, flip : ndarray of bool
        Cells reading 0, reading 1, reading the complement; disjoint.
    """

    stuck0: np.ndarray
    stuck1: np.ndarray
    flip: np.ndarray

    @property
    def failing(self) -> np.ndarray:
        """Cells that fail in any way (``stuck0 | stuck1 | flip``)."""
        return self.stuck0 | self.stuck1 | self.flip

    def read(self, written: np.ndarray) -> np.ndarray:
        """What a read returns for ``written`` bits (0/1 array of the map's shape): a new uint8 array.

        ``written`` is bool, integer or float, with every value 0 or 1.

        Math
        ----
        ``read = ((written XOR flip) AND NOT stuck0) OR stuck1``.
        """
        fn = "ErrorMap.read"
        validation.check_ndarray(written, "written", fn)
        if written.dtype.kind not in "biuf":
            raise TypeError(
                f"{fn}: written must hold bits (bool, integer or float 0/1), got dtype {written.dtype}"
            )
        validation.check_shape(written, "written", fn, self.flip.shape)
        not_bits = (written != 0) & (written != 1)  # NaN included
        if not_bits.any():
            raise ValueError(
                f"{fn}: written must hold bits 0 or 1, got {written[not_bits].reshape(-1)[0].item()!r} "
                f"({int(not_bits.sum())} values neither 0 nor 1)"
            )
        w = written.astype(np.uint8)
        return ((w ^ self.flip) & ~self.stuck0 | self.stuck1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------
def check_chip_shape(shape: Any, fn: str, name: str = "shape") -> tuple[int, int, int]:
    """``(arrays, rows, columns)``: three integers >= 1, at most 2**34 cells in all."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 3:
        raise TypeError(
            f"{fn}: {name} must be a tuple (arrays, rows, columns), got {validation.describe(shape)}"
        )
    dims = tuple(validation.check_int(n, f"{name}[{i}]", fn, low=1) for i, n in enumerate(shape))
    if math.prod(dims) > _MAX_CELLS:
        raise ValueError(f"{fn}: {name} must have at most 2**34 cells, got {math.prod(dims)}")
    return dims  # type: ignore[return-value]


def check_voltage_range(vr: Any, fn: str, name: str = "voltage_range") -> tuple[float, float]:
    """``(lo, hi)``: two finite reals with ``0 <= lo < hi``."""
    if isinstance(vr, np.ndarray):
        vr = vr.tolist()
    if not isinstance(vr, (tuple, list)) or len(vr) != 2:
        raise TypeError(f"{fn}: {name} must be a pair (lo, hi), got {validation.describe(vr)}")
    lo = validation.check_real(vr[0], f"{name}[0]", fn)
    hi = validation.check_real(vr[1], f"{name}[1]", fn)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi):
        raise ValueError(f"{fn}: {name} must be finite with 0 <= lo < hi, got ({lo!r}, {hi!r})")
    return lo, hi


def _check_voltage(voltage: Any, vrange: tuple[float, float], fn: str) -> float:
    v = validation.check_real(voltage, "voltage", fn)
    lo, hi = vrange
    if not lo <= v <= hi:  # NaN fails too
        raise ValueError(f"{fn}: voltage must be inside the chip's voltage range [{lo!r}, {hi!r}], got {v!r}")
    return v


def _check_sigma(value: Any, name: str, fn: str) -> float:
    v = validation.check_real(value, name, fn)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {value!r}")
    return v


def _check_failure_voltages(a: Any, name: str, fn: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float array of failure voltages: finite or ``-inf`` (below the range; ``+inf`` = always fails)."""
    validation.check_ndarray(a, name, fn)
    if a.dtype.kind != "f":
        raise TypeError(f"{fn}: {name} must have a floating dtype, got {a.dtype}")
    if shape is not None:
        validation.check_shape(a, name, fn, shape)
    if np.isnan(a).any():
        raise ValueError(f"{fn}: {name} must not contain NaN, got {int(np.isnan(a).sum())} NaN values")
    return a


def _readonly_f64(a: np.ndarray) -> np.ndarray:
    out = np.array(a, dtype=np.float64, order="C", copy=True)
    out.flags.writeable = False
    return out


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The chip
# ---------------------------------------------------------------------------------------------------------
class Chip:
    """A memory of ``arrays x rows x columns`` bit cells with persistent, voltage-dependent faults.

    No PyTorch equivalent. Build one with :meth:`ChipModel.sample`, :meth:`from_failure_voltages`,
    :func:`load_profile` or :meth:`load`.

    Parameters
    ----------
    v01, v10 : ndarray of float, shape (arrays, rows, columns)
        Per cell, the voltage below which a written 0 reads 1 (``v01``) and a written 1 reads 0 (``v10``);
        ``-inf`` for never. No NaN. Copied (read-only float64).
    voltage_range : (float, float)
        ``[lo, hi]`` where the map is defined, ``0 <= lo < hi``.
    source : dict, optional
        JSON-serializable description of where the chip came from (model parameters and seed, or a
        profile file); saved with the chip.

    Math
    ----
    At voltage ``V``: ``f01 = V < v01``, ``f10 = V < v10``; ``flip = f01 AND f10``,
    ``stuck1 = f01 AND NOT f10``, ``stuck0 = f10 AND NOT f01``. For uniformly random stored data the
    probability that a cell reads wrong is ``(f01 + f10) / 2``, so the chip's bit-error rate is
    ``BER(V) = (p01(V) + p10(V)) / 2`` with ``p01(V) = mean(f01)``, ``p10(V) = mean(f10)``.
    """

    __slots__ = ("_v01", "_v10", "_range", "_source")

    def __init__(
        self,
        v01: np.ndarray,
        v10: np.ndarray,
        *,
        voltage_range: tuple[float, float],
        source: dict[str, Any] | None = None,
    ) -> None:
        fn = "Chip"
        _check_failure_voltages(v01, "v01", fn)
        if v01.ndim != 3:
            raise ValueError(
                f"{fn}: v01 must be 3-dimensional (arrays, rows, columns), got shape {v01.shape}"
            )
        check_chip_shape(v01.shape, fn, "v01.shape")
        _check_failure_voltages(v10, "v10", fn, v01.shape)
        self._range = check_voltage_range(voltage_range, fn)
        source = {} if source is None else source
        if not isinstance(source, dict):
            raise TypeError(f"{fn}: source must be a dict or None, got {validation.describe(source)}")
        try:
            json.dumps(source, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{fn}: source must be strict JSON (no NaN or inf), got {e}") from None
        self._source = json.loads(json.dumps(source))  # a private deep copy
        self._v01 = _readonly_f64(v01)
        self._v10 = _readonly_f64(v10)

    # ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_failure_voltages(
        cls,
        failure_voltage: np.ndarray,
        kind: np.ndarray,
        *,
        voltage_range: tuple[float, float],
        source: dict[str, Any] | None = None,
    ) -> Chip:
        """A chip from one failure voltage and one behaviour per cell.

        Parameters
        ----------
        failure_voltage : ndarray of float, shape (arrays, rows, columns)
            The cell fails at every ``V < failure_voltage``; ``-inf``: never. No NaN.
        kind : ndarray of int, same shape
            ``0`` stuck at 0, ``1`` stuck at 1, ``2`` flipped on read (:data:`BEHAVIOURS`).
        voltage_range : (float, float)

        Math
        ----
        ``v01 = failure_voltage`` where ``kind`` is 1 or 2, else ``-inf``; ``v10 = failure_voltage`` where
        ``kind`` is 0 or 2, else ``-inf``.
        """
        fn = "Chip.from_failure_voltages"
        _check_failure_voltages(failure_voltage, "failure_voltage", fn)
        if failure_voltage.ndim != 3:  # checked here too, so that the error names this function's argument
            raise ValueError(
                f"{fn}: failure_voltage must be 3-dimensional (arrays, rows, columns), "
                f"got shape {failure_voltage.shape}"
            )
        validation.check_ndarray(kind, "kind", fn)
        if kind.dtype.kind not in "iu":
            raise TypeError(
                f"{fn}: kind must hold integers (0 stuck0, 1 stuck1, 2 flip), got dtype {kind.dtype}"
            )
        validation.check_shape(kind, "kind", fn, failure_voltage.shape)
        if kind.size and (kind.min() < 0 or kind.max() > 2):
            raise ValueError(
                f"{fn}: kind must hold 0 (stuck0), 1 (stuck1) or 2 (flip), "
                f"got values in [{kind.min()}, {kind.max()}]"
            )
        v = np.asarray(failure_voltage, dtype=np.float64)
        v01 = np.where(kind >= 1, v, -np.inf)
        v10 = np.where(kind != 1, v, -np.inf)
        return cls(v01, v10, voltage_range=voltage_range, source=source)

    # ----------------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(arrays, rows, columns)``."""
        return self._v01.shape  # type: ignore[return-value]

    @property
    def n_cells(self) -> int:
        """Number of bit cells."""
        return int(self._v01.size)

    @property
    def voltage_range(self) -> tuple[float, float]:
        """``(lo, hi)``: the voltages at which the map is defined."""
        return self._range

    @property
    def source(self) -> dict[str, Any]:
        """Where the chip came from (a copy)."""
        return json.loads(json.dumps(self._source))

    @property
    def v01(self) -> np.ndarray:
        """Voltage below which a written 0 reads 1, per cell (read-only float64)."""
        return self._v01

    @property
    def v10(self) -> np.ndarray:
        """Voltage below which a written 1 reads 0, per cell (read-only float64)."""
        return self._v10

    @property
    def failure_voltage(self) -> np.ndarray:
        """Voltage below which the cell fails in any way: ``max(v01, v10)`` (new array)."""
        return np.maximum(self._v01, self._v10)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chip):
            return NotImplemented
        return (
            self._range == other._range
            and self._source == other._source
            and self._v01.tobytes() == other._v01.tobytes()
            and self._v10.tobytes() == other._v10.tobytes()
            and self.shape == other.shape
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Chip(shape={self.shape}, voltage_range={self._range})"

    # ----------------------------------------------------------------------------------------------------
    def error_map(self, voltage: float) -> ErrorMap:
        """The persistent faults at ``voltage``: which cells read stuck-at-0, stuck-at-1 or flipped.

        Parameters
        ----------
        voltage : float inside :attr:`voltage_range`

        Returns
        -------
        ErrorMap
            Boolean arrays of shape :attr:`shape`.

        Math
        ----
        ``f01 = V < v01``, ``f10 = V < v10``; ``flip = f01 AND f10``, ``stuck1 = f01 AND NOT f10``,
        ``stuck0 = f10 AND NOT f01``. Monotone: ``failing(V) ⊆ failing(V')`` for ``V' < V``.
        """
        v = _check_voltage(voltage, self._range, "Chip.error_map")
        f01 = v < self._v01
        f10 = v < self._v10
        return ErrorMap(stuck0=f10 & ~f01, stuck1=f01 & ~f10, flip=f01 & f10)

    def flip_rates(self, voltage: float) -> tuple[float, float]:
        """Measured ``(p01, p10)`` at ``voltage``: fractions of cells where a written 0 reads 1 (1 reads 0).

        These are what profiling with an all-0 and an all-1 pattern measures.

        Math
        ----
        ``p01 = mean(V < v01)``, ``p10 = mean(V < v10)`` over all cells.
        """
        v = _check_voltage(voltage, self._range, "Chip.flip_rates")
        return float(np.mean(v < self._v01)), float(np.mean(v < self._v10))

    def bit_error_rate(self, voltage: float) -> float:
        """Measured bit-error rate at ``voltage`` for uniformly random stored data.

        Math
        ----
        ``BER(V) = (p01(V) + p10(V)) / 2`` (:meth:`flip_rates`): a stuck cell is wrong for half the
        data, a flip-on-read cell always.
        """
        v = _check_voltage(voltage, self._range, "Chip.bit_error_rate")
        errors = np.count_nonzero(v < self._v01) + np.count_nonzero(v < self._v10)
        return errors / (2 * self.n_cells)

    # ----------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the chip to ``path`` (``.npz`` + embedded JSON metadata, see the module docstring).

        The file is written to a temporary sibling, flushed, then moved over ``path`` (``os.replace``):
        a failure leaves the old file (or none), never a half-written one. Returns the path.
        """
        fn = "Chip.save"
        path = _check_path(path, fn)
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{fn}: path must end in .npz, got {str(path)!r}")
        meta = {
            "schema": SCHEMA,
            "version": VERSION,
            "shape": list(self.shape),
            "voltage_range": list(self._range),
            "sha256": {"v01": _sha256(self._v01), "v10": _sha256(self._v10)},
            "source": self._source,
        }
        text = json.dumps(meta, allow_nan=False, indent=1)
        members = {"v01": self._v01, "v10": self._v10,
                   METADATA_KEY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
        write_npz_atomic(path, members)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Chip:
        """Read a chip written by :meth:`save`; every member is checked (shape, dtype, SHA-256).

        Raises ``ValueError`` (message ``Chip.load: path ...``) for a missing, truncated or corrupt file,
        a file that is not a saf_ref chip, or metadata inconsistent with the arrays.
        """
        fn = "Chip.load"
        path = _check_path(path, fn)
        members = read_npz(path, fn, required=_CHIP_MEMBERS)
        where = f"{fn}: path {str(path)!r}"
        meta = _parse_metadata(members[METADATA_KEY], where)
        shape = tuple(meta["shape"])
        for key in ("v01", "v10"):
            a = members[key]
            if a.dtype != np.float64 or a.shape != shape:
                raise ValueError(
                    f"{where} must hold {key} as float64 of the metadata's shape {shape}, "
                    f"got {a.dtype} of shape {a.shape}"
                )
            if _sha256(a) != meta["sha256"][key]:
                raise ValueError(
                    f"{where} must hold {key} matching its checksum, got a corrupt or modified array"
                )
        try:
            return cls(members["v01"], members["v10"], voltage_range=tuple(meta["voltage_range"]),
                       source=meta["source"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where} must describe a valid chip, got: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# The statistical model
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChipModel:
    """A statistical model of low-voltage SRAM cell failures; :meth:`sample` draws a chip from a seed.

    No PyTorch equivalent.

    Parameters
    ----------
    mean : float
        Mean cell failure voltage ``mu`` (relative to nominal by default). Default 0.60.
    sigma_chip, sigma_row, sigma_col, sigma_cell : float >= 0
        Standard deviations of the chip-level (die-to-die), row-level (word line), column-level (bit line,
        sense amplifier) and per-cell (random mismatch) parts. Defaults 0.02, 0.015, 0.015, 0.06.
    p_stuck0, p_stuck1, p_flip : float in [0, 1], summing to 1
        Probability that a cell, once failing, is stuck at 0, stuck at 1, or flips on read. Defaults
        0.5, 0.5, 0.0.
    voltage_range : (float, float)
        Where sampled chips are defined. Default (0.5, 1.5).

    Math
    ----
    Cell ``(a, r, c)`` fails at every ``V < v[a, r, c]`` with

    ``v[a, r, c] = mu + X + R[a, r] + K[a, c] + E[a, r, c]``,
    ``X ~ N(0, s_chip²)``, ``R ~ N(0, s_row²)``, ``K ~ N(0, s_col²)``, ``E ~ N(0, s_cell²)``, all
    independent. Over chips, a cell fails at ``V`` with probability ``Phi((mu - V) / s)``,
    ``s² = s_chip² + s_row² + s_col² + s_cell²``; on one chip with its ``X, R, K`` drawn, cells fail
    independently with probability ``Phi((mu + X + R[a, r] + K[a, c] - V) / s_cell)``. The analytic
    bit-error rate for random data (:meth:`bit_error_rate`) is
    ``BER(V) = Phi((mu - V) / s) * (p_flip + (p_stuck0 + p_stuck1) / 2)``.

    Notes
    -----
    The Gaussian form is the usual model of a cell's minimum operating voltage under random mismatch
    (Pelgrom 1989); its lower tail makes the rate rise roughly exponentially as ``V`` drops, as profiled
    chips show (Chandramoorthy et al. 2019; Stutz et al. 2021). The persistence, the stuck-at behaviour
    whose direction depends on the stored value, and the chip-to-chip and row/column structure are taken
    from those papers. **The default numbers are assumptions, not fits to any chip**: they are chosen so
    that ``BER`` is about ``2e-6`` at 0.9 of nominal, ``4e-5`` at 0.85, ``7e-4`` at 0.8 and ``6e-3`` at
    0.75 (``V = mu + 2.25 s``), spanning the rates (about 1e-4 to 1e-2) and energy savings (20-30 %,
    :func:`saf_ref.bits.energy.energy_saving`) that Stutz et al. report. Fit them to your chip, or load
    its profile with :func:`load_profile`.

    Sampling order (part of the contract, so a seed always gives the same chip): one generator
    ``np.random.default_rng(seed)`` draws ``X`` (1 normal), ``R`` (``arrays x rows``), ``K``
    (``arrays x columns``), ``E`` (``arrays x rows x columns``), then one uniform per cell ``w``;
    the behaviour is stuck0 if ``w < p_stuck0``, stuck1 if ``w < p_stuck0 + p_stuck1``, else flip.
    """

    mean: float = 0.60
    sigma_chip: float = 0.02
    sigma_row: float = 0.015
    sigma_col: float = 0.015
    sigma_cell: float = 0.06
    p_stuck0: float = 0.5
    p_stuck1: float = 0.5
    p_flip: float = 0.0
    voltage_range: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        fn = "ChipModel"
        mean = validation.check_real(self.mean, "mean", fn)
        if not math.isfinite(mean):
            raise ValueError(f"{fn}: mean must be finite, got {self.mean!r}")
        object.__setattr__(self, "mean", mean)
        for name in ("sigma_chip", "sigma_row", "sigma_col", "sigma_cell"):
            object.__setattr__(self, name, _check_sigma(getattr(self, name), name, fn))
        names = ("p_stuck0", "p_stuck1", "p_flip")
        probs = [validation.check_probability(getattr(self, n), n, fn) for n in names]
        if abs(sum(probs) - 1.0) > 1e-12:
            raise ValueError(f"{fn}: p_stuck0 + p_stuck1 + p_flip must equal 1, got {sum(probs)!r}")
        for n, p in zip(names, probs, strict=True):
            object.__setattr__(self, n, p)
        object.__setattr__(self, "voltage_range", check_voltage_range(self.voltage_range, fn))

    @property
    def sigma(self) -> float:
        """Total standard deviation ``sqrt(s_chip² + s_row² + s_col² + s_cell²)``."""
        return math.sqrt(self.sigma_chip**2 + self.sigma_row**2 + self.sigma_col**2 + self.sigma_cell**2)

    def to_json(self) -> dict[str, Any]:
        """The parameters as a JSON object."""
        return {
            "mean": self.mean, "sigma_chip": self.sigma_chip, "sigma_row": self.sigma_row,
            "sigma_col": self.sigma_col, "sigma_cell": self.sigma_cell, "p_stuck0": self.p_stuck0,
            "p_stuck1": self.p_stuck1, "p_flip": self.p_flip, "voltage_range": list(self.voltage_range),
        }

    def failure_probability(self, voltage: Any) -> Any:
        """Probability, over chips, that a cell fails at ``voltage``: ``Phi((mu - V) / s)``.

        ``voltage`` is a real or an array of reals; returns a float or a float64 array. With ``s = 0``
        the probability is 1 for ``V < mu`` and 0 otherwise.
        """
        # imported here: importing saf_ref.bits must not load SciPy (its own OpenBLAS; see test_determinism)
        from scipy.special import ndtr

        v = self._voltages(voltage, "ChipModel.failure_probability")
        s = self.sigma
        p = (v < self.mean).astype(np.float64) if s == 0.0 else ndtr((self.mean - v) / s)
        return float(p) if np.ndim(p) == 0 else p

    def bit_error_rate(self, voltage: Any) -> Any:
        """Analytic bit-error rate at ``voltage`` for random data, over chips (see the class Math)."""
        p = self.failure_probability(voltage)
        return p * (self.p_flip + 0.5 * (self.p_stuck0 + self.p_stuck1))

    def flip_rates(self, voltage: Any) -> tuple[Any, Any]:
        """Analytic ``(p01, p10)`` at ``voltage``, over chips: the probability that a cell written 0 reads 1
        (written 1 reads 0).

        Math
        ----
        ``p01 = Phi((mu - V) / s) (p_stuck1 + p_flip)``, ``p10 = Phi((mu - V) / s) (p_stuck0 + p_flip)``;
        ``BER = (p01 + p10) / 2``.
        """
        p = self.failure_probability(voltage)
        return p * (self.p_stuck1 + self.p_flip), p * (self.p_stuck0 + self.p_flip)

    def voltage_for_bit_error_rate(self, ber: Any) -> float:
        """The voltage at which the analytic bit-error rate equals ``ber`` (the inverse of
        :meth:`bit_error_rate`), e.g. to choose a sweep's voltages.

        Parameters
        ----------
        ber : float
            Strictly between 0 and the largest rate, ``p_flip + (p_stuck0 + p_stuck1) / 2``.

        Returns
        -------
        float
            May lie outside :attr:`voltage_range` (then the model is not defined there).

        Math
        ----
        ``V = mu - s Phi^-1(ber / (p_flip + (p_stuck0 + p_stuck1) / 2))`` (``s > 0`` required).
        """
        from scipy.special import ndtri  # imported here, like ndtr

        fn = "ChipModel.voltage_for_bit_error_rate"
        top = self.p_flip + 0.5 * (self.p_stuck0 + self.p_stuck1)
        b = validation.check_real(ber, "ber", fn)
        if not 0.0 < b < top:
            raise ValueError(f"{fn}: ber must be in (0, {top!r}) (the model's largest rate), got {ber!r}")
        if self.sigma == 0.0:
            raise ValueError(f"{fn}: the model's sigmas must not all be 0 (the curve is a step), got s = 0")
        return float(self.mean - self.sigma * ndtri(b / top))

    def _voltages(self, voltage: Any, fn: str) -> np.ndarray:
        """``voltage`` (a real or an array of reals) as float64, each inside :attr:`voltage_range`."""
        if isinstance(voltage, (list, tuple, np.ndarray)):
            v = validation.check_real_array(voltage, "voltage", fn)
        else:
            v = np.float64(validation.check_real(voltage, "voltage", fn))
        lo, hi = self.voltage_range
        outside = ~((v >= lo) & (v <= hi))  # NaN is outside too
        if np.any(outside):
            bad = float(np.asarray(v)[outside].reshape(-1)[0])
            raise ValueError(
                f"{fn}: voltage must be inside the model's voltage range [{lo!r}, {hi!r}], got {bad!r}"
            )
        return v

    def sample(self, shape: tuple[int, int, int], *, seed: int | np.random.Generator) -> Chip:
        """Draw one chip of ``shape = (arrays, rows, columns)`` cells (see the class Math and sampling order).

        Parameters
        ----------
        shape : (int, int, int), each >= 1
        seed : int >= 0 or numpy.random.Generator
            Different seeds give different chips; the same seed the same chip, bit for bit.

        Returns
        -------
        Chip
            Its ``source`` records the model, the shape and the seed (``null`` for a Generator).
        """
        fn = "ChipModel.sample"
        a, r, c = check_chip_shape(shape, fn)
        rng = validation.check_rng(seed, fn, "seed")
        offsets = self.draw_offsets((a, r, c), rng)
        e = rng.standard_normal((a, r, c))
        w = rng.random((a, r, c))
        v = self.mean + offsets.chip + offsets.row[:, :, None] + offsets.col[:, None, :] + self.sigma_cell * e
        kind = np.where(w < self.p_stuck0, 0, np.where(w < self.p_stuck0 + self.p_stuck1, 1, 2))
        source = {
            "model": self.to_json(),
            "shape": [a, r, c],
            "seed": None if isinstance(seed, np.random.Generator) else int(seed),
            "offsets": {"chip": offsets.chip},
        }
        chip = Chip.from_failure_voltages(v, kind.astype(np.int8), voltage_range=self.voltage_range,
                                          source=source)
        return chip

    def draw_offsets(self, shape: tuple[int, int, int], rng: np.random.Generator) -> ChipOffsets:
        """The chip-, row- and column-level parts ``X, R, K`` (the first draws of :meth:`sample`).

        ``ChipModel().draw_offsets(shape, np.random.default_rng(seed))`` gives the offsets of the chip
        ``sample(shape, seed=seed)``: a test can compute that chip's own expected rate from them.
        """
        a, r, c = shape
        chip = float(self.sigma_chip * rng.standard_normal())
        row = self.sigma_row * rng.standard_normal((a, r))
        col = self.sigma_col * rng.standard_normal((a, c))
        return ChipOffsets(chip, row, col)


class ChipOffsets(NamedTuple):
    """The structured parts of one sampled chip: ``chip`` (float), ``row`` (arrays, rows), ``col``
    (arrays, columns)."""

    chip: float
    row: np.ndarray
    col: np.ndarray


# ---------------------------------------------------------------------------------------------------------
# Measured profiles
# ---------------------------------------------------------------------------------------------------------
def load_profile(path: str | os.PathLike, *, seed: int | None = None) -> Chip:
    """Load a user's measured SRAM profile (``.npz``, one of the two layouts of the module docstring).

    Parameters
    ----------
    path : str or PathLike
        An ``.npz`` with either ``failure_voltage``, ``kind``, ``voltage_range`` (per-cell failure
        voltages) or ``voltages``, ``p01``, ``p10`` (per-bit flip probabilities at each measured voltage).
    seed : int >= 0 or None
        Only for flip probabilities strictly between 0 and 1: the seed of the uniforms that decide which
        cells are the persistent failing ones (required then; a profile of 0/1 needs none).

    Returns
    -------
    Chip
        Its ``voltage_range`` is the profile's (``[voltages[0], voltages[-1]]``); asking for a voltage
        outside it is an error.

    Math
    ----
    Flip probabilities: per direction, a measured rate that *rises* with voltage is noise, so the rate
    used at ``V_k`` is the running maximum from above, ``q[k] = max(p[k], ..., p[K-1])`` (monotone).
    One uniform ``u`` per cell and direction (``u01`` then ``u10``, from ``seed``); the cell fails at
    ``V_k`` iff ``u < q[k]``, so at each measured voltage the expected fraction of failing cells is the
    mean of ``q[k]`` (exactly the profile's rate when ``p`` is 0/1 or already monotone). Its failure
    voltage is the measured voltage just *above* the highest one at which it fails (``+inf`` if it fails
    at ``V_{K-1}``, ``-inf`` if never): between two measured voltages the chip behaves as at the lower
    one (pessimistic: never fewer errors than measured).
    """
    fn = "load_profile"
    path = _check_path(path, fn)
    if seed is not None:
        seed = validation.check_int(seed, "seed", fn, low=0)
    members = read_npz(path, fn)
    where = f"{fn}: path {str(path)!r}"
    keys = frozenset(members)
    source = {"profile": path.name}
    if _CELL_PROFILE <= keys:
        vr = members["voltage_range"]
        if vr.shape != (2,) or vr.dtype.kind not in "iuf":
            raise ValueError(
                f"{where} must hold voltage_range as 2 numbers, got {vr.dtype} of shape {vr.shape}"
            )
        fv, kind = members["failure_voltage"], members["kind"]
        _check_profile_shape(fv, "failure_voltage", where)
        try:
            return Chip.from_failure_voltages(fv, kind, voltage_range=tuple(vr.tolist()), source=source)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where} must hold a valid per-cell profile, got: {e}") from None
    if _PROB_PROFILE <= keys:
        return _chip_from_probabilities(members, seed, fn, where, source)
    raise ValueError(
        f"{where} must hold the members {sorted(_CELL_PROFILE)} or {sorted(_PROB_PROFILE)}, "
        f"got {sorted(keys)}"
    )


def _check_profile_shape(a: np.ndarray, name: str, where: str, lead: int = 0) -> None:
    if a.ndim != 3 + lead or any(n < 1 for n in a.shape):
        want = "(K, arrays, rows, columns)" if lead else "(arrays, rows, columns)"
        raise ValueError(f"{where} must hold {name} of shape {want}, got shape {a.shape}")


def _chip_from_probabilities(members: dict[str, np.ndarray], seed: int | None, fn: str, where: str,
                             source: dict[str, Any]) -> Chip:
    volts, p01, p10 = members["voltages"], members["p01"], members["p10"]
    if volts.ndim != 1 or volts.size < 2 or volts.dtype.kind not in "iuf":
        raise ValueError(f"{where} must hold voltages as a 1-d array of at least 2 numbers, "
                         f"got {volts.dtype} of shape {volts.shape}")
    volts = volts.astype(np.float64)
    if not (np.all(np.isfinite(volts)) and volts[0] >= 0 and np.all(np.diff(volts) > 0)):
        raise ValueError(
            f"{where} must hold voltages finite, >= 0 and strictly increasing, got {volts.tolist()}"
        )
    for name, p in (("p01", p01), ("p10", p10)):
        if p.dtype.kind != "f":
            raise ValueError(f"{where} must hold {name} as floats, got dtype {p.dtype}")
        _check_profile_shape(p, name, where, lead=1)
        if p.shape[0] != volts.size:
            raise ValueError(f"{where} must hold {name} with one map per voltage ({volts.size}), "
                             f"got {p.shape[0]} maps")
        if not np.all((p >= 0) & (p <= 1)):  # NaN fails too
            raise ValueError(f"{where} must hold {name} as probabilities in [0, 1], got values outside")
    if p01.shape != p10.shape:
        raise ValueError(f"{where} must hold p01 and p10 of one shape, got {p01.shape} and {p10.shape}")
    check_chip_shape(p01.shape[1:], fn, "the profile's cell shape")
    fractional = bool(np.any((p01 > 0) & (p01 < 1)) or np.any((p10 > 0) & (p10 < 1)))
    if fractional and seed is None:
        raise ValueError(f"{fn}: seed must be an integer >= 0 for a profile with flip "
                         "probabilities strictly between 0 and 1, got None")
    rng = np.random.default_rng(0 if seed is None else seed)
    u01 = rng.random(p01.shape[1:])
    u10 = rng.random(p10.shape[1:])
    source = dict(source, voltages=volts.tolist(), seed=seed)
    v01 = _failure_voltage_from_rates(p01, u01, volts)
    v10 = _failure_voltage_from_rates(p10, u10, volts)
    return Chip(v01, v10, voltage_range=(float(volts[0]), float(volts[-1])), source=source)


def _failure_voltage_from_rates(p: np.ndarray, u: np.ndarray, volts: np.ndarray) -> np.ndarray:
    """Failure voltage per cell from measured rates ``p`` (K, ...) and uniforms ``u`` (see load_profile)."""
    q = np.maximum.accumulate(p[::-1].astype(np.float64), axis=0)[::-1]  # running max from above
    fails = u[None] < q  # (K, ...): monotone in k by construction
    k = fails.shape[0]
    # highest failing index: K-1-argmax over reversed axis; -1 if it never fails
    any_fail = fails.any(axis=0)
    top = np.where(any_fail, k - 1 - np.argmax(fails[::-1], axis=0), -1)
    above = np.append(volts, np.inf)  # failure voltage = next measured voltage above the top failing one
    return np.where(any_fail, above[np.clip(top + 1, 0, k)], -np.inf)


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------
def _check_path(path: Any, fn: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or path-like, got {validation.describe(path)}")
    return Path(path)


def write_npz_atomic(path: Path, members: dict[str, np.ndarray]) -> None:
    """``np.savez`` into a temporary sibling, fsync, ``os.replace`` over ``path``; remove it on failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0o600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_npz(path: Path, fn: str, required: frozenset[str] | None = None) -> dict[str, np.ndarray]:
    """Every member of an ``.npz`` (``allow_pickle=False``), or a ``ValueError`` naming ``fn`` and ``path``.

    A missing file, a file that is not a zip archive, a truncated or corrupt member, an object array, or
    (with ``required``) a different set of members are all refused with one message shape.
    """
    where = f"{fn}: path {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where} must be an existing file, got none there")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [k for k in npz.files]
            members = {k: npz[k] for k in keys}
    except _READ_ERRORS as e:
        raise ValueError(f"{where} must be a readable .npz archive, got {type(e).__name__}: {e}") from None
    if required is not None and frozenset(members) != required:
        raise ValueError(f"{where} must hold exactly the members {sorted(required)}, got {sorted(members)}")
    return members


def _parse_metadata(raw: np.ndarray, where: str) -> dict[str, Any]:
    """The chip file's JSON metadata, checked for its keys and types."""
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(
            f"{where} must hold {METADATA_KEY} as 1-d uint8, got {raw.dtype} of shape {raw.shape}"
        )
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise ValueError(f"{where} must hold UTF-8 JSON metadata, got {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        got = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{where} must have metadata schema {SCHEMA!r}, got {got!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{where} must have metadata version {VERSION}, got {meta.get('version')!r}")
    ok = (
        isinstance(meta.get("shape"), list) and len(meta["shape"]) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in meta["shape"])
        and isinstance(meta.get("voltage_range"), list) and len(meta["voltage_range"]) == 2
        and isinstance(meta.get("sha256"), dict)
        and all(isinstance(meta["sha256"].get(k), str) for k in ("v01", "v10"))
        and isinstance(meta.get("source"), dict)
    )
    if not ok:
        raise ValueError(
            f"{where} must have metadata with shape (3 integers >= 1), voltage_range (2 numbers), "
            f"sha256 (v01, v10) and source, got {json.dumps(meta)[:200]}"
        )
    return meta
