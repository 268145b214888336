"""OCP Microscaling (MX v1.0) block formats: 32 elements share one power-of-two scale, bit-exactly.

An MX block is ``k = 32`` elements ``P_1 .. P_k`` of a narrow element format and one shared scale ``X``
in the 8-bit format E8M0 (an exponent alone). The value of element ``i`` is ``X * P_i``. The concrete
formats of the specification (names as here, and in :func:`saf_ref.bits.get_format`):

============== ====================== ============ ===============================================
name           element format         element bits  element values
============== ====================== ============ ===============================================
``mxfp8_e4m3`` ``float8_e4m3fn``       8           +-448 max, NaN ``S.1111.111``, no infinity
``mxfp8_e5m2`` ``float8_e5m2``         8           +-57344 max, infinities and NaNs
``mxfp6_e2m3`` ``float6_e2m3fn``       6           +-7.5 max, no infinity or NaN
``mxfp6_e3m2`` ``float6_e3m2fn``       6           +-28 max, no infinity or NaN
``mxfp4``      ``float4_e2m1fn``       4           +-6 max, no infinity or NaN
``mxint8``     ``q1.6`` (two's compl.) 8           ``k * 2**-6``, ``k`` in [-128, 127]
============== ====================== ============ ===============================================

The shared scale, :class:`E8M0Format` (``float8_e8m0fnu``): an unsigned 8-bit exponent ``e`` with bias
127, value ``2**(e - 127)`` for ``e`` in 0..254 (``2**-127`` .. ``2**127``); ``0xFF`` is NaN. There is no
sign, no zero, no mantissa and no infinity.

Conversion (the specification's algorithm "convert a vector of scalar floats to an MX block", §6.3)
----------------------------------------------------------------------------------------------------
For a block ``V_1 .. V_k``::

    shared_exp = floor(log2(max_i |V_i|)) - emax_elem        (emax_elem: exponent of the element
    X          = 2**shared_exp                                 format's largest normal binade)
    P_i        = quantize_to_element_format(V_i / X)          (round to nearest, ties to even;
                                                               normal numbers clamp to +-max)

``emax_elem`` is 8 (e4m3), 15 (e5m2), 2 (e2m3, e2m1), 4 (e3m2) and 0 (int8: ``1 63/64 < 2``). Then
``max|V_i| / X`` lies in ``[2**emax_elem, 2**(emax_elem+1))``, which may exceed the element's largest value
(e2m1: up to 8 > 6): those elements saturate, as the specification requires. The cases it leaves to
the implementation follow its reference code (microsoft/microxcaling, ``mx/mx_ops.py``):

- ``shared_exp < -127`` (a block of tiny values): clamped to -127, code ``0x00``; an all-zero block has
  ``floor(log2 0) = -inf`` and gets ``0x00`` too (its elements are zeros whatever the scale);
- ``shared_exp > 127`` (only from float64 inputs beyond ``2**127 * 2**emax_elem``): the scale is NaN;
- a NaN or an infinity in a block: ``max |V_i|`` is not finite, the scale is NaN (``0xFF``) and the whole
  block reads back as NaN; its element codes are stored as 0;
- MXINT8 elements are clamped symmetrically to ``+-127 * 2**-6`` (the code ``0x80 = -2`` decodes, but
  encoding never produces it), and round half to even.

Everything is computed with integers on the input's bit patterns (the engine of :mod:`~saf_ref.bits.ieee`):
``V_i / X`` only moves the binary point, so each element is rounded once, from the exact input.

Blocks along an axis
--------------------
``MXFormat(element, block_size=32, axis=None)``. With ``axis=None`` (the default) the rows are the first
axis and the blocks run along all the other axes flattened in C order (``x.reshape(shape[0], -1)``): the
reduction dimension of linear weights ``(out, in)`` and convolution weights ``(out, in, kh, kw)``, along
which MX hardware blocks its weights; a 0-d or 1-d tensor is one row. With an integer ``axis`` the blocks
run along that axis (``np.moveaxis(x, axis, -1).reshape(-1, shape[axis])``). A row whose length is not a
multiple of 32 is padded with zeros to the next multiple, as the reference code does; the padding is
stored (it occupies memory, so faults can hit it) and dropped on decode.

The stored layout: what faults see
----------------------------------
An MX tensor is stored as **one flat uint8 array of bytes**, the scales first, then the packed element
codes::

    codes = [ scale_0 .. scale_{B-1} | element bytes ]      B = rows * blocks_per_row

Blocks are numbered row by row; element ``j`` of block ``b`` is element number ``b * 32 + j`` of the
element stream. 8-bit elements take one byte each; 4-bit elements two per byte (element ``2t`` in bits
0-3, ``2t + 1`` in bits 4-7); 6-bit elements four per three bytes (element ``4t + i`` in bits ``6i ..
6i + 5`` of the little-endian 24-bit word made of bytes ``3t .. 3t + 2``). Every bit of the array is a
stored bit and nothing else is stored, so a fault model works on it unchanged: the codec has
``nbits = 8`` and ``container = uint8``, ``BitErrors(p)`` flips each of the ``8 * (B + element bytes)``
bits with probability ``p``, and a fault record ``(tensor, index, bit)`` names a byte and a bit of it.
:meth:`MXFormat.locate` turns that into the MX meaning: ``("scale", block, bit)`` (bit 0 = exponent LSB)
or ``("element", element number, bit)`` (bit 0 = element LSB), and :meth:`MXFormat.element_index` the
element number into the tensor's index. A flip in a scale is thus a different fault from a flip in an
element, and it scales all 32 values of its block by ``2**(+-2**bit)`` (or makes them NaN: ``0xFF``).

The tensor's shape is not in memory: it is the codec's per-tensor context (:class:`MXContext`), kept
apart from the codes and never faulty, like a quantizer's range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.fields import BitField
from saf_ref.bits.fixed import FixedPointFormat
from saf_ref.bits.ieee import (
    ENCODE_INPUT_DTYPES,
    IEEE_FORMATS,
    MX_ELEMENT_FORMATS,
    OVERFLOW_POLICIES,
    SOURCE_FORMATS,
    IEEEFormat,
    as_float_array,
    bit_length,
    pack_words,
    round_shift,
    unpack_words,
)

__all__ = [
    "E8M0",
    "E8M0Format",
    "MXContext",
    "MXFormat",
    "MXLayout",
    "MX_FORMATS",
    "MX_BLOCK_SIZE",
    "get_mx_format",
    "is_mx_format_name",
]

_U64 = np.uint64
MX_BLOCK_SIZE = 32
SCALE_BIAS = 127
SCALE_NAN = 0xFF


# ==================================================================================================
# E8M0: the shared scale
# ==================================================================================================


@dataclass(frozen=True)
class E8M0Format:
    """The MX shared-scale format ``float8_e8m0fnu``: 8 exponent bits, no sign, no mantissa; ``0xFF`` = NaN.

    Implements :class:`~saf_ref.bits.fields.NumberFormat` and the codec protocol like the IEEE formats.
    Value of code ``e``: ``2**(e - 127)`` for ``e <= 254``; NaN for ``e == 255``.

    Attributes
    ----------
    name : str
        ``"float8_e8m0fnu"`` (the ml_dtypes name: *f*inite, *n*aN, *u*nsigned).
    """

    name: str = "float8_e8m0fnu"

    nbits = 8
    bias = SCALE_BIAS
    emin = -SCALE_BIAS
    emax = SCALE_BIAS
    decode_dtype = np.dtype(np.float32)  # 2**-127 is a float32 subnormal: every value is exact

    @property
    def container(self) -> np.dtype:
        """uint8."""
        return np.dtype(np.uint8)

    @property
    def fields(self) -> dict[str, BitField]:
        """``{"exponent": bits 0..7}``: the whole word is the biased exponent."""
        return {"exponent": BitField("exponent", 0, 8)}

    @property
    def max_finite(self) -> float:
        """``2**127``."""
        return 2.0**127

    @property
    def min_normal(self) -> float:
        """``2**-127`` (code 0; there are no subnormals and no zero)."""
        return 2.0**-127

    def __repr__(self) -> str:
        return "E8M0Format('float8_e8m0fnu': 8 exponent bits, bias 127, 2**-127 .. 2**127, 0xFF = NaN)"

    def encode(self, x, *, overflow: str = "ieee") -> np.ndarray:
        """The nearest power of two ``2**k``, ``-127 <= k <= 127``, as a code ``k + 127``.

        Parameters
        ----------
        x : ndarray of float16, float32 or float64, or a float scalar
        overflow : {"ieee", "saturate"}
            Values whose nearest power of two is above ``2**127`` (and +inf): NaN (``0xFF``) under
            ``"ieee"``, ``2**127`` (``0xFE``) under ``"saturate"``.

        Returns
        -------
        codes : ndarray of uint8, shape ``x.shape``

        Math
        ----
        For a finite ``x > 0`` with ``t = floor(log2 x)``: ``k = t + 1`` if ``x >= 1.5 * 2**t`` (the second
        significant bit is set) else ``t``: round to nearest, ties to the larger power (as ml_dtypes).
        ``k < -127`` becomes -127: there is no zero, ``2**-127`` is the nearest value.

        Notes
        -----
        Zero, negative numbers, -inf and NaN have no code: they become NaN (``0xFF``) under both policies
        (ml_dtypes does the same).
        """
        fn = f"{self.name}.encode"
        validation.check_choice(overflow, "overflow", fn, OVERFLOW_POLICIES)
        x = as_float_array(x, fn)
        src = SOURCE_FORMATS[x.dtype]
        sign, sig, q, nan, inf = unpack_words(src, x.view(src.container).astype(_U64))
        nbits = bit_length(sig)
        top = nbits - 1 + q  # floor(log2 x) for sig > 0
        second = (sig >> np.maximum(nbits - 2, 0).astype(_U64)) & _U64(1)
        half_up = (nbits >= 2) & (second == 1)
        k = np.maximum(top + half_up, -SCALE_BIAS)
        positive = (sign == 0) & (sig != 0) & ~nan & ~inf
        too_big = (positive & (k > SCALE_BIAS)) | ((sign == 0) & inf)
        big = SCALE_NAN if overflow == "ieee" else 2 * SCALE_BIAS
        codes = np.where(positive, np.clip(k, -SCALE_BIAS, SCALE_BIAS) + SCALE_BIAS, SCALE_NAN)
        codes = np.where(too_big, big, codes)
        return np.asarray(codes).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``2**(code - 127)`` in float32 (exact; ``2**-127`` is subnormal there); NaN for ``0xFF``."""
        c = _check_uint8(codes, f"{self.name}.decode").astype(np.int64)
        finite = np.where(c == SCALE_NAN, SCALE_BIAS, c)  # 2**128 would overflow float32
        values = np.ldexp(np.float32(1.0), (finite - SCALE_BIAS).astype(np.int32)).astype(np.float32)
        return np.where(c == SCALE_NAN, np.float32(np.nan), values).astype(np.float32)

    def is_nan(self, codes: np.ndarray) -> np.ndarray:
        """Boolean mask of ``0xFF``."""
        return _check_uint8(codes, f"{self.name}.is_nan") == SCALE_NAN

    def is_inf(self, codes: np.ndarray) -> np.ndarray:
        """All False: E8M0 has no infinity."""
        return np.zeros(_check_uint8(codes, f"{self.name}.is_inf").shape, dtype=bool)

    def is_finite(self, codes: np.ndarray) -> np.ndarray:
        """Boolean mask of codes other than ``0xFF``."""
        return _check_uint8(codes, f"{self.name}.is_finite") != SCALE_NAN

    def classify(self, codes: np.ndarray) -> np.ndarray:
        """``"nan"`` for ``0xFF``, else ``"normal"`` (every other code is a power of two)."""
        nan = _check_uint8(codes, f"{self.name}.classify") == SCALE_NAN
        return np.where(nan, "nan", "normal").astype("<U9")

    # the codec protocol
    @property
    def input_dtypes(self) -> tuple[np.dtype, ...]:
        """float16, float32, float64."""
        return ENCODE_INPUT_DTYPES

    def encode_tensor(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        """The codec protocol: ``(encode(x, overflow="ieee"), None)``."""
        return self.encode(x, overflow="ieee"), None

    def decode_tensor(self, codes: np.ndarray, context: None = None) -> np.ndarray:
        """The codec protocol: ``decode(codes)``; ``context`` must be None."""
        if context is not None:
            raise TypeError(f"{self.name}.decode_tensor: context must be None, got {type(context).__name__}")
        return self.decode(codes)

    def to_json(self) -> str:
        """Its name."""
        return self.name


E8M0 = E8M0Format()


def _check_uint8(codes: Any, fn: str) -> np.ndarray:
    validation.check_ndarray(codes, "codes", fn)
    validation.check_dtype(codes, "codes", fn, (np.uint8,))
    return codes


# ==================================================================================================
# MX block formats
# ==================================================================================================

#: MXINT8's element: two's complement with 6 fraction bits (``k * 2**-6``).
INT8_ELEMENT = FixedPointFormat(1, 6)

#: name -> element format of the six concrete MX formats of the specification.
_ELEMENTS: dict[str, Any] = {
    "mxfp8_e4m3": IEEE_FORMATS["float8_e4m3fn"],
    "mxfp8_e5m2": IEEE_FORMATS["float8_e5m2"],
    "mxfp6_e2m3": MX_ELEMENT_FORMATS["float6_e2m3fn"],
    "mxfp6_e3m2": MX_ELEMENT_FORMATS["float6_e3m2fn"],
    "mxfp4": MX_ELEMENT_FORMATS["float4_e2m1fn"],
    "mxint8": INT8_ELEMENT,
}

_NAME_RE = re.compile(
    r"^(mxfp8_e4m3|mxfp8_e5m2|mxfp6_e2m3|mxfp6_e3m2|mxfp4|mxint8)(?:_k(\d+))?(?:_axis(-?\d+))?$"
)


class MXContext(NamedTuple):
    """The per-tensor context of an MX codec: the tensor's shape (not stored in memory, never faulty)."""

    shape: tuple[int, ...]


class MXLayout(NamedTuple):
    """Where things are in the stored byte array of one MX tensor (see the module docstring).

    Attributes
    ----------
    rows, row_length : int
        The tensor seen as ``rows x row_length`` (blocks run along a row).
    blocks_per_row : int
        ``ceil(row_length / block_size)``.
    n_blocks : int
        ``rows * blocks_per_row``: the number of scales (bytes ``0 .. n_blocks - 1``).
    n_elements : int
        ``n_blocks * block_size`` stored elements, padding included.
    element_bytes : int
        ``n_elements * element_bits / 8``.
    n_bytes : int
        ``n_blocks + element_bytes``: the length of the codes.
    """

    rows: int
    row_length: int
    blocks_per_row: int
    n_blocks: int
    n_elements: int
    element_bytes: int
    n_bytes: int


@dataclass(frozen=True)
class MXFormat:
    """An MX block format: a codec that stores a tensor as shared E8M0 scales and packed element codes.

    Parameters
    ----------
    base : str
        ``"mxfp8_e4m3"``, ``"mxfp8_e5m2"``, ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``, ``"mxfp4"`` or ``"mxint8"``.
    block_size : int
        Elements per block (the specification: 32). Even, and a multiple of 4 for 6-bit elements, so that
        blocks pack into whole bytes.
    axis : int or None
        None (default): blocks along all axes but the first, flattened; an int: blocks along that axis.

    Attributes
    ----------
    name : str
        ``base``, with ``_k<block_size>`` if it is not 32 and ``_axis<axis>`` if it is not None
        (``"mxfp4"``, ``"mxfp8_e4m3_axis1"``, ``"mxint8_k16"``); :func:`get_mx_format` parses it back.
    element : IEEEFormat or FixedPointFormat
        The element format. ``scale`` is :data:`E8M0`.
    nbits, container
        8 and uint8: the codes are bytes (see the module docstring).

    Math
    ----
    See the module docstring: ``shared_exp = clamp(floor(log2 max|V|) - emax_elem, -127, NaN above 127)``,
    ``P_i = RNE_saturate(V_i / 2**shared_exp)``; decode ``v_i = 2**(scale - 127) * P_i`` (NaN for the
    whole block if ``scale == 0xFF``), exact in float64.
    """

    base: str
    block_size: int = MX_BLOCK_SIZE
    axis: int | None = None

    def __post_init__(self) -> None:
        fn = "MXFormat"
        validation.check_choice(self.base, "base", fn, tuple(_ELEMENTS))
        bs = validation.check_int(self.block_size, "block_size", fn, low=1)
        multiple = 4 if self.element_bits == 6 else (2 if self.element_bits == 4 else 1)
        if bs % multiple:
            raise ValueError(
                f"{fn}: block_size must be a multiple of {multiple} for {self.element_bits}-bit elements "
                f"(blocks fill whole bytes), got {bs}"
            )
        if self.axis is not None:
            validation.check_int(self.axis, "axis", fn)

    # ------------------------------------------------------------------------------ attributes
    @property
    def name(self) -> str:
        """``base[_k<block_size>][_axis<axis>]``."""
        k = "" if self.block_size == MX_BLOCK_SIZE else f"_k{self.block_size}"
        a = "" if self.axis is None else f"_axis{self.axis}"
        return f"{self.base}{k}{a}"

    @property
    def element(self) -> IEEEFormat | FixedPointFormat:
        """The element format (``float8_e4m3fn``, ..., ``q1.6`` for MXINT8)."""
        return _ELEMENTS[self.base]

    @property
    def scale(self) -> E8M0Format:
        """The scale format, E8M0."""
        return E8M0

    @property
    def element_bits(self) -> int:
        """Bits of one element code (8, 6 or 4)."""
        return self.element.nbits

    @property
    def emax_elem(self) -> int:
        """Exponent of the element format's largest normal binade (0 for MXINT8: ``1 63/64 < 2**1``)."""
        e = self.element
        return e.emax if isinstance(e, IEEEFormat) else 0

    @property
    def element_max(self) -> float:
        """The largest element magnitude an encode produces (448, 57344, 7.5, 28, 6, 127/64)."""
        e = self.element
        return e.max_finite if isinstance(e, IEEEFormat) else 127 / 64

    nbits = 8

    @property
    def container(self) -> np.dtype:
        """uint8: the codes are bytes."""
        return np.dtype(np.uint8)

    @property
    def input_dtypes(self) -> tuple[np.dtype, ...]:
        """float16, float32, float64."""
        return ENCODE_INPUT_DTYPES

    @property
    def bits_per_value(self) -> float:
        """Stored bits per element without padding: ``element_bits + 8 / block_size`` (8.25 for MXFP8)."""
        return self.element_bits + 8 / self.block_size

    def __repr__(self) -> str:
        along = "the flattened trailing axes" if self.axis is None else f"axis {self.axis}"
        return (
            f"MXFormat({self.name!r}: blocks of {self.block_size} {self.element.name} elements sharing an "
            f"E8M0 scale, along {along})"
        )

    # --------------------------------------------------------------------------------- layout
    def _rows(self, shape: tuple[int, ...], fn: str) -> tuple[int, int]:
        """``(rows, row_length)`` of a tensor of ``shape`` (checks that ``axis`` exists)."""
        if self.axis is None:
            if len(shape) <= 1:
                return 1, int(np.prod(shape, dtype=np.int64))
            return shape[0], int(np.prod(shape[1:], dtype=np.int64))
        nd = len(shape)
        if not -nd <= self.axis < nd:
            raise ValueError(f"{fn}: axis {self.axis} must be an axis of the tensor of shape {shape}, got "
                             f"a tensor with {nd} axes")
        length = shape[self.axis]
        size = int(np.prod(shape, dtype=np.int64))
        return (size // length if length else 0), length

    def layout(self, shape: tuple[int, ...]) -> MXLayout:
        """The :class:`MXLayout` of a tensor of ``shape`` (how many scales and element bytes)."""
        fn = f"{self.name}.layout"
        shape = _check_shape(shape, fn)
        rows, length = self._rows(shape, fn)
        per_row = -(-length // self.block_size)
        n_blocks = rows * per_row
        n_el = n_blocks * self.block_size
        el_bytes = n_el * self.element_bits // 8
        return MXLayout(rows, length, per_row, n_blocks, n_el, el_bytes, n_blocks + el_bytes)

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the codes of a tensor of ``shape``: ``(layout(shape).n_bytes,)``."""
        return (self.layout(shape).n_bytes,)

    def _to_rows(self, x: np.ndarray) -> np.ndarray:
        """``x`` as ``(rows, row_length)`` (a view or copy; blocks run along the last axis)."""
        rows, length = self._rows(x.shape, "")
        if self.axis is None:
            return x.reshape(rows, length)
        return np.moveaxis(x, self.axis, -1).reshape(rows, length)

    def _from_rows(self, r: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Inverse of :meth:`_to_rows`."""
        if self.axis is None:
            return r.reshape(shape)
        moved = list(shape)
        moved.append(moved.pop(self.axis % len(shape)))
        return np.moveaxis(r.reshape(moved), -1, self.axis)

    # ---------------------------------------------------------------------- blocks: encode/decode
    def quantize(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``x`` into its two stored arrays: scales and element codes, block by block.

        Parameters
        ----------
        x : ndarray of float16, float32 or float64, any shape (never modified)

        Returns
        -------
        scales : ndarray of uint8, shape ``(rows, blocks_per_row)``
            E8M0 codes.
        elements : ndarray of the element container (uint8), shape ``(rows, blocks_per_row, block_size)``
            Element codes (padding: code 0).

        Math
        ----
        Per block: ``s = floor(log2 max|V_i|) - emax_elem`` from the exact bit patterns; ``s < -127 ->
        -127``; ``s > 127`` or a non-finite ``V_i`` -> scale ``0xFF`` and element codes 0. Elements:
        ``V_i * 2**-s`` (exact: only the exponent changes) rounded once to the element format, nearest
        even, saturating at ``element_max``.
        """
        fn = f"{self.name}.quantize"
        x = as_float_array(x, fn)
        lay = self.layout(x.shape)
        rows = self._to_rows(x)
        padded = np.zeros((lay.rows, lay.blocks_per_row * self.block_size), dtype=x.dtype)
        padded[:, : lay.row_length] = rows
        blocks = padded.reshape(lay.rows, lay.blocks_per_row, self.block_size)
        src = SOURCE_FORMATS[x.dtype]
        sign, sig, q, nan, inf = unpack_words(src, blocks.view(src.container).astype(_U64))
        # floor(log2 |V|) per element (zeros: a very small number, so they never win the max).
        top = np.where(sig == 0, np.iinfo(np.int64).min // 2, bit_length(sig) - 1 + q)
        shared = top.max(axis=-1) - self.emax_elem
        special = (nan | inf).any(axis=-1) | (shared > SCALE_BIAS)
        shared = np.clip(shared, -SCALE_BIAS, SCALE_BIAS)
        scales = np.where(special, SCALE_NAN, shared + SCALE_BIAS).astype(np.uint8)
        # The elements: V / 2**shared has the same significand and power q - shared.
        q_el = q - shared[..., None]
        elements = self._round_elements(sign, sig, q_el)
        elements = np.where(special[..., None], 0, elements).astype(self.element.container)
        return scales, elements

    def _round_elements(self, sign, sig, q) -> np.ndarray:
        """Element codes of ``(-1)**sign * sig * 2**q``: round to nearest even, saturate (finite inputs)."""
        e = self.element
        finite = np.zeros(sig.shape, dtype=bool)
        if isinstance(e, IEEEFormat):
            return pack_words(e, sign, sig, q, finite, finite, overflow="saturate")
        # MXINT8: k = RNE(|V| * 2**6), clamped to 127 (symmetric), two's complement.
        k = round_shift(sig, -(q + 6))
        k = np.minimum(k, _U64(127)).astype(np.int64)
        k = np.where(sign == 1, -k, k)
        return (k & 0xFF).astype(np.uint64)

    def dequantize(self, scales: np.ndarray, elements: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Values of a tensor of ``shape`` from its scales and element codes (as :meth:`quantize` returns).

        Returns
        -------
        values : ndarray of float64, shape ``shape``
            ``2**(scale - 127) * element`` (exact in float64), NaN in blocks whose scale is ``0xFF``.
        """
        fn = f"{self.name}.dequantize"
        lay = self.layout(_check_shape(shape, fn))
        validation.check_ndarray(scales, "scales", fn)
        validation.check_dtype(scales, "scales", fn, (np.uint8,))
        validation.check_shape(scales, "scales", fn, (lay.rows, lay.blocks_per_row))
        validation.check_ndarray(elements, "elements", fn)
        validation.check_dtype(elements, "elements", fn, (self.element.container,))
        validation.check_shape(elements, "elements", fn, (lay.rows, lay.blocks_per_row, self.block_size))
        p = self.element.decode(elements).astype(np.float64)
        exp = scales.astype(np.int64) - SCALE_BIAS
        v = np.ldexp(p, exp[..., None].astype(np.int32))
        v = np.where((scales == SCALE_NAN)[..., None], np.nan, v)
        # (not reshape(rows, -1): NumPy cannot infer the -1 of an array with zero rows)
        rows = v.reshape(lay.rows, lay.blocks_per_row * self.block_size)[:, : lay.row_length]
        return self._from_rows(rows, tuple(shape))

    # ------------------------------------------------------------------- bytes: pack and unpack
    def pack(self, scales: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """The stored byte array ``[scales | packed elements]`` (see the module docstring)."""
        el = elements.reshape(-1).astype(np.uint32)
        w = self.element_bits
        if w == 8:
            body = el.astype(np.uint8)
        elif w == 4:
            pairs = el.reshape(-1, 2)
            body = (pairs[:, 0] | (pairs[:, 1] << 4)).astype(np.uint8)
        else:  # 6 bits: four elements in a little-endian 24-bit word, three bytes
            quads = el.reshape(-1, 4)
            word = quads[:, 0] | (quads[:, 1] << 6) | (quads[:, 2] << 12) | (quads[:, 3] << 18)
            body = np.stack([(word >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).reshape(-1)
        return np.concatenate([scales.reshape(-1).astype(np.uint8), body])

    def unpack(self, codes: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(scales, elements)`` of the stored bytes of a tensor of ``shape`` (inverse of :meth:`pack`)."""
        fn = f"{self.name}.unpack"
        lay = self.layout(_check_shape(shape, fn))
        _check_uint8(codes, fn)
        validation.check_shape(codes, "codes", fn, (lay.n_bytes,))
        scales = codes[: lay.n_blocks].reshape(lay.rows, lay.blocks_per_row).copy()
        body = codes[lay.n_blocks :].astype(np.uint32)
        w = self.element_bits
        if w == 8:
            el = body
        elif w == 4:
            el = np.stack([body & 0xF, body >> 4], axis=1).reshape(-1)
        else:
            t = body.reshape(-1, 3)
            word = t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)
            el = np.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], axis=1).reshape(-1)
        elements = el.astype(self.element.container).reshape(lay.rows, lay.blocks_per_row, self.block_size)
        return scales, elements

    # -------------------------------------------------------------------------- the codec protocol
    def encode_tensor(self, x: np.ndarray) -> tuple[np.ndarray, MXContext]:
        """The codec protocol: ``(pack(*quantize(x)), MXContext(x.shape))``."""
        scales, elements = self.quantize(x)
        return self.pack(scales, elements), MXContext(tuple(x.shape))

    def decode_tensor(self, codes: np.ndarray, context: MXContext) -> np.ndarray:
        """The codec protocol: the float64 values of the stored bytes (``context``: from encode_tensor)."""
        fn = f"{self.name}.decode_tensor"
        if not isinstance(context, MXContext):
            raise TypeError(f"{fn}: context must be an MXContext (from encode_tensor), got "
                            f"{validation.describe(context)}")
        scales, elements = self.unpack(codes, context.shape)
        return self.dequantize(scales, elements, context.shape)

    def to_json(self) -> str:
        """Its name (:func:`get_mx_format` parses it back)."""
        return self.name

    # ------------------------------------------------------------------------ fault locations
    def locate(self, shape: tuple[int, ...], index, bit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What stored byte ``index``, bit ``bit`` is, for a tensor of ``shape``.

        Parameters
        ----------
        shape : tuple of int
            The tensor's shape.
        index, bit : int or array of int
            Positions in the codes (a fault record's ``index`` and ``bit``), ``bit`` in 0..7.

        Returns
        -------
        is_scale : ndarray of bool
            True where the bit belongs to a scale.
        number : ndarray of int64
            The block number (scales) or the element number in the element stream (elements).
        field_bit : ndarray of int64
            The bit within the scale (0 = exponent LSB) or within the element code (0 = its LSB).

        Math
        ----
        ``index < n_blocks``: scale ``index``, bit ``bit``. Otherwise the element stream bit
        ``p = 8 * (index - n_blocks) + bit`` is bit ``p mod w`` of element ``p // w`` (``w`` = element
        bits): the packing puts element ``j``'s bit ``c`` at stream bit ``j * w + c``.
        """
        fn = f"{self.name}.locate"
        lay = self.layout(_check_shape(shape, fn))
        index = np.asarray(index, dtype=np.int64)
        bit = np.asarray(bit, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= lay.n_bytes):
            raise ValueError(
                f"{fn}: index must be in [0, {lay.n_bytes}), got {int(index.min())}..{int(index.max())}"
            )
        if bit.size and (bit.min() < 0 or bit.max() > 7):
            raise ValueError(f"{fn}: bit must be in [0, 7], got {int(bit.min())}..{int(bit.max())}")
        is_scale = index < lay.n_blocks
        p = 8 * (index - lay.n_blocks) + bit
        w = self.element_bits
        number = np.where(is_scale, index, p // w)
        field_bit = np.where(is_scale, bit, p % w)
        return is_scale, number, field_bit

    def element_index(self, shape: tuple[int, ...], number) -> np.ndarray:
        """Flat (C-order) index into a tensor of ``shape`` of element number ``number``; -1 for padding."""
        fn = f"{self.name}.element_index"
        shape = _check_shape(shape, fn)
        lay = self.layout(shape)
        number = np.asarray(number, dtype=np.int64)
        padded_row = lay.blocks_per_row * self.block_size
        row, col = number // padded_row, number % padded_row
        where = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
        table = self._to_rows(where)
        out = np.full(number.shape, -1, dtype=np.int64)
        real = col < lay.row_length
        out[real] = table[row[real], col[real]]
        return out

    def block_elements(self, shape: tuple[int, ...], block: int) -> np.ndarray:
        """Flat (C-order) indices into a tensor of ``shape`` of the (non-padding) elements of ``block``."""
        numbers = np.arange(block * self.block_size, (block + 1) * self.block_size)
        idx = self.element_index(shape, numbers)
        return idx[idx >= 0]


def _check_shape(shape: Any, fn: str) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise TypeError(f"{fn}: shape must be a tuple of non-negative ints, got {validation.describe(shape)}")
    return tuple(int(s) for s in shape)


#: The six concrete MX formats of the specification (blocks of 32 along the flattened trailing axes).
MX_FORMATS: dict[str, MXFormat] = {name: MXFormat(name) for name in _ELEMENTS}


def is_mx_format_name(name: object) -> bool:
    """True when ``name`` spells an MX format (``"mxfp4"``, ``"mxfp8_e4m3_axis1"``, ``"mxint8_k16"``)."""
    return isinstance(name, str) and _NAME_RE.match(name.strip().lower()) is not None


def get_mx_format(name: str, *, fn: str = "get_mx_format", arg: str = "name") -> MXFormat:
    """The MX format called ``name``: ``base[_k<block_size>][_axis<axis>]`` (case-insensitive).

    Raises
    ------
    TypeError
        ``name`` is not a string.
    ValueError
        ``name`` is not of that form, or its block size does not fill whole bytes.
    """
    if isinstance(name, MXFormat):
        return name
    if not isinstance(name, str):
        raise TypeError(f"{fn}: {arg} must be a str, got {validation.describe(name)}")
    match = _NAME_RE.match(name.strip().lower())
    if match is None:
        raise ValueError(
            f"{fn}: {arg} must be an MX format name ({', '.join(MX_FORMATS)}, optionally with _k<block size> "
            f"and _axis<axis>), got {name!r}"
        )
    base, k, axis = match.groups()
    return MXFormat(base, int(k) if k else MX_BLOCK_SIZE, int(axis) if axis is not None else None)
