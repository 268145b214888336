"""ReLU and ReLU with a ceiling (clipped ReLU): forward, backward and VJP wrappers.

Both are elementwise and exact: no rounding happens, so results are compared bit for bit (signed zeros
included) with other implementations. Conventions follow PyTorch's CPU kernels:

- ``relu(x) = 0 if x < 0 else x``, so ``relu(-0.0) = -0.0`` and ``relu(nan) = nan`` (``torch.relu``);
- the gradient is zero where ``x <= 0`` and passes elsewhere, so ReLU'(0) = 0 and a NaN input passes
  its gradient through (``threshold_backward``).

Backward passes build a new array; they never write into the caller's ``dy``, the classic
``dout[x <= 0] = 0`` bug.

Implementation: "keep ``v`` or put +0.0" is a bitwise AND of ``v``'s bits with a mask that is all ones
(keep) or all zeros (+0.0), built from a boolean comparison. That is exact by construction (signed zeros,
infinities and NaN payloads are copied bit for bit) and costs a few plain integer passes instead of
``np.where``'s element-wise select: on a (128, 16, 32, 32) float32 batch the forward pass went from
9.5 ms to 3 ms and the backward pass from 8.2 ms to 1.7 ms (``np.where(x < 0, 0, x)`` and
``np.where(passes, dy, 0)`` remain the specification, as do the loops of :mod:`saf_ref.nn.naive`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.nn.conv import scratch_buffer

__all__ = [
    "ReluCache",
    "ReluClippedCache",
    "ReluClippedGrads",
    "ReluGrads",
    "relu_backward",
    "relu_clipped_backward",
    "relu_clipped_ceiling",
    "relu_clipped_forward",
    "relu_clipped_inplace",
    "relu_clipped_vjp",
    "relu_forward",
    "relu_inplace",
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


# The signed integer type of each float type's width: a comparison's bool (0 or 1) becomes the mask 0 or
# -1 (all bits set) in it.
_BITS = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _compare(op, x: np.ndarray, value, out: np.ndarray | None = None) -> np.ndarray:
    """``op(x, value)`` as a bool array of ``x``'s shape (an array even for 0-d ``x``), into ``out``."""
    return op(x, value, out=np.empty(x.shape, bool) if out is None else out)


def _and_mask(v: np.ndarray, flags: np.ndarray, *, keep_if: bool) -> np.ndarray:
    """``v`` where ``flags == keep_if``, +0.0 elsewhere, as a new array: ``bits(v) & mask``.

    The mask is all ones (-1) where ``v`` is kept and all zeros elsewhere, so the result is exact: signed
    zeros, infinities and NaN payloads are copied bit for bit, and the dropped places are +0.0.
    """
    mask = np.empty(v.shape, _BITS[v.dtype])
    if keep_if:
        np.negative(flags.view(np.int8), out=mask)  # 1 -> -1, 0 -> 0
    else:
        np.subtract(flags.view(np.int8), 1, out=mask)  # 1 -> 0, 0 -> -1
    np.bitwise_and(mask, v.view(mask.dtype), out=mask)
    return mask.view(v.dtype)


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
    negative = _compare(np.less, x, 0)  # False for -0.0 and NaN, which pass unchanged as in PyTorch
    y = _and_mask(x, negative, keep_if=False)
    passes = _compare(np.less_equal, x, 0, out=negative)  # reuse the buffer: passes = not (x <= 0)
    return y, ReluCache(np.logical_not(passes, out=passes), x.dtype)


