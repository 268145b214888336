"""Checks of saf_ref.bits, all exact: IEEE codecs, bit flips, FaultLists, and the per-tensor quantizer.

Codes are compared bit for bit with saf_ref's (signed zeros count). The known divergences of encoding
(the other float8_e4m3fn overflow policy, the other narrowing of float64 inputs) are recognised by
re-encoding with the other policy; a failing FaultList is saved so that it can be replayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from saf_ref.bits import QuantContext, Quantizer, flip_by_uniform, get_ieee_format
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.mx import MXFormat
from saf_ref.testing import mx_reference
from saf_ref.testing import strategies as sst
from saf_ref.testing.checks.core import (
    NARROWING,
    OVERFLOW,
    Boundary,
    Check,
    Context,
    Outcome,
    SuiteOptions,
    check_tuple,
    config_text,
    result,
    simple_check,
)
from saf_ref.testing.contracts import ContractFailure, assert_exact

__all__ = [
    "DECODE_FORMATS",
    "ENCODE_FORMATS",
    "MX_BLOCK",
    "MX_CHECK_FORMATS",
    "QUANT_RANGES",
    "MXCase",
    "codec_checks",
    "mx_decode_classes",
    "mx_encode_classes",
    "quant_combinations",
]

ENCODE_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float32")
DECODE_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
#: the six concrete MX formats of OCP MX v1.0; blocks of MX_BLOCK elements along the last axis
MX_CHECK_FORMATS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8")
MX_BLOCK = 32


# =========================================================================================================
# bits: codecs
# =========================================================================================================
def _encode_with(fmt, x: np.ndarray, narrowing: str, overflow: str) -> np.ndarray:
    """saf_ref's codes for ``x`` under a narrowing and an overflow policy."""
    if x.dtype == np.float64 and fmt.nbits < 32 and narrowing == "via-float32":
        with np.errstate(over="ignore", invalid="ignore"):  # (signalling NaNs warn)
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
        explicit=lambda ctx: [Boundary(n, x) for d in dtypes for n, x in sst.encode_classes(format_name, d)],
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
        edges = sst.boundary_codes(format_name)
        rows = [
            Boundary(f"every code ({1 << fmt.nbits})", np.arange(1 << fmt.nbits, dtype=fmt.container)),
            Boundary("edge codes (zeros, subnormal and normal edges, largest finite, inf, NaNs)", edges),
        ]
        return rows + [Boundary(f"edge codes, {name}", a) for name, a in sst.layout_variants(edges)]

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


