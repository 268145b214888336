"""What a bit error does to a stored number: exact single flips and closed-form probabilities.

These helpers answer the questions a newcomer asks first, exactly:

- :func:`flip_value`: what does ``x`` become when bit ``b`` of its stored word flips?
- :func:`flip_table`: the same for every bit, with the field, the new code, the relative change and the
  class of the result (what ``saf-ref bits 0.1 --format float16`` prints);
- :func:`expected_corrupted`: how many of ``n`` stored values are hit by at least one flip at rate ``p``?
- :func:`prob_nonfinite`: how likely is a stored value to become ``inf`` or ``NaN`` at rate ``p``?

A *format* here is a format object (an IEEE format from :mod:`saf_ref.bits.ieee`, a fixed-point ``qM.N``
from :mod:`saf_ref.bits.fixed`, or a :class:`~saf_ref.bits.quantize.Quantizer`) or the name of an IEEE or
fixed-point format (``"float16"``, ``"bf16"``, ``"q2.5"``). Bit 0 is the least significant bit, always.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.fields import BitField
from saf_ref.bits.formats import resolve_format
from saf_ref.bits.ieee import IEEEFormat

NONFINITE_KINDS = ("nonfinite", "nan", "inf")


# ---------------------------------------------------------------------------------------------------------
# Formats: names and objects are resolved by saf_ref.bits.formats.resolve_format (quantizers included)
# ---------------------------------------------------------------------------------------------------------


def _store(fmt: Any, x: Any, fn: str):
    """Encode ``x`` in ``fmt``: return (codes, decode function, the float array that was encoded).

    A Python number becomes a float64 array (float32 for a quantizer, whose arithmetic is float32).
    The quantizer's context (range and step) comes from encoding ``x`` and is kept by the decode
    function, as it is kept apart from the codes in storage.
    """
    if isinstance(x, (bool, np.bool_)) or not isinstance(
        x, (int, float, np.floating, np.integer, np.ndarray)
    ):
        raise TypeError(f"{fn}: x must be a real number or a float ndarray, got {validation.describe(x)}")
    if not isinstance(x, np.ndarray):
        x = np.asarray(float(x), dtype=np.float64)
    if x.dtype == np.float64 and x.ndim == 0 and x.dtype not in fmt.input_dtypes:
        x = x.astype(np.float32)  # a quantizer is float32: a Python float scalar is rounded to float32 once
    codes, context = fmt.encode_tensor(x)  # the codec protocol: the format's default policy
    return codes, (lambda c: fmt.decode_tensor(c, context)), x


def _classify(fmt: Any, codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The class of each stored value: the format's own ``classify`` or, for a quantizer, by value."""
    if hasattr(fmt, "classify"):
        return fmt.classify(codes)
    return np.select([np.isnan(values), np.isinf(values), values == 0], ["nan", "inf", "zero"], "normal")


def _field_of(fields: dict[str, BitField], bit: int) -> str:
    return next(name for name, f in fields.items() if f.lsb <= bit <= f.msb)


# ---------------------------------------------------------------------------------------------------------
# Single flips
# ---------------------------------------------------------------------------------------------------------
def flip_value(x: Any, bit: int, fmt: Any):
    """The exact value of ``x`` stored in ``fmt`` after bit ``bit`` of its word flips.

    PyTorch equivalent (float32): ``(x.view(torch.int32) ^ (1 << bit)).view(torch.float32)``.

    Parameters
    ----------
    x : float or float ndarray, any shape
        Value(s) to store; encoded with the format's defaults (IEEE: round to nearest even, overflow to
        inf; fixed point: round to nearest even, saturate; a quantizer: its own rule, float32 input).
    bit : int in [0, nbits)
        Bit to flip, 0 = least significant.
    fmt : format object or name

    Returns
    -------
    float for a scalar ``x``; else ndarray of the format's decode dtype, shape of ``x``

    Math
    ----
    ``decode(encode(x) XOR 2^bit)``. For a normal IEEE value ``(1 + f / 2^m) * 2^(e - bias)`` (``m``
    mantissa bits) a mantissa flip adds or subtracts ``2^(bit - m) * 2^(e - bias)``; an exponent flip
    multiplies or divides the value by ``2^(2^(bit - m))`` (or lands on a subnormal, zero, inf or NaN);
    the sign flip negates it. For ``qM.N`` a flip of bit
    ``b < nbits - 1`` adds ``+-2^(b - N)`` and the sign flip adds ``-+2^M``.
    """
    fn = "flip_value"
    fmt = resolve_format(fmt, fn=fn, block=False)
    bit = validation.check_int(bit, "bit", fn, low=0, high=fmt.nbits - 1)
    codes, decode, _ = _store(fmt, x, fn)
    flipped = np.asarray(codes ^ codes.dtype.type(1 << bit))  # 0-d stays an array
    out = decode(flipped)
    return float(out) if np.ndim(x) == 0 else out


