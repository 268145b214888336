"""Where a stored model's words sit in a chip's memory, and the faults a chip gives them.

A :class:`~saf_ref.bits.chip.Chip` fails in fixed cells; which *weights* those cells hold depends on how
the stored words are laid out in memory. A :class:`Placement` says how (tensors in order, words packed
along rows, a starting row, optional random permutations of tensors and rows from a seed);
:func:`layout` computes it; :class:`ChipFaults` is the fault model of one chip at one voltage under one
placement, for :func:`saf_ref.protect.inject`::

    chip = ChipModel().sample((4, 512, 256), seed=1)
    result = inject(stored, ChipFaults(chip, 0.8, Placement(permute_rows=True, seed=3)))
    result.faults   # a FaultList (stuck0 / stuck1 / flip), replayable: inject(stored, result.faults)

The same chip gives different faults under different placements; the same chip, voltage and placement
give the same faults every time (persistence).

Math
----
Memory: ``A x R x C`` cells (:attr:`Chip.shape`); global row ``g = a R + r`` (``0 <= g < A R``), flat
cell address ``g C + c``. The exposed tensors ``t_1, ..., t_n`` (stored order; unexposed tensors are
assumed to live in protected memory and take no rows) are placed one after another:

- tensor ``t`` has ``w_t = floor(C / nbits_t)`` words per row (words never straddle rows; the last
  ``C - w_t nbits_t`` columns of its rows are unused) and takes ``rows_t = ceil(size_t / w_t)`` rows;
- it starts at logical row ``L_t = offset + sum of rows_s`` over the tensors placed before it (each
  tensor starts on a fresh row);
- word ``k`` (C-order flat index) of tensor ``t`` is in logical row ``l = L_t + k // w_t``, slot
  ``j = k mod w_t``; its bit ``b`` (0 = least significant) is in column ``j nbits_t + b``;
- logical row ``l`` is global row ``P[l]`` with ``P`` the identity, or a random permutation of
  ``range(A R)`` (``permute_rows``).

With ``permute_tensors`` the tensors are placed in the order ``rng.permutation(n)`` instead. One
generator ``np.random.default_rng(seed)`` draws the tensor permutation first (if asked), then the row
permutation (if asked). A model needing more than ``A R - offset`` rows is a ``ValueError`` (there is no
wrap-around: a chip holds a model once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.bits.chip import Chip, check_chip_shape
from saf_ref.bits.faultlist import KINDS, FaultList
from saf_ref.bits.faultmodels import FaultModel, Target

__all__ = ["RECORD_MODES", "ChipFaults", "Placement", "layout"]

#: What :class:`ChipFaults` records: every failing cell under a word, or only those that change its bit.
RECORD_MODES = ("all", "errors")
_CHUNK_BITS = 2**22


@dataclass(frozen=True)
class Placement:
    """How stored words are laid out in a chip's memory (see the module Math).

    Parameters
    ----------
    offset : int >= 0
        First logical row used (default 0).
    permute_tensors : bool
        Place the exposed tensors in a random order (from ``seed``) instead of the stored order.
    permute_rows : bool
        Map logical rows to a random permutation of the chip's rows (from ``seed``).
    seed : int >= 0 or None
        Required if a permutation is asked for; must be None otherwise (nothing is drawn).
    """

    offset: int = 0
    permute_tensors: bool = False
    permute_rows: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        fn = "Placement"
        object.__setattr__(self, "offset", validation.check_int(self.offset, "offset", fn, low=0))
        object.__setattr__(self, "permute_tensors",
                           validation.check_bool(self.permute_tensors, "permute_tensors", fn))
        object.__setattr__(self, "permute_rows",
                           validation.check_bool(self.permute_rows, "permute_rows", fn))
        random = self.permute_tensors or self.permute_rows
        if self.seed is None:
            if random:
                raise ValueError(
                    f"{fn}: seed must be an integer >= 0 when a permutation is asked for, got None"
                )
        else:
            seed = validation.check_int(self.seed, "seed", fn, low=0)
            if not random:
                raise ValueError(
                    f"{fn}: seed must be None without permute_tensors or permute_rows (nothing is drawn), "
                    f"got {seed}"
                )
            object.__setattr__(self, "seed", seed)

    def to_json(self) -> dict[str, Any]:
        """The placement as a JSON object."""
        return {"offset": self.offset, "permute_tensors": self.permute_tensors,
                "permute_rows": self.permute_rows, "seed": self.seed}


def _exposed(targets: Mapping[str, Target] | Any, fn: str) -> list[Target]:
    if not isinstance(targets, Mapping):
        raise TypeError(f"{fn}: targets must be a dict of name -> Target, got {validation.describe(targets)}")
    for name, t in targets.items():
        if not isinstance(t, Target):
            raise TypeError(f"{fn}: targets[{name!r}] must be a Target, got {validation.describe(t)}")
    return [t for t in targets.values() if t.exposed]


def layout(
    targets: Mapping[str, Target], chip_shape: tuple[int, int, int], placement: Placement
) -> dict[str, np.ndarray]:
    """The flat cell address of bit 0 of every word of every exposed tensor (see the module Math).

    No PyTorch equivalent.

    Parameters
    ----------
    targets : dict name -> Target
        Every stored tensor (``saf_ref.protect.inject.targets_of(stored)``); the exposed ones are placed.
    chip_shape : (arrays, rows, columns)
    placement : Placement

    Returns
    -------
    dict name -> ndarray of int64, shape (size,)
        For each exposed tensor (in stored order), the address ``g C + j nbits`` of bit 0 of each word
        (C-order flat index); bit ``b`` of the word is at that address ``+ b``.

    Math
    ----
    See the module docstring: ``address(t, k) = P[L_t + k // w_t] C + (k mod w_t) nbits_t``.
    """
    fn = "layout"
    exposed = _exposed(targets, fn)
    a, r, c = check_chip_shape(chip_shape, fn, "chip_shape")
    if not isinstance(placement, Placement):
        raise TypeError(f"{fn}: placement must be a Placement, got {validation.describe(placement)}")
    return _layout(exposed, (a, r, c), placement, fn)


def _layout(exposed: list[Target], shape: tuple[int, int, int], placement: Placement, fn: str
            ) -> dict[str, np.ndarray]:
    """The unchecked core of :func:`layout`; raises ``ValueError`` if the model does not fit."""
    a, r, c = shape
    total_rows = a * r
    per_row, rows = {}, {}
    for t in exposed:
        if t.nbits > c:
            raise ValueError(
                f"{fn}: the chip's columns (={c}) must hold at least one {t.nbits}-bit word of tensor "
                f"{t.name!r}, got {c} columns"
            )
        per_row[t.name] = c // t.nbits
        rows[t.name] = -(-t.size // per_row[t.name])  # ceil
    needed = placement.offset + sum(rows.values())
    if needed > total_rows:
        raise ValueError(
            f"{fn}: the model must fit in the chip's {total_rows} rows ({a} arrays x {r} rows of {c} "
            f"columns), got {sum(rows.values())} rows of words from offset {placement.offset} "
            f"(= {needed} rows)"
        )
    rng = None if placement.seed is None else np.random.default_rng(placement.seed)
    order = list(range(len(exposed)))
    if placement.permute_tensors:
        order = [int(i) for i in rng.permutation(len(exposed))]
    phys = rng.permutation(total_rows) if placement.permute_rows else np.arange(total_rows)
    out: dict[str, np.ndarray] = {}
    start = placement.offset
    for i in order:
        t = exposed[i]
        k = np.arange(t.size, dtype=np.int64)
        w = per_row[t.name]
        out[t.name] = phys[start + k // w].astype(np.int64) * c + (k % w) * t.nbits
        start += rows[t.name]
    return {t.name: out[t.name] for t in exposed}  # stored order


class ChipFaults(FaultModel):
    """The persistent faults of one chip at one voltage, under one placement of the stored words.

    No PyTorch equivalent. Pass it to :func:`saf_ref.protect.inject` (no ``rng``: nothing is drawn).

    Parameters
    ----------
    chip : Chip
    voltage : float
        Inside ``chip.voltage_range``.
    placement : Placement
        Default ``Placement()``: stored order from row 0, no permutation.
    record : {"all", "errors"}
        ``"all"`` (default): the FaultList holds every failing cell under a stored word, with its
        behaviour (``stuck0`` / ``stuck1`` / ``flip``), also a stuck cell that holds its stuck value
        (its record changes nothing: not an error); replaying it on any codes of the same layout is this
        chip. ``"errors"``: only the records that change the stored bit (a ``stuck1`` cell holding 0, a
        ``stuck0`` cell holding 1, every ``flip``); replaying it on *these* codes gives the same result.

    Math
    ----
    For bit ``b`` of word ``k`` of tensor ``t`` at cell ``x = address(t, k) + b`` (:func:`layout`):
    ``f01 = V < v01[x]``, ``f10 = V < v10[x]``; the bit is flipped if ``f01 AND f10``, forced to 1 if
    ``f01`` only, forced to 0 if ``f10`` only: ``codes' = ((codes XOR F) AND NOT S0) OR S1``, the order
    of :meth:`FaultList.apply`. The records are sorted by ``(index, bit)``.

    Notes
    -----
    :meth:`check_targets` (called by ``inject`` and ``apply`` before any work) computes the layout of
    the tensors it is given and keeps it; :meth:`corrupt` uses it. A model that does not fit in the chip
    is refused there, before anything is corrupted.
    """

    needs_rng = False

    def __init__(self, chip: Chip, voltage: float, placement: Placement | None = None, *,
                 record: str = "all") -> None:
        fn = "ChipFaults"
        if not isinstance(chip, Chip):
            raise TypeError(f"{fn}: chip must be a Chip, got {validation.describe(chip)}")
        v = validation.check_real(voltage, "voltage", fn)
        lo, hi = chip.voltage_range
        if not lo <= v <= hi:
            raise ValueError(
                f"{fn}: voltage must be inside the chip's voltage range [{lo!r}, {hi!r}], got {v!r}"
            )
        placement = Placement() if placement is None else placement
        if not isinstance(placement, Placement):
            raise TypeError(
                f"{fn}: placement must be a Placement or None, got {validation.describe(placement)}"
            )
        self.chip = chip
        self.voltage = v
        self.placement = placement
        self.record = validation.check_choice(record, "record", fn, RECORD_MODES)
        self._layout: dict[str, tuple[tuple, np.ndarray]] = {}

    def __repr__(self) -> str:
        return f"ChipFaults({self.chip!r}, {self.voltage!r}, {self.placement!r}, record={self.record!r})"

    def check_targets(self, targets: Mapping[str, Target], fn: str) -> None:
        exposed = _exposed(targets, fn)
        addresses = _layout(exposed, self.chip.shape, self.placement, fn)
        self._layout = {t.name: (_signature(t), addresses[t.name]) for t in exposed}

    def corrupt(self, codes, rng, target):
        entry = self._layout.get(target.name)
        if entry is None or entry[0] != _signature(target):
            raise RuntimeError(
                f"ChipFaults.corrupt: no layout for tensor {target.name!r}: call check_targets with every "
                "stored tensor first (inject and apply do)"
            )
        flat = codes.reshape(-1)
        out = np.empty_like(flat)
        index, bit, kind = [], [], []
        # chunks of words keep the (words, nbits) scratch arrays to about 2**22 bits (memory, not results)
        step = max(1, _CHUNK_BITS // target.nbits)
        for lo in range(0, flat.size, step):
            hi = min(lo + step, flat.size)
            out[lo:hi], (i, b, k) = self._read_words(flat[lo:hi], entry[1][lo:hi], target.nbits)
            index.append(i + lo)
            bit.append(b)
            kind.append(k)
        index_all = np.concatenate(index) if index else np.zeros(0, np.int64)
        bit_all = np.concatenate(bit) if bit else np.zeros(0, np.uint8)
        kinds = [KINDS[k] for k in (np.concatenate(kind) if kind else [])]
        faults = FaultList.from_arrays(index_all, bit_all, kind=kinds, tensor=target.name,
                                       format_name=target.format)
        return out.reshape(codes.shape), faults

    def _read_words(self, words: np.ndarray, start: np.ndarray, nbits: int):
        """What the chip returns for ``words`` (1-d) whose bit 0 sits at cells ``start``, and the records
        ``(index, bit, kind code)`` of this chunk, sorted by (index, bit)."""
        dt = words.dtype.type
        cells = start[:, None] + np.arange(nbits, dtype=np.int64)  # (m, nbits)
        f01 = self.voltage < self.chip.v01.reshape(-1)[cells]
        f10 = self.voltage < self.chip.v10.reshape(-1)[cells]
        flip, s1, s0 = f01 & f10, f01 & ~f10, f10 & ~f01
        stored = ((words[:, None] >> np.arange(nbits, dtype=words.dtype)) & dt(1)).astype(bool)
        if self.record == "errors":  # a stuck cell holding its stuck value is no error: leave it out
            s1 = s1 & ~stored
            s0 = s0 & stored
        read = ((stored ^ flip) & ~s0) | s1
        weights = np.left_shift(dt(1), np.arange(nbits, dtype=words.dtype))
        low = (read.astype(words.dtype) * weights).sum(axis=1, dtype=words.dtype)
        high = ~dt((1 << nbits) - 1) if nbits < words.dtype.itemsize * 8 else dt(0)  # never touched
        kind = np.full(flip.shape, -1, dtype=np.int8)
        for name, mask in (("flip", flip), ("stuck0", s0), ("stuck1", s1)):
            kind[mask] = KINDS.index(name)
        index, bit = np.nonzero(kind >= 0)  # row-major: sorted by (index, bit)
        return (words & high) | low, (index.astype(np.int64), bit.astype(np.uint8), kind[index, bit])


def _signature(t: Target) -> tuple:
    return (t.name, tuple(t.shape), t.nbits)
