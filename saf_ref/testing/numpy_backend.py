"""saf_ref itself as a backend of the oracle kit.

Every method calls the saf_ref function of the same name, so this backend passes the suite by
construction (up to the float64 reference's own rounding); it is the template for an adapter, a sanity
check of the suite (no false alarms on the reference) and the baseline of ``saf-ref check numpy``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from saf_ref.bits import QuantContext, Quantizer, flip_by_uniform, get_ieee_format
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.mx import MXFormat
from saf_ref.nn import activations, batchnorm, conv, groupnorm, linear, loss, pool
from saf_ref.nn.registry import model_fns
from saf_ref.protect.transforms import Transform
from saf_ref.testing.protocol import DEFAULT_ROUNDOFF, ModelResult
from saf_ref.train.optim import SGD, sgd_init, sgd_step

__all__ = ["NumpyBackend"]


class NumpyBackend:
    """The saf_ref functions behind the backend protocol (:class:`saf_ref.testing.protocol.Backend`).

    Parameters
    ----------
    dtype : {"float32", "float64"}
        dtype of the network ops.
    device : str
        Only ``"cpu"``.
    """

    def __init__(self, *, dtype: str = "float32", device: str = "cpu") -> None:
        fn = "NumpyBackend"
        if str(dtype) not in DEFAULT_ROUNDOFF:
            raise ValueError(f"{fn}: dtype must be one of {tuple(DEFAULT_ROUNDOFF)}, got {dtype!r}")
        if device != "cpu":
            raise ValueError(f"{fn}: device must be 'cpu' (NumPy runs on the CPU), got {device!r}")
        self.name = "saf_ref (numpy)"
        self.dtype = str(dtype)
        self.device = device

    def unit_roundoff(self, dtype: str) -> float:
        return DEFAULT_ROUNDOFF[dtype]

    # ---------------------------------------------------------------------------------------- bits
    def encode(self, format_name: str, x: np.ndarray) -> np.ndarray:
        return get_ieee_format(format_name).encode(x)

    def decode(self, format_name: str, codes: np.ndarray) -> np.ndarray:
        return get_ieee_format(format_name).decode(codes)

    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        return flip_by_uniform(codes, uniform, p, protected=protected)

    def apply_faults(self, codes: np.ndarray, faults: FaultList, *, nbits: int) -> np.ndarray:
        return faults.apply(codes, nbits=nbits)

    def quantize(self, x: np.ndarray, config: Mapping[str, Any]):
        codes, context = Quantizer(**config).encode(x)
        return codes, context.to_dict()

    def dequantize(self, codes, context, config):
        return Quantizer(**config).decode(codes, QuantContext.from_dict(dict(context)))

    def mx_encode(self, format_name: str, x: np.ndarray):
        scales, elements = MXFormat(format_name, axis=-1).quantize(x)
        return scales.reshape(x.shape[:-1] + (-1,)), elements.reshape(x.shape).astype(np.uint8)

    def mx_decode(self, format_name: str, scales: np.ndarray, elements: np.ndarray) -> np.ndarray:
        fmt, n = MXFormat(format_name, axis=-1), elements.shape[-1]
        rows = int(np.prod(elements.shape[:-1], dtype=np.int64))
        blocks = (rows, n // fmt.block_size)
        values = fmt.dequantize(
            np.ascontiguousarray(scales).reshape(blocks),
            np.ascontiguousarray(elements).reshape(blocks + (fmt.block_size,)).astype(fmt.element.container),
            (rows, n),
        )
        return values.reshape(elements.shape)

    # ------------------------------------------------------------------------------------- protect
    def transform_forward(self, name, u, *, scale):
        return Transform(name, scale).forward(u)

    def transform_vjp(self, name, u, dw, *, scale):
        return Transform(name, scale).vjp(u, dw)

    # ------------------------------------------------------------------------------------------ nn
    def conv2d_forward(self, x, w, b, *, stride, padding):
        return conv.conv2d_forward(x, w, b, stride=stride, padding=padding)[0]

    def conv2d_vjp(self, x, w, b, dy, *, stride, padding):
        return tuple(conv.conv2d_vjp(x, w, b, dy, stride=stride, padding=padding))

    def linear_forward(self, x, w, b):
        return linear.linear_forward(x, w, b)[0]

    def linear_vjp(self, x, w, b, dy):
        return tuple(linear.linear_vjp(x, w, b, dy))

    def batchnorm2d_forward(self, x, weight, bias, running_mean, running_var, *, train, momentum, eps):
        y, m, v, _ = batchnorm.batchnorm2d_forward(
            x, weight, bias, running_mean, running_var, train=train, momentum=momentum, eps=eps
        )
        return y, m, v

    def batchnorm2d_vjp(self, x, weight, bias, running_mean, running_var, dy, *, train, momentum, eps):
        return tuple(
            batchnorm.batchnorm2d_vjp(
                x, weight, bias, running_mean, running_var, dy, train=train, momentum=momentum, eps=eps
            )
        )

    def groupnorm_forward(self, x, weight, bias, *, num_groups, eps):
        return groupnorm.groupnorm_forward(x, weight, bias, num_groups=num_groups, eps=eps)[0]

    def groupnorm_vjp(self, x, weight, bias, dy, *, num_groups, eps):
        return tuple(groupnorm.groupnorm_vjp(x, weight, bias, dy, num_groups=num_groups, eps=eps))

    def relu_forward(self, x):
        return activations.relu_forward(x)[0]

    def relu_vjp(self, x, dy):
        return activations.relu_vjp(x, dy).dx

    def maxpool2d_forward(self, x, *, kernel_size, stride, padding):
        return pool.maxpool2d_forward(x, kernel_size=kernel_size, stride=stride, padding=padding)[0]

    def maxpool2d_vjp(self, x, dy, *, kernel_size, stride, padding):
        return pool.maxpool2d_vjp(x, dy, kernel_size=kernel_size, stride=stride, padding=padding).dx

    def global_avgpool_forward(self, x):
        return pool.global_avgpool_forward(x)[0]

    def global_avgpool_vjp(self, x, dy):
        return pool.global_avgpool_vjp(x, dy).dx

    def cross_entropy_forward(self, logits, labels, *, label_smoothing):
        return np.asarray(loss.cross_entropy_forward(logits, labels, label_smoothing=label_smoothing)[0])

    def cross_entropy_vjp(self, logits, labels, dloss, *, label_smoothing):
        return loss.cross_entropy_vjp(logits, labels, dloss, label_smoothing=label_smoothing).dlogits

    # --------------------------------------------------------------------------------------- train
    def sgd(
        self,
        params: Mapping[str, np.ndarray],
        grads: Sequence[Mapping[str, np.ndarray]],
        *,
        lr: float,
        momentum: float,
        dampening: float,
        weight_decay: float,
        nesterov: bool,
    ) -> dict[str, np.ndarray]:
        config = SGD(lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        params, state = dict(params), sgd_init(params)
        for g in grads:
            params, state = sgd_step(params, dict(g), state, config)
        return params

    # --------------------------------------------------------------------------------------- model
    def model_forward_backward(self, arch, params, state, x, labels, *, train):
        fns = model_fns(arch)
        logits, new_state, cache = fns.forward(dict(params), dict(state), x, train=train)
        value, ce_cache = loss.cross_entropy_forward(logits, labels)
        dlogits = loss.cross_entropy_backward(1.0, ce_cache).dlogits
        return ModelResult(logits, np.asarray(value), new_state, fns.backward(dlogits, cache).params)