class FlipRow(NamedTuple):
    """One row of :func:`flip_table`: what flipping ``bit`` does.

    ``relative_change`` is ``(value - original) / |original|`` in float64, ``None`` where undefined
    (original zero or non-finite, or the new value NaN); ``+-inf`` when a finite value becomes inf.
    """

    bit: int
    field: str
    code: int
    value: float
    relative_change: float | None
    value_class: str


class FlipTable(NamedTuple):
    """The stored word of one value and every single-bit flip of it (see :func:`flip_table`)."""

    format_name: str
    nbits: int
    fields: dict[str, BitField]
    x: float
    code: int
    value: float
    value_class: str
    rows: tuple[FlipRow, ...]


def _relative_change(new: float, old: float) -> float | None:
    if old == 0 or not math.isfinite(old) or math.isnan(new):
        return None
    if math.isinf(new):
        return new  # +-inf: a finite value became infinite
    return (new - old) / abs(old)


def flip_table(x: float, fmt: Any) -> FlipTable:
    """The stored word of ``x`` in ``fmt`` and what each single-bit flip turns it into.

    Used by ``saf-ref bits``. No PyTorch equivalent.

    Parameters
    ----------
    x : float
        A scalar value.
    fmt : format object or name

    Returns
    -------
    FlipTable
        ``format_name``, ``nbits``, ``fields``, ``x``, the stored ``code`` (int), its ``value`` and
        ``value_class``, and ``rows``: one :class:`FlipRow` per bit, most significant bit first (the order
        in which the bits are printed), each with the bit, its field, the new code, the new value, the
        relative change and the class (``normal``, ``subnormal``, ``zero``, ``inf``, ``nan``).

    Math
    ----
    Row ``b``: ``code_b = code XOR 2^b``, ``value_b = decode(code_b)``,
    ``relative_change = (value_b - value) / |value|``.
    """
    fn = "flip_table"
    fmt = resolve_format(fmt, fn=fn, block=False)
    if np.ndim(x) != 0:
        raise ValueError(f"{fn}: x must be a scalar, got shape {np.shape(x)}")
    codes, decode, _ = _store(fmt, x, fn)
    nbits = fmt.nbits
    # every single-bit flip at once: code XOR 2^b for b = nbits-1 .. 0
    bits = np.arange(nbits - 1, -1, -1)
    flipped = codes.reshape(1) ^ np.left_shift(codes.dtype.type(1), bits.astype(codes.dtype))
    values = decode(flipped)
    classes = _classify(fmt, flipped, values)
    value = float(decode(codes))
    fields = fmt.fields
    rows = tuple(
        FlipRow(
            bit=int(b),
            field=_field_of(fields, int(b)),
            code=int(c),
            value=float(v),
            relative_change=_relative_change(float(v), value),
            value_class=str(k),
        )
        for b, c, v, k in zip(bits, flipped, values, classes, strict=True)
    )
    return FlipTable(
        format_name=fmt.name,
        nbits=nbits,
        fields=fields,
        x=float(x),
        code=int(codes),
        value=value,
        value_class=str(_classify(fmt, codes.reshape(1), np.asarray([value]))[0]),
        rows=rows,
    )


# ---------------------------------------------------------------------------------------------------------
# Probabilities under independent bit errors at rate p
# ---------------------------------------------------------------------------------------------------------
def expected_corrupted(n_values: int, nbits: int, p: float) -> float:
    """Expected number of stored values hit by at least one bit flip at bit-error rate ``p``.

    No PyTorch equivalent.

    Parameters
    ----------
    n_values : int >= 0
        Number of stored values.
    nbits : int in [1, 64]
        Bits per stored value (exposed to errors).
    p : float in [0, 1]
        Bit-error rate (each bit flips independently with probability ``p``).

    Returns
    -------
    float

    Math
    ----
    A word is untouched with probability ``(1 - p)^nbits``, so
    ``E[corrupted] = n * (1 - (1 - p)^nbits)``, computed as ``-n * expm1(nbits * log1p(-p))`` so that it
    stays accurate for tiny ``p`` (where it is about ``n * nbits * p``).
    """
    fn = "expected_corrupted"
    n_values = validation.check_int(n_values, "n_values", fn, low=0)
    nbits = validation.check_int(nbits, "nbits", fn, low=1, high=64)
    p = validation.check_probability(p, "p", fn)
    if p == 1.0:
        return float(n_values)
    # n * (-expm1(...)), not -n * expm1(...): for n = 0 the latter is 0 * (negative) = -0.0.
    return n_values * -math.expm1(nbits * math.log1p(-p))


