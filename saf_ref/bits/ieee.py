"""IEEE-754 style binary floating-point formats, encoded and decoded bit-exactly with integer arithmetic.

Formats: ``float64``, ``float32``, ``float16``, ``bfloat16``, ``float8_e4m3fn`` and ``float8_e5m2``
(the last two are the OCP 8-bit floating point formats). A stored word has three fields, most significant
first::

    | sign (1 bit) | exponent (E bits, biased) | mantissa (m bits, the fraction) |

Bit 0 is the least significant bit of the word (the last mantissa bit), always.

Value of a word with sign ``s``, exponent field ``e`` and mantissa field ``f`` (bias ``b = 2**(E-1) - 1``):

- ``e == 0``: zero (``f == 0``) or subnormal: ``(-1)**s * f * 2**(1 - b - m)``;
- ``0 < e < 2**E - 1``: normal: ``(-1)**s * (2**m + f) * 2**(e - b - m)``;
- ``e == 2**E - 1``: infinity (``f == 0``) or NaN (``f != 0``), except for ``float8_e4m3fn`` which has no
  infinity: there ``e == 15`` is an ordinary binade and only ``S.1111.111`` is NaN (max finite 448).

The OCP Microscaling element formats ``float4_e2m1fn``, ``float6_e2m3fn`` and ``float6_e3m2fn``
(:data:`MX_ELEMENT_FORMATS`, names as in ml_dtypes) have neither infinity nor NaN: every code is a number
and the all-ones exponent is an ordinary binade (max finite 6, 7.5 and 28). Encoding saturates (there is
nothing else to overflow to) and a NaN input is an error (there is no code for it).

Everything here is computed with integer operations on bit patterns: a conversion between two formats is
*unpack* (word -> sign, integer significand, power of two), *round* (shift the significand right to the
target precision, rounding to nearest with ties to even using a guard and a sticky bit) and *pack*
(significand and exponent -> word, where a carry out of the significand moves into the exponent by itself).
``encode`` converts float16/32/64 input to a format; ``decode`` converts a format to its ``decode_dtype``
(always exact, because the decode dtype is at least as wide in both exponent range and precision).
NumPy casts and ml_dtypes are used only in the tests, as independent cross-checks.

PyTorch equivalent: ``x.to(torch.float16 / torch.bfloat16 / torch.float8_e4m3fn / torch.float8_e5m2)``
followed by ``.view(torch.int16 / torch.uint8)`` for encoding; see ``IEEEFormat.encode`` for where
PyTorch's and ml_dtypes' casts differ from this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from saf_ref.bits.fields import BitField, smallest_container
from saf_ref.validation import check_choice, check_dtype, check_ndarray

__all__ = ["IEEEFormat", "IEEE_FORMATS", "MX_ELEMENT_FORMATS", "get_ieee_format", "OVERFLOW_POLICIES"]

OVERFLOW_POLICIES = ("ieee", "saturate")
ENCODE_INPUT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

_U64 = np.uint64


@dataclass(frozen=True)
class IEEEFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits`` exponent bits, ``mantissa_bits``.

    Implements :class:`saf_ref.bits.fields.NumberFormat`. Instances are immutable and compare by value;
    use the ready-made ones in ``IEEE_FORMATS`` or :func:`get_ieee_format`.

    Attributes
    ----------
    name : str
        Canonical name (``"float16"``, ``"bfloat16"``, ``"float8_e4m3fn"``, ...).
    exponent_bits, mantissa_bits : int
        Widths ``E`` and ``m`` of the exponent and mantissa (fraction) fields.
    has_infinity : bool
        ``False`` for ``float8_e4m3fn`` (its all-ones exponent is an ordinary binade; only ``S.1111.111``
        is NaN) and the MX element formats.
    decode_dtype : numpy.dtype
        Float dtype that ``decode`` returns; it holds every value of the format exactly.
    has_nan : bool
        ``False`` for the MX element formats ``float4_e2m1fn``, ``float6_e2m3fn``, ``float6_e3m2fn``
        (every code is finite); requires ``has_infinity=False``.

    Derived (properties): ``nbits = 1 + E + m``, ``bias = 2**(E-1) - 1``, ``container``, ``fields``,
    ``max_finite``, ``min_normal``, ``min_subnormal``, ``emin = 1 - bias``, ``emax``.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    has_infinity: bool
    decode_dtype: np.dtype
    has_nan: bool = True

    def __post_init__(self) -> None:
        if not self.has_nan and self.has_infinity:
            raise ValueError(
                f"IEEEFormat: has_infinity must be False when has_nan is False, got {self.name!r}"
            )

    # ----------------------------------------------------------------------------------- layout
    @property
    def nbits(self) -> int:
        """Bits in one stored word: ``1 + exponent_bits + mantissa_bits``."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        """Exponent bias ``2**(E-1) - 1``: a normal word with exponent field ``e`` has scale 2**(e - bias)."""
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def container(self) -> np.dtype:
        """Smallest unsigned dtype holding ``nbits`` bits; codes live in it."""
        return smallest_container(self.nbits)

    @property
    def fields(self) -> dict[str, BitField]:
        """``{"sign", "exponent", "mantissa"}`` bit ranges, most significant first (bit 0 = LSB)."""
        m, E = self.mantissa_bits, self.exponent_bits
        return {
            "sign": BitField("sign", m + E, 1),
            "exponent": BitField("exponent", m, E),
            "mantissa": BitField("mantissa", 0, m),
        }

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade, ``1 - bias``; subnormals share its quantum."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite binade (all-ones field minus one; all-ones without infinity)."""
        top_field = (1 << self.exponent_bits) - 1
        return (top_field if not self.has_infinity else top_field - 1) - self.bias

    @property
    def max_finite(self) -> float:
        """Largest finite value (65504 for float16, 448 for float8_e4m3fn, 57344 for float8_e5m2, 6 for
        float4_e2m1fn)."""
        m = self.mantissa_bits
        # Largest significand: all mantissa bits set (2**(m+1) - 1), except for e4m3fn where the
        # all-ones mantissa in the top binade is NaN, so the largest is 2**(m+1) - 2.
        nan_in_top_binade = self.has_nan and not self.has_infinity
        top_sig = (1 << (m + 1)) - (2 if nan_in_top_binade else 1)
        return math.ldexp(top_sig, self.emax - m)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, ``2**emin``."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive subnormal value, ``2**(emin - m)``."""
        return math.ldexp(1.0, self.emin - self.mantissa_bits)

    # Special codes (magnitudes, sign bit clear), Python ints.
    @property
    def _max_code(self) -> int:
        """Magnitude code of ``max_finite``: ``0b0.11110.1111111111`` (float16), ``0b0.1111.110`` (e4m3fn)
        or all ones (formats without NaN)."""
        if not self.has_nan:
            return (1 << (self.nbits - 1)) - 1
        return self._inf_code - 1 if self.has_infinity else self._nan_code - 1

    @property
    def _inf_code(self) -> int:
        """Magnitude code of infinity: exponent all ones, mantissa zero (formats with infinity only)."""
        return ((1 << self.exponent_bits) - 1) << self.mantissa_bits

    @property
    def _nan_code(self) -> int:
        """Canonical quiet NaN: exponent all ones and mantissa MSB set; ``S.1111.111`` for e4m3fn.

        Formats without NaN have none; encode rejects NaN before this is needed (the all-ones code is
        returned only so that array expressions stay well defined)."""
        if not self.has_infinity:
            return (1 << (self.nbits - 1)) - 1
        return self._inf_code | (1 << (self.mantissa_bits - 1))

    def __repr__(self) -> str:
        return (
            f"IEEEFormat({self.name!r}: 1 sign + {self.exponent_bits} exponent + {self.mantissa_bits} "
            f"mantissa bits, bias {self.bias}, max finite {self.max_finite!r})"
        )

    # ------------------------------------------------------------------------------- encoding
    def encode(self, x, *, overflow: str = "ieee") -> np.ndarray:
        """Round float values to this format; return the stored words (codes).

        PyTorch equivalent: ``x.to(dtype).view(integer dtype)``.

        Parameters
        ----------
        x : ndarray of float16, float32 or float64, any shape; or a NumPy float scalar or Python float
            Values to store. Never modified.
        overflow : {"ieee", "saturate"}
            What a value too large for the format becomes. ``"ieee"`` (default): infinity of the same
            sign, or NaN for ``float8_e4m3fn``, which has no infinity (as ml_dtypes and the OCP
            specification's non-saturating mode do). ``"saturate"``: the largest finite value of the same
            sign; infinite inputs saturate too. NaN stays NaN under both. Formats without NaN
            (``float4_e2m1fn``, ``float6_*``) saturate under both, infinities included (as ml_dtypes).

        Returns
        -------
        codes : ndarray of ``container`` dtype, shape ``x.shape`` (0-d for a scalar input)

        Math
        ----
        Write a finite nonzero input as ``|x| = sig * 2**q_in`` (integer ``sig``) and let
        ``t = floor(log2 |x|)``. Its target binade is ``e = max(t, emin)`` (below ``emin`` the quantum
        stops shrinking: subnormals), whose quantum is ``2**(e - m)``. Then

            N = round_half_even(|x| / 2**(e - m)) = round_half_even(sig / 2**s),  s = e - m - q_in,

        computed exactly as an integer shift with a guard bit (the first bit shifted out) and a sticky
        bit (any later bit shifted out): round up iff ``guard and (sticky or N odd)``. The magnitude code
        is ``((e + bias - 1) << m) + N``: for a normal ``N`` has its implicit bit ``2**m``, which adds one
        to the exponent field; if rounding carried ``N`` to ``2**(m+1)`` the code moves to the next binade
        by itself, and a subnormal (``e + bias == 1``, ``N < 2**m``) is simply ``N``. The value overflows
        iff that code exceeds the code of ``max_finite``. The rounding is done once, from the exact input
        value: there is no intermediate format and hence no double rounding.

        Notes
        -----
        - Ties go to the even code; so the overflow threshold is ``max_finite + ulp/2`` when the top
          code is odd (float16: 65520 -> inf, float8_e5m2: 61440 -> inf) and is exclusive when it is
          even (float8_e4m3fn: 464 -> 448, anything above -> NaN under ``"ieee"``).
        - Signed zeros keep their sign, also when a tiny value rounds to zero.
        - NaN becomes the canonical quiet NaN of the input's sign (exponent all ones, mantissa MSB set;
          ``S.1111.111`` for e4m3fn): NaN payloads are not preserved.
        - Other libraries (checked with ml_dtypes 0.6 and PyTorch 2.13):

          * ml_dtypes and PyTorch convert float64 to bfloat16/float8 through float32 and so
            double-round (``1 + 2**-8 + 2**-30`` becomes bfloat16 1.0 there and ``1 + 2**-7`` here).
            PyTorch (2.13, CPU) does the same for float64 -> float16 (``1 + 2**-11 + 2**-40`` gives
            0x3C00 there, 0x3C01 here). NumPy's float64 -> float16 cast rounds once, as here.
          * ml_dtypes' float8_e4m3fn cast overflows to NaN (above 464, and for +-inf): our ``"ieee"``.
          * PyTorch's float32 -> float8_e4m3fn cast saturates finite overflow *and* +-inf to +-448:
            our ``"saturate"``. Its float8_e5m2 cast overflows to inf: our ``"ieee"``.
        """
        fn = f"{self.name}.encode"
        check_choice(overflow, "overflow", fn, OVERFLOW_POLICIES)
        x = as_float_array(x, fn)
        if not self.has_nan and np.isnan(x).any():
            n = int(np.isnan(x).sum())
            raise ValueError(f"{fn}: x must not contain NaN ({self.name} has no NaN code), got {n} NaN")
        src = SOURCE_FORMATS[x.dtype]
        # Reinterpret the input's bits as an unsigned integer (a view: nothing is copied or modified).
        words = x.view(src.container).astype(_U64)
        sign, sig, q, nan, inf = unpack_words(src, words)
        codes = pack_words(self, sign, sig, q, nan, inf, overflow=overflow)
        # np.asarray: NumPy turns 0-d results into scalars; keep an array of shape x.shape.
        return np.asarray(codes).astype(self.container)

    # ------------------------------------------------------------------------------- decoding
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The values of stored words, in ``decode_dtype`` (exact).

        PyTorch equivalent: ``codes.view(dtype).to(torch.float32)``.

        Parameters
        ----------
        codes : ndarray of an unsigned integer dtype at least as wide as ``container``, any shape
            Stored words; bits above ``nbits`` must be zero.

        Returns
        -------
        values : ndarray of ``decode_dtype``, shape ``codes.shape``

        Math
        ----
        Unpack ``codes`` into sign, integer significand ``sig`` and power ``q`` (``|v| = sig * 2**q``,
        see the module docstring) and pack them into ``decode_dtype`` with the same integer machinery as
        ``encode``. The decode dtype has at least as many exponent and mantissa bits, so no rounding
        occurs: the exponent is re-biased, the mantissa shifted left, and a subnormal of a small format
        (e.g. float8 ``f * 2**-9``) is normalised into a normal float32 word.

        Notes
        -----
        Every NaN code decodes to the canonical quiet NaN of its sign; payloads are not preserved.
        """
        fn = f"{self.name}.decode"
        words = self._check_codes(codes, fn)
        dst = SOURCE_FORMATS[np.dtype(self.decode_dtype)]
        sign, sig, q, nan, inf = unpack_words(self, words)
        out = pack_words(dst, sign, sig, q, nan, inf, overflow="ieee")
        return np.asarray(out).astype(dst.container).view(dst.decode_dtype)

    # ------------------------------------------------------------------- the codec protocol
    @property
    def input_dtypes(self) -> tuple[np.dtype, ...]:
        """The dtypes :meth:`encode_tensor` accepts: float16, float32, float64."""
        return ENCODE_INPUT_DTYPES

    def encode_tensor(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        """The codec protocol (:class:`~saf_ref.bits.fields.Codec`): ``(encode(x, overflow="ieee"), None)``.

        An IEEE format has no per-tensor context, so the context is None.
        """
        return self.encode(x, overflow="ieee"), None

    def decode_tensor(self, codes: np.ndarray, context: None = None) -> np.ndarray:
        """The codec protocol: ``decode(codes)``; ``context`` must be None (an IEEE format has none)."""
        if context is not None:
            raise TypeError(
                f"{self.name}.decode_tensor: context must be None (IEEE formats have no context), "
                f"got {type(context).__name__}"
            )
        return self.decode(codes)

    def to_json(self) -> str:
        """The JSON form of the codec: its name (:func:`~saf_ref.bits.formats.codec_from_json` inverts it)."""
        return self.name

    # --------------------------------------------------------------------------- classification
    def is_nan(self, codes: np.ndarray) -> np.ndarray:
        """Boolean mask of NaN codes (exponent all ones and mantissa nonzero; ``S.1111.111`` for e4m3fn)."""
        e, f = self._exp_man(codes, f"{self.name}.is_nan")
        return self._nan_mask(e, f)

    def is_inf(self, codes: np.ndarray) -> np.ndarray:
        """Boolean mask of infinite codes (exponent all ones, mantissa zero); all False for e4m3fn."""
        e, f = self._exp_man(codes, f"{self.name}.is_inf")
        return self._inf_mask(e, f)

    def is_finite(self, codes: np.ndarray) -> np.ndarray:
        """Boolean mask of finite codes (neither NaN nor infinite)."""
        e, f = self._exp_man(codes, f"{self.name}.is_finite")
        return ~(self._nan_mask(e, f) | self._inf_mask(e, f))

    def classify(self, codes: np.ndarray) -> np.ndarray:
        """Class of each code: ``"zero"``, ``"subnormal"``, ``"normal"``, ``"inf"`` or ``"nan"``.

        Parameters
        ----------
        codes : ndarray of an unsigned integer dtype at least as wide as ``container``, any shape

        Returns
        -------
        classes : ndarray of str (``<U9``), shape ``codes.shape``
        """
        e, f = self._exp_man(codes, f"{self.name}.classify")
        nan, inf = self._nan_mask(e, f), self._inf_mask(e, f)
        conditions = [nan, inf, (e == 0) & (f == 0), e == 0]
        choices = ["nan", "inf", "zero", "subnormal"]
        return np.select(conditions, choices, default="normal").astype("<U9")

    # -------------------------------------------------------------------------------- helpers
    def _check_codes(self, codes, fn: str) -> np.ndarray:
        """Validate codes (unsigned, wide enough, no bits above ``nbits``); return them as uint64."""
        check_ndarray(codes, "codes", fn)
        unsigned = (np.uint8, np.uint16, np.uint32, np.uint64)
        allowed = [d for d in unsigned if np.dtype(d).itemsize >= self.container.itemsize]
        check_dtype(codes, "codes", fn, allowed)
        words = codes.astype(_U64)
        if self.nbits < 64 and words.size and int(words.max()) >> self.nbits:
            bad = int(words.max())
            raise ValueError(
                f"{fn}: codes must fit in {self.nbits} bits (at most {(1 << self.nbits) - 1:#x}), "
                f"got a code {bad:#x}"
            )
        return words

    def _exp_man(self, codes, fn: str) -> tuple[np.ndarray, np.ndarray]:
        """Exponent and mantissa fields of validated codes, as uint64 arrays."""
        words = self._check_codes(codes, fn)
        f = self.fields
        return f["exponent"].extract(words), f["mantissa"].extract(words)

    def _nan_mask(self, e: np.ndarray, f: np.ndarray) -> np.ndarray:
        if not self.has_nan:
            return np.zeros(e.shape, dtype=bool)
        top = (1 << self.exponent_bits) - 1
        if self.has_infinity:
            return (e == top) & (f != 0)
        return (e == top) & (f == (1 << self.mantissa_bits) - 1)

    def _inf_mask(self, e: np.ndarray, f: np.ndarray) -> np.ndarray:
        if not self.has_infinity:
            return np.zeros(e.shape, dtype=bool)
        return (e == (1 << self.exponent_bits) - 1) & (f == 0)


# ------------------------------------------------------------------------------------------------
# The conversion engine: unpack -> round -> pack, all on uint64 / int64 arrays.
# ------------------------------------------------------------------------------------------------


# The exact-arithmetic primitives below (unpack_words, bit_length, round_shift, pack_words,
# as_float_array, SOURCE_FORMATS) are shared with saf_ref.bits.mx, whose block formats round their
# elements with the same integer arithmetic.


def unpack_words(fmt: IEEEFormat, words: np.ndarray):
    """Split uint64 words of ``fmt`` into ``(sign, sig, q, nan, inf)``.

    For finite words ``|value| = sig * 2**q`` exactly, with ``sig`` a uint64 integer significand (the
    implicit leading 1 added for normals) and ``q`` an int64 power of two: the quantum of the word's
    binade. ``sign`` is 0 or 1 (uint64); ``nan`` and ``inf`` are boolean masks.
    """
    m = fmt.mantissa_bits
    f = fmt.fields
    sign = f["sign"].extract(words)
    e = f["exponent"].extract(words)
    man = f["mantissa"].extract(words)
    normal = e != 0
    # Normal: significand 1.f, i.e. the integer 2**m + f; subnormal and zero: 0.f, the integer f.
    sig = np.where(normal, man | _U64(1 << m), man)
    # Subnormals live in the binade of the smallest normal (exponent field 1), without the implicit bit.
    e_field = np.where(normal, e, _U64(1)).astype(np.int64)
    q = e_field - (fmt.bias + m)
    return sign, sig, q, fmt._nan_mask(e, man), fmt._inf_mask(e, man)


def bit_length(u: np.ndarray) -> np.ndarray:
    """Number of significant bits of each uint64 (0 for 0), by binary search: 6 vectorised steps."""
    n = np.zeros(u.shape, dtype=np.int64)
    v = u
    for k in (32, 16, 8, 4, 2, 1):
        big = v >= _U64(1 << k)  # the highest set bit is at position >= k: drop k bits, count them
        n += np.where(big, k, 0)
        v = np.where(big, v >> _U64(k), v)
    return n + (v > 0)  # v is now 0 or 1


def round_shift(sig: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``round_half_even(sig / 2**s)`` for uint64 ``sig`` and int64 shifts ``s`` (negative: exact left shift).

    The bits shifted out decide the rounding: the *guard* bit (the first one shifted out, worth half a
    unit of the result) and the *sticky* bit (OR of all later ones). Round up iff the dropped part is
    more than half (guard and sticky) or exactly half with an odd result (guard and LSB): ties to even.
    """
    # Shifting a significand (< 2**54) right by 63 leaves 0 with guard bit 0: the value is below half a
    # quantum and rounds to zero, exactly as for any larger shift. Clamping keeps shifts within uint64.
    right = np.clip(s, 0, 63).astype(_U64)
    left = np.clip(-s, 0, 63).astype(_U64)  # s < 0: the target is finer, widening is exact
    kept = sig >> right
    # Bit position of the guard bit, right - 1 (clamped to 0 where nothing is shifted out, right == 0).
    g = np.maximum(right, _U64(1)) - _U64(1)
    shifted_out = right > 0
    guard = shifted_out & (((sig >> g) & _U64(1)) == 1)
    sticky = shifted_out & ((sig & ((_U64(1) << g) - _U64(1))) != 0)
    odd = (kept & _U64(1)) == 1
    round_up = guard & (sticky | odd)
    return (kept + round_up.astype(_U64)) << left


