"""Fault models as small objects: what memory does to the stored words of one tensor.

A fault model is a value (``BitErrors(1e-3)``, ``ExactCount(5)``, ``Bursts(1e-4, 3)``, ``StuckAt(chip)``,
``Replay(faultlist)``) that says *which* faults happen; it is applied to one tensor's codes at a time with
an explicit ``rng`` and returns the new codes together with the :class:`~saf_ref.bits.faultlist.FaultList`
of what it did::

    out, faults = BitErrors(1e-3).apply(codes, rng=0, format_name="float32", tensor="fc.weight")
    again, _ = Replay(faults).apply(codes, format_name="float32", tensor="fc.weight")   # same bits

:func:`saf_ref.protect.inject` applies one model to every exposed tensor of a stored model, in stored
order, with one generator, and always returns ``Injection(stored, faults)``.

Every model has the same three methods:

- ``apply(codes, *, rng, nbits=None, tensor="", format_name=None) -> (codes, FaultList)``: the public,
  validated call on one array;
- ``check_targets(targets, fn)``: validation against the tensors it will be applied to (names, shapes,
  widths), done once by the caller before any work;
- ``corrupt(codes, rng, target) -> (codes, FaultList)``: the unchecked core that draws and applies.
  A new fault model subclasses :class:`FaultModel` and implements ``corrupt`` (and ``check_tensor`` if
  it has constraints).

The draws are those of the functions of :mod:`saf_ref.bits.faults` (one core each), so
``BitErrors(p).apply(codes, rng=g)[0]`` equals ``inject_bit_errors(codes, p, rng=g)`` bit for bit.

Math
----
Per tensor with ``N = size * m`` candidate bits (``m`` bits per word, all ``nbits`` or those of
``bit_mask``):

- ``BitErrors(p)``: each candidate bit flips independently with probability ``p`` (``p01`` / ``p10`` for
  a stored 0 / 1); the count is ``Binomial(N, p)``.
- ``ExactCount(k)``: a uniformly random ``k``-subset of the ``N`` candidate bits flips (``k`` per tensor).
- ``Bursts(rate, burst_len)``: each word is hit with probability ``rate``; a hit flips ``burst_len``
  adjacent bits starting at a uniform ``s`` in ``{0, ..., nbits - burst_len}``.
- ``StuckAt(map)``: ``out = (codes AND and_mask) OR or_mask`` (a chip's stuck bits; no randomness).
- ``Replay(fl)``: ``out = ((codes XOR F) AND NOT S0) OR S1`` with the records of ``fl`` for the tensor
  (:meth:`FaultList.apply`; no randomness).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList, check_codes, default_format_name, resolve_nbits
from saf_ref.bits.faults import (
    StuckAtMap,
    bit_indices,
    check_rates,
    check_tensor_name,
    draw_bit_errors,
    draw_bursts,
    draw_exact_k,
    xor_flips,
)
from saf_ref.bits.fields import BitField

__all__ = [
    "Target",
    "FaultModel",
    "BitErrors",
    "ExactCount",
    "Bursts",
    "StuckAt",
    "Replay",
    "as_fault_model",
]


class Target(NamedTuple):
    """One stored tensor as a fault model sees it.

    Attributes
    ----------
    name : str
        Tensor name (``""`` for one anonymous array); the records of the model carry it.
    shape : tuple of int
    dtype : numpy.dtype
        The container of the codes (uint8/16/32/64).
    nbits : int
        Bits per stored word; bits at or above it are never touched.
    format : str
        Format name the records carry (``"float16"``, ``"q2.5"``, ``"raw12"``, ...).
    exposed : bool
        Whether faults may hit this tensor (a model never touches an unexposed one).
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbits: int
    format: str
    exposed: bool = True

    @property
    def size(self) -> int:
        """Number of stored words."""
        return int(np.prod(self.shape, dtype=np.int64))


def _empty(target: Target) -> FaultList:
    return FaultList.from_arrays(
        np.zeros(0, np.int64), np.zeros(0, np.uint8), tensor=target.name, format_name=target.format
    )


def _flip_list(flips: Any, target: Target) -> FaultList:
    return FaultList.from_arrays(
        flips.index, flips.bit, kind="flip", tensor=target.name, format_name=target.format
    )


