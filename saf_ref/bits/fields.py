"""Named bit ranges of a stored word, and the interface every number format implements.

Bit 0 is the least significant bit of the stored word, always. A field ``BitField("exponent", lsb=10,
width=5)`` of float16 covers bits 10..14; its mask is ``0b0111_1100_0000_0000``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from saf_ref import validation


@dataclass(frozen=True)
class BitField:
    """A contiguous range of bits ``[lsb, lsb + width)`` in a stored word (bit 0 = LSB)."""

    name: str
    lsb: int
    width: int

    @property
    def msb(self) -> int:
        """Index of the most significant bit of the field."""
        return self.lsb + self.width - 1

    @property
    def mask(self) -> int:
        """The field's bits set in an otherwise zero word (a Python int, exact for any width)."""
        return ((1 << self.width) - 1) << self.lsb

    def bits(self) -> range:
        """The bit indices of the field, LSB first."""
        return range(self.lsb, self.lsb + self.width)

    def extract(self, codes: np.ndarray) -> np.ndarray:
        """The field's value, ``(codes >> lsb) & (2**width - 1)``, in the codes' dtype."""
        dtype = codes.dtype
        return (codes >> dtype.type(self.lsb)) & dtype.type((1 << self.width) - 1)


def smallest_container(nbits: int) -> np.dtype:
    """The smallest unsigned NumPy dtype holding ``nbits`` bits (uint8, uint16, uint32 or uint64).

    ``nbits`` is an integer in ``[1, 64]``.
    """
    nbits = validation.check_int(nbits, "nbits", "smallest_container", low=1, high=64)
    for dtype in (np.uint8, np.uint16, np.uint32):
        if nbits <= np.dtype(dtype).itemsize * 8:
            return np.dtype(dtype)
    return np.dtype(np.uint64)  # nbits <= 64 was checked


@runtime_checkable
class NumberFormat(Protocol):
    """What every stored-number format offers (IEEE binary formats and fixed point ``qM.N``).

    Attributes
    ----------
    name : str
        Canonical name, e.g. ``"float16"``, ``"bfloat16"``, ``"float8_e4m3fn"``, ``"q2.5"``.
    nbits : int
        Bits in one stored word.
    container : numpy.dtype
        Smallest unsigned dtype holding ``nbits`` bits; codes live in it.
    fields : dict[str, BitField]
        Named bit ranges, most significant first (``sign``, ``exponent``, ``mantissa`` or
        ``sign``, ``integer``, ``fraction``).
    """

    name: str
    nbits: int
    container: np.dtype
    fields: dict[str, BitField]

    def encode(self, x, **kwargs) -> np.ndarray:  # pragma: no cover - protocol
        ...

    def decode(self, codes: np.ndarray) -> np.ndarray:  # pragma: no cover - protocol
        ...

    def classify(self, codes: np.ndarray) -> np.ndarray:  # pragma: no cover - protocol
        ...