def _flip_explicit(ctx: Context) -> list[Boundary]:
    """The boundary table of flip_by_uniform: ties at float32(p), p = 0 and 1, a p that float32 rounds
    down, protected bits, every container with all its bits, and codes of rank 0, 3 and non-contiguous."""
    p = 0.25
    codes = np.array([0x0000, 0xFFFF, 0x1234, 0x8001], dtype=np.uint16)
    uniform = np.full((4, 16), 0.75, dtype=np.float32)
    uniform[0, :] = np.float32(p)  # a tie: uniform < p is false, nothing flips
    uniform[0, 0] = 0.0
    uniform[1, 15] = 0.125  # the MSB flips
    uniform[2, 3] = np.nextafter(np.float32(p), np.float32(0))  # just below p: flips
    uniform[3, 0] = np.float32(p)
    uniform[3, 8] = 0.0
    rng = np.random.default_rng(0)

    def words(container, shape, nbits=None):
        nbits = nbits or 8 * np.dtype(container).itemsize
        return rng.integers(0, 1 << nbits, size=shape, dtype=np.uint64).astype(container)

    def draws(shape, nbits):
        return rng.random(shape + (nbits,), dtype=np.float32)

    down = 0.7  # float32(0.7) < 0.7: uniform = float32(p) flips only if p is compared in float64
    at_down = np.full((3, 8), np.float32(down), dtype=np.float32)
    at_down[1, ::2] = np.nextafter(np.float32(down), np.float32(0))
    wide = np.full((2, 64), 0.9, dtype=np.float32)
    wide[0, 63], wide[1, 0], wide[1, 32] = 0.0, 0.0, 0.0
    cube = draws((2, 3, 2), 16)
    rows = [
        ("p = 0.25: uniform at float32(p) (no flip), 0, just below p, at the MSB and the LSB",
         sst.FlipCase(codes, uniform, p, None)),
        ("protected bits (low byte) never flip", sst.FlipCase(codes, uniform, p, 0x00FF)),
        ("p = 0: nothing flips", sst.FlipCase(codes, np.zeros((4, 16), dtype=np.float32), 0.0, None)),
        ("p = 1: every unprotected bit flips",
         sst.FlipCase(words(np.uint16, (5,)), draws((5,), 16), 1.0, 0x8000)),
        ("p that float32 rounds down (0.7): uniform = float32(p) does not flip",
         sst.FlipCase(words(np.uint8, (3,)), at_down, down, None)),
        ("uint8 words, 8 bits", sst.FlipCase(words(np.uint8, (6,)), draws((6,), 8), 0.5, None)),
        ("uint32 words, 32 bits", sst.FlipCase(words(np.uint32, (4,)), draws((4,), 32), 0.3, None)),
        ("uint64 words, 64 bits (bit 63)", sst.FlipCase(words(np.uint64, (2,)), wide, 0.5, None)),
        ("12 bits in uint16 words", sst.FlipCase(words(np.uint16, (4,), 12), draws((4,), 12), 0.5, None)),
        ("rank 0 codes (uniform of shape (nbits,))",
         sst.FlipCase(np.array(0xA5, dtype=np.uint8), draws((), 8), 0.5, None)),
        ("rank 3 codes", sst.FlipCase(words(np.uint16, (2, 3, 2)), cube, 0.5, None)),
        ("non-contiguous codes and uniform",
         sst.FlipCase(words(np.uint16, (4, 3)).T, np.swapaxes(draws((4, 3), 16), 0, 1), 0.5, 0x0F0F)),
    ]  # fmt: skip
    return [Boundary(n, c) for n, c in rows]


@st.composite
def _fault_cases(draw):
    """Codes of rank 0 to 4 (the records index them in C order) and a FaultList for them."""
    container, nbits = draw(
        st.sampled_from([(np.uint16, 16), (np.uint8, 8), (np.uint32, 32), (np.uint16, 12), (np.uint64, 64)])
    )
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=3))
    size = int(np.prod(shape))
    top = (1 << nbits) - 1
    codes = draw(hnp.arrays(container, shape, elements=st.integers(0, top), fill=st.nothing()))
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


def _faults_explicit(ctx: Context) -> list[Boundary]:
    """The boundary table of apply_faults: duplicates, stuck-at after flips, and codes of several ranks,
    layouts and widths, where the flat index order (C order of the array as given) matters."""

    def faults(records, nbits=16):
        return FaultList([("", i, b, k, f"raw{nbits}") for i, b, k in records])

    mixed = [(0, 3, "flip"), (0, 3, "flip"), (1, 15, "flip"), (2, 0, "stuck1"), (2, 1, "stuck0"),
             (3, 5, "flip"), (3, 5, "stuck1"), (3, 5, "flip"), (3, 5, "flip")]  # fmt: skip
    spread = [(1, 0, "flip"), (5, 2, "flip"), (7, 15, "stuck1"), (10, 4, "stuck0"), (11, 9, "flip")]
    transposed = np.arange(0x100, 0x10C, dtype=np.uint16).reshape(3, 4).T  # C order differs from memory
    rows = [
        ("duplicate flips cancel; stuck-at after flips (1-D uint16)",
         (np.array([0x0000, 0x00FF, 0xAAAA, 0x1234], dtype=np.uint16), faults(mixed), 16)),
        ("2-D codes: the index is the flat C-order position",
         (np.arange(12, dtype=np.uint16).reshape(3, 4) * 257, faults(spread), 16)),
        ("4-D codes (uint8)",
         (np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2), faults([(23, 7, "flip"), (6, 0, "stuck1"),
                                                                       (13, 3, "flip")], 8), 8)),
        ("non-contiguous codes (a transposed 2-D array)", (transposed, faults(spread), 16)),
        ("rank 0 codes", (np.array(0x5A, dtype=np.uint8), faults([(0, 0, "flip"), (0, 7, "stuck1")], 8), 8)),
        ("empty FaultList", (np.array([1, 2, 3], dtype=np.uint16), faults([]), 16)),
        ("stuck-at listed before flips of the same bit (flips still come first)",
         (np.array([0x0000, 0xFFFF], dtype=np.uint16),
          faults([(0, 2, "stuck1"), (0, 2, "flip"), (1, 4, "stuck0"), (1, 4, "flip"), (1, 4, "flip"),
                  (1, 4, "flip")]), 16)),
        ("12-bit words in uint16 (bit 11)",
         (np.array([0x0FFF, 0x0800, 0x0001], dtype=np.uint16), faults([(0, 11, "flip"), (1, 11, "stuck0"),
                                                                       (2, 11, "stuck1")], 12), 12)),
        ("uint64 bits 31 and 63", (np.array([1, 2**63], dtype=np.uint64),
                                   faults([(0, 63, "flip"), (1, 63, "stuck0"), (0, 31, "flip")], 64), 64)),
    ]  # fmt: skip
    return [Boundary(n, c) for n, c in rows]


