"""The dot-product error bound (DESIGN.md, section 5) used to compare low-precision results with float64.

A dot product of ``K`` terms computed in floating point with unit roundoff ``u``, in *any* summation
order (sequential, pairwise, blocked BLAS, with or without FMA), satisfies (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., section 3.1)::

    |fl(x . w) - x . w| <= gamma_K(u) * (|x| . |w|),      gamma_K(u) = K*u / (1 - K*u).

The right-hand side scales with the *magnitudes* of the terms, not with the result, so it stays honest
where the result cancels to nearly zero (a flat relative tolerance fails there, or must be made so loose
that it tests nothing). ``|x| . |w|`` is obtained by running the float64 op on absolute values: for a
convolution, ``conv2d(|x|, |w|, |b|)``; for its input gradient, the input gradient of ``|dy|`` and
``|w|``; and so on. The float64 reference contributes its own ``gamma_K(2**-53)``, negligible next to
float32's.

This module is the reusable piece (the oracle kit builds on it); it is test machinery, so it reports
failures with ``AssertionError``, and validates its own arguments with :mod:`saf_ref.validation`.
"""

from __future__ import annotations

import numpy as np

from saf_ref import validation

__all__ = ["assert_within_dot_bound", "dot_bound", "gamma", "unit_roundoff"]

#: Unit roundoff (half an ulp of 1) of the working formats: 2**-(precision).
_UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}


def unit_roundoff(dtype) -> float:
    """Unit roundoff ``u`` of float32 (``2**-24``) or float64 (``2**-53``).

    Other backends declare their own ``u`` (TF32: ``2**-11``, bfloat16: ``2**-8``).
    """
    try:  # np.dtype(None) is float64: reject None rather than silently choose
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in _UNIT_ROUNDOFF:
        got = dt if dt is not None else repr(dtype)
        raise TypeError(f"unit_roundoff: dtype must be float32 or float64, got {got}")
    return _UNIT_ROUNDOFF[dt]


def gamma(k: int, u: float) -> float:
    """Higham's ``gamma_k(u) = k*u / (1 - k*u)``, defined for ``k*u < 1``.

    Math
    ----
    A product of ``k`` factors ``(1 + delta_i)^(+-1)`` with ``|delta_i| <= u`` lies within
    ``1 +- gamma_k(u)``: the accumulated relative error of ``k`` roundings.
    """
    k = validation.check_int(k, "k", "gamma", low=0)
    u = validation.check_real(u, "u", "gamma")
    if not 0.0 < u < 1.0:
        raise ValueError(f"gamma: u must be in (0, 1), got {u!r}")
    if k * u >= 1.0:
        raise ValueError(f"gamma: k*u must be < 1 for the bound to exist, got k*u = {k * u!r}")
    return k * u / (1.0 - k * u)


def dot_bound(magnitude: np.ndarray, k: int, *, u: float, c: float = 1.0) -> np.ndarray:
    """Elementwise bound ``c * gamma_k(u) * magnitude`` on ``|got - ref64|``.

    Parameters
    ----------
    magnitude : ndarray
        ``|x| . |w|`` for each output (float64, non-negative).
    k : int
        The number of terms (products and additions) accumulated into one output.
    u : float
        Unit roundoff of the implementation under test.
    c : float
        Safety factor, 1 for a plain dot product (the bound is then rigorous).
    """
    validation.check_float(magnitude, "magnitude", "dot_bound")
    c = validation.check_real(c, "c", "dot_bound")
    if not c > 0:
        raise ValueError(f"dot_bound: c must be > 0, got {c!r}")
    return c * gamma(k, u) * magnitude.astype(np.float64)


def _index(flat: np.intp, shape) -> tuple[int, ...]:
    """A flat index as a tuple of Python ints (prints as ``(1, 2)``)."""
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def assert_within_dot_bound(
    got: np.ndarray,
    ref: np.ndarray,
    magnitude: np.ndarray,
    k: int,
    *,
    u: float,
    c: float = 1.0,
    what: str = "result",
    repro: str = "",
) -> None:
    """Assert ``|got - ref| <= c * gamma_k(u) * magnitude`` elementwise.

    Non-finite references must be matched exactly (same infinity, or NaN for NaN).

    Parameters
    ----------
    got : ndarray
        Result of the implementation under test (any float dtype; compared in float64).
    ref : ndarray
        The float64 reference, same shape.
    magnitude : ndarray
        ``|x| . |w|``, same shape (see the module docstring).
    k, u, c
        As in :func:`dot_bound`.
    what : str
        Names the quantity in the failure message (``"conv2d dx (float32)"``).
    repro : str
        How to reproduce (seed, shapes, call), appended to the failure message.

    Raises
    ------
    AssertionError
        Naming the worst element: its index, ``got``, ``ref``, the difference, the bound and its
        ingredients, how many elements fail, and ``repro``.
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    magnitude = np.asarray(magnitude, dtype=np.float64)
    if not (got.shape == ref.shape == magnitude.shape):
        raise AssertionError(
            f"{what}: shapes differ: got {got.shape}, ref {ref.shape}, magnitude {magnitude.shape}"
        )
    tail = f"; reproduce: {repro}" if repro else ""
    finite = np.isfinite(ref)
    same_special = (got == ref) | (np.isnan(got) & np.isnan(ref))
    if not np.all(same_special[~finite]):
        idx = _index(np.argmax(~finite & ~same_special), ref.shape)
        raise AssertionError(
            f"{what}: at {idx} got {float(got[idx])!r} but the reference is {float(ref[idx])!r}{tail}"
        )
    bound = dot_bound(magnitude, k, u=u, c=c)
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf: masked out just below
        err = np.where(finite, np.abs(got - ref), 0.0)
    bad = ~(err <= bound)  # also catches a NaN in got where ref is finite
    if np.any(bad):
        excess = np.where(bad, np.nan_to_num(err - bound, nan=np.inf), -np.inf)
        idx = _index(np.argmax(excess), ref.shape)
        raise AssertionError(
            f"{what}: |got - ref64| exceeds c*gamma_K(u)*(|x|.|w|) at index {idx}: got {float(got[idx])!r}, "
            f"ref {float(ref[idx])!r}, |diff| = {err[idx]:.3e} > bound {bound[idx]:.3e} "
            f"(c={c}, K={k}, u={u:.3e}, |x|.|w| = {magnitude[idx]:.3e}); "
            f"{int(bad.sum())} of {bad.size} elements fail{tail}"
        )