class FaultModel:
    """Base class of the fault models: validation and the public :meth:`apply`; subclasses add ``corrupt``.

    Attributes
    ----------
    needs_rng : bool
        Whether the model draws random numbers (then ``rng`` is required, else it must be None).
    """

    needs_rng: bool = True

    def check_tensor(self, target: Target, fn: str) -> None:
        """Raise ``ValueError`` / ``TypeError`` (message starting with ``fn``) if the model cannot apply to
        ``target``. Default: no constraint."""

    def check_targets(self, targets: Mapping[str, Target], fn: str) -> None:
        """Check the model against every tensor it will be applied to (``targets``: all stored tensors,
        exposed or not, by name). Default: :meth:`check_tensor` on each exposed one."""
        for target in targets.values():
            if target.exposed:
                self.check_tensor(target, fn)

    def check_rng(self, rng: Any, fn: str) -> np.random.Generator | None:
        """The generator to draw from: required if :attr:`needs_rng`, else ``rng`` must be None."""
        if self.needs_rng:
            return validation.check_rng(rng, fn)
        if rng is not None:
            raise ValueError(
                f"{fn}: rng must be None for {type(self).__name__} (it draws no random numbers), got {rng!r}"
            )
        return None

    def corrupt(
        self, codes: np.ndarray, rng: np.random.Generator | None, target: Target
    ) -> tuple[np.ndarray, FaultList]:
        """The unchecked core: new codes and the FaultList of what was done (callers validated)."""
        raise NotImplementedError(f"{type(self).__name__}.corrupt")

    def apply(
        self,
        codes: np.ndarray,
        *,
        rng: np.random.Generator | int | None = None,
        nbits: int | None = None,
        tensor: str = "",
        format_name: str | None = None,
    ) -> tuple[np.ndarray, FaultList]:
        """Apply the model to one array of codes; return ``(new codes, FaultList of what was done)``.

        Parameters
        ----------
        codes : ndarray of uint8/16/32/64, any shape
            Stored words; never modified.
        rng : numpy.random.Generator or int seed, or None
            Required by the random models (``BitErrors``, ``ExactCount``, ``Bursts``); must be None for
            ``StuckAt`` and ``Replay``.
        nbits : int or None
            Bits per word (default: the container width).
        tensor : str
            Tensor name the records carry (and that ``StuckAt`` / ``Replay`` look up).
        format_name : str or None
            Format name the records carry (default ``"raw<nbits>"``).

        Returns
        -------
        codes : ndarray, same shape and dtype
        faults : FaultList
            Replays the result exactly: ``faults.apply(codes, tensor, nbits=nbits)`` gives the same codes.
        """
        fn = f"{type(self).__name__}.apply"
        check_codes(codes, fn)
        nbits = resolve_nbits(codes, nbits, fn)
        tensor = check_tensor_name(tensor, fn)
        fmt = default_format_name(format_name, nbits, fn)
        gen = self.check_rng(rng, fn)
        target = Target(tensor, codes.shape, codes.dtype, nbits, fmt)
        self.check_targets({tensor: target}, fn)
        return self.corrupt(codes, gen, target)


class BitErrors(FaultModel):
    """Independent random bit errors at rate ``p`` (model of :func:`~saf_ref.bits.faults.inject_bit_errors`).

    Parameters
    ----------
    p : float in [0, 1] or None
        Bit-error rate (both directions unless ``p01`` / ``p10`` override one).
    p01, p10 : float in [0, 1] or None
        Asymmetric rates: a stored 0 becomes 1 with probability ``p01``, a stored 1 becomes 0 with ``p10``.
    bit_mask : None, int, BitField, bool array or iterable of bit indices / BitFields
        Only these bits may flip (default: all ``nbits``); must fit the width of every tensor it meets.
    """

    def __init__(self, p: float | None = None, *, p01: float | None = None, p10: float | None = None,
                 bit_mask: Any = None) -> None:
        fn = "BitErrors"
        self.p01, self.p10 = check_rates(p, p01, p10, fn)
        self.p = p if p is None else float(p)
        self.bit_mask = own_bit_mask(bit_mask, fn)  # its form now; its fit to each width in check_tensor

    def __repr__(self) -> str:
        if self.p01 == self.p10 and self.p is not None:
            rates = f"{self.p!r}"
        else:
            rates = f"p01={self.p01!r}, p10={self.p10!r}"
        mask = "" if self.bit_mask is None else f", bit_mask={self.bit_mask!r}"
        return f"BitErrors({rates}{mask})"

    def check_tensor(self, target: Target, fn: str) -> None:
        bit_indices(self.bit_mask, target.nbits, fn)

    def corrupt(self, codes, rng, target):
        bits = bit_indices(self.bit_mask, target.nbits, "BitErrors")
        flips = draw_bit_errors(codes, bits, self.p01, self.p10, rng)
        return xor_flips(codes, flips), _flip_list(flips, target)


