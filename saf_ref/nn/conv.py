"""2-D convolution (PyTorch ``torch.nn.functional.conv2d``): forward, backward and a VJP wrapper.

Layout is NCHW for activations and OIHW for weights, as in PyTorch. Dilation and groups are not
supported (no network in saf_ref needs them); only ``stride`` and zero ``padding``.

Implementation: *im2col* by matrix products. The zero-padded input is viewed as a grid of
``kh x kw`` windows with :func:`numpy.lib.stride_tricks.sliding_window_view` (no copy), the windows are
copied once into a column matrix ``cols`` of shape ``(C*kh*kw, N*Ho*Wo)``, and the convolution becomes a
single matrix product ``w.reshape(O, C*kh*kw) @ cols``. The backward pass rebuilds ``cols`` from the
cached padded input and uses two more products, ``dw = dy @ cols.T`` and ``dcols = w.T @ dy``, followed
by *col2im*, which adds each kernel offset's slice of ``dcols`` back into the input positions it was read
from (``kh*kw`` strided additions). All arithmetic stays in the input dtype: a float32 call allocates no
float64 array.

Choices made by measurement (``benchmarks/bench_conv.py``, ResNet-18 CIFAR shapes, N=32, float32): the
matrix products take 60-90% of the time. Rebuilding ``cols`` costs about a tenth of the backward pass,
while caching it would hold ``kh*kw`` times the input in memory per layer until the backward pass (GBs
for a ResNet-18 batch), so it is rebuilt. Per-kernel-offset products (``kh*kw`` products with inner
dimension ``C`` on shifted copies) were as fast on wide layers and up to 20% slower on the others, and
a batch-last ``(C, H, W, N)`` layout gained under 10% overall (losing on 1x1 convolutions) at the price
of a less natural cache, so neither is used.

Caches keep references to the caller's arrays (``x_padded`` *is* ``x`` when there is no padding).
Arrays are treated as immutable: do not modify an input between the forward and the backward call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from saf_ref import validation

__all__ = ["Conv2dCache", "Conv2dGrads", "conv2d_backward", "conv2d_forward", "conv2d_vjp"]


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass.

    Attributes
    ----------
    x_padded : ndarray, shape (N, C, H + 2*ph, W + 2*pw)
        The zero-padded input (the input itself when the padding is zero).
    w : ndarray, shape (O, C, kh, kw)
        The weights.
    has_bias : bool
        Whether the forward pass added a bias (then the backward pass returns ``db``).
    stride : tuple[int, int]
        ``(sh, sw)``.
    padding : tuple[int, int]
        ``(ph, pw)``.
    """

    x_padded: np.ndarray
    w: np.ndarray
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]


class Conv2dGrads(NamedTuple):
    """Gradients of a scalar loss with respect to the inputs of :func:`conv2d_forward`.

    Attributes
    ----------
    dx : ndarray, shape (N, C, H, W)
    dw : ndarray, shape (O, C, kh, kw)
    db : ndarray of shape (O,), or None
        ``None`` when the forward pass had no bias.
    """

    dx: np.ndarray
    dw: np.ndarray
    db: np.ndarray | None


def check_pair(value, name: str, fn: str, *, low: int) -> tuple[int, int]:
    """Turn an int or a pair of ints (each ``>= low``) into ``(height, width)`` values."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
        return (
            validation.check_int(value[0], f"{name}[0]", fn, low=low),
            validation.check_int(value[1], f"{name}[1]", fn, low=low),
        )
    v = validation.check_int(value, name, fn, low=low)
    return (v, v)


def check_nonempty(x: np.ndarray, name: str, fn: str) -> None:
    """Require every dimension of ``x`` to be at least 1."""
    for axis, size in enumerate(x.shape):
        validation.check_int(size, f"{name}.shape[{axis}]", fn, low=1)


def output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length along one axis: ``floor((size + 2*pad - kernel) / stride) + 1`` (PyTorch's rule)."""
    return (size + 2 * pad - kernel) // stride + 1


def _check_fits(fn: str, x_shape, kernel: tuple[int, int], padding: tuple[int, int]) -> None:
    """Require the padded input to be at least as large as the kernel (so the output is non-empty)."""
    for axis, label in ((0, "height"), (1, "width")):
        padded = x_shape[2 + axis] + 2 * padding[axis]
        if padded < kernel[axis]:
            raise ValueError(
                f"{fn}: the padded input {label} (={padded}, x.shape[{2 + axis}] + 2*padding) must be at "
                f"least the kernel {label} (={kernel[axis]})"
            )


