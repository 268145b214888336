"""Loop implementations of every op in :mod:`saf_ref.nn`: the executable specification.

Each function transcribes the defining formula of an op with explicit Python loops over output elements
(and, for gradients, over input positions), with no windowing tricks, no padding buffers and no matrix
products, so that it can be checked by reading. Tests compare the vectorised ops against these in
float64. They are slow: use them on small shapes only.

All functions accept float arrays, compute in float64 (sums with :func:`math.fsum`, which is correctly
rounded, so the reference is as accurate as float64 allows) and return float64 arrays. Argument
validation is left to the real ops; these assume well-formed inputs.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "batchnorm2d_naive",
    "conv2d_backward_naive",
    "conv2d_naive",
    "cross_entropy_backward_naive",
    "cross_entropy_naive",
    "global_avgpool_naive",
    "groupnorm_naive",
    "linear_naive",
    "maxpool2d_backward_naive",
    "maxpool2d_naive",
    "relu_clipped_naive",
    "relu_naive",
]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _taps(out_index: int, stride: int, pad: int, kernel: int, size: int):
    """``(kernel offset, input index)`` pairs of one output position that fall inside the input.

    Zero padding is nothing but "skip the taps outside the image", which is what this spells out.
    """
    for k in range(kernel):
        i = out_index * stride - pad + k
        if 0 <= i < size:
            yield k, i


def conv2d_naive(x, w, b=None, *, stride=1, padding=0) -> np.ndarray:
    """``y[n,o,p,q] = b[o] + sum_{c,i,j} w[o,c,i,j] * x[n,c,p*sh-ph+i, q*sw-pw+j]`` (in-bounds taps)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = w.shape
    ho, wo = (h_ + 2 * ph - kh) // sh + 1, (w_ + 2 * pw - kw) // sw + 1
    y = np.empty((n_, o_, ho, wo))
    for n in range(n_):
        for o in range(o_):
            for p in range(ho):
                for q in range(wo):
                    terms = [0.0 if b is None else float(b[o])]
                    for i, hi in _taps(p, sh, ph, kh, h_):
                        for j, wi in _taps(q, sw, pw, kw, w_):
                            for c in range(c_):
                                terms.append(w[o, c, i, j] * x[n, c, hi, wi])
                    y[n, o, p, q] = math.fsum(terms)
    return y


def conv2d_backward_naive(x, w, dy, *, stride=1, padding=0):
    """``(dx, dw, db)`` by scattering every ``dy[n,o,p,q]`` along the taps that produced it.

    Each product is collected in a list per gradient element and summed with ``fsum`` at the end.
    """
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = w.shape
    dx_terms = {idx: [] for idx in np.ndindex(x.shape)}
    dw_terms = {idx: [] for idx in np.ndindex(w.shape)}
    for n in range(n_):
        for o in range(o_):
            for p in range(dy.shape[2]):
                for q in range(dy.shape[3]):
                    g = dy[n, o, p, q]
                    for i, hi in _taps(p, sh, ph, kh, h_):
                        for j, wi in _taps(q, sw, pw, kw, w_):
                            for c in range(c_):
                                dx_terms[n, c, hi, wi].append(w[o, c, i, j] * g)
                                dw_terms[o, c, i, j].append(x[n, c, hi, wi] * g)
    dx = np.array([math.fsum(dx_terms[idx]) for idx in np.ndindex(x.shape)]).reshape(x.shape)
    dw = np.array([math.fsum(dw_terms[idx]) for idx in np.ndindex(w.shape)]).reshape(w.shape)
    db = np.array([math.fsum(dy[:, o].ravel()) for o in range(o_)])
    return dx, dw, db


def _channel_values(x, c):
    """All values of channel ``c`` of an NCHW array, as Python floats."""
    return [float(v) for v in np.asarray(x, np.float64)[:, c].ravel()]


def batchnorm2d_naive(x, weight, bias, running_mean, running_var, *, train, momentum=0.1, eps=1e-5):
    """``(y, new_running_mean, new_running_var)`` channel by channel, PyTorch's definition.

    Training: ``mean = fsum(v)/n``, biased ``var = fsum((v-mean)^2)/n``, output normalised with it; the
    running variance is updated with the unbiased ``var * n/(n-1)``. Evaluation: running statistics.
    """
    x = np.asarray(x, np.float64)
    n_, c_, h_, w_ = x.shape
    y = np.empty_like(x)
    new_mean = np.array(running_mean, np.float64)
    new_var = np.array(running_var, np.float64)
    for c in range(c_):
        if train:
            values = _channel_values(x, c)
            count = len(values)
            mean = math.fsum(values) / count
            var = math.fsum((v - mean) ** 2 for v in values) / count
            new_mean[c] = (1 - momentum) * float(running_mean[c]) + momentum * mean
            new_var[c] = (1 - momentum) * float(running_var[c]) + momentum * var * count / (count - 1)
        else:
            mean, var = float(running_mean[c]), float(running_var[c])
        scale = float(weight[c]) / math.sqrt(var + eps)
        for idx in np.ndindex(n_, h_, w_):
            n, h, w = idx
            y[n, c, h, w] = scale * (x[n, c, h, w] - mean) + float(bias[c])
    return y, new_mean, new_var


