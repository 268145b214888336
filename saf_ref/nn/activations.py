"""ReLU and ReLU with a ceiling (clipped ReLU): forward, backward and VJP wrappers.

Both are elementwise and exact: no rounding happens, so results are compared bit for bit (signed zeros
included) with other implementations. Conventions follow PyTorch's CPU kernels:

- ``relu(x) = 0 if x < 0 else x``, so ``relu(-0.0) = -0.0`` and ``relu(nan) = nan`` (``torch.relu``);
- the gradient is zero where ``x <= 0`` and passes elsewhere, so ReLU'(0) = 0 and a NaN input passes
  its gradient through (``threshold_backward``).

Backward passes build a new array (``np.where``); they never write into the caller's ``dy``, the classic
``dout[x <= 0] = 0`` bug.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saf_ref import validation

__all__ = [
    "ReluCache",
    "ReluClippedCache",
    "ReluClippedGrads",
    "ReluGrads",
    "relu_backward",
    "relu_clipped_backward",
    "relu_clipped_forward",
    "relu_clipped_vjp",
    "relu_forward",
    "relu_vjp",
]


class ReluCache(NamedTuple):
    """What :func:`relu_backward` needs.

    Attributes
    ----------
    passes : ndarray of bool, shape of ``x``
        True where the gradient flows (``not x <= 0``).
    dtype : numpy.dtype
        The dtype of ``x`` (``dy`` must have it).
    """

    passes: np.ndarray
    dtype: np.dtype


class ReluGrads(NamedTuple):
    """Gradient of :func:`relu_forward` with respect to ``x`` (same shape and dtype)."""

    dx: np.ndarray


class ReluClippedCache(NamedTuple):
    """What :func:`relu_clipped_backward` needs.

    Attributes
    ----------
    passes : ndarray of bool, shape of ``x``
        True where the gradient flows: ``0 < x < ceiling``, or ``x`` is NaN.
    dtype : numpy.dtype
        The dtype of ``x`` (``dy`` must have it).
    """

    passes: np.ndarray
    dtype: np.dtype


class ReluClippedGrads(NamedTuple):
    """Gradient of :func:`relu_clipped_forward` with respect to ``x`` (same shape and dtype)."""

    dx: np.ndarray


def _check_backward(fn: str, dy, cache) -> None:
    """Validate ``dy`` against the cached mask shape and input dtype."""
    validation.check_float(dy, "dy", fn)
    if dy.dtype != cache.dtype:
        raise TypeError(
            f"{fn}: dy.dtype (={dy.dtype}) must equal x.dtype (={cache.dtype}); "
            "mixed dtypes are not promoted, cast explicitly"
        )
    validation.check_shape(dy, "dy", fn, cache.passes.shape)


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, ReluCache]:
    """Rectified linear unit, like ``torch.relu(x)``.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    cache : ReluCache

    Math
    ----
    ``y = max(x, 0)``; precisely ``y = 0 if x < 0 else x``.

    Notes
    -----
    ``relu(-0.0)`` is ``-0.0`` and ``relu(nan)`` is ``nan``, matching PyTorch bit for bit.
    """
    fn = "relu"
    validation.check_float(x, "x", fn)
    zero = x.dtype.type(0)
    y = np.where(x < 0, zero, x)  # keeps -0.0 and NaN as PyTorch does (np.maximum(-0., 0.) gives +0.)
    return y, ReluCache(~(x <= 0), x.dtype)


def relu_backward(dy: np.ndarray, cache: ReluCache) -> ReluGrads:
    """Gradient of :func:`relu_forward` (``torch.ops.aten.threshold_backward(dy, x, 0)``).

    Math
    ----
    ``dx = dy if x > 0 else 0``; ReLU'(0) = 0. A NaN input passes its gradient (PyTorch's convention:
    the mask is ``not (x <= 0)``).
    """
    fn = "relu_backward"
    if not isinstance(cache, ReluCache):
        raise TypeError(f"{fn}: cache must be a ReluCache from relu_forward, got {type(cache).__name__}")
    _check_backward(fn, dy, cache)
    return ReluGrads(np.where(cache.passes, dy, dy.dtype.type(0)))


def relu_vjp(x: np.ndarray, dy: np.ndarray) -> ReluGrads:
    """Vector-Jacobian product of :func:`relu_forward` at ``x`` applied to ``dy``."""
    _, cache = relu_forward(x)
    return relu_backward(dy, cache)


def _check_ceiling(ceiling, fn: str, dtype: np.dtype) -> np.floating:
    """A finite real ceiling > 0, rounded to ``dtype``; it must stay finite and > 0 there too.

    (``float32(1e39)`` is inf, which would silently turn the clipped ReLU into a plain one, and
    ``float32(1e-50)`` is 0, which would zero every activation.)
    """
    c = validation.check_real(ceiling, "ceiling", fn)
    if not (np.isfinite(c) and c > 0):
        raise ValueError(f"{fn}: ceiling must be finite and > 0, got {ceiling!r}")
    with np.errstate(over="ignore", under="ignore"):
        rounded = dtype.type(c)
    if not (np.isfinite(rounded) and rounded > 0):
        raise ValueError(
            f"{fn}: ceiling must be finite and > 0 in {dtype}, the dtype of x, got {ceiling!r}, "
            f"which rounds to {rounded!r}"
        )
    return rounded


def relu_clipped_forward(x: np.ndarray, *, ceiling: float) -> tuple[np.ndarray, ReluClippedCache]:
    """ReLU with a ceiling, like ``torch.nn.functional.hardtanh(x, 0.0, ceiling)`` (ReLU6 for 6).

    Used by the activation-clipping baseline (bounded activations limit how far a corrupted weight can
    push the signal).

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    ceiling : float, finite, > 0
        The upper bound ``c``; rounded to the dtype of ``x`` (round to nearest even).

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    cache : ReluClippedCache

    Math
    ----
    ``y = min(max(x, 0), c)``; precisely ``0 if x < 0, c if x > c, else x``.

    Notes
    -----
    ``-0.0`` and NaN pass unchanged, as in PyTorch's ``hardtanh``/``clamp``. The gradient is zero at
    both kinks (``x = 0`` and ``x = c``), PyTorch's ``hardtanh_backward`` convention (``clamp``'s
    gradient differs: it passes at the bounds).
    """
    fn = "relu_clipped"
    validation.check_float(x, "x", fn)
    c = _check_ceiling(ceiling, fn, x.dtype)
    zero = x.dtype.type(0)
    y = np.where(x < 0, zero, np.where(x > c, c, x))
    return y, ReluClippedCache(~((x <= 0) | (x >= c)), x.dtype)


def relu_clipped_backward(dy: np.ndarray, cache: ReluClippedCache) -> ReluClippedGrads:
    """Gradient of :func:`relu_clipped_forward` (``hardtanh_backward(dy, x, 0, c)`` in PyTorch).

    Math
    ----
    ``dx = dy if 0 < x < c else 0``: zero at both kinks; a NaN input passes its gradient, as in PyTorch.
    """
    fn = "relu_clipped_backward"
    if not isinstance(cache, ReluClippedCache):
        raise TypeError(
            f"{fn}: cache must be a ReluClippedCache from relu_clipped_forward, got {type(cache).__name__}"
        )
    _check_backward(fn, dy, cache)
    return ReluClippedGrads(np.where(cache.passes, dy, dy.dtype.type(0)))


def relu_clipped_vjp(x: np.ndarray, dy: np.ndarray, *, ceiling: float) -> ReluClippedGrads:
    """Vector-Jacobian product of :func:`relu_clipped_forward` at ``x`` applied to ``dy``."""
    _, cache = relu_clipped_forward(x, ceiling=ceiling)
    return relu_clipped_backward(dy, cache)
