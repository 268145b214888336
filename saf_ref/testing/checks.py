"""The checks of the conformance suite: one per backend method (and format), each with its contract tier.

A :class:`Check` pairs a hypothesis strategy of cases with a function that runs one case on the backend
and on saf_ref and applies a contract of :mod:`saf_ref.testing.contracts`. The suite engine
(:mod:`saf_ref.testing.suite`) drives it. Every check

- feeds its boundary examples first (``Check.explicit``; ``SuiteOptions.boundary_examples``), then
  hypothesis-generated cases;
- verifies that the backend returned the right dtype and shape and did not modify its inputs;
- treats ``NotImplementedError`` from the backend as "this case is not supported" (a check with no
  supported case is reported as skipped);
- reports the worst ``error / bound`` ratio and the known divergences it accepted.

References: saf_ref in float64 on the same inputs (``ref64``) for the tolerance tiers, saf_ref in the
result's own precision for the exact tier, and saf_ref in float32 for the relative tier.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from saf_ref import validation
from saf_ref.bits import QuantContext, Quantizer, flip_by_uniform, get_ieee_format
from saf_ref.bits.faultlist import FaultList
from saf_ref.protect.transforms import TRANSFORMS, Transform
from saf_ref.testing import strategies as sst
from saf_ref.testing.contracts import (
    NAN_POLICIES,
    ContractFailure,
    assert_dot_bound,
    assert_exact,
    assert_relative,
    assert_ulp,
)
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.protocol import BackendInfo

__all__ = ["CHECKS", "Check", "Context", "SuiteOptions", "Unsupported", "all_checks"]

ENCODE_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float32")
DECODE_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
ARCHS = ("resnet20", "resnet18_cifar", "resnet18")
NARROWING = ("direct", "via-float32")
OVERFLOW = ("ieee", "saturate")

#: ulps allowed for the weight transforms (a few roundings: u / a, f, a * f; f itself within ~2 ulp)
TRANSFORM_ULPS = 4.0
#: ulps (of the magnitude) per SGD step: weight decay, momentum, Nesterov and the update, 2 roundings each
SGD_ULPS_PER_STEP = 8.0

_REF64 = NumpyBackend(dtype="float64")
_REF32 = NumpyBackend(dtype="float32")


class Unsupported(Exception):
    """The backend raised ``NotImplementedError`` for this case."""


@dataclass(frozen=True)
class SuiteOptions:
    """How the suite runs and which policies it checks against.

    Attributes
    ----------
    examples : int
        Hypothesis examples per check (whole-model checks run ``model_examples``), after the explicit
        boundary examples.
    model_examples : int or None
        Examples of the whole-model checks (default ``max(1, examples // 10)``).
    seed : int or None
        Seed of the example generation (``None``: hypothesis' derandomized mode).
    boundary_examples : bool
        Run each check's explicit boundary examples first.
    shrink : bool
        Let hypothesis shrink a failing example to a minimal one (slower; off by default).
    e4m3_overflow : {"ieee", "saturate"}
        Overflow policy of float8_e4m3fn encoding checked against (the other is a known divergence).
    narrowing : {"direct", "via-float32"}
        Reference for float64 inputs to narrow formats: one rounding, or through float32 first.
    nan_payloads : {"report", "strict"}
        NaN bits that differ are a known divergence, or a failure.
    rel_factor : float
        The factor of the relative-to-saf_ref-float32 tier.
    strict : bool
        Count known divergences as failures (exit status and ``Report.ok``).
    artifacts : str or None
        Folder for files saved on failure (FaultLists); default: a temporary folder.
    """

    examples: int = 30
    model_examples: int | None = None
    seed: int | None = 0
    boundary_examples: bool = True
    shrink: bool = False
    e4m3_overflow: str = "ieee"
    narrowing: str = "direct"
    nan_payloads: str = "report"
    rel_factor: float = 32.0
    strict: bool = False
    artifacts: str | None = None

    def __post_init__(self) -> None:
        fn = "SuiteOptions"
        validation.check_int(self.examples, "examples", fn, low=1)
        if self.model_examples is not None:
            validation.check_int(self.model_examples, "model_examples", fn, low=1)
        if self.seed is not None:
            validation.check_int(self.seed, "seed", fn, low=0)
        validation.check_choice(self.e4m3_overflow, "e4m3_overflow", fn, OVERFLOW)
        validation.check_choice(self.narrowing, "narrowing", fn, NARROWING)
        validation.check_choice(self.nan_payloads, "nan_payloads", fn, NAN_POLICIES)
        factor = validation.check_real(self.rel_factor, "rel_factor", fn)
        if not (math.isfinite(factor) and factor >= 1.0):
            raise ValueError(f"{fn}: rel_factor must be a finite number >= 1, got {self.rel_factor!r}")

    def examples_for(self, check: Check) -> int:
        """Generated examples for ``check`` (fewer for the expensive whole-model checks)."""
        if check.cost == 1:
            return self.examples
        return self.model_examples or max(1, self.examples // check.cost)

    def overflow_for(self, format_name: str) -> str:
        """The overflow policy checked for a format (only float8_e4m3fn has a choice)."""
        return self.e4m3_overflow if format_name == "float8_e4m3fn" else "ieee"


@dataclass
class Context:
    """What a check needs: the backend, its declared attributes and the suite options."""

    backend: Any
    info: BackendInfo
    options: SuiteOptions
    check_name: str = ""
    saved: list[str] = field(default_factory=list)

    @property
    def dtype(self) -> np.dtype:
        return self.info.dtype

    @property
    def u(self) -> float:
        return self.info.roundoff

    @property
    def c_dot(self) -> float:
        """Safety factor of the dot-product bound: 1 plus the float64 reference's share, ``2**-53 / u``."""
        return 1.0 + 2.0**-53 / self.u

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a backend method; check that it left its array inputs untouched.

        ``NotImplementedError`` becomes :class:`Unsupported`.
        """
        before = [_snapshot(a) for a in args]
        try:
            out = getattr(self.backend, method)(*args, **kwargs)
        except NotImplementedError as err:
            raise Unsupported(f"{method}: {err}") from err
        for i, (a, snap) in enumerate(zip(args, before, strict=True)):
            if snap is not None and _snapshot(a) != snap:
                raise ContractFailure(f"{self.check_name}: backend.{method} modified its argument {i}")
        return out

    def save_faultlist(self, faults: FaultList, codes: np.ndarray) -> str:
        """Write a failing case to the artifacts folder; return the FaultList's path."""
        folder = self.options.artifacts or os.path.join(tempfile.gettempdir(), "saf_ref_check")
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, self.check_name.replace("[", "_").replace("]", ""))
        faults.save(stem + "_faults.json")
        np.save(stem + "_codes.npy", codes, allow_pickle=False)
        self.saved.append(stem + "_faults.json")
        return stem + "_faults.json"


def _snapshot(a: Any):
    """Bytes of an array (or of the arrays of a dict / list) to detect modification; None otherwise."""
    if isinstance(a, np.ndarray):
        return (a.shape, a.dtype.str, a.tobytes())
    if isinstance(a, Mapping):
        return tuple((k, _snapshot(v)) for k, v in a.items())
    if isinstance(a, (list, tuple)) and a and isinstance(a[0], (np.ndarray, Mapping)):
        return tuple(_snapshot(v) for v in a)
    return None


Outcome = tuple[float, dict[str, int]]


class _Tally:
    """Worst ratio and divergence counts over the contracts of one example."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.divergences: dict[str, int] = {}

    def add(self, result: float | tuple[float, Mapping[str, int]]) -> None:
        ratio, divs = result if isinstance(result, tuple) else (result, {})
        self.worst = max(self.worst, float(ratio))
        for k, v in divs.items():
            self.divergences[k] = self.divergences.get(k, 0) + v

    def outcome(self) -> Outcome:
        return self.worst, self.divergences


@dataclass(frozen=True)
class Check:
    """One row of the suite: a backend method (or method and format), its contract and its cases.

    Attributes
    ----------
    name : str
        ``"encode[bfloat16]"``, ``"conv2d_vjp"``, ``"model[resnet20]"``.
    contract : {"exact", "ulp", "dot", "relative"}
        The tier of DESIGN.md, section 5.
    methods : tuple of str
        Backend methods it calls (missing ones skip the check).
    strategy : callable(Context) -> SearchStrategy
    run : callable(Context, case) -> (worst ratio, divergences)
    explicit : callable(Context) -> list of cases
        Boundary examples, run before the generated ones.
    cost : int
        Relative cost of one example (whole-model checks: 10, so they run fewer examples).
    doc : str
        One line for ``saf-ref check --list``.
    """

    name: str
    contract: str
    methods: tuple[str, ...]
    strategy: Callable[[Context], st.SearchStrategy]
    run: Callable[[Context, Any], Outcome]
    explicit: Callable[[Context], list] = lambda ctx: []
    cost: int = 1
    doc: str = ""


def _result(got: Any, dtype: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The backend's result as an array of the expected dtype and shape, else a ContractFailure."""
    if isinstance(got, np.generic):
        got = np.asarray(got)
    if not isinstance(got, np.ndarray):
        raise ContractFailure(f"{what}: expected a numpy.ndarray, got {type(got).__name__}")
    if got.dtype != np.dtype(dtype):
        raise ContractFailure(f"{what}: got dtype {got.dtype}, expected {np.dtype(dtype)}")
    if got.shape != tuple(shape):
        raise ContractFailure(f"{what}: got shape {got.shape}, expected {tuple(shape)}")
    return got


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def _f32(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float32) for a in arrays]


def _abs(*arrays):
    return [None if a is None else np.abs(np.asarray(a, dtype=np.float64)) for a in arrays]


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
    """Known divergences of encoding: the other e4m3fn overflow policy, the other narrowing, or both."""
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
        got = _result(ctx.call("encode", format_name, x), fmt.container, x.shape, what)
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
        got = _result(ctx.call("decode", format_name, codes), expected.dtype, codes.shape, what)
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
    got = _result(got, case.codes.dtype, case.codes.shape, what)
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
        got = _result(ctx.call("apply_faults", codes, faults, nbits=nbits), codes.dtype, codes.shape, what)
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
    what = f"quantize({_config_text(config)})"
    q = Quantizer(**config)
    expected, context = q.encode(x)
    got = ctx.call("quantize", x, dict(config))
    if not (isinstance(got, tuple) and len(got) == 2):
        raise ContractFailure(f"{what}: expected a (codes, context) pair, got {type(got).__name__}")
    codes = _result(got[0], q.container, x.shape, what + " codes")
    out = assert_exact(codes, expected, what=what + " codes", inputs={"x": x})
    _context_equal(got[1], context, what)
    return out


def _config_text(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items() if v is not None)


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
    what = f"dequantize({_config_text(config)})"
    expected = Quantizer(**config).decode(codes, context)
    got = _result(
        ctx.call("dequantize", codes, context.to_dict(), dict(config)), np.float32, codes.shape, what
    )
    return assert_exact(got, expected, what=what, inputs={"code": codes})


def _dequant_explicit(ctx: Context):
    out = []
    for config, x in _quant_explicit(ctx):
        q = Quantizer(**config)
        out.append((config, q.encode(x)[1], np.arange(1 << config["nbits"], dtype=q.container)))
    return out


# =========================================================================================================
# protect: transforms
# =========================================================================================================
def _transform_boundaries(dtype: np.dtype) -> list[float]:
    info = np.finfo(dtype)
    values = [
        0.0,
        1.0,
        0.5,
        2.0,
        10.0,
        20.0,
        1e10,
        float(info.max),
        float(info.tiny),
        float(info.smallest_subnormal),
        1e-30,
        math.inf,
        math.nan,
        3.0,
        0.1,
    ]
    return sst._representable(values, dtype)


@st.composite
def _transform_cases(draw, dtype: np.dtype, vjp: bool):
    scale = draw(st.one_of(st.just(1.0), st.sampled_from([0.5, 2.0]), st.floats(0.05, 20.0)))
    u = draw(sst.float_arrays(dtype, _transform_boundaries(dtype)))
    if not vjp:
        return scale, u, None
    general = st.floats(-1e3, 1e3, width=8 * dtype.itemsize)
    dw = draw(
        hnp.arrays(
            dtype,
            u.shape,
            elements=st.one_of(st.sampled_from([1.0, -1.0, 0.0, 0.5]), general),
            fill=st.nothing(),
        )
    )
    return scale, u, dw


def _transform_explain(u: np.ndarray, scale: float, got: np.ndarray):
    """softsign(+-inf) = NaN (also where ``u / a`` overflows), and gradients at NaN latents."""
    with np.errstate(over="ignore"):
        infinite = np.isinf(u) | np.isinf(u / u.dtype.type(scale))

    def explain(bad: np.ndarray) -> dict[str, np.ndarray]:
        g = np.asarray(got, dtype=np.float64)
        return {
            "softsign-infinity": bad & infinite & np.isnan(g),
            "nan-latent-gradient": bad & np.isnan(u) & ~np.isnan(g),
        }

    return explain


def _derivative_terms(name: str, u: np.ndarray, scale: float) -> np.ndarray:
    """Magnitude of the terms autograd adds to form ``f'(x)``, ``x = u / a`` (float64).

    PyTorch differentiates ``tanh`` as ``1 - tanh(x)**2`` and ``softsign = x / (1 + |x|)`` by the
    quotient rule, ``1 / (1 + |x|) - |x| / (1 + |x|)**2``: differences of terms that cancel where ``f'``
    is small. Their rounding errors are relative to the terms (as in the dot-product tier), so the ulps
    are counted on this magnitude: 2 for tanh, ``2 / (1 + |x|)`` for softsign, ``|f'|`` otherwise.
    """
    if name == "tanh":
        return np.full(u.shape, 2.0)
    if name == "softsign":
        with np.errstate(invalid="ignore", over="ignore"):  # |u| / a may overflow: the terms are 0
            return 2.0 / (1.0 + np.abs(u.astype(np.float64)) / scale)
    return np.zeros(u.shape)


def _make_transform(name: str, vjp: bool) -> Check:
    method = "transform_vjp" if vjp else "transform_forward"

    def run(ctx: Context, case) -> Outcome:
        scale, u, dw = case
        what = f"{method}[{name}](scale={scale!r})"
        t = Transform(name, scale)
        info = np.finfo(ctx.dtype)
        # Gradual underflow: an intermediate (u / a, a * dw) may be subnormal, with an absolute error of
        # half the subnormal spacing, which the scale a (or 1 / a) then carries into the result.
        atol = TRANSFORM_ULPS * float(info.smallest_subnormal) * max(scale, 1.0 / scale)
        if vjp:
            ref = t.vjp(*_f64(u, dw))
            got = _result(ctx.call(method, name, u, dw, scale=scale), ctx.dtype, u.shape, what)
            adw = np.abs(dw.astype(np.float64))
            magnitude = np.nan_to_num(_derivative_terms(name, u, scale)) * adw
            # the derivative factor may underflow: |ref| < tiny * |dw| is not distinguished from 0
            atol, inputs = atol + TRANSFORM_ULPS * float(info.tiny) * adw, {"u": u, "dw": dw}
        else:
            ref = t.forward(u.astype(np.float64))
            got = _result(ctx.call(method, name, u, scale=scale), ctx.dtype, u.shape, what)
            magnitude, inputs = None, {"u": u}
        return assert_ulp(
            got,
            ref,
            n=TRANSFORM_ULPS,
            u=ctx.u,
            what=what,
            magnitude=magnitude,
            atol=atol,
            inputs=inputs,
            explain=_transform_explain(u, scale, got),
        )

    def explicit(ctx: Context):
        u = np.array(_transform_boundaries(ctx.dtype), dtype=ctx.dtype)
        dw = np.full(u.shape, 1.5, dtype=ctx.dtype) if vjp else None
        return [(1.0, u, dw), (0.5, u, dw)]

    doc = "du = f'(u/a) dw" if vjp else "w = a f(u/a)"
    return Check(
        f"{method}[{name}]",
        "ulp",
        (method,),
        lambda ctx: _transform_cases(ctx.dtype, vjp),
        run,
        explicit=explicit,
        doc=f"{name} transform: {doc}, within {TRANSFORM_ULPS:g} ulp",
    )


# =========================================================================================================
# nn: ReLU (exact)
# =========================================================================================================
def _relu_boundaries(dtype: np.dtype) -> list[float]:
    info = np.finfo(dtype)
    return sst._representable(
        [
            0.0,
            float(info.smallest_subnormal),
            float(info.tiny),
            1.0,
            2.5,
            math.inf,
            math.nan,
            float(info.max),
        ],
        dtype,
    )


@st.composite
def _relu_cases(draw, dtype: np.dtype):
    x = draw(sst.float_arrays(dtype, _relu_boundaries(dtype)))
    general = st.floats(-1e3, 1e3, width=8 * dtype.itemsize)
    dy = draw(
        hnp.arrays(
            dtype, x.shape, elements=st.one_of(st.sampled_from([1.0, -1.0, -0.0]), general), fill=st.nothing()
        )
    )
    return x, dy


def _relu_explicit(ctx: Context):
    x = np.array(_relu_boundaries(ctx.dtype), dtype=ctx.dtype)
    return [(x, np.arange(1, x.size + 1, dtype=ctx.dtype))]  # nonzero upstream gradients everywhere


def _relu_forward_run(ctx: Context, case) -> Outcome:
    x, _ = case
    expected = _REF64.relu_forward(x)  # exact in any dtype: saf_ref keeps x's dtype
    got = _result(ctx.call("relu_forward", x), ctx.dtype, x.shape, "relu_forward")

    def explain(bad):
        g = np.asarray(got)
        return {"relu-negative-zero": bad & (x == 0) & np.signbit(x) & (g == 0) & ~np.signbit(g)}

    return assert_exact(
        got,
        expected,
        what="relu_forward",
        inputs={"x": x},
        explain=explain,
        nan_payloads=ctx.options.nan_payloads,
    )


def _relu_vjp_run(ctx: Context, case) -> Outcome:
    x, dy = case
    expected = _REF64.relu_vjp(x, dy)
    got = _result(ctx.call("relu_vjp", x, dy), ctx.dtype, x.shape, "relu_vjp")
    return assert_exact(
        got, expected, what="relu_vjp", inputs={"x": x, "dy": dy}, nan_payloads=ctx.options.nan_payloads
    )


# =========================================================================================================
# nn: pooling
# =========================================================================================================
def _maxpool_kwargs(case: sst.PoolCase) -> dict[str, Any]:
    return dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding)


