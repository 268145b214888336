"""Hypothesis strategies for the oracle kit: values, bit patterns, fault lists and op configurations.

Every strategy mixes **boundary values** in explicitly (``st.one_of(st.sampled_from(boundaries),
general)``), so that subnormal edges, rounding ties, the largest finite value, overflow thresholds,
signed zeros, infinities and NaN are drawn often rather than by luck; the boundary lists themselves are
public (:func:`boundary_values`, :func:`boundary_codes`) and the suite also feeds them as one explicit
first example. Formats without a Python float type (bfloat16, float8) are drawn as **integer bit
patterns** (:func:`codes`) and decoded with saf_ref.

Cases of the network ops carry a ``seed``: the arrays are drawn from ``numpy.random.default_rng(seed)``
(fast for hundreds of elements, and the seed in a failure message reproduces them), while hypothesis
explores the shapes, configurations and value distributions. Use them in your own property tests::

    from hypothesis import given
    from saf_ref.testing import strategies as sst

    @given(sst.conv_cases())
    def test_my_conv(case):
        x, w, b, dy = case.arrays(np.float32)
        ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.ieee import IEEEFormat, get_ieee_format

__all__ = [
    "BNCase",
    "CECase",
    "ConvCase",
    "FlipCase",
    "LinearCase",
    "ModelCase",
    "PoolCase",
    "SGDCase",
    "ber_values",
    "representable",
    "bn_cases",
    "boundary_codes",
    "boundary_values",
    "ce_cases",
    "codes",
    "conv_cases",
    "encode_classes",
    "encode_inputs",
    "format_edge_classes",
    "layout_variants",
    "nan_kinds",
    "strided",
    "fault_lists",
    "flip_cases",
    "float_arrays",
    "linear_cases",
    "maxpool_cases",
    "avgpool_cases",
    "model_cases",
    "quantizer_cases",
    "quantizer_configs",
    "seeds",
    "sgd_cases",
]

SEED_MAX = 2**32 - 1


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``numpy.random.default_rng``: small ones first (they shrink to 0)."""
    return st.integers(0, SEED_MAX)


