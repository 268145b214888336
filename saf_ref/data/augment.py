"""Data augmentation, minibatching and per-channel normalisation, in NumPy.

All functions return new arrays and never modify their inputs. Randomness comes only from the keyword
``rng`` (a ``np.random.Generator`` or an integer seed), and every function documents exactly which draws
it makes and in which order, so a run can be reproduced draw for draw (the tests replay the same draws
through naive per-image loops).

The standard CIFAR training augmentation (torchvision ``RandomCrop(32, padding=4)`` followed by
``RandomHorizontalFlip()``) is :func:`random_crop_flip`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..validation import (
    check_equal,
    check_float,
    check_int,
    check_ndarray,
    check_ndim,
    check_probability,
    check_rng,
    check_same_dtype,
    check_shape,
)

_STATS_CHUNK = 4096  # images per chunk when accumulating channel statistics
_REAL = (int, float, np.integer, np.floating)


def _check_images(x: Any, fn: str) -> np.ndarray:
    check_ndarray(x, "x", fn)
    return check_ndim(x, "x", fn, 4, "(N, C, H, W)")


def crop_with_offsets(x: np.ndarray, offsets: np.ndarray, pad: int) -> np.ndarray:
    """Zero-pad every image by ``pad`` on each side, then cut an H x W window at the given offsets.

    *Math*: with ``xp`` the padded batch, ``out[n, c, i, j] = xp[n, c, top_n + i, left_n + j]`` where
    ``(top_n, left_n) = offsets[n]``, both in ``[0, 2 * pad]``. Offset ``(pad, pad)`` returns the image
    unchanged.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), any dtype
    offsets : int ndarray, shape (N, 2)
        ``(top, left)`` of each window in padded coordinates, each in ``[0, 2 * pad]``.
    pad : int >= 0
    """
    fn = "crop_with_offsets"
    x = _check_images(x, fn)
    pad = check_int(pad, "pad", fn, low=0)
    check_ndarray(offsets, "offsets", fn)
    if offsets.dtype.kind not in "iu":
        raise TypeError(f"{fn}: offsets must have an integer dtype, got {offsets.dtype}")
    check_shape(offsets, "offsets", fn, (x.shape[0], 2))
    # Checked, not left to indexing: a negative offset would silently wrap around to the last window.
    if offsets.size and (offsets.min() < 0 or offsets.max() > 2 * pad):
        raise ValueError(
            f"{fn}: offsets must be in [0, 2 * pad] = [0, {2 * pad}], "
            f"got values in [{offsets.min()}, {offsets.max()}]"
        )
    n, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # constant 0 of x's dtype
    # windows[n, c, a, b] is the H x W view of xp[n, c] whose top-left corner is (a, b); no copy is made.
    windows = np.lib.stride_tricks.sliding_window_view(xp, (h, w), axis=(2, 3))
    # Advanced indices on axes 0, 2, 3 separated by the slice on axis 1: NumPy puts the broadcast index
    # axis (N) first, then C, then the window's H, W. This gathers one window per image: (N, C, H, W).
    return windows[np.arange(n), :, offsets[:, 0], offsets[:, 1]]


def random_crop(x: np.ndarray, *, pad: int = 4, rng: Any) -> np.ndarray:
    """Random crop with zero padding, per image (torchvision: ``RandomCrop(size, padding=pad)``).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), any dtype
        Padding uses 0 in x's units: apply it to unnormalised images to pad with black, as torchvision
        (which pads before ``Normalize``), or after normalisation to pad with the mean if you prefer.
    pad : int >= 0
    rng : np.random.Generator or int seed

    Returns
    -------
    ndarray, shape (N, C, H, W), dtype of x

    Notes
    -----
    Draws: one call ``rng.integers(0, 2 * pad + 1, size=(N, 2))``; column 0 is the top offset, column 1
    the left offset, in padded coordinates (see :func:`crop_with_offsets`).
    """
    fn = "random_crop"
    x = _check_images(x, fn)
    pad = check_int(pad, "pad", fn, low=0)
    gen = check_rng(rng, fn)
    offsets = gen.integers(0, 2 * pad + 1, size=(x.shape[0], 2))
    return crop_with_offsets(x, offsets, pad)


def flip_where(x: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Mirror the images with ``flip[n]`` true left to right: ``out[n, c, i, j] = x[n, c, i, W - 1 - j]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), any dtype
    flip : bool ndarray, shape (N,)
    """
    fn = "flip_where"
    x = _check_images(x, fn)
    check_ndarray(flip, "flip", fn)
    if flip.dtype != np.bool_:
        raise TypeError(f"{fn}: flip must have dtype bool, got {flip.dtype}")
    check_shape(flip, "flip", fn, (x.shape[0],))
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


