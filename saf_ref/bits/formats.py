"""Number formats by name: the one place where ``"float16"``, ``"bf16"`` or ``"q2.5"`` becomes a format.

Every part of saf_ref that accepts "a format" (the ``saf-ref bits`` command, the teaching helpers, the
storage specs of :mod:`saf_ref.protect`) resolves it here, so the same names work everywhere and a bad
name gives the same message everywhere:

- an IEEE binary format name or alias (:func:`~saf_ref.bits.ieee.get_ieee_format`): ``"float32"``,
  ``"fp16"``, ``"bfloat16"``, ``"e4m3"``, ...;
- a two's complement fixed-point name ``"qM.N"`` (:func:`~saf_ref.bits.fixed.parse_fixed_format`);
- an OCP Microscaling element or scale format under its ml_dtypes name: ``"float4_e2m1fn"``,
  ``"float6_e2m3fn"``, ``"float6_e3m2fn"`` (:data:`~saf_ref.bits.ieee.MX_ELEMENT_FORMATS`, IEEE-style
  without infinity or NaN) and ``"float8_e8m0fnu"`` (:class:`~saf_ref.bits.mx.E8M0Format`);
- an MX block format (a codec, not a per-word number format; :mod:`saf_ref.bits.mx`): ``"mxfp8_e4m3"``,
  ``"mxfp8_e5m2"``, ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``, ``"mxfp4"``, ``"mxint8"`` (optionally
  ``_k<block size>`` and ``_axis<axis>``), accepted by :func:`resolve_format` (storage specs), not by
  :func:`get_format`;
- a format object, returned unchanged: an :class:`~saf_ref.bits.ieee.IEEEFormat`, a
  :class:`~saf_ref.bits.fixed.FixedPointFormat` or, where the caller allows it, a per-tensor
  :class:`~saf_ref.bits.quantize.Quantizer` (it has no name to look up: its settings are its identity).
"""

from __future__ import annotations

from typing import Any

from saf_ref import validation
from saf_ref.bits.fields import Codec, NumberFormat
from saf_ref.bits.fixed import FixedPointFormat, parse_fixed_format
from saf_ref.bits.ieee import IEEE_FORMATS, MX_ELEMENT_FORMATS, IEEEFormat, get_ieee_format
from saf_ref.bits.mx import E8M0, MX_FORMATS, E8M0Format, MXFormat, get_mx_format, is_mx_format_name
from saf_ref.bits.quantize import Quantizer

__all__ = [
    "codec_from_json", "format_names", "get_format", "mx_format_names", "resolve_format", "stored_shape",
]


def format_names() -> tuple[str, ...]:
    """Canonical names of the IEEE formats, plus the fixed-point example ``"q2.5"`` (any ``qM.N`` works)."""
    return (*IEEE_FORMATS, "q2.5")


def mx_format_names() -> tuple[str, ...]:
    """The OCP Microscaling names: element formats, the E8M0 scale, then the six MX block formats."""
    return (*MX_ELEMENT_FORMATS, E8M0.name, *MX_FORMATS)


def _mx_word_format(key: str) -> IEEEFormat | E8M0Format | None:
    """The MX element or scale format called ``key`` (lower case), or None."""
    if key in MX_ELEMENT_FORMATS:
        return MX_ELEMENT_FORMATS[key]
    return E8M0 if key == E8M0.name else None