def ber_values() -> st.SearchStrategy[float]:
    """Bit-error rates in ``[0, 1]``: 0, 1, usual rates, and any float (tiny ones included)."""
    usual = [0.0, 1.0, 0.5, 0.1, 0.01, 1e-3, 1e-5, 1e-7, 2.0**-24, 1.0 - 2.0**-24]
    return st.one_of(st.sampled_from(usual), st.floats(0.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# Floating-point boundary values
# ---------------------------------------------------------------------------------------------------------
def representable(values: Sequence[float], dtype: np.dtype) -> list[float]:
    """The values (and their negatives) that ``dtype`` holds exactly, NaN and infinities kept."""
    out: list[float] = []
    with np.errstate(over="ignore"):
        for v in values:
            for s in (v, -v):
                if math.isnan(s) or np.asarray(s, dtype=dtype).astype(np.float64) == s:
                    if not any(_same_float(s, o) for o in out):
                        out.append(s)
    return out


def _same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def format_edge_classes(fmt: IEEEFormat) -> dict[str, list[float]]:
    """Edges of an IEEE format by class, as exact float64 values: the ones every encoder gets wrong somewhere.

    Each list holds magnitudes; :func:`representable` adds their negatives.
    """
    m = fmt.mantissa_bits
    sub, tiny, top = fmt.min_subnormal, fmt.min_normal, fmt.max_finite
    ulp_top = math.ldexp(1.0, fmt.emax - m)  # spacing in the top binade
    h = math.ldexp(1.0, -m - 1)  # half the spacing just above 1
    return {
        "signed zeros": [0.0],
        # ties and near-ties at 0 and at the smallest subnormal; the largest subnormal
        "subnormals (smallest, the ties around it, largest)": [
            sub, sub / 2, 3 * sub / 2, sub / 4, 3 * sub / 4, 5 * sub / 4,
            tiny - sub, tiny - sub / 2, tiny - sub / 4,
        ],
        "smallest normal and its neighbours": [tiny, tiny + sub],
        "ordinary values (1/2, 1, 3/2, 2)": [0.5, 1.0, 1.5, 2.0],
        "ties to even at 1 (even and odd base)": [1 + h, 1 + 3 * h, 1 + h / 2, 1 + 2 * h + h],
        # ... and the next power of two, 2**(emax + 1), which a rounding carries into the exponent field
        "overflow edge (largest finite, half an ulp above, beyond)": [
            top, top + ulp_top / 2, top + ulp_top / 4, top + ulp_top, 2 * top, top - ulp_top / 2,
            math.ldexp(1.0, fmt.emax + 1), math.ldexp(1.0, fmt.emax + 1) - ulp_top / 4,
        ],
        # just above / below a tie by less than half a float32 ulp
        "double-rounding traps": [1 + h + 2.0**-40, 1 + h - 2.0**-40, 1 + 3 * h - 2.0**-40],
        "infinities": [math.inf],
    }  # fmt: skip


def _format_edges(fmt: IEEEFormat) -> list[float]:
    """Every edge of :func:`format_edge_classes` and NaN, in one list."""
    return [v for values in format_edge_classes(fmt).values() for v in values] + [math.nan]


def nan_kinds(dtype: Any) -> np.ndarray:
    """NaNs of every kind in a float dtype: quiet and signalling, payload in the high bits and only in
    the low bits, both signs (10 values).

    A careless conversion turns a signalling NaN whose payload sits in the low bits into an infinity
    (truncating the mantissa drops the payload); a quiet NaN with all payload bits set is the other end.
    """
    dtype = np.dtype(dtype)
    m = np.finfo(dtype).nmant
    bits = np.dtype(f"u{dtype.itemsize}")
    exp = ((1 << (8 * dtype.itemsize - 1)) - 1) ^ ((1 << m) - 1)  # exponent all ones, sign clear
    quiet = 1 << (m - 1)
    payloads = [
        quiet,
        quiet | 1,
        (1 << m) - 1,
        1,
        1 << (m - 2),
    ]  # quiet; quiet low; all; signalling low; high
    sign = 1 << (8 * dtype.itemsize - 1)
    words = [exp | p for p in payloads] + [sign | exp | p for p in payloads]
    return np.array(words, dtype=bits).view(dtype)


def layout_variants(values: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The values in other ranks and memory layouts: rank 0, rank 2 transposed (not C-contiguous), rank 3,
    and rank 4 as a strided view (every other element of a wider buffer)."""
    values = np.asarray(values).reshape(-1)
    return [
        ("rank 0", np.array(values[len(values) // 2])),
        ("rank 2, transposed (Fortran order)", np.resize(values, 24).reshape(4, 6).T),
        ("rank 3", np.resize(values, 60).reshape(3, 4, 5)),
        ("rank 4, strided view (not contiguous)", np.resize(values, 240).reshape(2, 3, 4, 10)[..., ::2]),
    ]


def strided(a: np.ndarray) -> np.ndarray:
    """A non-contiguous view holding the values of ``a`` (its last axis every other element of a buffer)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a
    buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    buf[..., ::2] = a
    return buf[..., ::2]


def encode_classes(format_name: str, dtype: Any) -> list[tuple[str, np.ndarray]]:
    """The boundary table of ``encode(format_name)`` for inputs of ``dtype``: one array per class.

    The edges of the format by class (:func:`format_edge_classes`), every NaN kind, the input dtype's own
    extremes, the bfloat16 ties in the float32 bits, all of them at once, and the layouts of
    :func:`layout_variants`. Classes with no value the input dtype holds exactly are left out.
    """
    dtype = np.dtype(dtype)
    fmt = get_ieee_format(format_name)
    out = []
    for name, values in format_edge_classes(fmt).items():
        kept = representable(values, dtype)
        if kept:
            out.append((name, np.array(kept, dtype=dtype)))
    out.append(("NaN kinds (quiet, signalling, payload high / low bits only, both signs)", nan_kinds(dtype)))
    info = np.finfo(dtype)
    extremes = [float(info.max), float(info.smallest_subnormal), float(info.tiny)]
    out.append((f"extremes of the input dtype {dtype.name}", np.array(representable(extremes, dtype), dtype)))
    if dtype.itemsize >= 4:
        low = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7F8000, 0x00008000], np.uint32)
        ties = [float(v) for v in low.view(np.float32)]
        out.append(("bfloat16 ties in the float32 bits", np.array(representable(ties, dtype), dtype)))
    every = boundary_values(format_name, dtype)
    out.append(("all boundary values at once", every))
    out += [(name, a) for name, a in layout_variants(every)]
    return [(f"x {dtype.name}: {name}", a) for name, a in out]


def boundary_values(format_name: str, dtype: Any) -> np.ndarray:
    """Boundary inputs for encoding into ``format_name`` from ``dtype`` (float16/32/64), as an array.

    Includes +-0, +-inf, NaN, the smallest subnormal and the ties around it, the largest subnormal and
    smallest normal, ties to even at 1, the largest finite value and the overflow threshold (half an ulp
    above it) with neighbours, double-rounding traps for float64 inputs, the input dtype's own largest
    and smallest values, and (for float32 and float64 inputs) the ties of bfloat16 in the float32 bits.
    Only values the input dtype holds exactly are kept (so the list differs per dtype).
    """
    dtype = np.dtype(dtype)
    fmt = get_ieee_format(format_name)
    values = _format_edges(fmt)
    info = np.finfo(dtype)
    values += [float(info.max), float(info.smallest_subnormal), float(info.tiny)]
    if dtype.itemsize >= 4:
        # float32 bit patterns whose low 16 bits are at the bfloat16 rounding boundary.
        low = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7F8000, 0x00008000], np.uint32)
        values += [float(v) for v in low.view(np.float32)]
    return np.array(representable(values, dtype), dtype=dtype)