def pad_spatial(x: np.ndarray, padding: tuple[int, int], value: float = 0.0) -> np.ndarray:
    """Pad the two spatial axes of an NCHW array with ``value``; return ``x`` itself when no padding."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(x_padded: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Read-only view of the sliding windows, shape ``(N, C, Ho, Wo, kh, kw)`` (no copy).

    ``sliding_window_view`` yields every window at stride 1; slicing with ``::sh, ::sw`` keeps those a
    strided convolution visits. Because the output size uses floor, the last window may leave unused
    rows or columns of the padded input, exactly as in PyTorch.
    """
    sh, sw = stride
    return sliding_window_view(x_padded, kernel, axis=(2, 3))[:, :, ::sh, ::sw]


def _im2col(x_padded: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Column matrix ``cols[(c, i, j), (n, ho, wo)] = x_padded[n, c, ho*sh + i, wo*sw + j]``.

    Shape ``(C*kh*kw, N*Ho*Wo)``; its row order matches ``w.reshape(O, C*kh*kw)``. The transpose puts
    the output width last so that the copy reads contiguous (stride 1) or evenly strided memory.
    """
    win = _windows(x_padded, kernel, stride)  # (N, C, Ho, Wo, kh, kw)
    n, c, ho, wo, kh, kw = win.shape
    return np.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3)).reshape(c * kh * kw, n * ho * wo)


def _col2im(
    dcols: np.ndarray, x_padded_shape, kernel: tuple[int, int], stride: tuple[int, int], out_hw
) -> np.ndarray:
    """Adjoint of :func:`_im2col`: add every column entry back to the input position it was read from.

    Returns the gradient with respect to the padded input, shape ``(N, C, Hp, Wp)``, as a transposed view
    of a ``(C, N, Hp, Wp)`` buffer (the layout in which each kernel offset's slice of ``dcols`` adds
    without a transpose).
    """
    n, c, hp, wp = x_padded_shape
    kh, kw = kernel
    sh, sw = stride
    ho, wo = out_hw
    dcols = dcols.reshape(c, kh, kw, n, ho, wo)
    dxp = np.zeros((c, n, hp, wp), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            # Offset (i, j) of the kernel read x_padded[:, :, i + sh*ho, j + sw*wo] for every output.
            dxp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw] += dcols[:, i, j]
    return dxp.transpose(1, 0, 2, 3)


def _check_conv2d_inputs(fn, x, w, b, stride, padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """Every check of :func:`conv2d_forward`'s arguments; returns ``(stride, padding)`` as pairs."""
    validation.check_float(x, "x", fn)
    validation.check_float(w, "w", fn)
    if b is not None:
        validation.check_float(b, "b", fn)
    validation.check_same_dtype(fn, x=x, w=w, b=b)
    validation.check_ndim(x, "x", fn, 4, "(N, C, H, W)")
    validation.check_ndim(w, "w", fn, 4, "(O, C, kh, kw)")
    check_nonempty(x, "x", fn)
    check_nonempty(w, "w", fn)
    validation.check_equal(fn, "w.shape[1]", w.shape[1], "x.shape[1]", x.shape[1], "the input channels")
    if b is not None:
        validation.check_shape(b, "b", fn, (w.shape[0],))
    stride = check_pair(stride, "stride", fn, low=1)
    padding = check_pair(padding, "padding", fn, low=0)
    _check_fits(fn, x.shape, (w.shape[2], w.shape[3]), padding)
    return stride, padding


def conv2d_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride=1, padding=0
) -> tuple[np.ndarray, Conv2dCache]:
    """2-D cross-correlation, like ``torch.nn.functional.conv2d(x, w, b, stride, padding)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
        Input batch.
    w : ndarray, shape (O, C, kh, kw), same dtype as ``x``
        Weights (PyTorch's OIHW layout).
    b : ndarray of shape (O,), same dtype as ``x``, or None
        Optional bias.
    stride : int or (int, int)
        ``(sh, sw)``, each at least 1.
    padding : int or (int, int)
        Zero padding ``(ph, pw)`` added on both sides of each spatial axis, each at least 0.

    Returns
    -------
    y : ndarray, shape (N, O, Ho, Wo), dtype of ``x``
        ``Ho = floor((H + 2*ph - kh) / sh) + 1`` and likewise ``Wo``.
    cache : Conv2dCache

    Math
    ----
    With ``xp`` the zero-padded input,

    ``y[n, o, p, q] = b[o] + sum_{c, i, j} w[o, c, i, j] * xp[n, c, p*sh + i, q*sw + j]``.

    Notes
    -----
    This is cross-correlation (the kernel is not flipped), the convention of every deep-learning
    framework. Dilation and groups are not supported. The output size uses floor, so trailing rows or
    columns that do not fill a whole window are ignored, as in PyTorch.
    """
    stride, padding = _check_conv2d_inputs("conv2d", x, w, b, stride, padding)
    kernel = (w.shape[2], w.shape[3])
    n, o = x.shape[0], w.shape[0]
    ho = output_size(x.shape[2], kernel[0], stride[0], padding[0])
    wo = output_size(x.shape[3], kernel[1], stride[1], padding[1])
    x_padded = pad_spatial(x, padding)
    cols = _im2col(x_padded, kernel, stride)  # (C*kh*kw, N*Ho*Wo)
    y = w.reshape(o, -1) @ cols  # (O, N*Ho*Wo): one matrix product does all the work
    if b is not None:
        y += b[:, None]  # y is our own new array: adding in place is safe
    y = np.ascontiguousarray(y.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))
    return y, Conv2dCache(x_padded, w, b is not None, stride, padding)