def stored_shape(codec: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the codes ``codec`` stores for a tensor of ``shape``: ``shape`` itself, except for a
    codec with its own memory layout (an MX format: one flat byte array, ``codec.stored_shape``)."""
    layout = getattr(codec, "stored_shape", None)
    return tuple(shape) if layout is None else layout(tuple(shape))


def resolve_format(
    fmt: Any, *, fn: str = "resolve_format", name: str = "fmt", quantizer: bool = True, block: bool = True
) -> IEEEFormat | E8M0Format | MXFormat | FixedPointFormat | Quantizer:
    """The format object ``fmt`` names (or ``fmt`` itself when it already is one).

    Parameters
    ----------
    fmt : str, IEEEFormat, FixedPointFormat or Quantizer
        An IEEE name or alias (case-insensitive), ``"qM.N"`` (``q`` or ``Q``), or a format object.
    fn, name : str
        The function and argument named in error messages (``"StorageRule"``, ``"rule 'fc.*' format"``).
    quantizer : bool
        Whether a :class:`~saf_ref.bits.quantize.Quantizer` is accepted.
    block : bool
        Whether an MX block format (:class:`~saf_ref.bits.mx.MXFormat`, a codec whose words are bytes of
        scales and packed elements) is accepted; callers that work word by word pass False.

    Returns
    -------
    IEEEFormat, E8M0Format, MXFormat, FixedPointFormat or Quantizer

    Raises
    ------
    TypeError
        ``fmt`` is neither a string nor an accepted format object.
    ValueError
        ``fmt`` is a string that names no format (for a ``qM.N``-looking string, the message says what is
        wrong with it: its form, or a width outside 2..32 bits), or an MX block format where ``block`` is
        False.
    """
    out = _resolve(fmt, fn, name, quantizer)
    if isinstance(out, MXFormat) and not block:
        raise ValueError(
            f"{fn}: {name} must be a per-word number format, got the MX block format {out.name!r} (a codec: "
            f"use it in a StorageRule, or saf_ref.bits.mx.get_mx_format)"
        )
    return out


def _resolve(fmt: Any, fn: str, name: str, quantizer: bool):
    """The lookup of :func:`resolve_format` (MX block formats included)."""
    base = (IEEEFormat, E8M0Format, MXFormat, FixedPointFormat)
    objects = (*base, Quantizer) if quantizer else base
    if isinstance(fmt, objects):
        return fmt
    if not isinstance(fmt, str):
        kinds = "an IEEEFormat, an MXFormat, a FixedPointFormat or a Quantizer" if quantizer else (
            "an IEEEFormat, an MXFormat or a FixedPointFormat"
        )
        raise TypeError(
            f"{fn}: {name} must be a format name (e.g. 'float16', 'q2.5') or {kinds}, "
            f"got {validation.describe(fmt)}"
        )
    # A string that looks like qM.N is fixed point: its own parser says precisely what is wrong with it.
    if fmt[:1] in ("q", "Q") and "." in fmt:
        return parse_fixed_format(fmt, fn=fn, name=name)
    key = fmt.strip().lower()
    word = _mx_word_format(key)
    if word is not None:
        return word
    if is_mx_format_name(key):
        return get_mx_format(key, fn=fn, arg=name)
    try:
        return get_ieee_format(fmt)
    except ValueError:
        raise ValueError(
            f"{fn}: {name} must be an IEEE format name ({', '.join(IEEE_FORMATS)}, or an alias such as "
            f"'fp16', 'bf16', 'e4m3'), an MX name ({', '.join(mx_format_names())}) or a fixed-point name "
            f"'qM.N' such as 'q2.5', got {fmt!r}"
        ) from None


def get_format(name: str) -> NumberFormat:
    """The number format called ``name``: an IEEE binary format, an MX element or scale format, or two's
    complement fixed point ``qM.N``.

    Parameters
    ----------
    name : str
        ``"float64"``, ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float8_e4m3fn"``, ``"float8_e5m2"``
        (and the aliases :func:`~saf_ref.bits.ieee.get_ieee_format` accepts), the OCP Microscaling element
        formats ``"float4_e2m1fn"``, ``"float6_e2m3fn"``, ``"float6_e3m2fn"`` and scale format
        ``"float8_e8m0fnu"`` (ml_dtypes names), or ``"qM.N"`` such as ``"q2.5"`` (1 sign bit, M integer
        bits, N fraction bits). A format object is returned unchanged. MX block formats (``"mxfp4"``) are
        codecs, not per-word formats: see :func:`resolve_format` and :mod:`saf_ref.bits.mx`.

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
    return resolve_format(name, fn="get_format", name="name", quantizer=False, block=False)


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