def boundary_codes(format_name: str) -> np.ndarray:
    """Edge codes of a format (container dtype): zeros, subnormal and normal edges, max finite, inf, NaNs."""
    fmt = get_ieee_format(format_name)
    m, nb = fmt.mantissa_bits, fmt.nbits
    sign = 1 << (nb - 1)
    one = fmt.bias << m
    # the special magnitudes from the field widths (independently of saf_ref.bits): exponent all ones is
    # infinity (mantissa 0) and NaN; float8_e4m3fn has no infinity and one NaN magnitude, S.1111.111
    top = ((1 << fmt.exponent_bits) - 1) << m
    nan = top | (1 << (m - 1)) if fmt.has_infinity else sign - 1
    max_code = top - 1 if fmt.has_infinity else nan - 1
    mags = [0, 1, 2, (1 << m) - 1, 1 << m, one, one + 1, max_code, max_code - 1]
    if fmt.has_infinity:
        mags += [top, top + 1, nan, sign - 1]
    else:
        mags += [nan]
    out = sorted({v for mag in mags for v in (mag, mag | sign)})
    return np.array(out, dtype=fmt.container)


def codes(format_name: str, *, max_size: int = 32) -> st.SearchStrategy[np.ndarray]:
    """1-d arrays of codes of a format (integer bit patterns), boundary codes mixed in."""
    fmt = get_ieee_format(format_name)
    edges = [int(c) for c in boundary_codes(format_name)]
    elements = st.one_of(st.sampled_from(edges), st.integers(0, (1 << fmt.nbits) - 1))
    return hnp.arrays(fmt.container, st.integers(1, max_size), elements=elements, fill=st.nothing())


def float_arrays(
    dtype: Any,
    boundaries: Sequence[float],
    *,
    min_size: int = 1,
    max_size: int = 32,
    general: st.SearchStrategy[float] | None = None,
) -> st.SearchStrategy[np.ndarray]:
    """1-d float arrays whose elements are a boundary value or a general float (default: any float)."""
    dtype = np.dtype(dtype)
    if general is None:
        general = st.floats(width=8 * dtype.itemsize)
    elements = st.one_of(st.sampled_from(list(boundaries)), general)
    return hnp.arrays(dtype, st.integers(min_size, max_size), elements=elements, fill=st.nothing())


def _near_format_values(fmt: IEEEFormat, dtype: np.dtype) -> st.SearchStrategy[float]:
    """Values near the representable numbers of ``fmt``: a random code's value plus k/4 of its ulp.

    General floats of a wide dtype mostly fall far outside an 8-bit format's range; these land on
    exact values, quarter points and ties (k = 2) of the format.
    """

    def build(args: tuple[int, int, int]) -> float:
        code, k, tweak = args
        mag = int(code) & ((1 << (fmt.nbits - 1)) - 1)
        sign = -1.0 if code >> (fmt.nbits - 1) else 1.0
        v = float(fmt.decode(np.array([mag], dtype=fmt.container))[0])
        if not math.isfinite(v):
            return sign * v
        e = max(math.frexp(v)[1] - 1, fmt.emin) if v else fmt.emin
        out = v + k * math.ldexp(1.0, e - fmt.mantissa_bits - 2)
        out = float(np.asarray(out, dtype=dtype))  # the nearest input-dtype value
        if tweak:
            out = float(np.nextafter(np.asarray(out, dtype=dtype), dtype.type(tweak * math.inf)))
        return sign * out

    tweaks = st.sampled_from([0, 0, 1, -1])
    return st.tuples(st.integers(0, (1 << fmt.nbits) - 1), st.integers(-2, 2), tweaks).map(build)


