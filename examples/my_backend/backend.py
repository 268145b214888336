"""A third-party backend for saf_ref's oracle kit, written the way a user would write one.

It implements a subset of the protocol with plain NumPy and ml_dtypes (``pip install ml_dtypes``):
number-format codecs by casting, the interop fault-injection mode, ReLU, a fully connected layer, an
im2col-free convolution with ``np.einsum``, a float32 softmax cross-entropy and SGD with momentum.
Everything else (batch norm, pooling, the weight transforms, whole models, ...) is simply absent, and
the report lists those checks as skipped.

Check it with one command, from the repository root::

    saf-ref check examples/my_backend/backend.py:MyBackend

Nothing here imports saf_ref: a backend only has to follow the conventions of the protocol (NumPy arrays
in and out, NCHW / OIHW layouts, bit 0 = least significant bit).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# format name -> (the NumPy / ml_dtypes scalar type, the unsigned integer type of its bits)
FORMATS = {
    "float32": (np.float32, np.uint32),
    "float16": (np.float16, np.uint16),
    "bfloat16": (ml_dtypes.bfloat16, np.uint16),
    "float8_e4m3fn": (ml_dtypes.float8_e4m3fn, np.uint8),
    "float8_e5m2": (ml_dtypes.float8_e5m2, np.uint8),
}


class MyBackend:
    """NumPy + ml_dtypes, CPU only."""

    name = "my_backend (numpy + ml_dtypes)"
    device = "cpu"

    def __init__(self, dtype: str = "float32"):
        self.dtype = dtype

    # --- number formats --------------------------------------------------------------------------
    def encode(self, format_name, x):
        scalar, bits = FORMATS[format_name]
        with np.errstate(over="ignore"):
            return x.astype(scalar).view(bits)

    def decode(self, format_name, codes):
        scalar, _ = FORMATS[format_name]
        out = np.float16 if format_name == "float16" else np.float32
        return codes.view(scalar).astype(out)

    # --- fault injection: flip bit j of word k iff uniform[k, j] < p ------------------------------
    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        nbits = uniform.shape[-1]
        flips = uniform < np.float32(p)
        if protected is not None:
            keep = [(protected >> j) & 1 == 0 for j in range(nbits)]
            flips = flips & np.array(keep)
        weights = (1 << np.arange(nbits, dtype=np.uint64)).astype(codes.dtype)
        mask = np.bitwise_or.reduce(np.where(flips, weights, codes.dtype.type(0)), axis=-1)
        return codes ^ mask.astype(codes.dtype)

    # --- layers ----------------------------------------------------------------------------------
    def relu_forward(self, x):
        return np.maximum(x, 0).astype(x.dtype)

    def relu_vjp(self, x, dy):
        return np.where(x <= 0, 0, dy).astype(dy.dtype)  # the gradient is 0 at x = 0; NaN passes

    def linear_forward(self, x, w, b):
        y = x @ w.T
        return y if b is None else y + b

    def linear_vjp(self, x, w, b, dy):
        return dy @ w, dy.T @ x, (None if b is None else dy.sum(axis=0))

    def conv2d_forward(self, x, w, b, *, stride, padding):
        (sh, sw), (ph, pw) = stride, padding
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        windows = sliding_window_view(xp, w.shape[2:], axis=(2, 3))[:, :, ::sh, ::sw]
        y = np.einsum("nchwij,ocij->nohw", windows, w)
        return y if b is None else y + b[None, :, None, None]

    # (no conv2d_vjp, batch norm, pooling, transforms, quantizer or model: those checks are skipped)

    # --- loss ------------------------------------------------------------------------------------
    def _log_softmax(self, z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def cross_entropy_forward(self, logits, labels, *, label_smoothing):
        logp = self._log_softmax(logits)
        n, k = logits.shape
        nll = -logp[np.arange(n), labels]
        smooth = -logp.mean(axis=1)
        loss = (1 - label_smoothing) * nll + label_smoothing * smooth
        return np.asarray(loss.mean(), dtype=logits.dtype)

    def cross_entropy_vjp(self, logits, labels, dloss, *, label_smoothing):
        n, k = logits.shape
        target = np.full((n, k), label_smoothing / k)
        target[np.arange(n), labels] += 1 - label_smoothing
        p = np.exp(self._log_softmax(logits))
        return (dloss * (p - target.astype(logits.dtype)) / n).astype(logits.dtype)

    # --- optimizer: PyTorch's SGD ----------------------------------------------------------------
    def sgd(self, params, grads, *, lr, momentum, dampening, weight_decay, nesterov):
        params = {k: v.copy() for k, v in params.items()}
        bufs = {}
        for g_step in grads:
            for k, p in params.items():
                t = p.dtype.type
                g = g_step[k] + t(weight_decay) * p
                if momentum:
                    bufs[k] = g.copy() if k not in bufs else t(momentum) * bufs[k] + t(1 - dampening) * g
                    g = g + t(momentum) * bufs[k] if nesterov else bufs[k]
                params[k] = p - t(lr) * g
        return params
