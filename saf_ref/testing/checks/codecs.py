"""Checks of saf_ref.bits, all exact: IEEE codecs, bit flips, FaultLists, and the per-tensor quantizer.

Codes are compared bit for bit with saf_ref's (signed zeros count). The known divergences of encoding
(the other float8_e4m3fn overflow policy, the other narrowing of float64 inputs) are recognised by
re-encoding with the other policy; a failing FaultList is saved so that it can be replayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from saf_ref.bits import QuantContext, Quantizer, flip_by_uniform, get_ieee_format
from saf_ref.bits.faultlist import FaultList
from saf_ref.testing import strategies as sst
from saf_ref.testing.checks.core import (
    NARROWING,
    OVERFLOW,
    Check,
    Context,
    Outcome,
    SuiteOptions,
    config_text,
    result,
    simple_check,
)
from saf_ref.testing.contracts import ContractFailure, assert_exact

__all__ = ["DECODE_FORMATS", "ENCODE_FORMATS", "codec_checks"]

ENCODE_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float32")
DECODE_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")


# =========================================================================================================
# bits: codecs
# =========================================================================================================
def _encode_with(fmt, x: np.ndarray, narrowing: str, overflow: str) -> np.ndarray:
    """saf_ref's codes for ``x`` under a narrowing and an overflow policy."""
    if x.dtype == np.float64 and fmt.nbits < 32 and narrowing == "via-float32":
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)  # the double rounding of PyTorch and ml_dtypes
    return fmt.encode(x, overflow=overflow)


def _other(choices: tuple[str, str], value: str) -> str:
    return choices[1 - choices.index(value)]


def _encode_explain(fmt, x: np.ndarray, got: np.ndarray, options: SuiteOptions):
    """Known divergences of encoding: the other e4m3fn overflow policy, the other narrowing, or both; float64
    inputs below float32's normal range flushed to +-0."""
    policy, narrowing = options.overflow_for(fmt.name), options.narrowing
    candidates: list[tuple[str, np.ndarray]] = []
    if fmt.name == "float8_e4m3fn":
        candidates.append(("e4m3fn-overflow", _encode_with(fmt, x, narrowing, _other(OVERFLOW, policy))))
    if x.dtype == np.float64 and fmt.nbits < 32:
        other = _other(NARROWING, narrowing)
        candidates.append(("narrowing-via-float32", _encode_with(fmt, x, other, policy)))
        if fmt.name == "float8_e4m3fn":
            both = _encode_with(fmt, x, other, _other(OVERFLOW, policy))
            candidates.append(("narrowing-via-float32+e4m3fn-overflow", both))

    if x.dtype == np.float64 and fmt.nbits <= 32:  # a float64 -> float32 conversion that flushes subnormals
        tiny = np.finfo(np.float32).tiny
        flushed = np.where(np.abs(x) < tiny, np.copysign(0.0, x), x)
        candidates.append(("flush-to-zero", _encode_with(fmt, flushed, narrowing, policy)))

    def explain(bad: np.ndarray) -> dict[str, np.ndarray]:
        return {name: bad & ((got == alt) | (fmt.is_nan(got) & fmt.is_nan(alt))) for name, alt in candidates}

    return explain


def _encode_input_dtypes(format_name: str) -> list[np.dtype]:
    return (
        [np.dtype(np.float64)] if format_name == "float32" else [np.dtype(np.float32), np.dtype(np.float64)]
    )


def _make_encode(format_name: str) -> Check:
    fmt = get_ieee_format(format_name)
    dtypes = _encode_input_dtypes(format_name)

    def strategy(ctx: Context):
        return st.sampled_from(dtypes).flatmap(lambda d: sst.encode_inputs(format_name, d))

    def run(ctx: Context, x: np.ndarray) -> Outcome:
        what = f"encode[{format_name}](x {x.dtype})"
        expected = _encode_with(fmt, x, ctx.options.narrowing, ctx.options.overflow_for(format_name))
        got = result(ctx.call("encode", format_name, x), fmt.container, x.shape, what)
        return assert_exact(
            got,
            expected,
            what=what,
            is_nan=fmt.is_nan,
            decode=fmt.decode,
            inputs={"x": x},
            explain=_encode_explain(fmt, x, got, ctx.options),
            nan_payloads=ctx.options.nan_payloads,
        )

    return Check(
        f"encode[{format_name}]",
        "exact",
        ("encode",),
        strategy,
        run,
        explicit=lambda ctx: [sst.boundary_values(format_name, d) for d in dtypes],
        doc=f"round float32/float64 values to {format_name} codes (ties to even, overflow, subnormals, -0)",
    )