def groupnorm_naive(x, weight, bias, *, num_groups, eps=1e-5) -> np.ndarray:
    """``y`` sample by sample and group by group, PyTorch's ``group_norm``.

    For sample ``n`` and group ``g`` (channels ``g*C/G ... (g+1)*C/G - 1``, all spatial positions):
    ``mean = fsum(v)/m``, biased ``var = fsum((v-mean)^2)/m``,
    ``y = weight[c] * (x - mean) / sqrt(var + eps) + bias[c]``.
    """
    x = np.asarray(x, np.float64)
    y = np.empty_like(x)
    per_group = x.shape[1] // num_groups
    for n in range(x.shape[0]):
        for g in range(num_groups):
            channels = range(g * per_group, (g + 1) * per_group)
            values = [float(v) for c in channels for v in x[n, c].ravel()]
            mean = math.fsum(values) / len(values)
            var = math.fsum((v - mean) ** 2 for v in values) / len(values)
            for c in channels:
                for idx in np.ndindex(x.shape[2:]):
                    xhat = (x[(n, c, *idx)] - mean) / math.sqrt(var + eps)
                    y[(n, c, *idx)] = float(weight[c]) * xhat + float(bias[c])
    return y


def relu_naive(x) -> np.ndarray:
    """``0 if v < 0 else v`` element by element (keeps -0.0 and NaN)."""
    x = np.asarray(x, np.float64)
    return np.array([0.0 if v < 0 else v for v in x.ravel()]).reshape(x.shape)


def relu_clipped_naive(x, ceiling) -> np.ndarray:
    """``0 if v < 0 else (c if v > c else v)`` element by element."""
    x = np.asarray(x, np.float64)
    c = float(ceiling)
    return np.array([0.0 if v < 0 else (c if v > c else v) for v in x.ravel()]).reshape(x.shape)


def maxpool2d_naive(x, *, kernel_size=3, stride=2, padding=1):
    """``(y, indices)``: scan each window's in-bounds elements in row-major order (PyTorch's rule).

    An element replaces the running maximum when it is strictly greater or NaN; the running maximum
    starts at ``-inf`` with the first in-bounds element's index. ``indices`` are flat ``h * W + w``.
    """
    x = np.asarray(x, np.float64)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n_, c_, h_, w_ = x.shape
    ho, wo = (h_ + 2 * ph - kh) // sh + 1, (w_ + 2 * pw - kw) // sw + 1
    y = np.empty((n_, c_, ho, wo))
    indices = np.empty((n_, c_, ho, wo), dtype=np.int64)
    for n, c, p, q in np.ndindex(n_, c_, ho, wo):
        best, best_index = -math.inf, None
        for _, hi in _taps(p, sh, ph, kh, h_):
            for _, wi in _taps(q, sw, pw, kw, w_):
                v = x[n, c, hi, wi]
                if best_index is None:
                    best_index = hi * w_ + wi
                if v > best or math.isnan(v):
                    best, best_index = v, hi * w_ + wi
        y[n, c, p, q], indices[n, c, p, q] = best, best_index
    return y, indices


def maxpool2d_backward_naive(x, dy, *, kernel_size=3, stride=2, padding=1) -> np.ndarray:
    """``dx``: each ``dy[n, c, p, q]`` added to the element its window selected (see above)."""
    x = np.asarray(x, np.float64)
    _, indices = maxpool2d_naive(x, kernel_size=kernel_size, stride=stride, padding=padding)
    w_ = x.shape[3]
    dx = np.zeros_like(x)
    for n, c, p, q in np.ndindex(indices.shape):
        flat = int(indices[n, c, p, q])
        dx[n, c, flat // w_, flat % w_] += float(dy[n, c, p, q])
    return dx


def global_avgpool_naive(x) -> np.ndarray:
    """``y[n, c] = fsum(x[n, c]) / (H * W)``."""
    x = np.asarray(x, np.float64)
    n_, c_, h_, w_ = x.shape
    y = np.empty((n_, c_))
    for n, c in np.ndindex(n_, c_):
        y[n, c] = math.fsum(x[n, c].ravel()) / (h_ * w_)
    return y


def linear_naive(x, w, b=None) -> np.ndarray:
    """``y[n, o] = b[o] + sum_i x[n, i] * w[o, i]``."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    y = np.empty((x.shape[0], w.shape[0]))
    for n, o in np.ndindex(y.shape):
        terms = [x[n, i] * w[o, i] for i in range(x.shape[1])]
        y[n, o] = math.fsum(terms + ([] if b is None else [float(b[o])]))
    return y


def _log_softmax_row(row) -> list[float]:
    m = max(row)
    log_total = math.log(math.fsum(math.exp(v - m) for v in row))
    return [v - m - log_total for v in row]


def cross_entropy_naive(logits, labels, *, label_smoothing=0.0) -> float:
    """Mean over the batch of ``(1-eps) * -log p[label] + eps/K * sum_k -log p[k]`` (a Python float)."""
    logits = np.asarray(logits, np.float64)
    n_, k_ = logits.shape
    eps = float(label_smoothing)
    losses = []
    for n in range(n_):
        logp = _log_softmax_row([float(v) for v in logits[n]])
        smooth = -math.fsum(logp) / k_
        losses.append((1 - eps) * -logp[int(labels[n])] + eps * smooth)
    return math.fsum(losses) / n_


def cross_entropy_backward_naive(logits, labels, *, label_smoothing=0.0, dloss=1.0) -> np.ndarray:
    """``dlogits[n, k] = dloss * (softmax[n, k] - target[n, k]) / N``, target the smoothed one-hot."""
    logits = np.asarray(logits, np.float64)
    n_, k_ = logits.shape
    eps = float(label_smoothing)
    out = np.empty((n_, k_))
    for n in range(n_):
        logp = _log_softmax_row([float(v) for v in logits[n]])
        for k in range(k_):
            target = eps / k_ + (1 - eps if k == int(labels[n]) else 0.0)
            out[n, k] = dloss * (math.exp(logp[k]) - target) / n_
    return out