# =========================================================================================================
# bits: quantizer
# =========================================================================================================
def _pow2_configs() -> list[dict[str, Any]]:
    """Fixed ranges whose step is a power of two, so ``(k + 1/2) * step`` are exact ties."""
    base = dict(
        nbits=8, scheme="symmetric", rounding="nearest_even", clip=None, max_abs=127 / 128, margin=0.0
    )
    return [dict(base, code="twos_complement"), dict(base, code="offset_binary")]


#: The option axes of the quantizer, every combination of which is a boundary class (40 of them).
QUANT_RANGES = (
    ("symmetric", "adaptive range", None, None),
    ("symmetric", "adaptive range capped by clip", 0.5, None),
    ("symmetric", "fixed range max_abs", None, 127 / 128),
    ("asymmetric", "min..max range", None, None),
    ("asymmetric", "min..max of x clipped", 0.5, None),
)
QUANT_NBITS = (8, 4, 2, 16, 3, 9, 8, 12, 5, 7)


def _quant_input(config: dict[str, Any]) -> np.ndarray:
    """float32 inputs for one configuration: ties of its step, +-0, the range and clip edges and beyond,
    a value between levels, tiny values."""
    r = config["max_abs"] or config["clip"] or 1.0
    step = r / ((1 << (config["nbits"] - 1)) - 1)
    ties = [(k + 0.5) * step for k in range(-3, 3)]
    values = ties + [0.0, -0.0, r, -r, 2 * r, -2 * r, r / 3, -0.7 * r, 1e-30, -1e-30, 0.999 * r, 0.75]
    return np.array(values, dtype=np.float32)


def quant_combinations() -> list[Boundary]:
    """Every combination of range mode (scheme and clip) x code x rounding x margin, nbits varying."""
    rows = []
    for i, (scheme, mode, clip, max_abs, code, rounding, margin) in enumerate(
        (*r, code, rounding, margin)
        for r in QUANT_RANGES
        for code in ("offset_binary", "twos_complement")
        for rounding in ("nearest_even", "toward_zero")
        for margin in (0.0, 1e-3)
    ):
        nbits = QUANT_NBITS[i % len(QUANT_NBITS)]
        config = dict(nbits=nbits, scheme=scheme, code=code, rounding=rounding, clip=clip, max_abs=max_abs,
                      margin=margin)  # fmt: skip
        name = f"{scheme}, {mode}, {code}, {rounding}, margin {margin:g} ({nbits} bits)"
        rows.append(Boundary(name, (config, _quant_input(config))))
    return rows


