"""Number formats by name: the one place where ``"float16"``, ``"bf16"`` or ``"q2.5"`` becomes a format.

Every part of saf_ref that accepts "a format" (the ``saf-ref bits`` command, the teaching helpers, the
storage specs of :mod:`saf_ref.protect`) resolves it here, so the same names work everywhere and a bad
name gives the same message everywhere:

- an IEEE binary format name or alias (:func:`~saf_ref.bits.ieee.get_ieee_format`): ``"float32"``,
  ``"fp16"``, ``"bfloat16"``, ``"e4m3"``, ...;
- a two's complement fixed-point name ``"qM.N"`` (:func:`~saf_ref.bits.fixed.parse_fixed_format`);
- a format object, returned unchanged: an :class:`~saf_ref.bits.ieee.IEEEFormat`, a
  :class:`~saf_ref.bits.fixed.FixedPointFormat` or, where the caller allows it, a per-tensor
  :class:`~saf_ref.bits.quantize.Quantizer` (it has no name to look up: its settings are its identity).
"""

from __future__ import annotations

from typing import Any

from saf_ref import validation
from saf_ref.bits.fields import Codec, NumberFormat
from saf_ref.bits.fixed import FixedPointFormat, parse_fixed_format
from saf_ref.bits.ieee import IEEE_FORMATS, IEEEFormat, get_ieee_format
from saf_ref.bits.quantize import Quantizer

__all__ = ["codec_from_json", "format_names", "get_format", "resolve_format"]


def format_names() -> tuple[str, ...]:
    """Canonical names of the IEEE formats, plus the fixed-point example ``"q2.5"`` (any ``qM.N`` works)."""
    return (*IEEE_FORMATS, "q2.5")


def resolve_format(
    fmt: Any, *, fn: str = "resolve_format", name: str = "fmt", quantizer: bool = True
) -> IEEEFormat | FixedPointFormat | Quantizer:
    """The format object ``fmt`` names (or ``fmt`` itself when it already is one).

    Parameters
    ----------
    fmt : str, IEEEFormat, FixedPointFormat or Quantizer
        An IEEE name or alias (case-insensitive), ``"qM.N"`` (``q`` or ``Q``), or a format object.
    fn, name : str
        The function and argument named in error messages (``"StorageRule"``, ``"rule 'fc.*' format"``).
    quantizer : bool
        Whether a :class:`~saf_ref.bits.quantize.Quantizer` is accepted.

    Returns
    -------
    IEEEFormat, FixedPointFormat or Quantizer

    Raises
    ------
    TypeError
        ``fmt`` is neither a string nor an accepted format object.
    ValueError
        ``fmt`` is a string that names no format (for a ``qM.N``-looking string, the message says what is
        wrong with it: its form, or a width outside 2..32 bits).
    """
    objects = (IEEEFormat, FixedPointFormat, Quantizer) if quantizer else (IEEEFormat, FixedPointFormat)
    if isinstance(fmt, objects):
        return fmt
    if not isinstance(fmt, str):
        kinds = "an IEEEFormat, a FixedPointFormat or a Quantizer" if quantizer else (
            "an IEEEFormat or a FixedPointFormat"
        )
        raise TypeError(
            f"{fn}: {name} must be a format name (e.g. 'float16', 'q2.5') or {kinds}, "
            f"got {validation.describe(fmt)}"
        )
    # A string that looks like qM.N is fixed point: its own parser says precisely what is wrong with it.
    if fmt[:1] in ("q", "Q") and "." in fmt:
        return parse_fixed_format(fmt, fn=fn, name=name)
    try:
        return get_ieee_format(fmt)
    except ValueError:
        raise ValueError(
            f"{fn}: {name} must be an IEEE format name ({', '.join(IEEE_FORMATS)}, or an alias such as "
            f"'fp16', 'bf16', 'e4m3') or a fixed-point name 'qM.N' such as 'q2.5', got {fmt!r}"
        ) from None


def get_format(name: str) -> NumberFormat:
    """The number format called ``name``: an IEEE binary format or two's complement fixed point ``qM.N``.

    Parameters
    ----------
    name : str
        ``"float64"``, ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float8_e4m3fn"``, ``"float8_e5m2"``
        (and the aliases :func:`~saf_ref.bits.ieee.get_ieee_format` accepts), or ``"qM.N"`` such as
        ``"q2.5"`` (1 sign bit, M integer bits, N fraction bits). A format object is returned unchanged.

    Returns
    -------
    NumberFormat
        An object with ``name``, ``nbits``, ``container``, ``fields``, ``encode``, ``decode``, ``classify``.

    Raises
    ------
    TypeError
        ``name`` is not a string (nor an IEEE or fixed-point format object).
    ValueError
        ``name`` is not a known format.
    """
    return resolve_format(name, fn="get_format", name="name", quantizer=False)


def codec_from_json(data: Any, *, fn: str = "codec_from_json", where: str = "") -> Codec:
    """The codec whose JSON form (``codec.to_json()``) is ``data``: a format name or ``{"quantizer": {...}}``.

    Parameters
    ----------
    data : str or dict
        A name (IEEE name or alias, ``"qM.N"``) or a quantizer's settings.
    fn, where : str
        The function, and the owner of the format (``"rule 'fc.*'"``), named in error messages.

    Returns
    -------
    IEEEFormat, FixedPointFormat or Quantizer

    Raises
    ------
    TypeError
        ``data`` is neither a string nor a dict.
    ValueError
        An unknown name, or a malformed quantizer (see :meth:`Quantizer.from_json`).
    """
    if isinstance(data, dict):
        return Quantizer.from_json(data, fn=fn, where=where)
    return resolve_format(data, fn=fn, name=f"{where} format" if where else "format")