def _make_decode(format_name: str) -> Check:
    fmt = get_ieee_format(format_name)

    def run(ctx: Context, codes: np.ndarray) -> Outcome:
        what = f"decode[{format_name}]"
        expected = fmt.decode(codes)
        got = result(ctx.call("decode", format_name, codes), expected.dtype, codes.shape, what)
        return assert_exact(
            got, expected, what=what, inputs={"code": codes}, nan_payloads=ctx.options.nan_payloads
        )

    def explicit(ctx: Context):
        return [np.arange(1 << fmt.nbits, dtype=fmt.container)]  # every code: 256 or 65536 of them

    return Check(
        f"decode[{format_name}]",
        "exact",
        ("decode",),
        lambda ctx: sst.codes(format_name),
        run,
        explicit=explicit,
        doc=f"values of {format_name} codes (all codes first, then random patterns)",
    )


# =========================================================================================================
# bits: faults
# =========================================================================================================
def _flip_run(ctx: Context, case: sst.FlipCase) -> Outcome:
    what = f"flip_by_uniform(p={case.p!r}, nbits={case.uniform.shape[-1]}, protected={case.protected})"
    expected = flip_by_uniform(case.codes, case.uniform, case.p, protected=case.protected)
    got = ctx.call("flip_by_uniform", case.codes, case.uniform, case.p, protected=case.protected)
    got = result(got, case.codes.dtype, case.codes.shape, what)
    return assert_exact(got, expected, what=what, inputs={"code": case.codes})


def _flip_explicit(ctx: Context) -> list[sst.FlipCase]:
    """Uniform values exactly at float32(p) (must not flip), at 0 (must flip), and one bit below p per
    word at the MSB, the LSB and in between (so that the bit order is visible)."""
    p = 0.25
    codes = np.array([0x0000, 0xFFFF, 0x1234, 0x8001], dtype=np.uint16)
    uniform = np.full((4, 16), 0.75, dtype=np.float32)
    uniform[0, :] = np.float32(p)  # a tie: uniform < p is false, nothing flips
    uniform[0, 0] = 0.0
    uniform[1, 15] = 0.125  # the MSB flips
    uniform[2, 3] = np.nextafter(np.float32(p), np.float32(0))  # just below p: flips
    uniform[3, 0] = np.float32(p)
    uniform[3, 8] = 0.0
    zero_rate = sst.FlipCase(codes, np.zeros((4, 16), dtype=np.float32), 0.0, None)  # p = 0: nothing flips
    return [sst.FlipCase(codes, uniform, p, None), sst.FlipCase(codes, uniform, p, 0x00FF), zero_rate]


@st.composite
def _fault_cases(draw):
    container, nbits = draw(
        st.sampled_from([(np.uint16, 16), (np.uint8, 8), (np.uint32, 32), (np.uint16, 12)])
    )
    size = draw(st.integers(1, 8))
    codes = draw(hnp.arrays(container, size, elements=st.integers(0, (1 << nbits) - 1), fill=st.nothing()))
    return codes, draw(sst.fault_lists(size, nbits)), nbits


def _faults_run(ctx: Context, case) -> Outcome:
    codes, faults, nbits = case
    what = f"apply_faults({len(faults)} records, nbits={nbits})"
    expected = faults.apply(codes, nbits=nbits)
    try:
        got = result(ctx.call("apply_faults", codes, faults, nbits=nbits), codes.dtype, codes.shape, what)
        return assert_exact(got, expected, what=what, inputs={"code": codes})
    except ContractFailure as err:
        path = ctx.save_faultlist(faults, codes)
        raise ContractFailure(f"{err}; the FaultList is saved in {path} (codes beside it, .npy)") from None


def _faults_explicit(ctx: Context):
    records = [
        (0, 3, "flip"),
        (0, 3, "flip"),
        (1, 15, "flip"),
        (2, 0, "stuck1"),
        (2, 1, "stuck0"),
        (3, 5, "flip"),
        (3, 5, "stuck1"),
        (3, 5, "flip"),
        (3, 5, "flip"),
    ]
    faults = FaultList([("", i, b, k, "raw16") for i, b, k in records])
    return [(np.array([0x0000, 0x00FF, 0xAAAA, 0x1234], dtype=np.uint16), faults, 16)]


# =========================================================================================================
# bits: quantizer
# =========================================================================================================
def _pow2_configs() -> list[dict[str, Any]]:
    """Fixed ranges whose step is a power of two, so ``(k + 1/2) * step`` are exact ties."""
    base = dict(
        nbits=8, scheme="symmetric", rounding="nearest_even", clip=None, max_abs=127 / 128, margin=0.0
    )
    return [dict(base, code="twos_complement"), dict(base, code="offset_binary")]