def encode_inputs(format_name: str, dtype: Any, *, max_size: int = 32) -> st.SearchStrategy[np.ndarray]:
    """Inputs of ``encode(format_name)`` in ``dtype``: boundaries, values near the format's, any float."""
    dtype = np.dtype(dtype)
    fmt = get_ieee_format(format_name)
    general = st.one_of(_near_format_values(fmt, dtype), st.floats(width=8 * dtype.itemsize))
    return float_arrays(dtype, boundary_values(format_name, dtype), max_size=max_size, general=general)


# ---------------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlipCase:
    """Arguments of ``flip_by_uniform``: codes (uint), a float32 uniform per bit, the rate, protected bits."""

    codes: np.ndarray
    uniform: np.ndarray
    p: float
    protected: int | None


@st.composite
def flip_cases(draw, *, max_words: int = 6) -> FlipCase:
    """Codes of 8, 16 or 32-bit words (or fewer bits in a wider container), a uniform array with values
    equal to ``float32(p)``, just below and above it, and 0 mixed in, and a rate from :func:`ber_values`.
    """
    container, nbits = draw(
        st.one_of(
            st.sampled_from([(np.uint16, 16), (np.uint8, 8), (np.uint32, 32)]),
            st.sampled_from([np.uint8, np.uint16, np.uint32]).flatmap(
                lambda d: st.tuples(st.just(d), st.integers(1, 8 * np.dtype(d).itemsize))
            ),
        )
    )
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=max_words))
    words = draw(hnp.arrays(container, shape, elements=st.integers(0, (1 << nbits) - 1), fill=st.nothing()))
    p = draw(ber_values())
    p32 = np.float32(p)
    edges = [
        float(p32),
        float(np.nextafter(p32, np.float32(0))),
        float(np.nextafter(p32, np.float32(1))),
        0.0,
    ]
    edges = [e for e in edges if 0.0 <= e < 1.0] or [0.0]
    uniform = draw(
        hnp.arrays(
            np.float32,
            shape + (nbits,),
            elements=st.one_of(st.sampled_from(edges), st.floats(0.0, 1.0, width=32, exclude_max=True)),
            fill=st.nothing(),
        )
    )
    protected = draw(st.one_of(st.none(), st.integers(0, (1 << nbits) - 1)))
    return FlipCase(words, uniform, float(p), protected)


@st.composite
def fault_lists(draw, size: int, nbits: int, *, max_records: int = 24, tensor: str = "") -> FaultList:
    """A FaultList for ``size`` words of ``nbits`` bits: flips (duplicates included, which cancel),
    stuck-at-0 and stuck-at-1 records (never both on one bit), in any order."""
    n = draw(st.integers(0, max_records))
    index = st.integers(0, size - 1)
    bit = st.one_of(st.sampled_from(sorted({0, nbits - 1})), st.integers(0, nbits - 1))
    kinds = st.sampled_from(["flip", "flip", "stuck0", "stuck1"])
    records = draw(st.lists(st.tuples(index, bit, kinds), min_size=n, max_size=n))
    # duplicate some flips explicitly: a bit flipped twice is unchanged
    dups = draw(st.lists(st.sampled_from(records), max_size=4)) if records else []
    stuck: dict[tuple[int, int], str] = {}
    out = []
    for i, b, k in records + dups:
        if k != "flip":
            if stuck.setdefault((i, b), k) != k:
                continue  # stuck0 and stuck1 on one bit is invalid (FaultList.apply raises)
        out.append((tensor, i, b, k, f"raw{nbits}"))
    order = draw(st.permutations(range(len(out))))
    return FaultList([out[j] for j in order])