def random_hflip(x: np.ndarray, *, p: float = 0.5, rng: Any) -> np.ndarray:
    """Random horizontal flip, per image (torchvision: ``RandomHorizontalFlip(p)``).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), any dtype
    p : float in [0, 1]
        Probability that an image is flipped.
    rng : np.random.Generator or int seed

    Returns
    -------
    ndarray, shape (N, C, H, W), dtype of x

    Notes
    -----
    Draws: one call ``rng.random(N)``; image ``n`` is flipped when its draw is ``< p``.
    """
    fn = "random_hflip"
    x = _check_images(x, fn)
    p = check_probability(p, "p", fn)
    gen = check_rng(rng, fn)
    return flip_where(x, gen.random(x.shape[0]) < p)


def random_crop_flip(x: np.ndarray, *, pad: int = 4, p: float = 0.5, rng: Any) -> np.ndarray:
    """The standard CIFAR augmentation: random crop with zero padding, then random horizontal flip.

    torchvision: ``Compose([RandomCrop(H, padding=pad), RandomHorizontalFlip(p)])``.

    Notes
    -----
    Draws, in this order: ``rng.integers(0, 2 * pad + 1, size=(N, 2))`` (crop offsets, as
    :func:`random_crop`), then ``rng.random(N)`` (flips, as :func:`random_hflip`). So
    ``random_crop_flip(x, rng=g)`` equals ``random_hflip(random_crop(x, rng=g), rng=g)`` for one
    generator ``g``.
    """
    fn = "random_crop_flip"
    x = _check_images(x, fn)
    pad = check_int(pad, "pad", fn, low=0)
    p = check_probability(p, "p", fn)
    gen = check_rng(rng, fn)
    offsets = gen.integers(0, 2 * pad + 1, size=(x.shape[0], 2))
    flip = gen.random(x.shape[0]) < p
    return flip_where(crop_with_offsets(x, offsets, pad), flip)