def _check_conv2d_backward_inputs(fn, dy, cache) -> None:
    if not isinstance(cache, Conv2dCache):
        raise TypeError(f"{fn}: cache must be a Conv2dCache from conv2d_forward, got {type(cache).__name__}")
    x_padded, w, _, stride, _ = cache
    ho = (x_padded.shape[2] - w.shape[2]) // stride[0] + 1
    wo = (x_padded.shape[3] - w.shape[3]) // stride[1] + 1
    validation.check_float(dy, "dy", fn)
    validation.check_same_dtype(fn, x=x_padded, dy=dy)
    validation.check_shape(dy, "dy", fn, (x_padded.shape[0], w.shape[0], ho, wo))


def conv2d_backward(dy: np.ndarray, cache: Conv2dCache) -> Conv2dGrads:
    """Gradients of :func:`conv2d_forward` (what ``torch.autograd`` computes for ``conv2d``).

    Parameters
    ----------
    dy : ndarray, shape (N, O, Ho, Wo), dtype of the forward input
        Upstream gradient ``dL/dy``.
    cache : Conv2dCache
        From :func:`conv2d_forward`.

    Returns
    -------
    Conv2dGrads
        ``dx`` (N, C, H, W), ``dw`` (O, C, kh, kw) and ``db`` (O,) or None.

    Math
    ----
    ``dw[o, c, i, j] = sum_{n, p, q} dy[n, o, p, q] * xp[n, c, p*sh + i, q*sw + j]``,
    ``db[o] = sum_{n, p, q} dy[n, o, p, q]``,
    ``dxp[n, c, p*sh + i, q*sw + j] += w[o, c, i, j] * dy[n, o, p, q]`` summed over ``o, p, q, i, j``;
    ``dx`` is ``dxp`` without the padding border.

    Notes
    -----
    Input positions never read by the forward pass (trailing rows or columns left over by the floor in
    the output size) get a zero gradient.
    """
    _check_conv2d_backward_inputs("conv2d_backward", dy, cache)
    x_padded, w, has_bias, stride, padding = cache
    n, c, hp, wp = x_padded.shape
    o, _, kh, kw = w.shape
    ho, wo = dy.shape[2:]

    cols = _im2col(x_padded, (kh, kw), stride)  # rebuilt rather than cached: see the module docstring
    dy_mat = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(o, n * ho * wo)
    dw = (dy_mat @ cols.T).reshape(w.shape)
    db = dy_mat.sum(axis=1) if has_bias else None
    dcols = w.reshape(o, -1).T @ dy_mat  # (C*kh*kw, N*Ho*Wo)
    dxp = _col2im(dcols, x_padded.shape, (kh, kw), stride, (ho, wo))
    ph, pw = padding
    dx = np.ascontiguousarray(dxp[:, :, ph : hp - ph, pw : wp - pw])
    return Conv2dGrads(dx, dw, db)


def conv2d_vjp(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, dy: np.ndarray, *, stride=1, padding=0
) -> Conv2dGrads:
    """Vector-Jacobian product of :func:`conv2d_forward` at ``(x, w, b)`` applied to ``dy``.

    Runs the forward pass for its cache and then :func:`conv2d_backward`; for backends that cannot share
    our cache type. Parameters as in :func:`conv2d_forward` and :func:`conv2d_backward`.
    """
    _, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
    return conv2d_backward(dy, cache)