# ---------------------------------------------------------------------------------------------------------
# Quantizer
# ---------------------------------------------------------------------------------------------------------
@st.composite
def quantizer_configs(draw) -> dict[str, Any]:
    """Keyword arguments of :class:`saf_ref.bits.Quantizer` (valid combinations only)."""
    nbits = draw(st.one_of(st.sampled_from([8, 2, 16, 4]), st.integers(2, 16)))
    scheme = draw(st.sampled_from(["symmetric", "asymmetric"]))
    code = draw(st.sampled_from(["twos_complement", "offset_binary"]))
    rounding = draw(st.sampled_from(["nearest_even", "toward_zero"]))
    margin = draw(st.sampled_from([0.0, 1e-3]))
    positive = st.one_of(st.sampled_from([1.0, 0.5, 0.1]), st.floats(1e-3, 1e3))
    # L * 2**-e makes the step (max_abs / L) a power of two: then (k + 1/2) * step are exact ties
    levels = (1 << (nbits - 1)) - 1
    pow2_step = st.integers(0, 12).map(lambda e: levels * 2.0**-e)
    clip = max_abs = None
    if scheme == "symmetric" and draw(st.booleans()):
        max_abs = draw(st.one_of(pow2_step, positive))
    elif draw(st.booleans()):
        clip = draw(positive)
    return dict(
        nbits=nbits, scheme=scheme, code=code, rounding=rounding, clip=clip, max_abs=max_abs, margin=margin
    )


def _quantizer_ties(config: dict[str, Any]) -> list[float]:
    """Inputs on the rounding ties ``(k + 1/2) * step`` of a fixed-range quantizer (when exact in float32)."""
    if config.get("max_abs") is None:
        return []
    levels = (1 << (config["nbits"] - 1)) - 1
    step = float(np.float32((config["max_abs"] + config["margin"]) / levels))
    return [float(np.float32((k + 0.5) * step)) for k in range(-3, 3)]


@st.composite
def quantizer_cases(draw, *, max_size: int = 32) -> tuple[dict[str, Any], np.ndarray]:
    """``(config, x)``: a quantizer configuration and finite float32 input mixing its boundaries
    (+-0, +-range, +-clip, ties of the step, values beyond the range)."""
    config = draw(quantizer_configs())
    r = config["max_abs"] or config["clip"] or 1.0
    edges = [
        0.0,
        r,
        2 * r,
        r / 2,
        float(np.float32(r) * np.float32(1 + 2**-23)),
        1e-30,
        *_quantizer_ties(config),
    ]
    bound = float(np.float32(4 * r))  # a float32 value: hypothesis needs exact bounds for width=32
    general = st.floats(-bound, bound, width=32)
    x = draw(
        float_arrays(
            np.float32, representable(edges, np.dtype(np.float32)), max_size=max_size, general=general
        )
    )
    return config, x


# ---------------------------------------------------------------------------------------------------------
# Network op cases (values from a seeded NumPy generator)
# ---------------------------------------------------------------------------------------------------------
DISTRIBUTIONS = ("normal", "wide", "offset")


def _values(rng: np.random.Generator, shape, distribution: str, offset: float = 0.0) -> np.ndarray:
    """float64 samples: ``normal``; ``wide`` (normal times 10**U(-3, 3), a wide dynamic range);
    ``offset`` (normal plus ``offset``, where reductions cancel)."""
    v = rng.standard_normal(shape)
    if distribution == "wide":
        v = v * 10.0 ** rng.uniform(-3, 3, size=shape)
    elif distribution == "offset":
        v = v + offset
    return v


def _cast(a: np.ndarray, dtype: Any, float32_values: bool) -> np.ndarray:
    """Cast to ``dtype``; with ``float32_values`` round to float32 first (so saf_ref float32 sees the
    same inputs as a float64 backend)."""
    return a.astype(np.float32).astype(dtype) if float32_values else a.astype(dtype)


@dataclass(frozen=True)
class ConvCase:
    """A conv2d problem: shapes, stride, padding, bias flag, value distribution and seed."""

    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    bias: bool
    distribution: str
    seed: int
    layout: str = "contiguous"

    @property
    def out_hw(self) -> tuple[int, int]:
        """``floor((H + 2p - k) / s) + 1`` per spatial axis."""
        return tuple(  # type: ignore[return-value]
            (self.x_shape[2 + a] + 2 * self.padding[a] - self.w_shape[2 + a]) // self.stride[a] + 1
            for a in (0, 1)
        )

    def arrays(self, dtype: Any, float32_values: bool = False):
        """``(x, w, b, dy)`` in ``dtype`` (``b`` is None without bias)."""
        rng = np.random.default_rng(self.seed)
        x = _cast(_values(rng, self.x_shape, self.distribution), dtype, float32_values)
        w = _cast(_values(rng, self.w_shape, self.distribution), dtype, float32_values)
        b = _cast(rng.standard_normal(self.w_shape[0]), dtype, float32_values) if self.bias else None
        dy_shape = (self.x_shape[0], self.w_shape[0], *self.out_hw)
        dy = _cast(_values(rng, dy_shape, self.distribution), dtype, float32_values)
        return _laid_out(self.layout, x, w, b, dy)


