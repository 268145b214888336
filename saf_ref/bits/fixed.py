"""Fixed point ``qM.N``: two's complement words with 1 sign bit, M integer bits and N fraction bits.

A ``qM.N`` word has ``nbits = 1 + M + N`` bits. It stores a signed integer ``k`` (two's complement) and
means the value ``k * 2**-N``::

    q2.5 (8 bits):   s I I F F F F F        value = k / 32,  k in [-128, 127]
                     7 6 5 4 3 2 1 0        range [-4, 4 - 2**-5], step 2**-5

Bit 0 is the least significant bit, always. There is no NaN, no infinity and no negative zero: every
bit pattern is a number, which is what makes fixed point attractive under bit errors (a flip changes the
value by exactly ``+-2**(b - N)`` for bit ``b < nbits - 1``, and by ``-+2**M`` for the sign bit).

PyTorch has no fixed-point dtype; the closest is ``torch.quantize_per_tensor(x, scale=2**-N,
zero_point=0, dtype=torch.qint8)`` for ``nbits == 8`` (it rounds half to even and saturates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from saf_ref import validation
from saf_ref.bits.fields import BitField, smallest_container

ROUNDINGS = ("nearest_even", "toward_zero", "floor")
OVERFLOWS = ("saturate", "wrap")
FIXED_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# "q2.5" or "Q2.5": M and N are decimal integers without sign.
_NAME_RE = re.compile(r"^[qQ](\d+)\.(\d+)$")

# One rounding function per rule; each maps float64 to integral float64 exactly.
_ROUND = {"nearest_even": np.rint, "toward_zero": np.trunc, "floor": np.floor}


def is_fixed_format_name(name: object) -> bool:
    """True when ``name`` spells a fixed-point format ``qM.N`` (any case of ``q``), with 2..32 bits."""
    if not isinstance(name, str):
        return False
    match = _NAME_RE.match(name)
    return match is not None and 2 <= 1 + int(match.group(1)) + int(match.group(2)) <= 32


def parse_fixed_format(text: str, *, fn: str = "parse_fixed_format", name: str = "name") -> FixedPointFormat:
    """The :class:`FixedPointFormat` named ``text``, e.g. ``"q2.5"`` (or ``"Q2.5"``).

    Parameters
    ----------
    text : str
        ``"qM.N"``: M integer bits and N fraction bits, ``2 <= 1 + M + N <= 32``.
    fn, name : str
        The function and argument named in error messages (for callers that parse on behalf of theirs).

    Raises
    ------
    TypeError
        ``text`` is not a string.
    ValueError
        ``text`` is not of the form ``qM.N`` or its width is outside 2..32 bits.
    """
    if not isinstance(text, str):
        raise TypeError(f"{fn}: {name} must be a str like 'q2.5', got {validation.describe(text)}")
    match = _NAME_RE.match(text)
    if match is None:
        raise ValueError(f"{fn}: {name} must have the form 'qM.N' (e.g. 'q2.5'), got {text!r}")
    int_bits, frac_bits = int(match.group(1)), int(match.group(2))
    nbits = 1 + int_bits + frac_bits
    if not 2 <= nbits <= 32:
        raise ValueError(f"{fn}: {name} {text!r} has 1 + M + N = {nbits} bits, expected 2..32")
    return FixedPointFormat(int_bits, frac_bits)


@dataclass(frozen=True)
class FixedPointFormat:
    """Two's complement fixed point ``qM.N`` (a :class:`~saf_ref.bits.fields.NumberFormat`).

    PyTorch has no equivalent dtype; for 8 bits ``torch.quantize_per_tensor(x, 2**-N, 0, torch.qint8)``
    computes the same integers with ``rounding="nearest_even", overflow="saturate"``.

    Parameters
    ----------
    int_bits : int
        M, the number of integer bits (not counting the sign bit), ``M >= 0``.
    frac_bits : int
        N, the number of fraction bits, ``N >= 0``. ``1 + M + N`` must be in 2..32.

    Attributes
    ----------
    name : str
        ``"qM.N"``, e.g. ``"q2.5"``.
    nbits : int
        ``1 + M + N``.
    container : numpy.dtype
        Smallest unsigned dtype holding ``nbits`` bits; codes (the two's complement bit pattern, upper
        container bits zero) live in it.
    decode_dtype : numpy.dtype
        float32 when every value is exactly representable in float32 (``nbits <= 25``: ``|k| <= 2**24``),
        else float64.
    fields : dict[str, BitField]
        ``sign`` (bit ``nbits - 1``), ``integer`` (bits ``N .. N + M - 1``, omitted when M == 0) and
        ``fraction`` (bits ``0 .. N - 1``, omitted when N == 0), most significant first.
    step, min_value, max_value : float
        ``2**-N``, ``-2**M`` and ``2**M - 2**-N``.

    Math
    ----
    A code ``c`` holds the integer ``k = c - 2**nbits * [c >= 2**(nbits - 1)]`` and means ``k * 2**-N``.
    Encoding computes ``k = R(x * 2**N)`` with the rounding rule ``R`` and then saturates ``k`` to
    ``[-2**(nbits-1), 2**(nbits-1) - 1]`` or wraps it modulo ``2**nbits``.
    """

    int_bits: int
    frac_bits: int
    nbits: int = field(init=False)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        fn = "FixedPointFormat"
        m = validation.check_int(self.int_bits, "int_bits", fn, low=0, high=31)
        n = validation.check_int(self.frac_bits, "frac_bits", fn, low=0, high=31)
        if not 2 <= 1 + m + n <= 32:
            raise ValueError(f"{fn}: 1 + int_bits + frac_bits must be in [2, 32], got {1 + m + n}")
        # Frozen dataclass: derived attributes are set once through object.__setattr__.
        object.__setattr__(self, "int_bits", m)
        object.__setattr__(self, "frac_bits", n)
        object.__setattr__(self, "nbits", 1 + m + n)
        object.__setattr__(self, "name", f"q{m}.{n}")

    # ----------------------------------------------------------------------------------------------------
    # Derived constants
    # ----------------------------------------------------------------------------------------------------
    @property
    def container(self) -> np.dtype:
        """Smallest unsigned dtype holding ``nbits`` bits."""
        return smallest_container(self.nbits)

    @property
    def decode_dtype(self) -> np.dtype:
        """float32 when every value ``k * 2**-N`` is exact in float32 (``nbits <= 25``), else float64."""
        return np.dtype(np.float32) if self.nbits <= 25 else np.dtype(np.float64)

    @property
    def fields(self) -> dict[str, BitField]:
        """Named bit ranges, most significant first: ``sign``, ``integer``, ``fraction``."""
        out = {"sign": BitField("sign", self.nbits - 1, 1)}
        if self.int_bits > 0:
            out["integer"] = BitField("integer", self.frac_bits, self.int_bits)
        if self.frac_bits > 0:
            out["fraction"] = BitField("fraction", 0, self.frac_bits)
        return out

    @property
    def step(self) -> float:
        """The spacing of representable values, ``2**-N``."""
        return float(np.ldexp(1.0, -self.frac_bits))

    @property
    def min_value(self) -> float:
        """The most negative value, ``-2**M``."""
        return -float(np.ldexp(1.0, self.int_bits))

    @property
    def max_value(self) -> float:
        """The largest value, ``2**M - 2**-N``."""
        return float(np.ldexp(1.0, self.int_bits)) - self.step

    @property
    def _int_min(self) -> int:
        return -(1 << (self.nbits - 1))

    @property
    def _int_max(self) -> int:
        return (1 << (self.nbits - 1)) - 1

    # ----------------------------------------------------------------------------------------------------
    # Integers <-> codes
    # ----------------------------------------------------------------------------------------------------
    def to_int(self, codes: np.ndarray) -> np.ndarray:
        """The signed integers ``k`` (int64) stored in ``codes`` (two's complement, ``nbits`` wide).

        Parameters
        ----------
        codes : ndarray of an unsigned dtype at least as wide as ``container``, any shape
            Bit patterns below ``2**nbits`` (``ValueError`` otherwise).

        Math
        ----
        ``k = c - 2**nbits`` if ``c >= 2**(nbits - 1)`` (sign bit set) else ``c``.
        """
        word = _check_codes(codes, self.nbits, self.container, f"{self.name}.to_int")
        # Sign extension: a set sign bit means the word is k + 2**nbits.
        return np.asarray(np.where(word > self._int_max, word - (1 << self.nbits), word))

    def from_int(self, ints: np.ndarray) -> np.ndarray:
        """The codes (two's complement bit patterns in ``container``) of the signed integers ``ints``.

        Parameters
        ----------
        ints : ndarray of an integer dtype, any shape
            Values in ``[-2**(nbits-1), 2**(nbits-1) - 1]``.
        """
        fn = f"{self.name}.from_int"
        validation.check_ndarray(ints, "ints", fn)
        if not np.issubdtype(ints.dtype, np.integer):
            raise TypeError(f"{fn}: ints must have an integer dtype, got {ints.dtype}")
        if ints.size and (int(ints.min()) < self._int_min or int(ints.max()) > self._int_max):
            raise ValueError(
                f"{fn}: ints must be in [{self._int_min}, {self._int_max}], "
                f"got values in [{int(ints.min())}, {int(ints.max())}]"
            )
        # Masking an int64 with 2**nbits - 1 keeps the low nbits bits: the two's complement pattern.
        return np.asarray((ints.astype(np.int64) & ((1 << self.nbits) - 1)).astype(self.container))

    # ----------------------------------------------------------------------------------------------------
    # The codec
    # ----------------------------------------------------------------------------------------------------
    def encode(
        self, x: np.ndarray, *, rounding: str = "nearest_even", overflow: str = "saturate"
    ) -> np.ndarray:
        """Encode floats as ``qM.N`` codes (two's complement bit patterns in ``container``).

        PyTorch equivalent (8 bits, defaults): ``torch.quantize_per_tensor(x, 2**-N, 0, torch.qint8)``.

        Parameters
        ----------
        x : ndarray of float16, float32 or float64, any shape (or a Python / NumPy float scalar)
            Values to encode. Not modified.
        rounding : {"nearest_even", "toward_zero", "floor"}
            How ``x * 2**N`` becomes an integer: round half to even (default), truncate, or round down.
        overflow : {"saturate", "wrap"}
            Out-of-range integers are clamped to ``[-2**(nbits-1), 2**(nbits-1) - 1]`` (default) or
            reduced modulo ``2**nbits`` (what an integer register does).

        Returns
        -------
        codes : ndarray of ``container`` dtype, shape of ``x``

        Math
        ----
        ``k = R(x * 2**N)`` with ``R`` in {rint, trunc, floor};
        saturate: ``k = clip(k, -2**(nbits-1), 2**(nbits-1) - 1)``; wrap: ``k = k mod 2**nbits``;
        the code is the low ``nbits`` bits of ``k``.

        Notes
        -----
        - The arithmetic is exact: the input is widened to float64 (exact for float16/32/64) and scaled by
          ``2**N`` with ``ldexp``, which is exact short of float64 overflow; rounding to an integer is
          exact. So the result is the mathematically defined one, with no double rounding.
        - ``wrap`` first reduces ``x`` modulo ``2**(M+1)`` with ``fmod`` (exact in IEEE arithmetic); this
          subtracts an integer multiple of ``2**nbits`` (an even number) from ``x * 2**N`` without changing
          its sign, which commutes with all three rounding rules (ties to even included), and keeps huge
          inputs (``1e300``) from overflowing the scaling.
        - NaN has no code: it raises ``ValueError``. ``+-inf`` saturates to the extreme codes under
          ``"saturate"`` and raises ``ValueError`` under ``"wrap"`` (infinity has no residue).
        """
        fn = f"{self.name}.encode"
        x = _check_float_input(x, fn)
        validation.check_choice(rounding, "rounding", fn, ROUNDINGS)
        validation.check_choice(overflow, "overflow", fn, OVERFLOWS)
        if np.isnan(x).any():
            raise ValueError(f"{fn}: x must not contain NaN (fixed point has no NaN code), got NaN")
        x64 = x.astype(np.float64)  # exact widening, and a copy: the caller's array is never touched
        if overflow == "wrap":
            if np.isinf(x64).any():
                raise ValueError(f'{fn}: x must be finite with overflow="wrap", got +-inf')
            # x mod 2**(M+1) (sign of x kept): x * 2**N changes by a multiple of 2**nbits, an even integer.
            x64 = np.fmod(x64, float(1 << (self.int_bits + 1)))
        with np.errstate(over="ignore"):  # past float64's range x * 2**N is inf, which saturates
            scaled = np.ldexp(x64, self.frac_bits)  # x * 2**N, exact short of that
        k = _ROUND[rounding](scaled)
        if overflow == "saturate":
            k = np.clip(k, self._int_min, self._int_max)  # also maps +-inf to the extremes
        # |k| < 2**32 here, so the int64 conversion is exact; the mask takes k modulo 2**nbits.
        # (np.asarray keeps 0-d results arrays; NumPy turns 0-d arithmetic results into scalars.)
        return np.asarray((k.astype(np.int64) & ((1 << self.nbits) - 1)).astype(self.container))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The values ``k * 2**-N`` of ``codes``, in ``decode_dtype`` (exact).

        Parameters
        ----------
        codes : ndarray of an unsigned dtype at least as wide as ``container``, any shape
            Bit patterns below ``2**nbits`` (``ValueError`` otherwise).

        Returns
        -------
        ndarray of ``decode_dtype`` (float32 for ``nbits <= 25``, else float64), shape of ``codes``
        """
        k = self.to_int(codes)
        # k has at most 32 significant bits; in decode_dtype it is exact and ldexp by -N is exact.
        return np.asarray(np.ldexp(k.astype(self.decode_dtype), -self.frac_bits))

    # ----------------------------------------------------------------------------------------------------
    # The codec protocol (saf_ref.bits.fields.Codec)
    # ----------------------------------------------------------------------------------------------------
    @property
    def input_dtypes(self) -> tuple[np.dtype, ...]:
        """The dtypes :meth:`encode_tensor` accepts: float16, float32, float64."""
        return FIXED_FLOAT_DTYPES

    def encode_tensor(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        """The codec protocol: ``(encode(x), None)`` with the defaults (round half to even, saturate).

        Fixed point has no per-tensor context (the step ``2**-N`` is part of the format), so it is None.
        """
        return self.encode(x, rounding="nearest_even", overflow="saturate"), None

    def decode_tensor(self, codes: np.ndarray, context: None = None) -> np.ndarray:
        """The codec protocol: ``decode(codes)``; ``context`` must be None (fixed point has none)."""
        if context is not None:
            raise TypeError(
                f"{self.name}.decode_tensor: context must be None (fixed point has no context), "
                f"got {type(context).__name__}"
            )
        return self.decode(codes)

    def to_json(self) -> str:
        """The JSON form of the codec: its name ``"qM.N"``."""
        return self.name

    def classify(self, codes: np.ndarray) -> np.ndarray:
        """``"zero"`` where the value is 0, ``"normal"`` elsewhere (for display beside IEEE formats)."""
        return np.asarray(np.where(self.to_int(codes) == 0, "zero", "normal").astype("<U9"))


def _check_float_input(x: object, fn: str) -> np.ndarray:
    """Require a float16/32/64 ndarray; a Python float or NumPy float scalar becomes a 0-d array."""
    if isinstance(x, (float, np.floating)):
        x = np.asarray(x)  # Python float -> float64; a NumPy scalar keeps its dtype
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: x must be a numpy.ndarray of a float dtype, got {validation.describe(x)}")
    return validation.check_dtype(x, "x", fn, FIXED_FLOAT_DTYPES)


_UNSIGNED = tuple(np.dtype(d) for d in (np.uint8, np.uint16, np.uint32, np.uint64))


def _check_codes(codes: object, nbits: int, container: np.dtype, fn: str) -> np.ndarray:
    """Require unsigned codes at least as wide as ``container`` and below ``2**nbits``; return int64."""
    validation.check_ndarray(codes, "codes", fn)
    validation.check_dtype(codes, "codes", fn, [d for d in _UNSIGNED if d.itemsize >= container.itemsize])
    if codes.size and int(codes.max()) >> nbits:
        raise ValueError(
            f"{fn}: codes must fit in {nbits} bits (at most {(1 << nbits) - 1:#x}), "
            f"got a code {int(codes.max()):#x}"
        )
    return codes.astype(np.int64)  # codes < 2**32 here, exact