def _pattern_probability(codes: np.ndarray, must_be_one: int, must_be_zero: int, p: float) -> np.ndarray:
    """P(after independent flips at rate p, the bits of ``must_be_one`` are all 1 and those of
    ``must_be_zero`` all 0): each bit already right must not flip (1 - p), each wrong one must (p)."""
    wrong = np.zeros(codes.shape, dtype=np.int64)
    for b in range(codes.dtype.itemsize * 8):
        bit = (codes >> codes.dtype.type(b)) & codes.dtype.type(1)
        if must_be_one >> b & 1:
            wrong += bit == 0
        elif must_be_zero >> b & 1:
            wrong += bit == 1
    width = bin(must_be_one).count("1") + bin(must_be_zero).count("1")
    return np.power(p, wrong) * np.power(1.0 - p, width - wrong)


def prob_nonfinite(x: Any, fmt: Any, p: float, *, kind: str = "nonfinite"):
    """Exact probability that ``x`` stored in ``fmt`` reads back non-finite after flips at rate ``p``.

    No PyTorch equivalent.

    Parameters
    ----------
    x : float or float ndarray, any shape
        Value(s) to store (encoded with the format's defaults, as in :func:`flip_value`).
    fmt : format object or name
    p : float in [0, 1]
        Bit-error rate: every bit of the word flips independently with probability ``p``.
    kind : {"nonfinite", "nan", "inf"}
        Probability of reading back a non-finite value (default), a NaN, or an infinity.

    Returns
    -------
    float for a scalar ``x``; else float64 ndarray, shape of ``x``

    Math
    ----
    Bits flip independently, so the word after errors has each bit independently right with probability
    ``1 - p`` and wrong with probability ``p``. A set of target bit values is reached with probability
    ``p^w (1 - p)^(t - w)``, where ``t`` is the number of bits constrained and ``w`` the number of them
    that are currently wrong (they must flip; the others must not). Non-finite words are:

    - formats with infinity (float64/32/16, bfloat16, float8_e5m2): exponent field all ones (mantissa 0:
      inf; otherwise NaN). The sign and mantissa do not matter, so with ``E`` exponent bits of which
      ``z`` are 0 in the stored word: ``P(nonfinite) = p^z (1 - p)^(E - z)``. Inf also needs every
      mantissa bit 0: ``P(inf) = P(nonfinite) * p^o (1 - p)^(m - o)``, with ``o`` the mantissa bits that
      are 1; ``P(nan) = P(nonfinite) * (1 - p^o (1 - p)^(m - o))``.
    - float8_e4m3fn (no infinity): only ``S.1111.111`` is NaN, so all 7 exponent and mantissa bits must
      end at 1: ``P(nan) = P(nonfinite) = p^z (1 - p)^(7 - z)``, ``z`` the zero bits among them.
    - fixed point and quantizers: every code is a finite number, so all three probabilities are 0.

    For example float32 ``1.0`` has exponent ``01111111``: ``z = 1``, ``P = p (1 - p)^7`` (at
    ``p = 1e-3`` about ``9.9e-4``), while ``0.1`` (``01111011``) needs two flips: ``p^2 (1 - p)^6``.
    """
    fn = "prob_nonfinite"
    fmt = resolve_format(fmt, fn=fn, block=False)
    p = validation.check_probability(p, "p", fn)
    validation.check_choice(kind, "kind", fn, NONFINITE_KINDS)
    codes, _, _ = _store(fmt, x, fn)
    if not isinstance(fmt, IEEEFormat):
        out = np.zeros(codes.shape, dtype=np.float64)
    else:
        exp_mask = fmt.fields["exponent"].mask
        man_mask = fmt.fields["mantissa"].mask
        if not fmt.has_infinity:  # e4m3fn: NaN is the all-ones exponent and mantissa, nothing else
            nan = _pattern_probability(codes, exp_mask | man_mask, 0, p)
            out = {"nonfinite": nan, "nan": nan, "inf": np.zeros_like(nan)}[kind]
        else:
            # exponent and mantissa bits flip independently, so the two events multiply
            nonfinite = _pattern_probability(codes, exp_mask, 0, p)
            man_zero = _pattern_probability(codes, 0, man_mask, p)
            out = {"nonfinite": nonfinite, "nan": nonfinite * (1.0 - man_zero), "inf": nonfinite * man_zero}[
                kind
            ]
    return float(out) if np.ndim(x) == 0 else out