def own_bit_mask(bit_mask: Any, fn: str) -> Any:
    """A fault model's own copy of ``bit_mask``, checked for its form (its fit to the width of a tensor is
    checked per tensor, by :func:`~saf_ref.bits.faults.bit_indices`).

    A list or array of the caller's may change after the model is built, and an iterator can be read only
    once: an iterable becomes a tuple and a bool array a read-only copy. A bool array has one entry per bit
    of the tensors it will meet (at most 64).
    """
    if isinstance(bit_mask, np.ndarray) and bit_mask.dtype == np.bool_:
        if bit_mask.ndim != 1 or not 1 <= bit_mask.size <= 64:
            raise ValueError(
                f"{fn}: bit_mask as a bool array must have shape (nbits,) with 1 <= nbits <= 64, got shape "
                f"{bit_mask.shape}"
            )
        own = bit_mask.copy()
        own.setflags(write=False)
        return own
    if isinstance(bit_mask, Iterable) and not isinstance(bit_mask, (str, bytes, BitField)):
        bit_mask = tuple(bit_mask)
    bit_indices(bit_mask, 64, fn)
    return bit_mask


class ExactCount(FaultModel):
    """Exactly ``k`` distinct bit flips per tensor (model of :func:`~saf_ref.bits.faults.inject_exact_k`).

    Parameters
    ----------
    k : int >= 0
        Flips in *each* tensor the model is applied to; at most the tensor's candidate bits.
    bit_mask : as in :class:`BitErrors`
    """

    def __init__(self, k: int, *, bit_mask: Any = None) -> None:
        fn = "ExactCount"
        self.k = validation.check_int(k, "k", fn, low=0)
        self.bit_mask = own_bit_mask(bit_mask, fn)

    def __repr__(self) -> str:
        mask = "" if self.bit_mask is None else f", bit_mask={self.bit_mask!r}"
        return f"ExactCount({self.k}{mask})"

    def check_tensor(self, target: Target, fn: str) -> None:
        n = target.size * bit_indices(self.bit_mask, target.nbits, fn).size
        if self.k > n:
            raise ValueError(
                f"{fn}: k must be at most the candidate bits of tensor {target.name!r} (={n}), got {self.k}"
            )

    def corrupt(self, codes, rng, target):
        bits = bit_indices(self.bit_mask, target.nbits, "ExactCount")
        flips = draw_exact_k(codes.size, bits, self.k, rng)
        return xor_flips(codes, flips), _flip_list(flips, target)


class Bursts(FaultModel):
    """Multi-bit bursts (model of :func:`~saf_ref.bits.faults.inject_bursts`).

    Parameters
    ----------
    rate : float in [0, 1]
        Probability that a word is hit (independently per word).
    burst_len : int >= 1
        Adjacent bits flipped by a burst; at most the ``nbits`` of every tensor it meets.
    """

    def __init__(self, rate: float, burst_len: int) -> None:
        fn = "Bursts"
        self.rate = validation.check_probability(rate, "rate", fn)
        self.burst_len = validation.check_int(burst_len, "burst_len", fn, low=1, high=64)

    def __repr__(self) -> str:
        return f"Bursts({self.rate!r}, {self.burst_len})"

    def check_tensor(self, target: Target, fn: str) -> None:
        if self.burst_len > target.nbits:
            raise ValueError(
                f"{fn}: burst_len must be at most the nbits of tensor {target.name!r} (={target.nbits}), "
                f"got {self.burst_len}"
            )

    def corrupt(self, codes, rng, target):
        flips = draw_bursts(codes.size, target.nbits, self.rate, self.burst_len, rng)
        return xor_flips(codes, flips), _flip_list(flips, target)