def pack_words(fmt: IEEEFormat, sign, sig, q, nan, inf, *, overflow: str) -> np.ndarray:
    """Round ``(-1)**sign * sig * 2**q`` to ``fmt`` (nearest, ties to even); return uint64 words.

    Special inputs: ``nan`` -> canonical quiet NaN with the input's sign; ``inf`` and finite values
    beyond the overflow threshold -> infinity (NaN for formats without infinity) under ``"ieee"``, or
    the largest finite value under ``"saturate"``. See :meth:`IEEEFormat.encode` for the math.
    """
    m = fmt.mantissa_bits
    # 1. floor(log2 |x|) = (index of the leading bit of sig) + q. Zero has no leading bit: put it in
    #    the lowest binade, where N = 0 packs to the all-zero magnitude code.
    top = np.where(sig == 0, fmt.emin, bit_length(sig) - 1 + q)
    # 2. Target binade, clamped below at emin: values under 2**emin become subnormals (fixed quantum).
    #    Not clamped above: a too-large binade packs to a code above the largest finite one (step 5).
    #    Inputs are at most float64 (top <= 1024), so the code stays far inside uint64.
    e = np.maximum(top, fmt.emin)
    # 3. Round the significand to the target quantum 2**(e - m) in one step.
    N = round_shift(sig, (e - m) - q)
    # 4. Pack: exponent field e + bias for normals (N carries the implicit bit 2**m, hence the -1);
    #    a rounding carry (N == 2**(m+1)) or a subnormal rounding up to 2**m lands in the right code.
    mag = (((e + fmt.bias - 1).astype(_U64)) << _U64(m)) + N
    # 5. Overflow and special values.
    too_big = inf | (mag > _U64(fmt._max_code))
    if overflow == "saturate" or not fmt.has_nan:  # a format without NaN has nothing else to overflow to
        big_code = fmt._max_code
    else:
        big_code = fmt._inf_code if fmt.has_infinity else fmt._nan_code
    mag = np.where(too_big, _U64(big_code), mag)
    mag = np.where(nan, _U64(fmt._nan_code), mag)
    # 6. The sign bit goes on top, for every class (signed zeros, -inf, NaN of the input's sign).
    return (sign << _U64(fmt.nbits - 1)) | mag


