"""Normalisation layers of the models: batch or group norm, plain or reparameterized.

The models (:mod:`saf_ref.nn.resnet`, :mod:`saf_ref.nn.small`) take two options for every normalisation
layer:

``norm="batch"`` (default) or ``"group"``
    ``nn.BatchNorm2d`` (running statistics in ``state``) or ``nn.GroupNorm(default_num_groups(C), C)``
    (no running statistics; :mod:`saf_ref.nn.groupnorm`).
``reparam=False`` (default) or ``True``
    The reference code's reparameterization (``ReparameterizedBatchNorm2d`` /
    ``ReparameterizedGroupNorm`` in Stutz et al.'s ``common/torch.py``): the layer scales by
    ``1 + weight`` instead of ``weight``, and ``weight`` is initialised at 0. The layer computes the same
    function; what changes is the stored parameter: it sits near 0 like every other tensor, so one clip
    ``[-c, c]`` and one quantizer can serve all tensors (a plain scale near 1 clipped to ``[-0.1, 0.1]``
    would be destroyed).

Parameter names are torchvision's whatever the options (``bn1.weight``, ``bn1.bias``,
``layer1.0.downsample.1.weight``, ...): a model built with ``norm_layer=nn.GroupNorm`` keeps them, and so
does the reference code's reparameterized module (``weight``, ``bias``). Group norm has no
``running_mean`` / ``running_var``.

The default (batch norm, not reparameterized) is :func:`saf_ref.nn.blocks.conv_bn_forward` itself, bit for
bit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.nn.batchnorm import batchnorm2d_backward, batchnorm2d_forward
from saf_ref.nn.blocks import ConvBNCache, conv_bn_backward, conv_bn_forward
from saf_ref.nn.conv import conv2d_backward, conv2d_forward
from saf_ref.nn.groupnorm import default_num_groups, groupnorm_backward, groupnorm_forward

__all__ = [
    "NORMS",
    "ConvNormCache",
    "NormCache",
    "check_norm",
    "conv_norm_backward",
    "conv_norm_forward",
    "norm_backward",
    "norm_forward",
    "norm_shapes",
    "reparam_init",
]

#: The normalisation layers a model can use.
NORMS = ("batch", "group")


def check_norm(norm: Any, reparam: Any, fn: str) -> tuple[str, bool]:
    """Validate the two options: ``norm`` in :data:`NORMS` (ValueError), ``reparam`` a bool (TypeError)."""
    validation.check_choice(norm, "norm", fn, NORMS)
    return norm, validation.check_bool(reparam, "reparam", fn)


def norm_shapes(
    name: str, channels: int, norm: str, params: dict[str, tuple[int, ...]], state: dict[str, tuple[int, ...]]
) -> None:
    """Add the entries of normalisation layer ``name`` over ``channels`` channels to the shape dicts.

    ``{name}.weight`` and ``{name}.bias`` ``(C,)`` in ``params``; with batch norm also
    ``{name}.running_mean`` and ``{name}.running_var`` ``(C,)`` in ``state`` (torchvision's order).
    """
    params[f"{name}.weight"] = (channels,)
    params[f"{name}.bias"] = (channels,)
    if norm == "batch":
        state[f"{name}.running_mean"] = (channels,)
        state[f"{name}.running_var"] = (channels,)


def reparam_init(params: dict[str, np.ndarray], param_shapes: dict[str, tuple[int, ...]]) -> dict:
    """The reparameterized initialisation: every normalisation weight (a 1-D ``*.weight``) set to 0.

    Returns a new dict; the other arrays are the same objects. The scale ``1 + weight`` is then 1, the
    plain layers' initial scale, so the initial network is the same function as the plain one.
    """
    return {
        k: np.zeros_like(v) if k.endswith(".weight") and len(param_shapes[k]) == 1 else v
        for k, v in params.items()
    }


class NormCache(NamedTuple):
    """Cache of one normalisation layer: its parameter prefix, options and the op's cache."""

    name: str
    norm: str
    reparam: bool
    op: Any  # BatchNorm2dCache or GroupNormCache


def norm_forward(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    new_state: dict[str, np.ndarray],
    name: str,
    *,
    norm: str,
    reparam: bool,
    train: bool,
) -> tuple[np.ndarray, NormCache]:
    """One normalisation layer; PyTorch: ``nn.BatchNorm2d`` / ``nn.GroupNorm`` or the reference code's
    reparameterized versions.

    Reads ``params[f"{name}.weight"]`` and ``.bias`` (and, for batch norm, the running statistics from
    ``state``, writing the updated ones into ``new_state``, a dict the caller owns).

    Math
    ----
    ``scale = weight`` (plain) or ``scale = 1 + weight`` (reparameterized, rounded to the dtype);
    batch norm: ``y = scale * (x - mu) / sqrt(var + eps) + bias`` with batch (``train``) or running
    statistics; group norm: the same with each sample's group statistics (train and eval alike), over
    ``default_num_groups(C)`` groups. The gradient with respect to ``weight`` is the one with respect to
    ``scale`` (``d(1 + w)/dw = 1``).
    """
    weight = params[f"{name}.weight"]
    scale = weight.dtype.type(1) + weight if reparam else weight
    bias = params[f"{name}.bias"]
    if norm == "group":
        y, op = groupnorm_forward(x, scale, bias, num_groups=default_num_groups(x.shape[1]))
    else:
        y, mean, var, op = batchnorm2d_forward(
            x, scale, bias, state[f"{name}.running_mean"], state[f"{name}.running_var"], train=train
        )
        new_state[f"{name}.running_mean"] = mean
        new_state[f"{name}.running_var"] = var
    return y, NormCache(name, norm, reparam, op)


def norm_backward(dy: np.ndarray, cache: NormCache, grads: dict[str, np.ndarray]) -> np.ndarray:
    """Backward of :func:`norm_forward`: returns ``dL/dx``; writes ``{name}.weight`` / ``.bias`` grads."""
    g = groupnorm_backward(dy, cache.op) if cache.norm == "group" else batchnorm2d_backward(dy, cache.op)
    grads[f"{cache.name}.weight"] = g.dweight  # d scale / d weight = 1 with the reparameterization too
    grads[f"{cache.name}.bias"] = g.dbias
    return g.dx


class ConvNormCache(NamedTuple):
    """Caches of a convolution followed by a normalisation layer other than plain batch norm."""

    conv_name: str
    conv: Any
    norm: NormCache


def conv_norm_forward(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    new_state: dict[str, np.ndarray],
    conv_name: str,
    norm_name: str,
    *,
    stride: int,
    padding: int,
    train: bool,
    norm: str = "batch",
    reparam: bool = False,
) -> tuple[np.ndarray, ConvBNCache | ConvNormCache]:
    """Convolution (no bias) then a normalisation layer, :func:`saf_ref.nn.blocks.conv_bn_forward` with
    the layer chosen by ``norm`` and ``reparam`` (see :func:`norm_forward`).

    The default (``norm="batch"``, ``reparam=False``) *is* ``conv_bn_forward`` (its cache included), so
    models with the default options compute exactly what they computed before the options existed.
    """
    if norm == "batch" and not reparam:
        return conv_bn_forward(
            x, params, state, new_state, conv_name, norm_name, stride=stride, padding=padding, train=train
        )
    y, conv_cache = conv2d_forward(x, params[f"{conv_name}.weight"], None, stride=stride, padding=padding)
    y, norm_cache = norm_forward(
        y, params, state, new_state, norm_name, norm=norm, reparam=reparam, train=train
    )
    return y, ConvNormCache(conv_name, conv_cache, norm_cache)


def conv_norm_backward(
    dy: np.ndarray, cache: ConvBNCache | ConvNormCache, grads: dict[str, np.ndarray]
) -> np.ndarray:
    """Backward of :func:`conv_norm_forward` (dispatching on the cache's type): returns ``dL/dx`` and
    writes the gradients of the conv weight and the normalisation parameters into ``grads``."""
    if isinstance(cache, ConvBNCache):
        return conv_bn_backward(dy, cache, grads)
    dh = norm_backward(dy, cache.norm, grads)
    conv_grads = conv2d_backward(dh, cache.conv)
    grads[f"{cache.conv_name}.weight"] = conv_grads.dw
    return conv_grads.dx