def _quant_explicit(ctx: Context) -> list[Boundary]:
    """The boundary table of the quantizer: exact ties of power-of-two steps, every option combination,
    degenerate ranges, tiny inputs, and inputs of rank 0 and 3 (non-contiguous)."""
    ties = np.array([(k + 0.5) / 128 for k in range(-4, 4)], dtype=np.float32)
    x = np.concatenate([ties, np.array([0.0, -0.0, 127 / 128, -127 / 128, 2.0, -2.0, 1e-30], np.float32)])
    asym = dict(nbits=4, scheme="asymmetric", code="offset_binary", rounding="nearest_even", clip=None,
                max_abs=None, margin=0.0)  # fmt: skip
    # asymmetric: min -1, max 1 give t = x exactly; ties of the step 2/15 at k + 1/2 are inexact, so
    # also a spread of values
    y = np.array([-1.0, 1.0, 0.0, 1 / 15, -1 / 15, 0.5, -0.3], dtype=np.float32)
    sym = dict(asym, scheme="symmetric", nbits=8)
    rows = [Boundary(f"power-of-two step, exact ties ({c['code']})", (c, x)) for c in _pow2_configs()]
    rows += [Boundary("asymmetric, t = x exactly", (asym, y))]
    rows += quant_combinations()
    rows += [
        Boundary("constant tensor (max = min)", (asym, np.full(5, 0.3, dtype=np.float32))),
        Boundary("all-zero tensor, margin 0 (step 0)", (sym, np.zeros(4, dtype=np.float32))),
        Boundary("tiny values (a subnormal step)", (sym, np.array([1e-38, -3e-39, 0.0, 1e-45], np.float32))),
    ]
    # a step that rounds down to the smallest subnormal: |x| / step exceeds L, and the stored integer
    # saturates (offset binary at 0 and 2**m - 1, two's complement at -2**(m-1) and 2**(m-1) - 1)
    # q = 10 subnormal units, q / L = 10/7 units rounds to 1 unit: |x| / step = 10 > L + 2 = 9 (4 bits)
    units = np.ldexp(np.array([10.0, -10.0, 0.0, 5.0]), -149)
    edge = units.astype(np.float32)
    for code in ("offset_binary", "twos_complement"):
        for rounding in ("nearest_even", "toward_zero"):
            cfg = dict(sym, nbits=4, code=code, rounding=rounding)
            rows.append(Boundary(f"|x| / step above L (subnormal step), {code}, {rounding}", (cfg, edge)))
    rows += [
        Boundary("rank 0 input", (dict(sym, code="twos_complement"), np.array(0.3, dtype=np.float32))),
        Boundary("rank 3, non-contiguous input", (asym, sst.strided(x[:12].reshape(2, 3, 2)))),
    ]
    return rows


def _dequant_explicit(ctx: Context) -> list[Boundary]:
    """Every code of each configuration of the quantizer's boundary table, under the context of its input."""
    out = []
    for row in _quant_explicit(ctx):
        config, x = row.case
        q = Quantizer(**config)
        top = 1 << config["nbits"]
        if config["code"] == "offset_binary" and config["nbits"] < 8 * q.container.itemsize:
            top = 1 << (8 * q.container.itemsize)  # container bits above nbits (flipped) are clamped
        out.append(
            Boundary(row.name + ", every code", (config, q.encode(x)[1], np.arange(top, dtype=q.container)))
        )
    return out