def as_float_array(x, fn: str) -> np.ndarray:
    """Accept float16/32/64 arrays, NumPy float scalars and Python floats; reject everything else."""
    if isinstance(x, (float, np.floating)) and not isinstance(x, np.ndarray):
        x = np.asarray(x)  # Python float -> float64; NumPy scalar keeps its dtype; 0-d result
    check_ndarray(x, "x", fn)
    check_dtype(x, "x", fn, ENCODE_INPUT_DTYPES)
    return x


# ------------------------------------------------------------------------------------------------
# The formats.
# ------------------------------------------------------------------------------------------------

IEEE_FORMATS: dict[str, IEEEFormat] = {
    f.name: f
    for f in (
        IEEEFormat("float64", 11, 52, True, np.dtype(np.float64)),
        IEEEFormat("float32", 8, 23, True, np.dtype(np.float32)),
        IEEEFormat("float16", 5, 10, True, np.dtype(np.float16)),
        IEEEFormat("bfloat16", 8, 7, True, np.dtype(np.float32)),
        IEEEFormat("float8_e4m3fn", 4, 3, False, np.dtype(np.float32)),
        IEEEFormat("float8_e5m2", 5, 2, True, np.dtype(np.float32)),
    )
}

#: The OCP Microscaling (MX v1.0) element formats without infinity or NaN, under their ml_dtypes names.
#: Kept apart from ``IEEE_FORMATS`` (the formats with NaN codes); :func:`saf_ref.bits.get_format` finds
#: both, and :mod:`saf_ref.bits.mx` builds the MX block formats from them.
MX_ELEMENT_FORMATS: dict[str, IEEEFormat] = {
    f.name: f
    for f in (
        IEEEFormat("float4_e2m1fn", 2, 1, False, np.dtype(np.float32), has_nan=False),
        IEEEFormat("float6_e2m3fn", 2, 3, False, np.dtype(np.float32), has_nan=False),
        IEEEFormat("float6_e3m2fn", 3, 2, False, np.dtype(np.float32), has_nan=False),
    )
}

