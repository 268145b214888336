"""Named bit ranges of a stored word, and the interface every number format implements.

Bit 0 is the least significant bit of the stored word, always. A field ``BitField("exponent", lsb=10,
width=5)`` of float16 covers bits 10..14; its mask is ``0b0111_1100_0000_0000``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class Codec(Protocol):
    """One way to store a tensor, whatever the format: IEEE, fixed point ``qM.N`` or a per-tensor quantizer.

    :class:`~saf_ref.bits.ieee.IEEEFormat`, :class:`~saf_ref.bits.fixed.FixedPointFormat` and
    :class:`~saf_ref.bits.quantize.Quantizer` implement it; :mod:`saf_ref.protect` stores and reads
    tensors only through it (no per-class branches).

    Attributes
    ----------
    name : str
        ``"float16"``, ``"q2.5"``, ``"quant8_asym_offset_rounded"``; stored words carry it.
    nbits : int
        Bits in one stored word.
    container : numpy.dtype
        Unsigned dtype of the codes.
    input_dtypes : tuple of numpy.dtype
        The float dtypes :meth:`encode_tensor` accepts.

    Math
    ----
    ``(codes, context) = encode_tensor(x)`` with the format's documented default policy (IEEE: round to
    nearest even, ``overflow="ieee"``; fixed point: round half to even, saturate; a quantizer: its own
    settings); ``decode_tensor(codes, context)`` is exact in the format's decode dtype. ``context`` is
    None for formats without per-tensor state (IEEE, fixed point) and a
    :class:`~saf_ref.bits.quantize.QuantContext` for quantizers. The JSON form is ``to_json()``, inverted
    by :func:`saf_ref.bits.formats.codec_from_json`.

    Notes
    -----
    The array-level ``encode`` of IEEE and fixed-point formats returns the codes alone and takes policy
    keywords (``overflow=``, ``rounding=``); ``encode_tensor`` is the policy-free, uniform call.
    """

    name: str
    nbits: int
    container: np.dtype
    input_dtypes: tuple[np.dtype, ...]

    def encode_tensor(self, x: np.ndarray) -> tuple[np.ndarray, Any]:  # pragma: no cover - protocol
        ...

    def decode_tensor(self, codes: np.ndarray, context: Any) -> np.ndarray:  # pragma: no cover - protocol
        ...

    def to_json(self) -> Any:  # pragma: no cover - protocol
        ...
