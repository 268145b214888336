"""Pooling: 2-D max pooling (the ImageNet ResNet stem) and global average pooling.

PyTorch equivalents: ``torch.nn.functional.max_pool2d`` and ``x.mean((2, 3))`` (the
``AdaptiveAvgPool2d(1)`` + ``flatten`` of torchvision's ResNets).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.nn.conv import check_nonempty, check_pair, output_size, pad_spatial

__all__ = [
    "GlobalAvgPoolCache",
    "GlobalAvgPoolGrads",
    "MaxPool2dCache",
    "MaxPool2dGrads",
    "global_avgpool_backward",
    "global_avgpool_forward",
    "global_avgpool_vjp",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "maxpool2d_vjp",
]


class MaxPool2dCache(NamedTuple):
    """What :func:`maxpool2d_backward` needs.

    Attributes
    ----------
    indices : ndarray of int64, shape (N, C, Ho, Wo)
        For each output, the flat index ``h * W + w`` into its input plane of the element that was
        selected: the same as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.
    x_shape : tuple[int, int, int, int]
        ``(N, C, H, W)``.
    dtype : numpy.dtype
        The input dtype (``dy`` must have it).
    """

    indices: np.ndarray
    x_shape: tuple[int, int, int, int]
    dtype: np.dtype


class MaxPool2dGrads(NamedTuple):
    """Gradient of :func:`maxpool2d_forward` with respect to ``x``, shape (N, C, H, W)."""

    dx: np.ndarray


class GlobalAvgPoolCache(NamedTuple):
    """What :func:`global_avgpool_backward` needs: the input shape ``(N, C, H, W)`` and dtype."""

    x_shape: tuple[int, int, int, int]
    dtype: np.dtype


class GlobalAvgPoolGrads(NamedTuple):
    """Gradient of :func:`global_avgpool_forward` with respect to ``x``, shape (N, C, H, W)."""

    dx: np.ndarray


def _check_cache_dtype(fn: str, dy: np.ndarray, dtype: np.dtype) -> None:
    if dy.dtype != dtype:
        raise TypeError(
            f"{fn}: dy.dtype (={dy.dtype}) must equal x.dtype (={dtype}); "
            "mixed dtypes are not promoted, cast explicitly"
        )


def maxpool2d_forward(
    x: np.ndarray, *, kernel_size=3, stride=2, padding=1
) -> tuple[np.ndarray, MaxPool2dCache]:
    """2-D max pooling, like ``torch.nn.functional.max_pool2d(x, kernel_size, stride, padding)``.

    The defaults are those of the ImageNet ResNet stem (3x3 window, stride 2, padding 1); note that
    PyTorch's default stride is the kernel size.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    kernel_size : int or (int, int)
        ``(kh, kw)``, each at least 1.
    stride : int or (int, int)
        ``(sh, sw)``, each at least 1.
    padding : int or (int, int)
        ``(ph, pw)``, at most half the kernel size (PyTorch's limit), implicit ``-inf`` values.

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo), dtype of ``x``
        ``Ho = floor((H + 2*ph - kh) / sh) + 1``, likewise ``Wo`` (no ``ceil_mode``).
    cache : MaxPool2dCache

    Math
    ----
    ``y[n, c, p, q] = max_{i, j} xp[n, c, p*sh + i, q*sw + j]`` with ``xp`` padded with ``-inf``.

    Notes
    -----
    Which element is selected matters for the gradient, and this follows PyTorch's CPU kernel exactly:
    the window is scanned in row-major order and an element replaces the current maximum when it is
    strictly greater or NaN. Hence on ties the *first* maximum wins; with NaNs the *last* NaN wins
    (and the output is NaN); when every in-bounds element is ``-inf`` the first in-bounds element is
    selected (never a padding cell). Dilation and ``ceil_mode`` are not supported.
    """
    fn = "maxpool2d"
    validation.check_float(x, "x", fn)
    validation.check_ndim(x, "x", fn, 4, "(N, C, H, W)")
    check_nonempty(x, "x", fn)
    kernel = check_pair(kernel_size, "kernel_size", fn, low=1)
    stride = check_pair(stride, "stride", fn, low=1)
    padding = check_pair(padding, "padding", fn, low=0)
    for axis in (0, 1):
        if padding[axis] > kernel[axis] // 2:
            raise ValueError(
                f"{fn}: padding[{axis}] (={padding[axis]}) must be at most half the kernel size "
                f"kernel_size[{axis}] // 2 (={kernel[axis] // 2})"
            )
    n, c, h, w = x.shape
    if h + 2 * padding[0] < kernel[0] or w + 2 * padding[1] < kernel[1]:
        raise ValueError(
            f"{fn}: the padded input (={h + 2 * padding[0]}x{w + 2 * padding[1]}) must be at least the "
            f"kernel size (={kernel[0]}x{kernel[1]})"
        )
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)

    xp = pad_spatial(x, padding, value=-np.inf)
    # The first in-bounds kernel offset of each window (PyTorch's starting index): row i0 = max(0, ph -
    # p*sh), column j0 = max(0, pw - q*sw). Padding cells are -inf and can never win a strict comparison.
    i0 = np.maximum(0, ph - sh * np.arange(ho))[:, None]
    j0 = np.maximum(0, pw - sw * np.arange(wo))[None, :]
    offset_dtype = np.min_scalar_type(kh * kw)  # uint8 for any usual kernel: less memory traffic
    best_offset = np.broadcast_to((i0 * kw + j0).astype(offset_dtype), (n, c, ho, wo)).copy()
    best = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    take = np.empty((n, c, ho, wo), dtype=bool)
    for i in range(kh):
        for j in range(kw):
            v = xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]
            np.greater(v, best, out=take)  # PyTorch's rule: strictly greater, or NaN
            take |= np.isnan(v)
            np.copyto(best, v, where=take)
            np.copyto(best_offset, i * kw + j, where=take)
    best_offset = best_offset.astype(np.int64)
    rows = sh * np.arange(ho)[:, None] - ph + best_offset // kw
    cols = sw * np.arange(wo)[None, :] - pw + best_offset % kw
    indices = rows * w + cols
    return best, MaxPool2dCache(indices, (n, c, h, w), x.dtype)


def maxpool2d_backward(dy: np.ndarray, cache: MaxPool2dCache) -> MaxPool2dGrads:
    """Gradient of :func:`maxpool2d_forward`: each ``dy`` goes to the element its window selected.

    Parameters
    ----------
    dy : ndarray, shape (N, C, Ho, Wo), dtype of the forward input
    cache : MaxPool2dCache

    Returns
    -------
    MaxPool2dGrads

    Math
    ----
    ``dx[n, c, h, w] = sum of dy[n, c, p, q] over the windows (p, q) that selected (h, w)``.

    Notes
    -----
    Overlapping windows (stride < kernel) can select the same element; their gradients add
    (``np.add.at``, in output order, like PyTorch's CPU kernel).
    """
    fn = "maxpool2d_backward"
    if not isinstance(cache, MaxPool2dCache):
        raise TypeError(
            f"{fn}: cache must be a MaxPool2dCache from maxpool2d_forward, got {type(cache).__name__}"
        )
    indices, (n, c, h, w), dtype = cache
    validation.check_float(dy, "dy", fn)
    _check_cache_dtype(fn, dy, dtype)
    validation.check_shape(dy, "dy", fn, indices.shape)
    planes = n * c
    dx = np.zeros((planes, h * w), dtype=dtype)
    plane = np.arange(planes)[:, None]
    # np.add.at accumulates repeated indices (a plain fancy-index += would keep only one of them).
    np.add.at(dx, (plane, indices.reshape(planes, -1)), dy.reshape(planes, -1))
    return MaxPool2dGrads(dx.reshape(n, c, h, w))


def maxpool2d_vjp(x: np.ndarray, dy: np.ndarray, *, kernel_size=3, stride=2, padding=1) -> MaxPool2dGrads:
    """Vector-Jacobian product of :func:`maxpool2d_forward` at ``x`` applied to ``dy``."""
    _, cache = maxpool2d_forward(x, kernel_size=kernel_size, stride=stride, padding=padding)
    return maxpool2d_backward(dy, cache)


def global_avgpool_forward(x: np.ndarray) -> tuple[np.ndarray, GlobalAvgPoolCache]:
    """Mean over the spatial axes, like ``torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64

    Returns
    -------
    y : ndarray, shape (N, C)
    cache : GlobalAvgPoolCache

    Math
    ----
    ``y[n, c] = sum_{h, w} x[n, c, h, w] / (H * W)``.
    """
    fn = "global_avgpool"
    validation.check_float(x, "x", fn)
    validation.check_ndim(x, "x", fn, 4, "(N, C, H, W)")
    check_nonempty(x, "x", fn)
    return x.mean(axis=(2, 3)), GlobalAvgPoolCache(tuple(x.shape), x.dtype)


def global_avgpool_backward(dy: np.ndarray, cache: GlobalAvgPoolCache) -> GlobalAvgPoolGrads:
    """Gradient of :func:`global_avgpool_forward`.

    Parameters
    ----------
    dy : ndarray, shape (N, C)
    cache : GlobalAvgPoolCache

    Math
    ----
    ``dx[n, c, h, w] = dy[n, c] / (H * W)`` (a division, as PyTorch does, not a product with a rounded
    reciprocal).
    """
    fn = "global_avgpool_backward"
    if not isinstance(cache, GlobalAvgPoolCache):
        raise TypeError(
            f"{fn}: cache must be a GlobalAvgPoolCache from global_avgpool_forward, got "
            f"{type(cache).__name__}"
        )
    (n, c, h, w), dtype = cache
    validation.check_float(dy, "dy", fn)
    _check_cache_dtype(fn, dy, dtype)
    validation.check_shape(dy, "dy", fn, (n, c))
    share = dy / (h * w)  # a Python int divisor keeps float32 as float32
    return GlobalAvgPoolGrads(np.ascontiguousarray(np.broadcast_to(share[:, :, None, None], (n, c, h, w))))


def global_avgpool_vjp(x: np.ndarray, dy: np.ndarray) -> GlobalAvgPoolGrads:
    """Vector-Jacobian product of :func:`global_avgpool_forward` at ``x`` applied to ``dy``."""
    _, cache = global_avgpool_forward(x)
    return global_avgpool_backward(dy, cache)