def _maxpool_forward_run(ctx: Context, case: sst.PoolCase) -> Outcome:
    x, _ = case.arrays(ctx.dtype)
    kw = _maxpool_kwargs(case)
    expected = _REF64.maxpool2d_forward(x, **kw)  # a selection: exact in x's dtype
    got = _result(
        ctx.call("maxpool2d_forward", x, **kw), ctx.dtype, expected.shape, f"maxpool2d_forward({kw})"
    )
    return assert_exact(got, expected, what=f"maxpool2d_forward({kw}, seed={case.seed})")


def _maxpool_vjp_run(ctx: Context, case: sst.PoolCase) -> Outcome:
    x, dy = case.arrays(ctx.dtype)
    kw = _maxpool_kwargs(case)
    what = f"maxpool2d_vjp({kw}, seed={case.seed})"
    x64, dy64 = _f64(x, dy)
    ref = _REF64.maxpool2d_vjp(x64, dy64, **kw)
    mag = _REF64.maxpool2d_vjp(x64, np.abs(dy64), **kw)
    k = math.ceil(case.kernel_size[0] / case.stride[0]) * math.ceil(case.kernel_size[1] / case.stride[1])
    got = _result(ctx.call("maxpool2d_vjp", x, dy, **kw), ctx.dtype, x.shape, what)
    return assert_dot_bound(got, ref, mag, k, u=ctx.u, c=ctx.c_dot, what=what + " dx")