def _laid_out(layout: str, *arrays):
    """The arrays as given (``"contiguous"``) or as non-contiguous views of their values (``"strided"``)."""
    if layout == "contiguous":
        return arrays
    return tuple(None if a is None else strided(a) for a in arrays)


#: Conv configurations tried first (with ``st.sampled_from``): a 3x3 stride-1 layer, a strided 3x3, a
#: 1x1 projection shortcut, the ImageNet stem, leftover rows (floor), asymmetric stride and padding.
CONV_EDGES = [
    ((2, 3, 6, 6), (4, 3, 3, 3), (1, 1), (1, 1)),
    ((2, 4, 7, 7), (3, 4, 3, 3), (2, 2), (1, 1)),
    ((2, 4, 6, 6), (6, 4, 1, 1), (2, 2), (0, 0)),
    ((1, 3, 12, 12), (2, 3, 7, 7), (2, 2), (3, 3)),
    ((2, 2, 8, 8), (3, 2, 3, 3), (2, 2), (0, 0)),
    ((1, 3, 7, 10), (2, 3, 2, 3), (2, 1), (1, 0)),
    ((1, 2, 5, 5), (2, 2, 5, 5), (1, 1), (0, 0)),
]


@st.composite
def conv_cases(draw) -> ConvCase:
    """Conv configurations: the edges of :data:`CONV_EDGES`, or any N <= 3, C, O <= 6, kernel <= 5,
    stride <= 3, padding <= kernel - 1, with a non-empty output."""
    edge = draw(st.one_of(st.sampled_from(CONV_EDGES), st.none()))
    if edge is not None:
        x_shape, w_shape, stride, padding = edge
    else:
        n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)))
        h = draw(st.integers(max(1, kh - 2 * padding[0]), 10))
        w = draw(st.integers(max(1, kw - 2 * padding[1]), 10))
        x_shape, w_shape = (n, c, h, w), (o, c, kh, kw)
    bias = draw(st.booleans()) if edge is None else True
    return ConvCase(
        x_shape, w_shape, stride, padding, bias, draw(st.sampled_from(DISTRIBUTIONS[:2])), draw(seeds())
    )


@dataclass(frozen=True)
class LinearCase:
    """A linear problem ``(N, in) -> (N, out)``."""

    n: int
    in_features: int
    out_features: int
    bias: bool
    distribution: str
    seed: int
    layout: str = "contiguous"

    def arrays(self, dtype: Any, float32_values: bool = False):
        """``(x, w, b, dy)``."""
        rng = np.random.default_rng(self.seed)
        x = _cast(_values(rng, (self.n, self.in_features), self.distribution), dtype, float32_values)
        w = _cast(
            _values(rng, (self.out_features, self.in_features), self.distribution), dtype, float32_values
        )
        b = _cast(rng.standard_normal(self.out_features), dtype, float32_values) if self.bias else None
        dy = _cast(_values(rng, (self.n, self.out_features), self.distribution), dtype, float32_values)
        return _laid_out(self.layout, x, w, b, dy)


@st.composite
def linear_cases(draw) -> LinearCase:
    """N <= 8, in_features <= 64, out_features <= 12, with and without bias."""
    n = draw(st.one_of(st.just(4), st.integers(1, 8)))
    fin = draw(st.one_of(st.just(16), st.integers(1, 64)))
    fout = draw(st.one_of(st.just(5), st.integers(1, 12)))
    return LinearCase(
        n, fin, fout, draw(st.booleans()), draw(st.sampled_from(DISTRIBUTIONS[:2])), draw(seeds())
    )


@dataclass(frozen=True)
class PoolCase:
    """A pooling problem: input shape, window (max pooling only), seed."""

    x_shape: tuple[int, int, int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    seed: int
    offset: float = 0.0
    layout: str = "contiguous"

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (self.x_shape[2 + a] + 2 * self.padding[a] - self.kernel_size[a]) // self.stride[a] + 1
            for a in (0, 1)
        )

    def arrays(self, dtype: Any, global_pool: bool = False):
        """``(x, dy)``: continuous values (no ties, whose winner is implementation-defined on GPUs), ``x``
        shifted by ``offset`` (all negative for a large negative one: the padding must never win)."""
        rng = np.random.default_rng(self.seed)
        x = (rng.standard_normal(self.x_shape) + self.offset).astype(dtype)
        dy_shape = self.x_shape[:2] if global_pool else (*self.x_shape[:2], *self.out_hw)
        return _laid_out(self.layout, x, rng.standard_normal(dy_shape).astype(dtype))