def relu_inplace(y: np.ndarray, passes: np.ndarray | None = None) -> None:
    """:func:`relu_forward` written over ``y`` (bit for bit the same values), for the models' fused
    layers (unchecked core), where ``y`` is their own fresh array; ``passes`` (bool, shape of ``y``), if
    given, receives the cache's mask ``not (y <= 0)``, as :func:`relu_forward` computes it.

    The same bitwise AND as :func:`relu_forward` (``bits(y) & -(not y < 0)``), in place, with the
    comparison and the mask in scratch buffers (a chunk of a layer, so they stay small and cached).
    """
    if passes is not None:
        _compare(np.less_equal, y, 0, out=passes)
        np.logical_not(passes, out=passes)
    bits = y.view(_BITS[y.dtype])
    negative = scratch_buffer("relu_flags", y.size, np.dtype(bool)).reshape(y.shape)
    _compare(np.less, y, 0, out=negative)
    mask = scratch_buffer("relu_mask", y.size, bits.dtype).reshape(y.shape)
    np.subtract(negative.view(np.int8), 1, out=mask)  # 1 (negative) -> 0, 0 -> -1 (all ones: keep)
    np.bitwise_and(bits, mask, out=bits)


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
    return ReluGrads(_and_mask(dy, cache.passes, keep_if=True))


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
    # y = x where 0 <= x <= c (and NaN, -0.0), +0.0 below, c above: (x & keep) | (c & above), bitwise.
    above = _compare(np.greater, x, c)
    outside = _compare(np.less, x, 0)
    np.logical_or(outside, above, out=outside)
    y = _and_mask(x, outside, keep_if=False)  # x in [0, c] (and NaN, -0.0), +0.0 outside
    bits = y.view(_BITS[x.dtype])
    ceiling = np.negative(above.view(np.int8), out=np.empty_like(bits))  # -1 above, 0 elsewhere
    np.bitwise_and(ceiling, np.array(c).view(bits.dtype), out=ceiling)  # bits(c) above, 0 elsewhere
    np.bitwise_or(bits, ceiling, out=bits)
    passes = _compare(np.less_equal, x, 0, out=outside)
    np.logical_or(passes, _compare(np.greater_equal, x, c, out=above), out=passes)
    return y, ReluClippedCache(np.logical_not(passes, out=passes), x.dtype)


def relu_clipped_ceiling(ceiling, dtype) -> np.floating:
    """The ceiling :func:`relu_clipped_forward` uses for inputs of ``dtype``: rounded to it, with the
    same checks and errors (for callers of :func:`relu_clipped_inplace`)."""
    return _check_ceiling(ceiling, "relu_clipped", np.dtype(dtype))


def relu_clipped_inplace(y: np.ndarray, ceiling: np.floating, passes: np.ndarray | None = None) -> None:
    """:func:`relu_clipped_forward` written over ``y`` (bit for bit the same values), for the models'
    fused layers (unchecked core), where ``y`` is their own fresh array; ``ceiling`` from
    :func:`relu_clipped_ceiling`; ``passes`` (bool, shape of ``y``), if given, receives the cache's mask
    ``not (y <= 0 or y >= c)``.

    The same bitwise operations as :func:`relu_clipped_forward`, in place, with the comparisons and
    masks in scratch buffers (a chunk of a layer, so they stay small and cached).
    """
    flags = scratch_buffer("relu_flags", 2 * y.size, np.dtype(bool))
    above, outside = flags[: y.size].reshape(y.shape), flags[y.size :].reshape(y.shape)
    if passes is not None:
        _compare(np.less_equal, y, 0, out=passes)
        np.logical_or(passes, _compare(np.greater_equal, y, ceiling, out=above), out=passes)
        np.logical_not(passes, out=passes)
    _compare(np.greater, y, ceiling, out=above)
    np.logical_or(_compare(np.less, y, 0, out=outside), above, out=outside)
    bits = y.view(_BITS[y.dtype])
    mask = scratch_buffer("relu_mask", y.size, bits.dtype).reshape(y.shape)
    np.subtract(outside.view(np.int8), 1, out=mask)  # keep y in [0, c] (and NaN, -0.0), +0.0 outside
    np.bitwise_and(bits, mask, out=bits)
    np.negative(above.view(np.int8), out=mask)  # -1 above, 0 elsewhere
    np.bitwise_and(mask, np.array(ceiling).view(bits.dtype), out=mask)  # bits(c) above, 0 elsewhere
    np.bitwise_or(bits, mask, out=bits)


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
    return ReluClippedGrads(_and_mask(dy, cache.passes, keep_if=True))


def relu_clipped_vjp(x: np.ndarray, dy: np.ndarray, *, ceiling: float) -> ReluClippedGrads:
    """Vector-Jacobian product of :func:`relu_clipped_forward` at ``x`` applied to ``dy``."""
    _, cache = relu_clipped_forward(x, ceiling=ceiling)
    return relu_clipped_backward(dy, cache)