def _avgpool_forward_run(ctx: Context, case: sst.PoolCase) -> Outcome:
    x, _ = case.arrays(ctx.dtype, global_pool=True)
    what = f"global_avgpool_forward(x {x.shape}, seed={case.seed})"
    (x64,) = _f64(x)
    ref, mag = _REF64.global_avgpool_forward(x64), _REF64.global_avgpool_forward(np.abs(x64))
    got = _result(ctx.call("global_avgpool_forward", x), ctx.dtype, ref.shape, what)
    return assert_dot_bound(got, ref, mag, x.shape[2] * x.shape[3] + 1, u=ctx.u, c=ctx.c_dot, what=what)


def _avgpool_vjp_run(ctx: Context, case: sst.PoolCase) -> Outcome:
    x, dy = case.arrays(ctx.dtype, global_pool=True)
    what = f"global_avgpool_vjp(x {x.shape}, seed={case.seed})"
    ref = _REF64.global_avgpool_vjp(*_f64(x, dy))
    got = _result(ctx.call("global_avgpool_vjp", x, dy), ctx.dtype, x.shape, what)
    # dy / (H W), or dy times a rounded 1 / (H W): at most two roundings
    return assert_dot_bound(got, ref, np.abs(ref), 2, u=ctx.u, c=ctx.c_dot, what=what + " dx")


