"""Group normalisation (PyTorch ``torch.nn.functional.group_norm`` / ``nn.GroupNorm``).

The channels are split into ``num_groups`` groups of consecutive channels; each sample is normalised
with the mean and (biased) variance of its own group, over the group's channels and all spatial
positions. Unlike batch norm there are no running statistics and no train/eval difference: a sample's
output depends on that sample alone. Stutz et al. use it (with the reparameterized scale ``1 + weight``,
see :mod:`saf_ref.nn.norms`) in the reference code of "Bit Error Robustness for Energy-Efficient DNN
Accelerators", where the normalisation parameters are clipped, quantized and exposed to bit errors like
every other tensor.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saf_ref import validation

__all__ = [
    "GROUP_CANDIDATES",
    "GroupNormCache",
    "GroupNormGrads",
    "default_num_groups",
    "groupnorm_backward",
    "groupnorm_forward",
    "groupnorm_vjp",
]

#: The group counts the reference code tries, in order (``get_normalization2d`` in its ``models/utils.py``).
GROUP_CANDIDATES = (32, 24, 16, 8)


def default_num_groups(channels: int) -> int:
    """The number of groups the reference code gives a group norm over ``channels`` channels.

    Parameters
    ----------
    channels : int
        ``C >= 1``.

    Returns
    -------
    int
        The first ``g = min(k, C // 2)`` for ``k`` in ``(32, 24, 16, 8)`` that divides ``C`` (so 4 groups
        of 2 channels for ``C = 8``, 8 of 2 for 16, 16 of 2 for 32, 32 of 2 for 64, 32 of 4 for 128).
        Where the reference code would fail (no candidate divides ``C``, or ``C < 2``, where ``C // 2``
        is 0) the largest divisor of ``C`` not above ``C // 2`` is used instead, and 1 for ``C <= 2``.

    Notes
    -----
    The reference code: ``for k in [32, 24, 16, 8]: num_groups = min(k, planes // 2); if planes %
    num_groups == 0: break``.
    """
    fn = "default_num_groups"
    c = validation.check_int(channels, "channels", fn, low=1)
    for k in GROUP_CANDIDATES:
        g = min(k, c // 2)
        if g >= 1 and c % g == 0:
            return g
    return max([d for d in range(1, c // 2 + 1) if c % d == 0], default=1)


class GroupNormCache(NamedTuple):
    """What :func:`groupnorm_backward` needs from the forward pass.

    Attributes
    ----------
    x_hat : ndarray, shape (N, C, ...)
        The normalised input ``(x - mean) * inv_std`` (each sample's group statistics).
    inv_std : ndarray, shape (N, G)
        ``1 / sqrt(var + eps)`` per sample and group.
    weight : ndarray, shape (C,)
        The per-channel scale ``gamma``.
    num_groups : int
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    weight: np.ndarray
    num_groups: int


class GroupNormGrads(NamedTuple):
    """Gradients with respect to the inputs of :func:`groupnorm_forward`: ``dx`` (N, C, ...),
    ``dweight`` (C,), ``dbias`` (C,)."""

    dx: np.ndarray
    dweight: np.ndarray
    dbias: np.ndarray


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """View a (C,) vector as (1, C, 1, ..., 1) so that it broadcasts over an (N, C, ...) array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _grouped(a: np.ndarray, num_groups: int) -> np.ndarray:
    """``(N, C, ...)`` viewed as ``(N, G, C/G * prod(...))``: one row per sample and group."""
    return a.reshape(a.shape[0], num_groups, -1)


def _check_inputs(fn, x, weight, bias, num_groups, eps):
    """Validate the arguments of :func:`groupnorm_forward`; return ``(num_groups, eps)``."""
    arrays = {"x": x, "weight": weight, "bias": bias}
    for name, a in arrays.items():
        validation.check_float(a, name, fn)
    validation.check_same_dtype(fn, **arrays)
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    for axis, size in enumerate(x.shape):
        validation.check_int(size, f"x.shape[{axis}]", fn, low=1)
    for name in ("weight", "bias"):
        validation.check_shape(arrays[name], name, fn, (x.shape[1],))
    num_groups = validation.check_int(num_groups, "num_groups", fn, low=1)
    if x.shape[1] % num_groups:
        raise ValueError(
            f"{fn}: num_groups (={num_groups}) must divide x.shape[1] (={x.shape[1]}), the channels"
        )
    eps = validation.check_real(eps, "eps", fn)
    if not eps > 0.0:
        raise ValueError(f"{fn}: eps must be > 0, got {eps!r}")
    return num_groups, eps


def groupnorm_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    num_groups: int,
    eps: float = 1e-5,
) -> tuple[np.ndarray, GroupNormCache]:
    """Group normalisation, like ``torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, ...), float32 or float64
        Any number of spatial axes (none included).
    weight, bias : ndarray, shape (C,), dtype of ``x``
        Per-channel scale ``gamma`` and shift ``beta``.
    num_groups : int
        ``G``, a divisor of ``C``; group ``g`` holds channels ``g*C/G ... (g+1)*C/G - 1``
        (:func:`default_num_groups` gives the reference code's choice).
    eps : float > 0
        Added to the variance before the square root.

    Returns
    -------
    y : ndarray, shape of ``x``
    cache : GroupNormCache

    Math
    ----
    For sample ``n`` and group ``g`` with the ``m = (C/G) * prod(spatial)`` values ``x[n, c, ...]``,
    ``c`` in the group: ``mean = sum(x) / m``, ``var = sum((x - mean)**2) / m`` (biased),
    ``y[n, c, ...] = weight[c] * (x[n, c, ...] - mean) / sqrt(var + eps) + bias[c]``.

    Notes
    -----
    The same in training and evaluation (no running statistics). ``G = 1`` is layer normalisation over
    ``(C, ...)`` with per-channel affine parameters, ``G = C`` instance normalisation. The variance is
    computed with two passes (mean first), as in :func:`saf_ref.nn.batchnorm.batchnorm2d_forward`.
    PyTorch's functional form refuses inputs with ``N * prod(spatial) == 1`` (a check shared with batch
    norm, whatever the group size); here they are accepted (a group of one value has ``x_hat = 0``).
    """
    fn = "groupnorm"
    num_groups, eps = _check_inputs(fn, x, weight, bias, num_groups, eps)
    xg = _grouped(x, num_groups)
    mean = xg.mean(axis=2)
    centred = xg - mean[:, :, None]
    var = np.mean(centred * centred, axis=2)  # biased, as PyTorch
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (centred * inv_std[:, :, None]).reshape(x.shape)
    y = x_hat * _per_channel(weight, x.ndim) + _per_channel(bias, x.ndim)
    return y, GroupNormCache(x_hat, inv_std, weight, num_groups)


def groupnorm_backward(dy: np.ndarray, cache: GroupNormCache) -> GroupNormGrads:
    """Gradients of :func:`groupnorm_forward` (what ``torch.autograd`` computes for ``group_norm``).

    Parameters
    ----------
    dy : ndarray, shape of the forward input, its dtype
    cache : GroupNormCache

    Returns
    -------
    GroupNormGrads

    Math
    ----
    ``dbias[c] = sum(dy[:, c])``, ``dweight[c] = sum(dy[:, c] * x_hat[:, c])`` (over samples and
    spatial positions). With ``g = dy * weight[c]`` and means over each sample's group,

    ``dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat))``,

    the batch-norm formula with the group of one sample in place of the channel of the batch.
    """
    fn = "groupnorm_backward"
    if not isinstance(cache, GroupNormCache):
        raise TypeError(
            f"{fn}: cache must be a GroupNormCache from groupnorm_forward, got {type(cache).__name__}"
        )
    x_hat, inv_std, weight, num_groups = cache
    validation.check_float(dy, "dy", fn)
    validation.check_same_dtype(fn, x=x_hat, dy=dy)
    validation.check_shape(dy, "dy", fn, x_hat.shape)
    axes = (0, *range(2, dy.ndim))
    dbias = dy.sum(axis=axes)
    dweight = (dy * x_hat).sum(axis=axes)
    g = _grouped(dy * _per_channel(weight, dy.ndim), num_groups)
    xh = _grouped(x_hat, num_groups)
    mean_g = g.mean(axis=2)[:, :, None]
    mean_gx = (g * xh).mean(axis=2)[:, :, None]
    dx = (inv_std[:, :, None] * (g - mean_g - xh * mean_gx)).reshape(dy.shape)
    return GroupNormGrads(dx, dweight, dbias)


def groupnorm_vjp(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    dy: np.ndarray,
    *,
    num_groups: int,
    eps: float = 1e-5,
) -> GroupNormGrads:
    """Vector-Jacobian product of :func:`groupnorm_forward` at its inputs applied to ``dy``."""
    _, cache = groupnorm_forward(x, weight, bias, num_groups=num_groups, eps=eps)
    return groupnorm_backward(dy, cache)
