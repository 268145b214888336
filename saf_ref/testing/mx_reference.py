"""An independent, slow loop implementation of the OCP Microscaling (MX v1.0) formats, for tests only.

It shares no code with :mod:`saf_ref.bits.mx` or :mod:`saf_ref.bits.ieee`: values are exact Python
:class:`fractions.Fraction` s, element values are computed from the bit fields by the textbook formula,
and rounding is "the nearest value in the table of all element values", ties to the even code, so that
saturation, subnormals and ties follow from the definition instead of from shifts and guard bits.

Specification, written out (see :mod:`saf_ref.bits.mx` for the choices the specification leaves open):

- element ``S E..E M..M`` with bias ``2**(E-1) - 1``: ``e == 0``: ``(-1)**S * 0.M * 2**(1 - bias)``;
  else ``(-1)**S * 1.M * 2**(e - bias)``; e4m3: ``S.1111.111`` is NaN; e5m2: exponent all ones is
  inf (``M == 0``) or NaN; the FP6 and FP4 formats have no special codes. INT8: two's complement
  ``k``, value ``k / 64``.
- scale ``e``: ``2**(e - 127)``, ``0xFF`` NaN.
- a block: ``shared = floor(log2 max|V|) - emax_elem``, clamped below at -127; NaN (``0xFF``, elements
  0) if above 127 or if a value is not finite; all zeros: -127. ``P_i`` = nearest element value to
  ``V_i / 2**shared``, ties to the even code, saturating.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache

#: name -> (exponent bits, mantissa bits, kind) of the element formats; kind: "fn" (no specials),
#: "e4m3" (only S.1111.111 is NaN), "ieee" (inf and NaN in the top binade), "int8".
ELEMENTS = {
    "float8_e4m3fn": (4, 3, "e4m3"),
    "float8_e5m2": (5, 2, "ieee"),
    "float6_e2m3fn": (2, 3, "fn"),
    "float6_e3m2fn": (3, 2, "fn"),
    "float4_e2m1fn": (2, 1, "fn"),
    "int8": (0, 7, "int8"),
}
MX_ELEMENT = {
    "mxfp8_e4m3": "float8_e4m3fn",
    "mxfp8_e5m2": "float8_e5m2",
    "mxfp6_e2m3": "float6_e2m3fn",
    "mxfp6_e3m2": "float6_e3m2fn",
    "mxfp4": "float4_e2m1fn",
    "mxint8": "int8",
}
NAN = "nan"
INF = "inf"


def element_bits(name: str) -> int:
    E, m, _ = ELEMENTS[name]
    return 8 if name == "int8" else 1 + E + m


def element_value(name: str, code: int):
    """Exact value of an element code: a Fraction, ``"nan"``, ``"inf"`` or ``"-inf"``. Zero is
    ``(Fraction(0), sign)`` to keep the sign of zero: returns ``(value, negative)`` for every number."""
    E, m, kind = ELEMENTS[name]
    if kind == "int8":
        k = code - 256 if code >= 128 else code
        return Fraction(k, 64), k < 0
    nbits = 1 + E + m
    sign = (code >> (nbits - 1)) & 1
    e = (code >> m) & ((1 << E) - 1)
    f = code & ((1 << m) - 1)
    bias = (1 << (E - 1)) - 1
    top = (1 << E) - 1
    if kind == "e4m3" and e == top and f == (1 << m) - 1:
        return NAN, bool(sign)
    if kind == "ieee" and e == top:
        return (INF if f == 0 else NAN), bool(sign)
    if e == 0:
        mag = Fraction(f, 1 << m) * Fraction(2) ** (1 - bias)
    else:
        mag = (1 + Fraction(f, 1 << m)) * Fraction(2) ** (e - bias)
    return (-mag if sign else mag), bool(sign)


def emax_elem(name: str) -> int:
    """Exponent of the largest normal binade of the element format (0 for INT8)."""
    E, m, kind = ELEMENTS[name]
    if kind == "int8":
        return 0
    bias = (1 << (E - 1)) - 1
    top = (1 << E) - 1
    return (top - 1 if kind == "ieee" else top) - bias


@cache
def _magnitude_table(name: str) -> tuple[tuple[Fraction, int], ...]:
    """(value, code) of every finite non-negative element value with sign bit clear (INT8: k = 0..127)."""
    if name == "int8":
        return tuple((Fraction(k, 64), k) for k in range(128))
    nbits = element_bits(name)
    out = []
    for code in range(1 << (nbits - 1)):
        v, _ = element_value(name, code)
        if isinstance(v, Fraction):
            out.append((v, code))
    return tuple(out)


def round_element(name: str, y: Fraction, negative: bool) -> int:
    """The element code nearest to ``y`` (ties to the even code), saturating; ``negative``: the sign of
    ``y`` (to keep the sign of a zero result)."""
    table = _magnitude_table(name)
    mag = abs(y)
    best = min(table, key=lambda vc: (abs(vc[0] - mag), vc[1] & 1))
    code = best[1]
    if name == "int8":
        return (-code) & 0xFF if negative else code
    nbits = element_bits(name)
    return code | ((1 << (nbits - 1)) if negative else 0)


def scale_value(code: int):
    """Exact value of an E8M0 code (a Fraction), or ``"nan"`` for 0xFF."""
    return NAN if code == 0xFF else Fraction(2) ** (code - 127)


def encode_block(mx_name: str, values: list[float]) -> tuple[int, list[int]]:
    """``(scale code, element codes)`` of one block of Python floats (float32 or float64 values)."""
    name = MX_ELEMENT[mx_name]
    if any(math.isnan(v) or math.isinf(v) for v in values):
        return 0xFF, [0] * len(values)
    amax = max(abs(Fraction(v)) for v in values)
    if amax == 0:
        shared = -127
    else:
        # floor(log2 amax) from the exact fraction: the largest k with 2**k <= amax
        k = amax.numerator.bit_length() - amax.denominator.bit_length()
        while Fraction(2) ** k > amax:
            k -= 1
        while Fraction(2) ** (k + 1) <= amax:
            k += 1
        shared = max(k - emax_elem(name), -127)
    if shared > 127:
        return 0xFF, [0] * len(values)
    x = Fraction(2) ** shared
    codes = [round_element(name, Fraction(v) / x, math.copysign(1.0, v) < 0) for v in values]
    return shared + 127, codes


def decode_block(mx_name: str, scale: int, codes: list[int]) -> list[float]:
    """Values (Python floats; exact, since every MX value fits a float64) of one block."""
    name = MX_ELEMENT[mx_name]
    s = scale_value(scale)
    out = []
    for c in codes:
        v, negative = element_value(name, c)
        if s == NAN or v == NAN:
            out.append(math.nan)
        elif v == INF:
            out.append(-math.inf if negative else math.inf)
        else:
            r = float(v * s)
            out.append(-0.0 if (r == 0 and negative) else r)
    return out