# =========================================================================================================
# nn: conv2d and linear (dot-product bound)
# =========================================================================================================
def _conv_run(ctx: Context, case: sst.ConvCase, vjp: bool) -> Outcome:
    x, w, b, dy = case.arrays(ctx.dtype)
    kw = dict(stride=case.stride, padding=case.padding)
    what = f"conv2d_{'vjp' if vjp else 'forward'}(x {case.x_shape}, w {case.w_shape}, {kw}, seed={case.seed})"
    n, c = case.x_shape[:2]
    o, _, kh, kwid = case.w_shape
    ho, wo = case.out_hw
    x64, w64, b64, dy64 = _f64(x, w, b, dy)
    ax, aw, ab, ady = _abs(x, w, b, dy)
    tally = _Tally()
    if not vjp:
        ref, mag = _REF64.conv2d_forward(x64, w64, b64, **kw), _REF64.conv2d_forward(ax, aw, ab, **kw)
        got = _result(ctx.call("conv2d_forward", x, w, b, **kw), ctx.dtype, ref.shape, what)
        tally.add(assert_dot_bound(got, ref, mag, c * kh * kwid + 1, u=ctx.u, c=ctx.c_dot, what=what + " y"))
        return tally.outcome()
    refs = _REF64.conv2d_vjp(x64, w64, b64, dy64, **kw)
    mags = _REF64.conv2d_vjp(ax, aw, ab, ady, **kw)
    got = ctx.call("conv2d_vjp", x, w, b, dy, **kw)
    _check_tuple(got, 3, what)
    terms = {"dx": o * kh * kwid, "dw": n * ho * wo, "db": n * ho * wo}
    for name, g, r, m in zip(("dx", "dw", "db"), got, refs, mags, strict=True):
        if r is None:
            if g is not None:
                raise ContractFailure(f"{what}: db must be None without a bias, got {type(g).__name__}")
            continue
        g = _result(g, ctx.dtype, r.shape, f"{what} {name}")
        tally.add(assert_dot_bound(g, r, m, terms[name], u=ctx.u, c=ctx.c_dot, what=f"{what} {name}"))
    return tally.outcome()


