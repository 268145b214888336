"""Softmax cross-entropy (PyTorch ``torch.nn.functional.cross_entropy``), batch mean, label smoothing.

The log-softmax and its gradient are computed in float64 and rounded once to the input dtype. This is
the project's rule for transcendentals (``exp``, ``log``): NumPy's float32 ``exp``/``log`` use SIMD
kernels that differ across CPUs in the last bit, while one rounding of a float64 result almost never
does. The float64 scratch arrays are ``(N, num_classes)``, negligible next to the network.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saf_ref import validation

__all__ = [
    "CrossEntropyCache",
    "CrossEntropyGrads",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "cross_entropy_vjp",
]


class CrossEntropyCache(NamedTuple):
    """What :func:`cross_entropy_backward` needs.

    Attributes
    ----------
    probs : ndarray of float64, shape (N, K)
        ``softmax(logits)`` in float64 (see the module docstring).
    labels : ndarray of int64, shape (N,)
        A copy of the class labels.
    label_smoothing : float
    dtype : numpy.dtype
        The dtype of the logits (the gradient's dtype).
    """

    probs: np.ndarray
    labels: np.ndarray
    label_smoothing: float
    dtype: np.dtype


class CrossEntropyGrads(NamedTuple):
    """Gradient with respect to the logits, shape (N, K), dtype of the logits."""

    dlogits: np.ndarray


def _check_labels(fn: str, labels, n: int, k: int) -> np.ndarray:
    """Integer labels of shape (N,) with values in [0, K); returned as an int64 copy."""
    validation.check_ndarray(labels, "labels", fn)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{fn}: labels must have an integer dtype (class indices), got {labels.dtype}")
    validation.check_shape(labels, "labels", fn, (n,))
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(
            f"{fn}: labels must be class indices in [0, {k - 1}] (logits.shape[1] = {k} classes), "
            f"got values from {lo} to {hi}"
        )
    return labels.astype(np.int64)  # astype copies: the cache never aliases the caller's array


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over axis 1, in float64.

    Subtracting the row maximum before ``exp`` keeps every exponent <= 0, so nothing overflows and the
    largest term is exactly 1 (the sum is at least 1 and its log is well conditioned).
    """
    z = logits.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy_forward(
    logits: np.ndarray, labels: np.ndarray, *, label_smoothing: float = 0.0
) -> tuple[np.generic, CrossEntropyCache]:
    """Mean softmax cross-entropy, like ``torch.nn.functional.cross_entropy(logits, labels,
    label_smoothing=label_smoothing)``.

    Parameters
    ----------
    logits : ndarray, shape (N, K), float32 or float64
        Unnormalised class scores.
    labels : ndarray of any integer dtype, shape (N,)
        Class indices in ``[0, K)``.
    label_smoothing : float in [0, 1]
        ``eps`` below.

    Returns
    -------
    loss : numpy scalar of the logits' dtype
        The batch mean, computed in float64 and rounded once.
    cache : CrossEntropyCache

    Math
    ----
    ``log p[n, k] = logits[n, k] - log(sum_j exp(logits[n, j]))``;
    ``loss = (1/N) sum_n [(1 - eps) * (-log p[n, labels[n]]) + (eps/K) * sum_k (-log p[n, k])]``,
    PyTorch's definition: the target is the mixture ``(1 - eps) * one_hot + eps / K`` (uniform over all
    K classes, the true one included).

    Notes
    -----
    Reduction is always the batch mean; PyTorch's ``weight``, ``ignore_index`` and probability targets
    are not supported. Non-finite logits give a non-finite loss.
    """
    fn = "cross_entropy"
    validation.check_float(logits, "logits", fn)
    validation.check_ndim(logits, "logits", fn, 2, "(N, K)")
    for axis, size in enumerate(logits.shape):
        validation.check_int(size, f"logits.shape[{axis}]", fn, low=1)
    n, k = logits.shape
    labels = _check_labels(fn, labels, n, k)
    eps = validation.check_real(label_smoothing, "label_smoothing", fn)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {label_smoothing!r}")

    logp = _log_softmax64(logits)
    nll = -logp[np.arange(n), labels]
    # With eps == 0 the smoothing term is skipped, not multiplied by 0: a -inf logit in another class
    # would otherwise give 0 * inf = NaN (PyTorch skips it too).
    per_sample = nll if eps == 0.0 else (1.0 - eps) * nll + eps * (-logp.mean(axis=1))
    loss = logits.dtype.type(per_sample.mean())
    return loss, CrossEntropyCache(np.exp(logp), labels, eps, logits.dtype)


def cross_entropy_backward(dloss, cache: CrossEntropyCache) -> CrossEntropyGrads:
    """Gradient of :func:`cross_entropy_forward` with respect to the logits.

    Parameters
    ----------
    dloss : real scalar
        Upstream gradient of the (scalar) loss; 1.0 when the loss is the objective.
    cache : CrossEntropyCache

    Returns
    -------
    CrossEntropyGrads
        ``dlogits`` of shape (N, K) in the logits' dtype (computed in float64, rounded once).

    Math
    ----
    ``dlogits[n, k] = dloss * (softmax(logits)[n, k] - target[n, k]) / N`` with
    ``target = (1 - eps) * one_hot(labels) + eps / K``.
    """
    fn = "cross_entropy_backward"
    if not isinstance(cache, CrossEntropyCache):
        raise TypeError(
            f"{fn}: cache must be a CrossEntropyCache from cross_entropy_forward, got {type(cache).__name__}"
        )
    dloss = validation.check_real(dloss, "dloss", fn)
    probs, labels, eps, dtype = cache
    n, k = probs.shape
    target = np.full((n, k), eps / k)
    target[np.arange(n), labels] += 1.0 - eps
    return CrossEntropyGrads((dloss * (probs - target) / n).astype(dtype))


def cross_entropy_vjp(
    logits: np.ndarray, labels: np.ndarray, dloss=1.0, *, label_smoothing: float = 0.0
) -> CrossEntropyGrads:
    """Vector-Jacobian product of :func:`cross_entropy_forward` with respect to the logits."""
    _, cache = cross_entropy_forward(logits, labels, label_smoothing=label_smoothing)
    return cross_entropy_backward(dloss, cache)