def iterate_minibatches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, rng: Any = None, drop_last: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_batch, y_batch)`` pairs covering one epoch (torchvision: ``DataLoader(batch_size,
    shuffle, drop_last)``).

    Parameters
    ----------
    x : ndarray, shape (N, ...)
    y : ndarray, shape (N, ...)
    batch_size : int >= 1
    rng : None, np.random.Generator or int seed
        ``None``: batches in order ``0..N-1``, no randomness. Otherwise the order is shuffled.
    drop_last : bool
        Drop the final batch when it has fewer than ``batch_size`` samples.

    Yields
    ------
    (ndarray, ndarray)
        New arrays (copies, never views of ``x`` and ``y``), so modifying a batch leaves the data alone.

    Notes
    -----
    Draws (only when ``rng`` is given): one call ``rng.permutation(N)`` when this function is called;
    batch ``k`` holds samples ``order[k * batch_size:(k + 1) * batch_size]``. Call it once per epoch with
    the same generator for a fresh order each epoch. Arguments are checked at the call, not at the first
    ``next()``.
    """
    fn = "iterate_minibatches"
    check_ndarray(x, "x", fn)
    check_ndarray(y, "y", fn)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{fn}: x and y must have a leading sample axis, got shapes {x.shape} and {y.shape}")
    check_equal(fn, "y.shape[0]", y.shape[0], "x.shape[0]", x.shape[0], "the number of samples")
    batch_size = check_int(batch_size, "batch_size", fn, low=1)
    if not isinstance(drop_last, (bool, np.bool_)):
        raise TypeError(f"{fn}: drop_last must be a bool, got {type(drop_last).__name__}")
    n = x.shape[0]
    order = np.arange(n) if rng is None else check_rng(rng, fn).permutation(n)
    stop = n - n % batch_size if drop_last else n
    return _batches(x, y, order, batch_size, stop)


def _batches(x, y, order, batch_size, stop):
    for start in range(0, stop, batch_size):
        idx = order[start : min(start + batch_size, stop)]
        yield x[idx], y[idx]  # integer-array indexing always copies


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over images and pixels (for ``Normalize(mean, std)``).

    *Math*: for channel ``c``, ``mean_c = sum_{n,i,j} x[n,c,i,j] / M`` and
    ``std_c = sqrt(sum_{n,i,j} (x[n,c,i,j] - mean_c)^2 / M)`` with ``M = N * H * W`` (population
    standard deviation, ``ddof=0``).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32, float64 or an integer dtype (e.g. raw uint8 images)

    Returns
    -------
    (mean, std) : two ndarrays of shape (C,)
        In x's dtype for float input, float64 for integer input.

    Notes
    -----
    Sums accumulate in float64 over chunks of images (two passes: mean, then squared deviations) and are
    rounded once to the output dtype: a float32 sum over 50,000 CIFAR images would lose digits. Only one
    chunk is ever converted to float64 at a time.
    """
    fn = "channel_stats"
    x = _check_images(x, fn)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{fn}: x must have a float or integer dtype, got {x.dtype}")
    n, c, h, w = x.shape
    if n * h * w == 0:
        raise ValueError(f"{fn}: x must hold at least one pixel per channel, got shape {x.shape}")
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    total = np.zeros(c)
    for i in range(0, n, _STATS_CHUNK):
        total += x[i : i + _STATS_CHUNK].astype(np.float64).sum(axis=(0, 2, 3))
    mean = total / (n * h * w)
    sq = np.zeros(c)
    for i in range(0, n, _STATS_CHUNK):
        d = x[i : i + _STATS_CHUNK].astype(np.float64) - mean[None, :, None, None]
        sq += (d * d).sum(axis=(0, 2, 3))
    std = np.sqrt(sq / (n * h * w))
    return mean.astype(out_dtype), std.astype(out_dtype)


def _as_channel_vector(v: Any, name: str, x: np.ndarray, fn: str) -> np.ndarray:
    """``mean``/``std`` as a (C,) array of x's dtype: an ndarray must already have x's dtype; a Python
    sequence or scalar of reals is converted to it (rounded once)."""
    c = x.shape[1]
    if isinstance(v, np.ndarray):
        check_same_dtype(fn, x=x, **{name: v})
        arr = v
    elif isinstance(v, (Sequence, *_REAL)) and not isinstance(v, (str, bytes, bool, np.bool_)):
        values = [v] * c if isinstance(v, _REAL) else list(v)
        if not all(isinstance(e, _REAL) and not isinstance(e, (bool, np.bool_)) for e in values):
            raise TypeError(f"{fn}: {name} must be real numbers, got {v!r}")
        arr = np.asarray(values, dtype=x.dtype)
    else:
        expected = "an ndarray of x's dtype or a sequence of reals"
        raise TypeError(f"{fn}: {name} must be {expected}, got {type(v).__name__}")
    check_shape(arr, name, fn, (c,))
    return arr


def normalize_channels(x: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Standardise each channel (torchvision: ``transforms.Normalize(mean, std)``).

    *Math*: ``out[n, c, i, j] = (x[n, c, i, j] - mean[c]) / std[c]``, each operation rounded in x's dtype.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    mean, std : ndarray of shape (C,) and x's dtype, or sequences of C reals (converted to x's dtype)
        ``std`` must be finite and > 0.

    Returns
    -------
    ndarray, shape (N, C, H, W), dtype of x
    """
    fn = "normalize_channels"
    x = _check_images(x, fn)
    check_float(x, "x", fn)
    mean = _as_channel_vector(mean, "mean", x, fn)
    std = _as_channel_vector(std, "std", x, fn)
    if not np.all(np.isfinite(mean)):
        raise ValueError(f"{fn}: mean must be finite, got {mean}")
    if not np.all(np.isfinite(std) & (std > 0)):
        raise ValueError(f"{fn}: std must be finite and > 0, got {std}")
    return (x - mean[None, :, None, None]) / std[None, :, None, None]


__all__ = [
    "channel_stats",
    "crop_with_offsets",
    "flip_where",
    "iterate_minibatches",
    "normalize_channels",
    "random_crop",
    "random_crop_flip",
    "random_hflip",
]