def _context_equal(got: Mapping[str, Any], expected: QuantContext, what: str) -> None:
    exp = expected.to_dict()
    if not isinstance(got, Mapping) or set(got) != set(exp):
        keys = sorted(got) if isinstance(got, Mapping) else type(got).__name__
        raise ContractFailure(f"{what}: the context must have the keys {sorted(exp)}, got {keys}")
    for k, v in exp.items():
        g = got[k]
        # The sign of a zero minimum or maximum is left open: the range of [-0.0, +0.0, ...] has a zero of
        # either sign in IEEE 754's minNum, and NumPy's own x.min() (saf_ref's) gives +0.0 for 3 such
        # elements and -0.0 for 64 (its SIMD path); the codes do not depend on it.
        any_zero_sign = k in ("min", "max") and v == 0
        same = (g is None and v is None) or (
            g is not None
            and v is not None
            and (g == v)
            and (not isinstance(v, float) or any_zero_sign or math.copysign(1, g) == math.copysign(1, v))
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
    tiny = np.finfo(np.float32).tiny

    def explain(bad: np.ndarray) -> dict[str, np.ndarray]:  # a subnormal value flushed to +-0
        return {"flush-to-zero": bad & (got == 0) & (np.abs(expected) < tiny)}

    return assert_exact(got, expected, what=what, inputs={"code": codes}, explain=explain)


# =========================================================================================================
# bits: MX block formats (OCP Microscaling v1.0): blocks of 32 elements sharing an E8M0 scale
# =========================================================================================================
def _mx_ref_encode(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """saf_ref's ``(scales, elements)`` of ``x``, blocks along its last axis (as the protocol puts them)."""
    scales, elements = MXFormat(name, axis=-1).quantize(x)
    return scales.reshape(x.shape[:-1] + (-1,)), elements.reshape(x.shape).astype(np.uint8)


def _mx_ref_decode(name: str, scales: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """saf_ref's float64 values of blocks along the last axis of ``elements`` under ``scales``."""
    n = elements.shape[-1]
    rows = int(np.prod(elements.shape[:-1], dtype=np.int64))
    fmt = MXFormat(name, axis=-1)
    values = fmt.dequantize(
        np.ascontiguousarray(scales).reshape(rows, n // MX_BLOCK),
        np.ascontiguousarray(elements).reshape(rows, n // MX_BLOCK, MX_BLOCK).astype(fmt.element.container),
        (rows, n),
    )
    return values.reshape(elements.shape)


def _element_table(name: str) -> tuple[np.ndarray, int, int]:
    """The non-negative element values in code order (ascending), ``emax_elem`` and the element bits, from
    the specification's loop implementation (:mod:`saf_ref.testing.mx_reference`)."""
    element = mx_reference.MX_ELEMENT[name]
    bits = mx_reference.element_bits(element)
    half = 128 if element == "int8" else 1 << (bits - 1)
    values = [mx_reference.element_value(element, c)[0] for c in range(half)]
    finite = np.array([float(v) for v in values if not isinstance(v, str)])
    return finite, mx_reference.emax_elem(element), bits


@dataclass(frozen=True)
class MXCase:
    """An MX encoding problem: the values of ``x`` come from a seeded generator (see :meth:`array`).

    ``kind``: ``"spread"`` (normal values over ``spread`` binades below ``2**top``), ``"ties"`` (every
    block pinned to the scale ``2**(top - emax)`` by its largest element, whose binade is ``2**top``, the
    others midpoints of element values and their neighbours), ``"saturate"`` (the largest ``|V| / X``
    between the largest element and ``2**(emax+1)``), ``"specials"`` (NaN, infinities, signed zeros and
    subnormals scattered in).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str
    top: int
    spread: float
    seed: int
    layout: str = "contiguous"

    def array(self) -> np.ndarray:
        table, emax, _ = _element_table(self.name)
        rng = np.random.default_rng(self.seed)
        v = rng.standard_normal(self.shape) * np.exp2(self.top - rng.uniform(0.0, self.spread, self.shape))
        blocks = v.reshape(-1, MX_BLOCK)
        sign = rng.choice([-1.0, 1.0], blocks.shape)
        if self.kind == "ties":
            mid = (table[1:] + table[:-1]) / 2
            pool = np.concatenate([mid, np.nextafter(mid, 0), np.nextafter(mid, np.inf), table])
            blocks[:] = sign * rng.choice(pool, blocks.shape) * np.exp2(self.top - emax)
            blocks[:, 0] = table[-1] * np.exp2(self.top - emax)  # pins the shared exponent to top - emax
        elif self.kind == "saturate":
            hi = 2.0 ** (emax + 1)
            over = rng.uniform(table[-1], hi, (len(blocks), 8))
            blocks[:, :8] = sign[:, :8] * over * np.exp2(self.top - emax)
        elif self.kind == "specials":
            pool = [np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0**-1074, -(2.0**-149), 2.0**-126, 2.0**-1022]
            hit = rng.random(blocks.shape) < 0.1
            blocks[hit] = rng.choice(pool, int(hit.sum()))
        with np.errstate(over="ignore"):
            x = v.astype(self.dtype)
        return sst.strided(x) if self.layout == "strided" else x


MX_SHAPES = ((32,), (2, 32), (64,), (3, 64), (2, 2, 32))


def _mx_cases(name: str):
    """Generated MX encoding problems: float32 or float64, 1 to 6 blocks in ranks 1 to 3, scales across
    the whole E8M0 range (and beyond it, clamped or NaN), every kind of :class:`MXCase`."""
    return st.builds(
        MXCase,
        st.just(name),
        st.sampled_from(["float32", "float64"]),
        st.sampled_from(MX_SHAPES),
        st.sampled_from(["spread", "ties", "saturate", "specials"]),
        st.one_of(st.integers(-8, 8), st.integers(-160, 140)),
        st.sampled_from([0.0, 4.0, 30.0]),
        sst.seeds(),
    )


def mx_encode_classes(name: str) -> list[Boundary]:
    """The boundary table of ``mx_encode[name]``: ties to even of every element value at scale 1 and at
    the extreme scales, saturation, the clamped smallest scale, NaN scales (a NaN or an infinity in a
    block; a shared exponent above 127), zero and negative-zero blocks, tiny elements beside a large one,
    subnormal inputs of both dtypes, float32's largest values, ranks 1 to 3 and a strided layout."""
    table, emax, _ = _element_table(name)
    def c(dtype, shape, kind, top, spread, seed, layout="contiguous"):
        return MXCase(name, dtype, shape, kind, top, spread, seed, layout)

    rows: list[tuple[str, Any]] = [
        ("ties of every element value, scale 2**0 (float32)", c("float32", (4, 32), "ties", emax, 0, 1)),
        ("ties at the largest scale 2**127 (float64)", c("float64", (2, 32), "ties", 127 + emax, 0, 2)),
        ("ties at the smallest scale 2**-127 (float64)", c("float64", (2, 32), "ties", emax - 127, 0, 3)),
        ("float32 subnormal blocks (shared exponent below -127: clamped)",
         c("float32", (2, 32), "ties", emax - 140, 0, 4)),
        ("saturation: max |V| / X above the largest element", c("float32", (3, 32), "saturate", 0, 0, 5)),
        ("saturation (float64, large scale)", c("float64", (2, 32), "saturate", 100, 0, 6)),
        ("shared exponent below -127: clamped (float64)", c("float64", (2, 32), "spread", -200, 5, 7)),
        ("shared exponent above 127: NaN scale (float64)", c("float64", (2, 32), "spread", 140 + emax, 3, 8)),
        ("shared exponent 128, one above the largest scale: NaN scale (float64)",
         c("float64", (2, 32), "ties", 128 + emax, 0, 15)),
        ("NaN, infinities, signed zeros and subnormals in blocks (float32)",
         c("float32", (4, 32), "specials", 0, 8, 9)),
        ("NaN, infinities, signed zeros and subnormals in blocks (float64)",
         c("float64", (4, 32), "specials", 0, 8, 10)),
        ("tiny elements beside a large one: +-0 and subnormal elements",
         c("float32", (2, 64), "spread", 3, 30, 11)),
        ("rank 1, one block", c("float32", (32,), "spread", 0, 4, 12)),
        ("rank 3, two blocks per row", c("float64", (2, 3, 64), "spread", -3, 6, 13)),
        ("a row of 32 blocks (1024 elements)", c("float32", (1, 1024), "spread", 0, 8, 16)),
        ("non-contiguous input", c("float32", (3, 64), "spread", 1, 6, 14, layout="strided")),
    ]
    out = [Boundary(n, c) for n, c in rows]
    zeros = np.zeros((3, 32), dtype=np.float32)
    zeros[1] = -0.0
    zeros[2, ::2] = -0.0
    f32_max = np.full((2, 32), np.finfo(np.float32).max, dtype=np.float32)
    f32_max[1, 1::2] *= -1
    f32_max[1, 2::4] = np.finfo(np.float32).smallest_subnormal
    nan_kinds = np.resize(np.concatenate([sst.nan_kinds(np.float64), [1.0, -2.0]]), (2, 32))
    sub64 = np.ldexp(np.arange(1, 65, dtype=np.float64).reshape(2, 32), -1074) * np.where(
        np.arange(64).reshape(2, 32) % 3, 1.0, -1.0
    )
    out += [
        Boundary("all-zero blocks: +0, -0 and mixed (scale code 0, signs kept)", zeros),
        Boundary("float32's largest finite values (and its smallest subnormal beside them)", f32_max),
        Boundary("every NaN kind (quiet, signalling, payloads, signs) in a block (float64)", nan_kinds),
        Boundary("float64 subnormal inputs only", sub64),
    ]
    return out


def _mx_case_array(case) -> np.ndarray:
    return case.array() if isinstance(case, MXCase) else case


def _make_mx_encode(name: str) -> Check:
    def run(ctx: Context, case) -> Outcome:
        x = _mx_case_array(case)
        seed = f", seed={case.seed}" if isinstance(case, MXCase) else ""
        what = f"mx_encode[{name}](x {x.dtype} {x.shape}{seed})"
        scales, elements = _mx_ref_encode(name, x)
        got = ctx.call("mx_encode", name, x)
        check_tuple(got, 2, f"{what}: backend.mx_encode must return (scales, elements)")
        got_scales = result(got[0], np.uint8, scales.shape, what + " scales")
        got_elements = result(got[1], np.uint8, elements.shape, what + " elements")
        assert_exact(got_scales, scales, what=what + " scales", inputs={})
        return assert_exact(got_elements, elements, what=what + " elements", inputs={"x": x})

    return Check(
        f"mx_encode[{name}]",
        "exact",
        ("mx_encode",),
        lambda ctx: _mx_cases(name),
        run,
        explicit=lambda ctx: mx_encode_classes(name),
        doc=f"{name} blocks of 32: E8M0 scale and element codes (ties to even, saturation, NaN blocks)",
    )


@st.composite
def _mx_code_cases(draw, name: str):
    """Random scales (every code, NaN included) and element codes for 1 to 6 blocks."""
    bits = _element_table(name)[2]
    shape = draw(st.sampled_from(MX_SHAPES))
    rng = np.random.default_rng(draw(sst.seeds()))
    scales = rng.integers(0, 256, shape[:-1] + (shape[-1] // MX_BLOCK,)).astype(np.uint8)
    return scales, rng.integers(0, 1 << bits, shape).astype(np.uint8)


def mx_decode_classes(name: str) -> list[Boundary]:
    """The boundary table of ``mx_decode[name]``: every element code under the scales 2**0, 2**-127 and
    2**127, a NaN scale, every scale code, ranks 1 and 3 and non-contiguous codes."""
    bits = _element_table(name)[2]
    every = np.resize(np.arange(1 << bits, dtype=np.uint8), 256 if bits == 8 else 64)  # whole blocks
    blocks = len(every) // MX_BLOCK

    def under(code: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full((1, blocks), code, dtype=np.uint8), every.reshape(1, -1)

    all_scales = np.arange(256, dtype=np.uint8).reshape(8, 32)
    edge = np.array([0, 1, (1 << bits) - 1, 1 << (bits - 1), (1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1])
    edge_blocks = np.resize(edge, (256, MX_BLOCK)).astype(np.uint8).reshape(8, 32 * MX_BLOCK)
    rng = np.random.default_rng(0)
    rank3 = (
        rng.integers(0, 256, (2, 3, 2)).astype(np.uint8),
        rng.integers(0, 1 << bits, (2, 3, 64)).astype(np.uint8),
    )
    return [
        Boundary("every element code under the scale 2**0 (code 127)", under(127)),
        Boundary("every element code under the smallest scale 2**-127 (code 0)", under(0)),
        Boundary("every element code under the largest scale 2**127 (code 254)", under(254)),
        Boundary("every element code under a NaN scale (0xFF): the whole block NaN", under(0xFF)),
        Boundary("every scale code with zeros, the smallest and largest codes of both signs",
                 (all_scales, edge_blocks)),
        Boundary("rank 1, one block", (np.array([130], np.uint8), every[:MX_BLOCK].copy())),
        Boundary("rank 3 codes", rank3),
        Boundary("non-contiguous scales and codes", (sst.strided(rank3[0]), sst.strided(rank3[1]))),
    ]


def _make_mx_decode(name: str) -> Check:
    def run(ctx: Context, case) -> Outcome:
        scales, elements = case
        what = f"mx_decode[{name}](scales {scales.shape}, elements {elements.shape})"
        expected = _mx_ref_decode(name, scales, elements)
        got = result(ctx.call("mx_decode", name, scales, elements), np.float64, elements.shape, what)
        per_element = np.repeat(scales, MX_BLOCK, axis=-1)
        inputs = {"element": elements, "scale": per_element}
        return assert_exact(got, expected, what=what, inputs=inputs, nan_payloads=ctx.options.nan_payloads)

    return Check(
        f"mx_decode[{name}]",
        "exact",
        ("mx_decode",),
        lambda ctx: _mx_code_cases(name),
        run,
        explicit=lambda ctx: mx_decode_classes(name),
        doc=f"float64 values of {name} blocks: 2**(scale - 127) * element (NaN scale: NaN block)",
    )


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
    checks += [_make_mx_encode(f) for f in MX_CHECK_FORMATS]
    checks += [_make_mx_decode(f) for f in MX_CHECK_FORMATS]
    return checks