# Formats of the NumPy float dtypes: how encode reads its input and decode writes its output.
SOURCE_FORMATS: dict[np.dtype, IEEEFormat] = {
    np.dtype(np.float64): IEEE_FORMATS["float64"],
    np.dtype(np.float32): IEEE_FORMATS["float32"],
    np.dtype(np.float16): IEEE_FORMATS["float16"],
}

_ALIASES: dict[str, str] = {
    "fp64": "float64",
    "double": "float64",
    "fp32": "float32",
    "single": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "e4m3": "float8_e4m3fn",
    "e4m3fn": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn",
    "fp8_e4m3fn": "float8_e4m3fn",
    "float8_e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
    "fp8_e5m2": "float8_e5m2",
}


def get_ieee_format(name: str) -> IEEEFormat:
    """The IEEE format called ``name`` (canonical name or alias such as ``"fp16"``, ``"bf16"``, ``"e4m3"``).

    Parameters
    ----------
    name : str
        Case-insensitive. Canonical names: ``float64``, ``float32``, ``float16``, ``bfloat16``,
        ``float8_e4m3fn``, ``float8_e5m2``. An ``IEEEFormat`` is returned unchanged.

    Returns
    -------
    IEEEFormat
        Its ``.name`` is always the canonical name.
    """
    if isinstance(name, IEEEFormat):
        return name
    if not isinstance(name, str):
        raise TypeError(f"get_ieee_format: name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in IEEE_FORMATS:
        known = ", ".join(IEEE_FORMATS)
        aliases = ", ".join(_ALIASES)
        raise ValueError(
            f"get_ieee_format: name must be one of ({known}) or an alias ({aliases}), got {name!r}"
        )
    return IEEE_FORMATS[key]