def _check_tuple(got: Any, n: int, what: str) -> None:
    if not (isinstance(got, (tuple, list)) and len(got) == n):
        raise ContractFailure(f"{what}: expected a tuple of {n} arrays, got {type(got).__name__}")


def _linear_run(ctx: Context, case: sst.LinearCase, vjp: bool) -> Outcome:
    x, w, b, dy = case.arrays(ctx.dtype)
    what = (
        f"linear_{'vjp' if vjp else 'forward'}(x {x.shape}, w {w.shape}, bias={case.bias}, seed={case.seed})"
    )
    x64, w64, b64, dy64 = _f64(x, w, b, dy)
    ax, aw, ab, ady = _abs(x, w, b, dy)
    tally = _Tally()
    if not vjp:
        ref, mag = _REF64.linear_forward(x64, w64, b64), _REF64.linear_forward(ax, aw, ab)
        got = _result(ctx.call("linear_forward", x, w, b), ctx.dtype, ref.shape, what)
        tally.add(
            assert_dot_bound(got, ref, mag, case.in_features + 1, u=ctx.u, c=ctx.c_dot, what=what + " y")
        )
        return tally.outcome()
    refs, mags = _REF64.linear_vjp(x64, w64, b64, dy64), _REF64.linear_vjp(ax, aw, ab, ady)
    got = ctx.call("linear_vjp", x, w, b, dy)
    _check_tuple(got, 3, what)
    terms = {"dx": case.out_features, "dw": case.n, "db": case.n}
    for name, g, r, m in zip(("dx", "dw", "db"), got, refs, mags, strict=True):
        if r is None:
            if g is not None:
                raise ContractFailure(f"{what}: db must be None without a bias, got {type(g).__name__}")
            continue
        g = _result(g, ctx.dtype, r.shape, f"{what} {name}")
        tally.add(assert_dot_bound(g, r, m, terms[name], u=ctx.u, c=ctx.c_dot, what=f"{what} {name}"))
    return tally.outcome()


# =========================================================================================================
# nn: batch norm and cross-entropy (relative to saf_ref float32)
# =========================================================================================================
def _relative(ctx: Context, tally: _Tally, got, ref, ours, what: str, scale: float | None = None) -> None:
    got = _result(got, ctx.dtype, np.shape(ref), what)
    tally.add(assert_relative(got, ref, ours, u=ctx.u, factor=ctx.options.rel_factor, what=what, scale=scale))