def _quant_explicit(ctx: Context):
    ties = np.array([(k + 0.5) / 128 for k in range(-4, 4)], dtype=np.float32)
    x = np.concatenate([ties, np.array([0.0, -0.0, 127 / 128, -127 / 128, 2.0, -2.0, 1e-30], np.float32)])
    asym = dict(
        nbits=4,
        scheme="asymmetric",
        code="offset_binary",
        rounding="nearest_even",
        clip=None,
        max_abs=None,
        margin=0.0,
    )
    # asymmetric: min -1, max 1 give t = x exactly; ties of the step 2/15 at k + 1/2 are inexact, so
    # also a spread of values
    y = np.array([-1.0, 1.0, 0.0, 1 / 15, -1 / 15, 0.5, -0.3], dtype=np.float32)
    return [(c, x) for c in _pow2_configs()] + [(asym, y)]


def _context_equal(got: Mapping[str, Any], expected: QuantContext, what: str) -> None:
    exp = expected.to_dict()
    if not isinstance(got, Mapping) or set(got) != set(exp):
        keys = sorted(got) if isinstance(got, Mapping) else type(got).__name__
        raise ContractFailure(f"{what}: the context must have the keys {sorted(exp)}, got {keys}")
    for k, v in exp.items():
        g = got[k]
        same = (g is None and v is None) or (
            g is not None
            and v is not None
            and (g == v)
            and (not isinstance(v, float) or math.copysign(1, g) == math.copysign(1, v))
        )
        if not same:
            raise ContractFailure(f"{what}: context[{k!r}] is {g!r}, expected {v!r} (contract: exact)")


def _quantize_run(ctx: Context, case) -> Outcome:
    config, x = case
    what = f"quantize({config_text(config)})"
    q = Quantizer(**config)
    expected, context = q.encode(x)
    got = ctx.call("quantize", x, dict(config))
    if not (isinstance(got, tuple) and len(got) == 2):
        raise ContractFailure(f"{what}: expected a (codes, context) pair, got {type(got).__name__}")
    codes = result(got[0], q.container, x.shape, what + " codes")
    out = assert_exact(codes, expected, what=what + " codes", inputs={"x": x})
    _context_equal(got[1], context, what)
    return out


@st.composite
def _dequant_cases(draw):
    config, x = draw(sst.quantizer_cases())
    q = Quantizer(**config)
    _, context = q.encode(x)
    top = (1 << config["nbits"]) - 1
    if config["code"] == "offset_binary":
        top = int(np.iinfo(q.container).max)  # codes above 2**nbits - 1 are clamped: check that too
    codes = draw(hnp.arrays(q.container, st.integers(1, 32), elements=st.integers(0, top), fill=st.nothing()))
    return config, context, codes


def _dequantize_run(ctx: Context, case) -> Outcome:
    config, context, codes = case
    what = f"dequantize({config_text(config)})"
    expected = Quantizer(**config).decode(codes, context)
    got = result(
        ctx.call("dequantize", codes, context.to_dict(), dict(config)), np.float32, codes.shape, what
    )
    return assert_exact(got, expected, what=what, inputs={"code": codes})


def _dequant_explicit(ctx: Context):
    out = []
    for config, x in _quant_explicit(ctx):
        q = Quantizer(**config)
        out.append((config, q.encode(x)[1], np.arange(1 << config["nbits"], dtype=q.container)))
    return out


def codec_checks() -> list[Check]:
    """The checks of saf_ref.bits, in report order: encode, decode, flips, FaultLists, quantizer."""
    checks: list[Check] = [_make_encode(f) for f in ENCODE_FORMATS]
    checks += [_make_decode(f) for f in DECODE_FORMATS]
    checks += [
        simple_check(
            "flip_by_uniform",
            "exact",
            "flip_by_uniform",
            lambda ctx: sst.flip_cases(),
            _flip_run,
            _flip_explicit,
            "flip bit j iff uniform[..., j] < float32(p), bit 0 = LSB",
        ),
        simple_check(
            "apply_faults",
            "exact",
            "apply_faults",
            lambda ctx: _fault_cases(),
            _faults_run,
            _faults_explicit,
            "apply a FaultList: flips (duplicates cancel), then stuck-at bits",
        ),
        simple_check(
            "quantize",
            "exact",
            "quantize",
            lambda ctx: sst.quantizer_cases(),
            _quantize_run,
            _quant_explicit,
            "per-tensor quantizer codes and context (ties to even, clipping)",
        ),
        simple_check(
            "dequantize",
            "exact",
            "dequantize",
            lambda ctx: _dequant_cases(),
            _dequantize_run,
            _dequant_explicit,
            "values of quantized codes (every code first)",
        ),
    ]
    return checks
