"""saf_ref.bits: bit-exact number formats and fault models. Knows nothing of networks.

Formats
    :func:`get_format` returns a format object for any stored-number format by name: the IEEE binary
    formats (``float64``, ``float32``, ``float16``, ``bfloat16``, ``float8_e4m3fn``, ``float8_e5m2``) and
    two's complement fixed point ``qM.N`` (``"q2.5"``). Per-tensor quantizers (:class:`Quantizer`) carry
    a context (range, step) beside their codes. :func:`resolve_format` is the same lookup for callers
    that also accept a quantizer (storage specs, the teaching helpers).
    Every format is a :class:`Codec`: ``encode_tensor(x) -> (codes, context)``,
    ``decode_tensor(codes, context)``, ``name``, ``nbits``, and a JSON form (``to_json()``,
    :func:`codec_from_json`).
Faults
    Array functions (``inject_bit_errors``, ``inject_exact_k``, ``inject_bursts``, ``flip_by_uniform``,
    ``flip_bit``, stuck-at maps) return new codes; the fault models (:class:`BitErrors`,
    :class:`ExactCount`, :class:`Bursts`, :class:`StuckAt`, :class:`Replay`) make the same draws and return
    ``(codes, FaultList)``; :class:`FaultList` is a portable record of faults.
Chips
    :class:`ChipModel` draws a :class:`Chip` (persistent low-voltage SRAM faults: per-cell failure
    voltages, stuck-at or flip-on-read cells; monotone error maps, measured and analytic bit-error rates,
    save/load, :func:`load_profile` for measured data); :class:`Placement` lays a stored model's words out
    in its memory and :class:`ChipFaults` is the fault model of one chip at one voltage;
    :func:`energy_saving` is the ``1 - (V / V_nominal)^2`` dynamic energy saved.

Bit 0 is the least significant bit of the stored word, always.
"""

from saf_ref.bits.chip import Chip, ChipModel, ErrorMap, load_profile
from saf_ref.bits.energy import energy_saving, relative_energy
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import BitErrors, Bursts, ExactCount, FaultModel, Replay, StuckAt
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
from saf_ref.bits.fields import BitField, Codec, NumberFormat, smallest_container
from saf_ref.bits.fixed import FixedPointFormat, is_fixed_format_name, parse_fixed_format
from saf_ref.bits.formats import codec_from_json, format_names, get_format, resolve_format
from saf_ref.bits.ieee import IEEE_FORMATS, MX_ELEMENT_FORMATS, IEEEFormat, get_ieee_format
from saf_ref.bits.mx import E8M0, MX_FORMATS, E8M0Format, MXContext, MXFormat, get_mx_format
from saf_ref.bits.placement import ChipFaults, Placement, layout
from saf_ref.bits.quantize import QuantContext, Quantizer
from saf_ref.bits.teaching import expected_corrupted, flip_table, flip_value, prob_nonfinite

__all__ = [
    "BitErrors",
    "BitField",
    "Bursts",
    "Chip",
    "E8M0",
    "E8M0Format",
    "ChipFaults",
    "ChipModel",
    "Codec",
    "ErrorMap",
    "ExactCount",
    "FaultList",
    "FaultModel",
    "FixedPointFormat",
    "IEEEFormat",
    "IEEE_FORMATS",
    "MXContext",
    "MXFormat",
    "MX_ELEMENT_FORMATS",
    "MX_FORMATS",
    "NumberFormat",
    "Placement",
    "QuantContext",
    "Quantizer",
    "Replay",
    "StuckAt",
    "StuckAtMap",
    "codec_from_json",
    "energy_saving",
    "flip_bit",
    "flip_by_uniform",
    "format_names",
    "get_format",
    "get_ieee_format",
    "get_mx_format",
    "expected_corrupted",
    "flip_table",
    "flip_value",
    "inject_bit_errors",
    "is_fixed_format_name",
    "layout",
    "load_profile",
    "parse_fixed_format",
    "prob_nonfinite",
    "relative_energy",
    "resolve_format",
    "inject_bursts",
    "inject_exact_k",
    "sample_nested_flips",
    "sample_stuck_at_map",
    "smallest_container",
]