def _bn_scales(x, weight, bias, rm, rv, dy, *, train: bool, momentum: float, eps: float) -> dict[str, float]:
    """The magnitude of batch norm's terms, per output tensor (float64): the floor of the relative tier.

    A float implementation of batch norm loses accuracy when the data sit far from zero compared with
    their spread (``a = mean|x| / s`` large, ``s = sqrt(var + eps)``): the mean is off by about
    ``u * mean|x|``, so ``x_hat`` by ``u * (a + |x_hat|)``. PyTorch's evaluation mode also computes
    ``x * (w / s) + (b - rm * w / s)``, whose error is relative to ``|w| (|x| + |rm|) / s``. These are the
    scales; saf_ref's two-pass float32 can be much luckier (its subtractions are often exact), so its own
    error alone would demand more than correct implementations achieve.
    """
    ch = (0, 2, 3)

    def per(v):
        return v[None, :, None, None]

    x, weight, bias, rm, rv, dy = (np.asarray(v, np.float64) for v in (x, weight, bias, rm, rv, dy))
    abs_w, abs_b = per(np.abs(weight)), per(np.abs(bias))
    if not train:
        s = np.sqrt(rv + eps)
        spread = (np.abs(x) + per(np.abs(rm))) / per(s)
        return {"y": float((abs_w * spread + abs_b).max()), "running_mean": float(np.abs(rm).max()),
                "running_var": float(np.abs(rv).max()), "dx": float((abs_w / per(s) * np.abs(dy)).max()),
                "dweight": float(np.sum(np.abs(dy) * spread, axis=ch).max()),
                "dbias": float(np.sum(np.abs(dy), axis=ch).max())}  # fmt: skip
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean, var = x.mean(axis=ch), x.var(axis=ch)
    s, mean_abs = np.sqrt(var + eps), np.abs(x).mean(axis=ch)
    x_hat = (x - per(mean)) / per(s)
    terms = per(mean_abs / s) + np.abs(x_hat)  # a + |x_hat|
    t = per(np.mean(np.abs(dy) * terms, axis=ch))
    return {
        "y": float((abs_w * terms + abs_b).max()),
        "running_mean": float(((1 - momentum) * np.abs(rm) + momentum * mean_abs).max()),
        # a two-pass or Welford variance is off by about u * mean|x| * s (the naive E[x^2] - E[x]^2 by
        # u * mean|x|^2, which this does not allow when the data are offset)
        "running_var": float(((1 - momentum) * rv + momentum * n / (n - 1) * (var + 2 * mean_abs * s)).max()),
        "dx": float((abs_w / per(s) * (np.abs(dy) + per(np.abs(dy).mean(axis=ch)) + 2 * terms * t)).max()),
        "dweight": float(np.sum(np.abs(dy) * (terms + np.abs(x_hat)), axis=ch).max()),
        "dbias": float(np.sum(np.abs(dy), axis=ch).max()),
    }


def _bn_run(ctx: Context, case: sst.BNCase, vjp: bool) -> Outcome:
    arrays = case.arrays(ctx.dtype)
    kw = dict(train=case.train, momentum=case.momentum, eps=case.eps)
    method = "batchnorm2d_vjp" if vjp else "batchnorm2d_forward"
    what = (
        f"{method}(x {case.x_shape}, train={case.train}, momentum={case.momentum!r}, eps={case.eps!r}, "
        f"offset={case.offset!r}, scale={case.scale!r}, seed={case.seed})"
    )
    a64, a32 = _f64(*arrays), _f32(*arrays)
    if not vjp:
        a64, a32, arrays = a64[:5], a32[:5], arrays[:5]
    refs = getattr(_REF64, method)(*a64, **kw)
    ours = getattr(_REF32, method)(*a32, **kw)
    got = ctx.call(method, *arrays, **kw)
    _check_tuple(got, 3, what)
    names = ("dx", "dweight", "dbias") if vjp else ("y", "running_mean", "running_var")
    scales = _bn_scales(*_f64(*case.arrays(np.float64)), **kw)
    tally = _Tally()
    for name, g, r, o in zip(names, got, refs, ours, strict=True):
        _relative(ctx, tally, g, r, o, f"{what} {name}", scale=scales[name])
    return tally.outcome()


def _ce_scale(logits: np.ndarray) -> float:
    """``max_n (max_k |z_nk| + log K)``: the absolute error of a float log-softmax is about u times it."""
    return float(np.max(np.abs(logits), axis=1).max() + math.log(logits.shape[1]))


def _ce_run(ctx: Context, case: sst.CECase, vjp: bool) -> Outcome:
    logits, labels = case.arrays(ctx.dtype)
    what = (
        f"cross_entropy_{'vjp' if vjp else 'forward'}(logits {logits.shape}, scale={case.logit_scale}, "
        f"label_smoothing={case.label_smoothing!r}, seed={case.seed})"
    )
    (z64,), (z32,) = _f64(logits), _f32(logits)
    s = max(_ce_scale(z64), 1.0)
    tally = _Tally()
    ls = dict(label_smoothing=case.label_smoothing)
    if vjp:
        dloss = case.dloss
        ref, ours = (
            _REF64.cross_entropy_vjp(z64, labels, dloss, **ls),
            _REF32.cross_entropy_vjp(z32, labels, dloss, **ls),
        )
        got = ctx.call("cross_entropy_vjp", logits, labels, dloss, **ls)
        _relative(
            ctx, tally, got, ref, ours, f"{what} dlogits (dloss={dloss!r})", scale=abs(dloss) * s / case.n
        )
    else:
        ref, ours = (
            _REF64.cross_entropy_forward(z64, labels, **ls),
            _REF32.cross_entropy_forward(z32, labels, **ls),
        )
        got = ctx.call("cross_entropy_forward", logits, labels, **ls)
        _relative(ctx, tally, got, ref, ours, f"{what} loss", scale=s)
    return tally.outcome()


# =========================================================================================================
# train: SGD (ulp of the magnitude)
# =========================================================================================================
def _sgd_magnitude(params, grads, case: sst.SGDCase) -> dict[str, np.ndarray]:
    """Elementwise magnitude of the SGD iterate: the recurrence run on absolute values, in float64.

    Each step's roundings are relative to its terms, which this bounds; the error of ``steps`` steps is
    then at most about ``(roundings per step) * steps * u`` times it.
    """
    out = {}
    for k, p in params.items():
        mag, buf = np.abs(p.astype(np.float64)), None
        for g in grads:
            d = np.abs(g[k].astype(np.float64)) + case.weight_decay * mag
            if case.momentum:
                buf = d if buf is None else case.momentum * buf + abs(1 - case.dampening) * d
                d = d + case.momentum * buf if case.nesterov else buf
            mag = mag + case.lr * d
        out[k] = mag
    return out