@st.composite
def maxpool_cases(draw) -> PoolCase:
    """Max pooling windows: the ImageNet stem's 3x3/2 pad 1 first, then kernel <= 4, stride <= 3,
    padding <= kernel // 2 (PyTorch's limit), overlapping windows included."""
    if draw(st.booleans()):
        return PoolCase((2, 2, 7, 7), (3, 3), (2, 2), (1, 1), draw(seeds()))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    h = draw(st.integers(max(1, kh - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, kw - 2 * padding[1]), 9))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return PoolCase((n, c, h, w), (kh, kw), stride, padding, draw(seeds()))


@st.composite
def avgpool_cases(draw) -> PoolCase:
    """Global average pooling inputs, N, C <= 4, H, W <= 9."""
    shape = (
        draw(st.integers(1, 4)),
        draw(st.integers(1, 4)),
        draw(st.integers(1, 9)),
        draw(st.integers(1, 9)),
    )
    return PoolCase(shape, (1, 1), (1, 1), (0, 0), draw(seeds()))


@dataclass(frozen=True)
class BNCase:
    """A batchnorm2d problem: shape, mode, momentum, eps, data offset and scale (cancellation), seed."""

    x_shape: tuple[int, int, int, int]
    train: bool
    momentum: float
    eps: float
    offset: float
    scale: float
    seed: int
    layout: str = "contiguous"

    def arrays(self, dtype: Any, float32_values: bool = True):
        """``(x, weight, bias, running_mean, running_var, dy)``, float32-representable by default."""
        rng = np.random.default_rng(self.seed)
        c = self.x_shape[1]
        x = self.offset + self.scale * rng.standard_normal(self.x_shape)
        weight = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)
        bias = rng.standard_normal(c)
        rm = self.offset + self.scale * rng.standard_normal(c)
        rv = (self.scale * rng.uniform(0.5, 2.0, c)) ** 2
        dy = rng.standard_normal(self.x_shape)
        return _laid_out(
            self.layout, *(_cast(a, dtype, float32_values) for a in (x, weight, bias, rm, rv, dy))
        )


@st.composite
def bn_cases(draw) -> BNCase:
    """Training and evaluation mode, N*H*W >= 2, momentum 0.1 or any in [0, 1], eps 1e-5 or 1e-3, data
    centred or offset by up to 100 standard deviations (where float32 batch norm loses accuracy)."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if n * h * w < 2:
        n = 2
    momentum = draw(st.one_of(st.just(0.1), st.floats(0.0, 1.0)))
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    offset = draw(st.sampled_from([0.0, 1.0, 10.0, 100.0]))
    scale = draw(st.sampled_from([1.0, 0.1, 10.0]))
    return BNCase((n, c, h, w), draw(st.booleans()), momentum, eps, offset * scale, scale, draw(seeds()))


@dataclass(frozen=True)
class CECase:
    """A cross-entropy problem: N x K logits at a scale, label smoothing, upstream dloss, seed."""

    n: int
    k: int
    logit_scale: float
    label_smoothing: float
    dloss: float
    seed: int
    layout: str = "contiguous"

    def arrays(self, dtype: Any, float32_values: bool = True):
        """``(logits, labels)``; labels int64."""
        rng = np.random.default_rng(self.seed)
        logits = _cast(self.logit_scale * rng.standard_normal((self.n, self.k)), dtype, float32_values)
        return _laid_out(self.layout, logits, rng.integers(0, self.k, self.n).astype(np.int64))


@st.composite
def ce_cases(draw) -> CECase:
    """N in 2..8 (the batch mean matters), K in 2..12, logits at scale 1, 10 or 30, any smoothing."""
    n = draw(st.one_of(st.just(4), st.integers(2, 8)))
    k = draw(st.one_of(st.just(5), st.integers(2, 12)))
    smoothing = draw(st.one_of(st.just(0.0), st.just(0.1), st.floats(0.0, 1.0)))
    dloss = draw(st.one_of(st.just(1.0), st.floats(-4.0, 4.0)))
    return CECase(n, k, draw(st.sampled_from([1.0, 10.0, 30.0])), smoothing, dloss, draw(seeds()))


@dataclass(frozen=True)
class SGDCase:
    """Several SGD steps on a small parameter dict (parameters and per-step gradients from ``seed``)."""

    shapes: tuple[tuple[int, ...], ...]
    steps: int
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    seed: int

    def arrays(self, dtype: Any):
        """``(params, [grads per step])`` as dicts keyed ``p0``, ``p1``, ..."""
        rng = np.random.default_rng(self.seed)
        # np.asarray: a shape () draw is a NumPy scalar, and the protocol passes arrays (rank 0 included)
        params = {f"p{i}": np.asarray(rng.standard_normal(s), dtype=dtype) for i, s in enumerate(self.shapes)}
        grads = [
            {f"p{i}": np.asarray(rng.standard_normal(s), dtype=dtype) for i, s in enumerate(self.shapes)}
            for _ in range(self.steps)
        ]
        return params, grads

    def config(self) -> dict[str, Any]:
        """The optimizer's keyword arguments."""
        return dict(
            lr=self.lr,
            momentum=self.momentum,
            dampening=self.dampening,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )


@st.composite
def sgd_cases(draw) -> SGDCase:
    """1 to 4 steps; lr 0.1, 0.01 or any; momentum 0, 0.9 or any; dampening; weight decay; Nesterov
    (only with momentum and no dampening, as PyTorch requires)."""
    shapes = tuple(
        draw(st.lists(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), min_size=1, max_size=3))
    )
    lr = draw(st.one_of(st.sampled_from([0.1, 0.01]), st.floats(1e-4, 1.0)))
    momentum = draw(st.one_of(st.sampled_from([0.9, 0.0]), st.floats(0.0, 0.99)))
    dampening = draw(st.one_of(st.just(0.0), st.sampled_from([0.1, 0.5])))
    wd = draw(st.one_of(st.sampled_from([0.0, 5e-4]), st.floats(0.0, 0.1)))
    nesterov = momentum > 0 and dampening == 0 and draw(st.booleans())
    return SGDCase(shapes, draw(st.integers(1, 4)), lr, momentum, dampening, wd, nesterov, draw(seeds()))


@dataclass(frozen=True)
class ModelCase:
    """A whole-model problem: architecture, width, classes, batch, image size, mode, transform, seed."""

    arch: str
    width: int
    num_classes: int
    batch: int
    image: int
    train: bool
    transform: str | None
    seed: int

    def arrays(self, dtype: Any):
        """``(params, state, x, labels)``: torchvision initialisation, then perturbed batch-norm
        parameters and running statistics (so that evaluation mode is not the identity); all values
        float32-representable."""
        from saf_ref.nn.resnet import init_resnet

        rng = np.random.default_rng(self.seed)
        params, state = init_resnet(
            self.arch, num_classes=self.num_classes, width=self.width, rng=rng, dtype=np.float64
        )
        for k, v in params.items():
            if v.ndim == 1 and not k.startswith("fc."):
                params[k] = v + 0.2 * rng.standard_normal(v.shape)
        for k, v in state.items():
            if k.endswith("running_var"):
                state[k] = rng.uniform(0.5, 2.0, v.shape)
            else:
                state[k] = 0.1 * rng.standard_normal(v.shape)
        x = rng.standard_normal((self.batch, 3, self.image, self.image))
        labels = rng.integers(0, self.num_classes, self.batch).astype(np.int64)
        cast = {k: _cast(v, dtype, True) for k, v in params.items()}
        return cast, {k: _cast(v, dtype, True) for k, v in state.items()}, _cast(x, dtype, True), labels


#: Image sizes per architecture: the last stage keeps at least 2 x 2 pixels, so that with 2 images every
#: batch norm normalises at least 8 values per channel. (Over 2 values batch norm maps any input to
#: +-1 and its gradient is exactly zero: what is left is rounding noise, and comparing two
#: implementations' noise tests nothing.)
MODEL_IMAGES = {"resnet20": (8, 12), "resnet18_cifar": (16, 20), "resnet18": (33, 40)}


@st.composite
def model_cases(draw, arch: str) -> ModelCase:
    """Small ResNets (width 2 to 4, 2 to 4 images of the sizes of :data:`MODEL_IMAGES`), training or
    evaluation mode, raw weights or tanh latents (which the check turns into weights with each side's
    own transform)."""
    image = draw(st.integers(*MODEL_IMAGES[arch]))
    return ModelCase(
        arch,
        draw(st.integers(2, 4)),
        draw(st.integers(2, 10)),
        draw(st.integers(2, 4)),
        image,
        draw(st.booleans()),
        draw(st.sampled_from([None, "tanh"])),
        draw(seeds()),
    )
