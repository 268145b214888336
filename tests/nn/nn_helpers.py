"""Shared helpers for the tests of :mod:`saf_ref.nn` ops: error measures and central differences.

Imported by the test modules of this folder (pytest puts the folder on ``sys.path``).
"""

from __future__ import annotations

import numpy as np

#: Float64 forward results must match the naive loops to this normwise relative error.
NAIVE_RTOL = 1e-12
#: Analytic float64 gradients must match central differences to this normwise relative error.
FD_RTOL = 1e-7


def rel_error(got, ref) -> float:
    """Normwise relative error ``max|got - ref| / max|ref|`` (0 when both are all zero).

    Normwise rather than elementwise, so that outputs that cancel to nearly zero do not dominate; the
    float32 tests use the elementwise dot-product bound instead.
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = np.max(np.abs(ref), initial=0.0)
    diff = np.max(np.abs(got - ref), initial=0.0)
    return 0.0 if diff == 0.0 else diff / scale if scale > 0 else np.inf


def numerical_vjp(f, x: np.ndarray, dy, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of ``sum(f(x) * dy)`` with respect to ``x`` (cs231n style).

    ``x`` is copied to float64 and perturbed one element at a time (``x +- h``); ``f`` must be a pure
    function of its argument. Cost: ``2 * x.size`` calls of ``f``, so keep the shapes small.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    dy = np.asarray(dy, np.float64)
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        plus = np.sum(np.asarray(f(x), np.float64) * dy)
        x[idx] = old - h
        minus = np.sum(np.asarray(f(x), np.float64) * dy)
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * h)
    return grad


def assert_gradient(analytic, f, x, dy, *, what: str, h: float = 1e-6, rtol: float = FD_RTOL) -> None:
    """Check an analytic float64 gradient against :func:`numerical_vjp`."""
    numeric = numerical_vjp(f, x, dy, h)
    err = rel_error(analytic, numeric)
    assert err <= rtol, f"{what}: analytic vs central differences, relative error {err:.3e} > {rtol:.0e}"


def float32_and_64(rng: np.random.Generator, *shapes, scale: float = 1.0):
    """Random float32 arrays and their exact float64 copies: ``[(a32, a64), ...]``.

    Drawing in float32 and widening makes the two precisions see *the same* inputs, so the float32
    result's error is the op's own, not the inputs' rounding.
    """
    out = []
    for shape in shapes:
        a32 = (scale * rng.standard_normal(shape)).astype(np.float32)
        out.append((a32, a32.astype(np.float64)))
    return out


def snapshot(*arrays):
    """Byte copies of arrays (None kept), to check later that nothing was modified."""
    return [None if a is None else (a.shape, a.dtype, a.tobytes()) for a in arrays]


def assert_unchanged(before, *arrays) -> None:
    """Fail when an array differs from its :func:`snapshot` (bit for bit)."""
    for i, (snap, a) in enumerate(zip(before, arrays, strict=True)):
        if snap is None:
            assert a is None
            continue
        assert (a.shape, a.dtype, a.tobytes()) == snap, f"input {i} was modified"


def assert_no_alias(outputs, inputs) -> None:
    """No returned array shares memory with an input (a caller may then modify outputs freely)."""
    for o in outputs:
        if isinstance(o, np.ndarray):
            for a in inputs:
                if isinstance(a, np.ndarray):
                    assert not np.shares_memory(o, a), "an output aliases an input"