def _sgd_run(ctx: Context, case: sst.SGDCase) -> Outcome:
    params, grads = case.arrays(ctx.dtype)
    cfg = case.config()
    what = f"sgd({case.steps} steps, {_config_text(cfg)}, seed={case.seed})"
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    g64 = [{k: v.astype(np.float64) for k, v in g.items()} for g in grads]
    ref = _REF64.sgd(p64, g64, **cfg)
    mags = _sgd_magnitude(params, grads, case)
    got = ctx.call("sgd", params, grads, **cfg)
    if not isinstance(got, Mapping) or set(got) != set(params):
        raise ContractFailure(
            f"{what}: expected a dict with the keys {sorted(params)}, got {type(got).__name__}"
        )
    tally = _Tally()
    for k in params:
        g = _result(got[k], ctx.dtype, params[k].shape, f"{what} params[{k!r}]")
        tally.add(
            assert_ulp(
                g,
                ref[k],
                n=SGD_ULPS_PER_STEP * case.steps,
                u=ctx.u,
                magnitude=mags[k],
                what=f"{what} params[{k!r}]",
            )
        )
    return tally.outcome()


# =========================================================================================================
# model (relative to saf_ref float32)
# =========================================================================================================
def _batch_orders(n: int, seed: int) -> list[np.ndarray]:
    """Batch orders for the float32 spread: as given, reversed, and one random permutation."""
    orders = [np.arange(n), np.arange(n)[::-1], np.random.default_rng(seed).permutation(n)]
    return [o for i, o in enumerate(orders) if not any(np.array_equal(o, p) for p in orders[:i])]


def _model_run(ctx: Context, case: sst.ModelCase) -> Outcome:
    params, state, x, labels = case.arrays(ctx.dtype)
    kw = dict(train=case.train, transform=case.transform)
    what = (
        f"model[{case.arch}](width={case.width}, classes={case.num_classes}, x {x.shape}, "
        f"train={case.train}, transform={case.transform}, seed={case.seed})"
    )

    def cast(d, f):
        return {k: f(v)[0] for k, v in d.items()}

    ref = _REF64.model_forward_backward(
        case.arch, cast(params, _f64), cast(state, _f64), *_f64(x), labels, **kw
    )
    # saf_ref float32 with the batch in several orders: the sums of batch norm and of the weight gradients
    # are then taken in other orders, sampling the spread of float32 rounding in this (possibly
    # ill-conditioned) network; outputs are mapped back to the original order.
    ours = []
    for order in _batch_orders(x.shape[0], case.seed):
        r = _REF32.model_forward_backward(
            case.arch, cast(params, _f32), cast(state, _f32), *_f32(x[order]), labels[order], **kw
        )
        ours.append(r._replace(logits=r.logits[np.argsort(order)]))
    got = ctx.call("model_forward_backward", case.arch, params, state, x, labels, **kw)
    if not (isinstance(got, tuple) and len(got) == 4):
        raise ContractFailure(f"{what}: expected a ModelResult (logits, loss, new_state, grads)")
    tally = _Tally()
    _relative(ctx, tally, got[0], ref.logits, [o.logits for o in ours], f"{what} logits")
    loss_scale = max(_ce_scale(np.asarray(ref.logits, dtype=np.float64)), 1.0)  # as for cross_entropy
    _relative(
        ctx, tally, np.asarray(got[1]), ref.loss, [o.loss for o in ours], f"{what} loss", scale=loss_scale
    )
    for group in ("new_state", "grads"):
        g_dict, r_dict = got[2 if group == "new_state" else 3], getattr(ref, group)
        if not isinstance(g_dict, Mapping) or set(g_dict) != set(r_dict):
            missing = sorted(set(r_dict) - set(g_dict)) if isinstance(g_dict, Mapping) else "all"
            raise ContractFailure(f"{what}: {group} must have the keys of the state dict; missing {missing}")
        for k in r_dict:
            samples = [getattr(o, group)[k] for o in ours]
            _relative(ctx, tally, g_dict[k], r_dict[k], samples, f"{what} {group}[{k!r}]")
    return tally.outcome()


def _make_model(arch: str) -> Check:
    def explicit(ctx: Context):
        return [sst.ModelCase(arch, 2, 3, 2, sst.MODEL_IMAGES[arch][0], True, None, 0)]

    return Check(
        f"model[{arch}]",
        "relative",
        ("model_forward_backward",),
        lambda ctx: sst.model_cases(arch),
        _model_run,
        explicit=explicit,
        cost=10,
        doc=f"{arch} forward, mean cross-entropy and backward from a torchvision state dict",
    )


# =========================================================================================================
# The registry
# =========================================================================================================
def _simple(name, contract, method, strategy, run, explicit=None, doc="", cost=1) -> Check:
    return Check(name, contract, (method,), strategy, run, explicit or (lambda ctx: []), cost, doc)


