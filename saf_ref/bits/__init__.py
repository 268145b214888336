"""saf_ref.bits: bit-exact number formats and fault models. Knows nothing of networks.

Formats
    :func:`get_format` returns a format object for any stored-number format by name: the IEEE binary
    formats (``float64``, ``float32``, ``float16``, ``bfloat16``, ``float8_e4m3fn``, ``float8_e5m2``) and
    two's complement fixed point ``qM.N`` (``"q2.5"``). Per-tensor quantizers (:class:`Quantizer`) carry
    a context (range, step) beside their codes.
Faults
    Independent bit errors, uniform-array flips (the interop mode), exact-count, targeted, stuck-at and
    burst faults, and :class:`FaultList`, a portable record of faults.

Bit 0 is the least significant bit of the stored word, always.
"""

from saf_ref._checks import check_choice
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faults import (
    StuckAtMap,
    flip_bit,
    flip_by_uniform,
    inject_bit_errors,
    inject_bursts,
    inject_exact_k,
    sample_nested_flips,
    sample_stuck_at_map,
)
from saf_ref.bits.fields import BitField, NumberFormat, smallest_container
from saf_ref.bits.fixed import FixedPointFormat, is_fixed_format_name, parse_fixed_format
from saf_ref.bits.ieee import IEEE_FORMATS, IEEEFormat, get_ieee_format
from saf_ref.bits.quantize import QuantContext, Quantizer
from saf_ref.bits.teaching import expected_corrupted, flip_table, flip_value, prob_nonfinite

__all__ = [
    "BitField",
    "FaultList",
    "FixedPointFormat",
    "IEEEFormat",
    "IEEE_FORMATS",
    "NumberFormat",
    "QuantContext",
    "Quantizer",
    "StuckAtMap",
    "flip_bit",
    "flip_by_uniform",
    "format_names",
    "get_format",
    "get_ieee_format",
    "expected_corrupted",
    "flip_table",
    "flip_value",
    "inject_bit_errors",
    "is_fixed_format_name",
    "parse_fixed_format",
    "prob_nonfinite",
    "inject_bursts",
    "inject_exact_k",
    "sample_nested_flips",
    "sample_stuck_at_map",
    "smallest_container",
]


def format_names() -> tuple[str, ...]:
    """Canonical names of the IEEE formats, plus the fixed-point example ``"q2.5"`` (any ``qM.N`` works)."""
    return (*IEEE_FORMATS, "q2.5")


def get_format(name: str) -> NumberFormat:
    """The number format called ``name``: an IEEE binary format or two's complement fixed point ``qM.N``.

    Parameters
    ----------
    name : str
        ``"float64"``, ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float8_e4m3fn"``, ``"float8_e5m2"``
        (and the aliases :func:`get_ieee_format` accepts), or ``"qM.N"`` such as ``"q2.5"`` (1 sign bit,
        M integer bits, N fraction bits).

    Returns
    -------
    NumberFormat
        An object with ``name``, ``nbits``, ``container``, ``fields``, ``encode``, ``decode``, ``classify``.

    Raises
    ------
    TypeError
        ``name`` is not a string.
    ValueError
        ``name`` is not a known format.
    """
    if isinstance(name, (IEEEFormat, FixedPointFormat)):
        return name
    if not isinstance(name, str):
        raise TypeError(f"get_format: name must be a format name (str), got {type(name).__name__}")
    if name[:1] in ("q", "Q") and "." in name:  # looks like qM.N: its own parser gives the precise error
        return parse_fixed_format(name)
    try:
        return get_ieee_format(name)
    except ValueError:
        check_choice(name, "name", "get_format", (*format_names(), "qM.N (e.g. 'q2.5')"))
        raise  # pragma: no cover - check_choice always raises here
