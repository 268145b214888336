"""Fully connected layer (PyTorch ``torch.nn.functional.linear``): forward, backward and a VJP wrapper.

Caches keep references to the caller's arrays; treat them as immutable between forward and backward.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saf_ref import validation

__all__ = ["LinearCache", "LinearGrads", "linear_backward", "linear_forward", "linear_vjp"]


class LinearCache(NamedTuple):
    """What :func:`linear_backward` needs.

    Attributes
    ----------
    x : ndarray, shape (N, in_features)
    w : ndarray, shape (out_features, in_features)
    has_bias : bool
    """

    x: np.ndarray
    w: np.ndarray
    has_bias: bool


class LinearGrads(NamedTuple):
    """Gradients with respect to the inputs of :func:`linear_forward`.

    Attributes
    ----------
    dx : ndarray, shape (N, in_features)
    dw : ndarray, shape (out_features, in_features)
    db : ndarray of shape (out_features,), or None when the forward pass had no bias
    """

    dx: np.ndarray
    dw: np.ndarray
    db: np.ndarray | None


def _check_linear_inputs(fn, x, w, b) -> None:
    """Every check of :func:`linear_forward`'s arguments."""
    validation.check_float(x, "x", fn)
    validation.check_float(w, "w", fn)
    if b is not None:
        validation.check_float(b, "b", fn)
    validation.check_same_dtype(fn, x=x, w=w, b=b)
    validation.check_ndim(x, "x", fn, 2, "(N, in_features)")
    validation.check_ndim(w, "w", fn, 2, "(out_features, in_features)")
    for name, a in (("x", x), ("w", w)):
        for axis, size in enumerate(a.shape):
            validation.check_int(size, f"{name}.shape[{axis}]", fn, low=1)
    validation.check_equal(fn, "w.shape[1]", w.shape[1], "x.shape[1]", x.shape[1], "the input features")
    if b is not None:
        validation.check_shape(b, "b", fn, (w.shape[0],))


def linear_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None
) -> tuple[np.ndarray, LinearCache]:
    """Affine map ``x @ w.T + b``, like ``torch.nn.functional.linear(x, w, b)``.

    Parameters
    ----------
    x : ndarray, shape (N, in_features), float32 or float64
    w : ndarray, shape (out_features, in_features), dtype of ``x``
        PyTorch's layout (``nn.Linear.weight``).
    b : ndarray of shape (out_features,), dtype of ``x``, or None

    Returns
    -------
    y : ndarray, shape (N, out_features)
    cache : LinearCache

    Math
    ----
    ``y[n, o] = b[o] + sum_i x[n, i] * w[o, i]``.

    Notes
    -----
    Only 2-D inputs: flatten first (PyTorch also accepts extra leading dimensions).
    """
    _check_linear_inputs("linear", x, w, b)
    y = x @ w.T
    if b is not None:
        y += b  # y is a new array: adding in place is safe
    return y, LinearCache(x, w, b is not None)


def linear_backward(dy: np.ndarray, cache: LinearCache) -> LinearGrads:
    """Gradients of :func:`linear_forward`.

    Parameters
    ----------
    dy : ndarray, shape (N, out_features), dtype of the forward input
    cache : LinearCache

    Returns
    -------
    LinearGrads

    Math
    ----
    ``dx = dy @ w``, ``dw = dy.T @ x``, ``db = sum_n dy[n]``.
    """
    fn = "linear_backward"
    if not isinstance(cache, LinearCache):
        raise TypeError(f"{fn}: cache must be a LinearCache from linear_forward, got {type(cache).__name__}")
    x, w, has_bias = cache
    validation.check_float(dy, "dy", fn)
    validation.check_same_dtype(fn, x=x, dy=dy)
    validation.check_shape(dy, "dy", fn, (x.shape[0], w.shape[0]))
    db = dy.sum(axis=0) if has_bias else None
    return LinearGrads(dy @ w, dy.T @ x, db)


def linear_vjp(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, dy: np.ndarray) -> LinearGrads:
    """Vector-Jacobian product of :func:`linear_forward` at ``(x, w, b)`` applied to ``dy``."""
    _, cache = linear_forward(x, w, b)
    return linear_backward(dy, cache)