def all_checks() -> list[Check]:
    """Every check, in report order: bits, protect, nn, train, model."""
    checks: list[Check] = [_make_encode(f) for f in ENCODE_FORMATS]
    checks += [_make_decode(f) for f in DECODE_FORMATS]
    checks += [
        _simple(
            "flip_by_uniform",
            "exact",
            "flip_by_uniform",
            lambda ctx: sst.flip_cases(),
            _flip_run,
            _flip_explicit,
            "flip bit j iff uniform[..., j] < float32(p), bit 0 = LSB",
        ),
        _simple(
            "apply_faults",
            "exact",
            "apply_faults",
            lambda ctx: _fault_cases(),
            _faults_run,
            _faults_explicit,
            "apply a FaultList: flips (duplicates cancel), then stuck-at bits",
        ),
        _simple(
            "quantize",
            "exact",
            "quantize",
            lambda ctx: sst.quantizer_cases(),
            _quantize_run,
            _quant_explicit,
            "per-tensor quantizer codes and context (ties to even, clipping)",
        ),
        _simple(
            "dequantize",
            "exact",
            "dequantize",
            lambda ctx: _dequant_cases(),
            _dequantize_run,
            _dequant_explicit,
            "values of quantized codes (every code first)",
        ),
    ]
    for vjp in (False, True):
        checks += [_make_transform(name, vjp) for name in TRANSFORMS]
    checks += [
        _simple(
            "relu_forward",
            "exact",
            "relu_forward",
            lambda ctx: _relu_cases(ctx.dtype),
            _relu_forward_run,
            _relu_explicit,
            "relu, bit for bit (relu(-0.0) = -0.0, NaN passes)",
        ),
        _simple(
            "relu_vjp",
            "exact",
            "relu_vjp",
            lambda ctx: _relu_cases(ctx.dtype),
            _relu_vjp_run,
            _relu_explicit,
            "relu gradient, bit for bit (ReLU'(0) = 0)",
        ),
        _simple(
            "maxpool2d_forward",
            "exact",
            "maxpool2d_forward",
            lambda ctx: sst.maxpool_cases(),
            _maxpool_forward_run,
            lambda ctx: [sst.PoolCase((2, 2, 7, 7), (3, 3), (2, 2), (1, 1), 0)],
            "max pooling (a selection: exact)",
        ),
        _simple(
            "maxpool2d_vjp",
            "dot",
            "maxpool2d_vjp",
            lambda ctx: sst.maxpool_cases(),
            _maxpool_vjp_run,
            lambda ctx: [sst.PoolCase((2, 2, 7, 7), (3, 3), (2, 2), (1, 1), 0)],
            "max pooling gradient (overlapping windows add)",
        ),
        _simple(
            "global_avgpool_forward",
            "dot",
            "global_avgpool_forward",
            lambda ctx: sst.avgpool_cases(),
            _avgpool_forward_run,
            doc="spatial mean",
        ),
        _simple(
            "global_avgpool_vjp",
            "dot",
            "global_avgpool_vjp",
            lambda ctx: sst.avgpool_cases(),
            _avgpool_vjp_run,
            doc="spatial mean gradient",
        ),
    ]
    # Each op has a forward check and a vector-Jacobian-product check under the same contract.
    conv_edge = [sst.ConvCase(*sst.CONV_EDGES[0], True, "normal", 0)]
    linear_edge = [sst.LinearCase(4, 16, 5, True, "normal", 0)]
    bn_edge = [
        sst.BNCase((4, 3, 3, 3), True, 0.1, 1e-5, 0.0, 1.0, 0),
        sst.BNCase((2, 2, 2, 2), False, 0.1, 1e-5, 1.0, 1.0, 1),
    ]
    ce_edge = [sst.CECase(4, 5, 1.0, 0.0, 1.0, 0), sst.CECase(3, 4, 10.0, 0.1, 1.0, 1)]
    pairs = [
        ("conv2d", "dot", sst.conv_cases, _conv_run, conv_edge, "conv2d output", "conv2d dx, dw, db"),
        ("linear", "dot", sst.linear_cases, _linear_run, linear_edge, "linear output", "linear dx, dw, db"),
        ("batchnorm2d", "relative", sst.bn_cases, _bn_run, bn_edge,
         "batch norm output and running statistics", "batch norm dx, dweight, dbias"),
        ("cross_entropy", "relative", sst.ce_cases, _ce_run, ce_edge,
         "mean softmax cross-entropy loss", "mean softmax cross-entropy gradient"),
    ]  # fmt: skip
    for op, contract, cases, run, edge, doc_forward, doc_vjp in pairs:
        for vjp, doc in ((False, doc_forward), (True, doc_vjp)):
            method = f"{op}_vjp" if vjp else f"{op}_forward"
            checks.append(
                _simple(
                    method,
                    contract,
                    method,
                    lambda ctx, cases=cases: cases(),
                    lambda ctx, case, run=run, vjp=vjp: run(ctx, case, vjp),
                    lambda ctx, edge=edge: edge,
                    doc,
                )
            )
    sgd_edge = [
        sst.SGDCase(((3, 2), (4,)), 3, 0.1, 0.9, 0.0, 5e-4, False, 0),
        sst.SGDCase(((5,),), 2, 0.05, 0.9, 0.0, 0.0, True, 1),
    ]
    checks.append(
        _simple(
            "sgd",
            "ulp",
            "sgd",
            lambda ctx: sst.sgd_cases(),
            _sgd_run,
            lambda ctx: sgd_edge,
            "torch.optim.SGD steps (momentum, dampening, Nesterov, weight decay)",
        )
    )
    checks += [_make_model(arch) for arch in ARCHS]
    return checks


CHECKS: tuple[str, ...] = tuple(c.name for c in all_checks())
