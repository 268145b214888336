"""The frame every check shares: options, the context, the check record, and small result helpers.

A :class:`Check` pairs a hypothesis strategy of cases with a function that runs one case on the backend
and on saf_ref and applies a contract of :mod:`saf_ref.testing.contracts`; :class:`Context` is what
that function is given (the backend, its declared roundoff, the options). The helpers here check a
backend's result (:func:`result`, :func:`check_tuple`), cast inputs for the references (:func:`f64`,
:func:`f32`, :func:`abs64`), and collect the worst ratio of one example (:class:`Tally`).
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

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList
from saf_ref.testing.contracts import NAN_POLICIES, ContractFailure, assert_relative
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.protocol import BackendInfo

__all__ = [
    "Boundary",
    "NARROWING",
    "OVERFLOW",
    "REF32",
    "REF64",
    "Check",
    "Context",
    "Outcome",
    "SuiteOptions",
    "Tally",
    "Unsupported",
    "abs64",
    "label",
    "check_relative",
    "check_tuple",
    "config_text",
    "f32",
    "f64",
    "result",
    "simple_check",
]

NARROWING = ("direct", "via-float32")
OVERFLOW = ("ieee", "saturate")

#: saf_ref itself in float64 (the reference of the tolerance tiers) and in float32 (the relative tier)
REF64 = NumpyBackend(dtype="float64")
REF32 = NumpyBackend(dtype="float32")


@dataclass(frozen=True)
class Boundary:
    """One row of a check's boundary table: the class of inputs it covers and the case that covers it.

    Every check lists its boundary classes (special values with every NaN kind, subnormals, signed zeros,
    the extremes and overflow edges of each format, ranks 0 to 4 and non-contiguous layouts, channel
    counts, option combinations, ...) as ``Check.explicit``; the suite runs each of them first, on every
    run, before the generated examples, and records which ran (``saf-ref check --coverage``).
    """

    name: str
    case: Any


def label(cases: list, prefix: str = "boundary example") -> list[Boundary]:
    """Cases as :class:`Boundary` rows (those already labelled kept; others numbered ``prefix i``)."""
    return [c if isinstance(c, Boundary) else Boundary(f"{prefix} {i + 1}", c) for i, c in enumerate(cases)]


#: Methods that return several results, and what each is (a wrong arity is reported naming the method)
RESULT_PARTS: dict[str, tuple[str, ...]] = {
    "quantize": ("codes", "context"),
    "conv2d_vjp": ("dx", "dw", "db"),
    "linear_vjp": ("dx", "dw", "db"),
    "batchnorm2d_forward": ("y", "new_running_mean", "new_running_var"),
    "batchnorm2d_vjp": ("dx", "dweight", "dbias"),
}


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
        except Exception as err:  # the backend's own error: the report names the method that raised it
            raise ContractFailure(
                f"{self.check_name}: backend.{method} raised {type(err).__name__}: {err}"
            ) from err
        parts = RESULT_PARTS.get(method)
        if parts and not (isinstance(out, (tuple, list)) and len(out) == len(parts)):
            raise ContractFailure(
                f"{self.check_name}: backend.{method} must return a tuple ({', '.join(parts)}), "
                f"got {validation.describe(out)}"
            )
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


class Tally:
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
    explicit : callable(Context) -> list of Boundary (or bare cases)
        The boundary table: named boundary classes, each with its case, run before the generated ones.
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


def result(got: Any, dtype: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
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


def f64(*arrays):
    """The arrays as float64 (None stays None)."""
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def f32(*arrays):
    """The arrays as float32 (None stays None)."""
    return [None if a is None else np.asarray(a, dtype=np.float32) for a in arrays]


def abs64(*arrays):
    """``|a|`` in float64 for each array (None stays None): the magnitudes of the dot-product bound."""
    return [None if a is None else np.abs(np.asarray(a, dtype=np.float64)) for a in arrays]


def check_tuple(got: Any, n: int, what: str) -> None:
    """A ContractFailure unless ``got`` is a tuple (or list) of ``n`` results."""
    if not (isinstance(got, (tuple, list)) and len(got) == n):
        raise ContractFailure(f"{what}: expected a tuple of {n} arrays, got {type(got).__name__}")


def config_text(config: Mapping[str, Any]) -> str:
    """``k=v, ...`` of a configuration for messages (None values left out)."""
    return ", ".join(f"{k}={v!r}" for k, v in config.items() if v is not None)


def check_relative(ctx: Context, tally: Tally, got, ref, ours, what: str, scale: float | None = None) -> None:
    """The relative tier on one result of the backend's dtype; the ratio goes into ``tally``."""
    got = result(got, ctx.dtype, np.shape(ref), what)
    tally.add(assert_relative(got, ref, ours, u=ctx.u, factor=ctx.options.rel_factor, what=what, scale=scale))


def simple_check(name, contract, method, strategy, run, explicit=None, doc="", cost=1) -> Check:
    """A check of one backend method (``methods = (method,)``)."""
    return Check(name, contract, (method,), strategy, run, explicit or (lambda ctx: []), cost, doc)