class StuckAt(FaultModel):
    """Stuck-at bits of a chip: ``(codes AND and_mask) OR or_mask`` (a :class:`StuckAtMap` per tensor).

    Parameters
    ----------
    maps : StuckAtMap or mapping str -> StuckAtMap
        One map, applied to every tensor the model meets (each must have its shape, container and
        nbits), or one map per tensor name (tensors without a map are untouched; a name that is not a
        stored, exposed tensor is an error).

    Notes
    -----
    The FaultList holds every stuck bit (kinds ``"stuck0"`` / ``"stuck1"``), also those whose stored value
    already was the stuck one: replaying it on the clean codes gives the same result.
    """

    needs_rng = False

    def __init__(self, maps: StuckAtMap | Mapping[str, StuckAtMap]) -> None:
        fn = "StuckAt"
        if isinstance(maps, StuckAtMap):
            self.maps: StuckAtMap | dict[str, StuckAtMap] = maps
            return
        if not isinstance(maps, Mapping):
            raise TypeError(
                f"{fn}: maps must be a StuckAtMap or a dict of name -> StuckAtMap, "
                f"got {validation.describe(maps)}"
            )
        for name, m in maps.items():
            if not isinstance(name, str):
                raise TypeError(f"{fn}: maps keys must be str, got {validation.describe(name)}")
            if not isinstance(m, StuckAtMap):
                raise TypeError(f"{fn}: maps[{name!r}] must be a StuckAtMap, got {validation.describe(m)}")
        self.maps = dict(maps)

    def __repr__(self) -> str:
        if isinstance(self.maps, StuckAtMap):
            m = self.maps
            return f"StuckAt(<map {m.shape}, {m.n_stuck0} stuck0, {m.n_stuck1} stuck1>)"
        return f"StuckAt(<maps for {sorted(self.maps)}>)"

    def _map_for(self, name: str) -> StuckAtMap | None:
        return self.maps if isinstance(self.maps, StuckAtMap) else self.maps.get(name)

    def check_targets(self, targets: Mapping[str, Target], fn: str) -> None:
        if isinstance(self.maps, Mapping):
            for name in self.maps:
                _check_named_target(targets, name, fn, "the stuck-at maps")
        super().check_targets(targets, fn)

    def check_tensor(self, target: Target, fn: str) -> None:
        m = self._map_for(target.name)
        if m is None:
            return
        where = f"the stuck-at map of tensor {target.name!r}"
        if m.and_mask.dtype != target.dtype:
            raise TypeError(
                f"{fn}: {where} must have dtype {target.dtype} (the codes'), got {m.and_mask.dtype}"
            )
        validation.check_equal(fn, f"{where} shape", m.shape, "the tensor shape", target.shape)
        validation.check_equal(fn, f"{where} nbits", m.nbits, "the tensor nbits", target.nbits)

    def corrupt(self, codes, rng, target):
        m = self._map_for(target.name)
        if m is None:
            return codes, _empty(target)
        out = np.asarray((codes & m.and_mask) | m.or_mask)
        return out, m.to_faultlist(tensor=target.name, format_name=target.format)


class Replay(FaultModel):
    """Apply a recorded :class:`FaultList` (each tensor gets its own records; no randomness).

    Parameters
    ----------
    faults : FaultList
        Every record must name a stored, exposed tensor, carry its format, and fit its size and nbits.
    """

    needs_rng = False

    def __init__(self, faults: FaultList) -> None:
        if not isinstance(faults, FaultList):
            raise TypeError(f"Replay: faults must be a FaultList, got {validation.describe(faults)}")
        self.faults = faults

    def __repr__(self) -> str:
        return f"Replay({self.faults!r})"

    def check_targets(self, targets: Mapping[str, Target], fn: str) -> None:
        for name in self.faults.tensors:
            target = _check_named_target(targets, name, fn, "faults")
            sub = self.faults.select(name)
            for fmt in sub.formats:
                if fmt != target.format:
                    raise ValueError(
                        f"{fn}: faults for {name!r} must carry its format {target.format!r}, got {fmt!r}"
                    )
            if sub.index.max() >= target.size:
                raise ValueError(
                    f"{fn}: faults for {name!r} must have index < its size (={target.size}), "
                    f"got {int(sub.index.max())}"
                )
            if sub.bit.max() >= target.nbits:
                raise ValueError(
                    f"{fn}: faults for {name!r} must have bit < its nbits (={target.nbits}), "
                    f"got {int(sub.bit.max())}"
                )

    def corrupt(self, codes, rng, target):
        if target.name not in self.faults.tensors:
            return codes, _empty(target)
        sub = self.faults.select(target.name)
        return sub.apply(codes, nbits=target.nbits), sub


def _check_named_target(targets: Mapping[str, Target], name: str, fn: str, what: str) -> Target:
    """``targets[name]``, which must exist and be exposed (``what`` names the argument in messages)."""
    if name not in targets:
        raise ValueError(
            f"{fn}: {what} must name stored tensors ({', '.join(map(repr, targets))}), got {name!r}"
        )
    if not targets[name].exposed:
        raise ValueError(f"{fn}: {what} must only hit exposed tensors, got the unexposed tensor {name!r}")
    return targets[name]


def as_fault_model(faults: Any, fn: str, name: str = "faults") -> FaultModel:
    """``faults`` as a fault model: a :class:`FaultModel` unchanged, a :class:`FaultList` as ``Replay``."""
    if isinstance(faults, FaultModel):
        return faults
    if isinstance(faults, FaultList):
        return Replay(faults)
    raise TypeError(
        f"{fn}: {name} must be a fault model (BitErrors, ExactCount, Bursts, StuckAt, Replay) or a "
        f"FaultList, got {validation.describe(faults)}"
    )
