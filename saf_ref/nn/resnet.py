"""ResNets as pure forward/backward pairs, with torchvision parameter names.

Three architectures (``arch``):

``"resnet20"``
    The CIFAR ResNet of He et al. (2016), section 4.2: a 3x3 stride-1 stem with 16 channels, three
    stages of 3 basic blocks with 16, 32, 64 channels, global average pooling and a linear classifier.
    Where a block changes the shape, its shortcut is a 1x1 convolution + batch norm ("option B").
``"resnet18_cifar"``
    ResNet-18 adapted to 32x32 images: a 3x3 stride-1 stem and no max pooling, stages of
    64/128/256/512 channels with 2 basic blocks each.
``"resnet18"``
    torchvision's ImageNet ResNet-18: a 7x7 stride-2 stem (padding 3), 3x3 stride-2 max pooling
    (padding 1), then the same four stages.

Parameters and running statistics are plain dicts keyed by torchvision's ``state_dict`` names, so a
PyTorch checkpoint loads with one call (:func:`saf_ref.nn.state_dict.load_torch_state_dict`)::

    conv1.weight  bn1.weight  bn1.bias                        (params)
    bn1.running_mean  bn1.running_var                         (state)
    layer1.0.conv1.weight  layer1.0.bn1.weight ...            (block 0 of stage 1)
    layer2.0.downsample.0.weight  layer2.0.downsample.1.weight ...  (1x1 conv + BN shortcut)
    fc.weight  fc.bias

Weight transforms
-----------------
The hardening method trains *latent* weights ``u`` and computes with ``w = f(u)`` for a saturating
``f``. ``resnet_forward(..., transform=f)`` does exactly that for the convolution and linear weights
(every parameter whose name ends in ``.weight`` and that has 2 or 4 dimensions); biases and batch-norm
parameters are used raw. ``resnet_backward`` then returns the gradient with respect to the latents,
``du = f'(u) * dw``. Because ``saf_ref.nn`` never imports ``saf_ref.protect`` (DESIGN.md, section 2),
the transform is any object with the two methods of :class:`WeightTransform`; the transforms of
:mod:`saf_ref.protect.transforms` are such objects::

    from saf_ref.protect.transforms import get_transform
    logits, new_state, cache = resnet_forward(params, state, x, arch="resnet20", train=True,
                                              transform=get_transform("tanh"))

Activation clipping
-------------------
``resnet_forward(..., act_clip=c)`` replaces every ReLU (stem, both ReLUs of every block) by a ReLU with
a ceiling, ``min(max(z, 0), c)`` (PyTorch: ``nn.Hardtanh(0, c)``, ``nn.ReLU6`` for ``c = 6``). This is
the prior-work baseline that the saturated-transform paper contrasts with: bounded activations limit how
far a corrupted weight can push the signal, whereas a weight transform bounds the weight itself.
``act_clip=None`` (the default) is the plain ReLU, bit for bit. The backward pass needs no flag: it
dispatches on the type of each activation's cache (``ReluCache`` or ``ReluClippedCache``).

Batch-norm ``num_batches_tracked``
----------------------------------
PyTorch keeps an int64 counter per batch-norm layer; it only matters when ``momentum=None`` (cumulative
averaging), which saf_ref does not implement. saf_ref's state therefore holds only the float
``running_mean`` / ``running_var`` arrays: the loader accepts and drops the counters, and PyTorch's
``load_state_dict`` recreates them (as 0) when a saf_ref state dict is loaded into a torch model.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from saf_ref.nn.activations import (
    ReluClippedCache,
    relu_backward,
    relu_clipped_backward,
    relu_clipped_forward,
    relu_forward,
)
from saf_ref.nn.batchnorm import batchnorm2d_backward, batchnorm2d_forward
from saf_ref.nn.conv import conv2d_backward, conv2d_forward
from saf_ref.nn.linear import linear_backward, linear_forward
from saf_ref.nn.pool import (
    global_avgpool_backward,
    global_avgpool_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
from saf_ref.validation import (
    FLOAT_DTYPES,
    check_choice,
    check_float,
    check_int,
    check_ndim,
    check_real,
    check_rng,
)

__all__ = [
    "ARCHS",
    "ArchSpec",
    "BasicBlockCache",
    "ResNetCache",
    "StemCache",
    "WeightTransform",
    "basic_block_backward",
    "basic_block_forward",
    "check_act_clip",
    "init_resnet",
    "is_transformed_weight",
    "resnet_backward",
    "resnet_forward",
    "resnet_shapes",
    "transform_weights",
    "transform_weights_backward",
]


# --------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------


class ArchSpec(NamedTuple):
    """Static description of a ResNet: stem kind, stage widths (for ``width=None``) and blocks per stage."""

    stem: str  # "cifar" (3x3 stride 1, no pooling) or "imagenet" (7x7 stride 2 + 3x3/2 max pooling)
    widths: tuple[int, ...]
    blocks: tuple[int, ...]


ARCHS: dict[str, ArchSpec] = {
    "resnet20": ArchSpec("cifar", (16, 32, 64), (3, 3, 3)),
    "resnet18_cifar": ArchSpec("cifar", (64, 128, 256, 512), (2, 2, 2, 2)),
    "resnet18": ArchSpec("imagenet", (64, 128, 256, 512), (2, 2, 2, 2)),
}


def _arch_spec(arch: Any, fn: str) -> ArchSpec:
    return ARCHS[check_choice(arch, "arch", fn, tuple(ARCHS))]


def _stage_widths(spec: ArchSpec, width: int | None) -> tuple[int, ...]:
    """Channels per stage: the architecture's own, or ``width`` doubled at every stage."""
    if width is None:
        return spec.widths
    return tuple(width * 2**i for i in range(len(spec.blocks)))


def _blocks(spec: ArchSpec, widths: tuple[int, ...]):
    """Yield ``(prefix, in_channels, out_channels, stride)`` for every basic block, in order."""
    c_in = widths[0]  # the stem outputs widths[0] channels
    for s, (c_out, n_blocks) in enumerate(zip(widths, spec.blocks, strict=True)):
        for b in range(n_blocks):
            # The first block of every stage but the first halves the resolution.
            stride = 2 if (b == 0 and s > 0) else 1
            yield f"layer{s + 1}.{b}.", c_in, c_out, stride
            c_in = c_out


def _has_downsample(c_in: int, c_out: int, stride: int) -> bool:
    """torchvision adds the 1x1 conv + BN shortcut exactly when the block changes the shape."""
    return stride != 1 or c_in != c_out


def resnet_shapes(
    arch: str, *, num_classes: int = 10, in_channels: int = 3, width: int | None = None
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Names and shapes of a ResNet's parameters and running statistics, in torchvision's order.

    Parameters
    ----------
    arch : {"resnet20", "resnet18_cifar", "resnet18"}
    num_classes : int
        Outputs of the final linear layer.
    in_channels : int
        Channels of the input images (3 for CIFAR/ImageNet, 1 for MNIST).
    width : int or None
        Channels of the stem and first stage; each later stage doubles it. ``None`` uses the
        architecture's own (16 for resnet20, 64 for the ResNet-18s).

    Returns
    -------
    param_shapes, state_shapes : dict[str, tuple[int, ...]]
        Insertion-ordered like ``torch.nn.Module.state_dict()`` (without ``num_batches_tracked``).
    """
    return _resnet_shapes(arch, num_classes, in_channels, width, "resnet_shapes")


def _resnet_shapes(arch, num_classes, in_channels, width, fn):
    """:func:`resnet_shapes`, with errors reported as coming from ``fn``."""
    spec = _arch_spec(arch, fn)
    check_int(num_classes, "num_classes", fn, low=1)
    check_int(in_channels, "in_channels", fn, low=1)
    if width is not None:
        check_int(width, "width", fn, low=1)
    widths = _stage_widths(spec, width)
    params: dict[str, tuple[int, ...]] = {}
    state: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        params[f"{name}.weight"] = (c,)
        params[f"{name}.bias"] = (c,)
        state[f"{name}.running_mean"] = (c,)
        state[f"{name}.running_var"] = (c,)

    k = 3 if spec.stem == "cifar" else 7
    params["conv1.weight"] = (widths[0], in_channels, k, k)
    bn("bn1", widths[0])
    for prefix, c_in, c_out, stride in _blocks(spec, widths):
        params[f"{prefix}conv1.weight"] = (c_out, c_in, 3, 3)
        bn(f"{prefix}bn1", c_out)
        params[f"{prefix}conv2.weight"] = (c_out, c_out, 3, 3)
        bn(f"{prefix}bn2", c_out)
        if _has_downsample(c_in, c_out, stride):
            params[f"{prefix}downsample.0.weight"] = (c_out, c_in, 1, 1)
            bn(f"{prefix}downsample.1", c_out)
    params["fc.weight"] = (num_classes, widths[-1])
    params["fc.bias"] = (num_classes,)
    return params, state


# --------------------------------------------------------------------------------------------------
# Initialization
# --------------------------------------------------------------------------------------------------


def _check_dtype_arg(dtype: Any, fn: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{fn}: dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: dtype must be float32 or float64, got {dt}")
    return dt


def init_from_shapes(
    param_shapes: dict[str, tuple[int, ...]],
    state_shapes: dict[str, tuple[int, ...]],
    rng: np.random.Generator,
    dtype: np.dtype,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """torchvision's initialization, chosen per parameter by its name and shape, drawn in the given order.

    - convolution weights (4-D): ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, i.e.
      ``N(0, 2 / fan_out)`` with ``fan_out = out_channels * kh * kw``;
    - linear weights (2-D) ``(out, in)``: PyTorch's ``nn.Linear`` default ``kaiming_uniform_(a=sqrt(5))``,
      which is ``U(-1/sqrt(in), 1/sqrt(in))``; a linear bias (a ``.bias`` whose ``.weight`` is 2-D) uses
      the same bound;
    - batch-norm weights (1-D ``.weight``) 1, biases 0; running means 0, running variances 1.

    Random samples are drawn in float64 from ``rng`` and rounded once to ``dtype``.
    """
    params = {}
    for name, shape in param_shapes.items():
        stem = name.rsplit(".", 1)[0]
        linear_weight = param_shapes.get(f"{stem}.weight", ())
        if len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            value = rng.normal(0.0, np.sqrt(2.0 / fan_out), size=shape)
        elif len(linear_weight) == 2:  # a linear layer's weight or bias
            bound = 1.0 / np.sqrt(linear_weight[1])
            value = rng.uniform(-bound, bound, size=shape)
        elif name.endswith(".weight"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        params[name] = value.astype(dtype)
    state = {
        name: (np.zeros(shape, dtype) if name.endswith("running_mean") else np.ones(shape, dtype))
        for name, shape in state_shapes.items()
    }
    return params, state


def init_resnet(
    arch: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int | None = None,
    rng: np.random.Generator | int,
    dtype: Any = np.float32,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Build a ResNet's parameters and running statistics, initialized as torchvision does.

    PyTorch equivalent: ``torchvision.models.resnet18(num_classes=...)`` (``arch="resnet18"``) and the
    usual CIFAR variants; names and shapes match their ``state_dict()``.

    Parameters
    ----------
    arch : {"resnet20", "resnet18_cifar", "resnet18"}
    num_classes, in_channels, width : int
        See :func:`resnet_shapes`.
    rng : numpy.random.Generator or int
        The only source of randomness (a seed is turned into ``np.random.default_rng(seed)``).
    dtype : float32 (default) or float64

    Returns
    -------
    params : dict[str, ndarray]
        Convolution weights ``(C_out, C_in, k, k)`` (no biases), batch-norm ``weight``/``bias``
        ``(C,)``, ``fc.weight`` ``(num_classes, C)``, ``fc.bias`` ``(num_classes,)``.
    state : dict[str, ndarray]
        ``running_mean`` (zeros) and ``running_var`` (ones) of every batch norm, shape ``(C,)``.

    Math
    ----
    conv: ``w ~ N(0, 2 / (C_out k^2))`` (Kaiming normal, fan-out, ReLU gain);
    fc: ``w, b ~ U(-1/sqrt(C), 1/sqrt(C))``; batch norm: ``gamma = 1``, ``beta = 0``.

    Notes
    -----
    Parameters are drawn in ``state_dict`` order, each in float64 then rounded to ``dtype``; the same
    seed gives the same network in float32 and float64 (up to that rounding).
    """
    fn = "init_resnet"
    gen = check_rng(rng, fn)
    dt = _check_dtype_arg(dtype, fn)
    param_shapes, state_shapes = _resnet_shapes(arch, num_classes, in_channels, width, fn)
    return init_from_shapes(param_shapes, state_shapes, gen, dt)


# --------------------------------------------------------------------------------------------------
# Weight transforms (duck-typed: saf_ref.nn never imports saf_ref.protect)
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class WeightTransform(Protocol):
    """What a model needs from a weight transform ``w = f(u)``.

    :class:`saf_ref.protect.transforms.Transform` satisfies it; any object with these two methods does.
    """

    def forward(self, u: np.ndarray) -> np.ndarray:
        """``w = f(u)``, same shape and dtype as ``u``."""

    def vjp(self, u: np.ndarray, dw: np.ndarray) -> np.ndarray:
        """``du = f'(u) * dw`` (elementwise), same shape and dtype as ``u``."""


def is_transformed_weight(name: str, value: np.ndarray) -> bool:
    """True for the parameters a weight transform applies to: convolution and linear weights.

    The rule is by name and rank: ``*.weight`` with 4 dimensions (conv) or 2 (linear). Batch-norm
    weights are also called ``*.weight`` but are 1-D, so they stay raw, as do all biases.
    """
    return name.endswith(".weight") and value.ndim in (2, 4)


def _check_transform(transform: Any, fn: str) -> None:
    if transform is None:
        return
    if not (callable(getattr(transform, "forward", None)) and callable(getattr(transform, "vjp", None))):
        raise TypeError(
            f"{fn}: transform must be None or an object with .forward(u) and .vjp(u, dw) methods "
            f"(e.g. saf_ref.protect.transforms.get_transform('tanh')), got {type(transform).__name__}"
        )


def transform_weights(
    params: dict[str, np.ndarray], transform: WeightTransform | None
) -> dict[str, np.ndarray]:
    """Effective parameters: ``f(u)`` for conv/linear weights, the rest unchanged. Returns a new dict."""
    if transform is None:
        return dict(params)
    return {k: (transform.forward(v) if is_transformed_weight(k, v) else v) for k, v in params.items()}


def transform_weights_backward(
    grads: dict[str, np.ndarray], latents: dict[str, np.ndarray], transform: WeightTransform | None
) -> dict[str, np.ndarray]:
    """Chain rule through :func:`transform_weights`: ``du = f'(u) * dw`` for transformed weights."""
    if transform is None:
        return grads
    return {
        k: (transform.vjp(latents[k], g) if is_transformed_weight(k, latents[k]) else g)
        for k, g in grads.items()
    }


# --------------------------------------------------------------------------------------------------
# Activations: ReLU, or ReLU with a ceiling (activation clipping)
# --------------------------------------------------------------------------------------------------


def check_act_clip(act_clip: Any, fn: str) -> float | None:
    """Validate an activation ceiling: ``None`` (plain ReLU) or a finite real number ``> 0``.

    Returns ``None`` or the ceiling as a Python ``float``. A non-number (a string, a bool, an array) is a
    ``TypeError``; NaN, an infinity, zero or a negative number is a ``ValueError``.
    """
    if act_clip is None:
        return None
    c = check_real(act_clip, "act_clip", fn)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"{fn}: act_clip must be None or a finite number > 0, got {act_clip!r}")
    return c


def _act_forward(x: np.ndarray, act_clip: float | None) -> tuple[np.ndarray, Any]:
    """``relu(x)``, or ``min(max(x, 0), act_clip)`` when a ceiling is given; ``(y, cache)``."""
    if act_clip is None:
        return relu_forward(x)
    return relu_clipped_forward(x, ceiling=act_clip)


def _act_backward(dy: np.ndarray, cache: Any) -> np.ndarray:
    """Backward of :func:`_act_forward`; the cache's type says which activation ran."""
    if isinstance(cache, ReluClippedCache):
        return relu_clipped_backward(dy, cache).dx
    return relu_backward(dy, cache).dx


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class ConvBNCache(NamedTuple):
    """Caches of one convolution followed by batch norm (``name`` is the BN's parameter prefix)."""

    conv_name: str
    bn_name: str
    conv: Any
    bn: Any


class StemCache(NamedTuple):
    """Stem: conv1 -> bn1 -> ReLU [-> 3x3/2 max pooling for the ImageNet layout]."""

    conv_bn: ConvBNCache
    relu: Any  # ReluCache, or ReluClippedCache with act_clip
    maxpool: Any  # None for the CIFAR stem


class BasicBlockCache(NamedTuple):
    """Everything a basic block's backward needs, by stage of the block.

    ``downsample`` is ``None`` when the shortcut is the identity.
    """

    prefix: str
    branch1: ConvBNCache  # conv1 (3x3, stride) -> bn1
    relu1: Any
    branch2: ConvBNCache  # conv2 (3x3) -> bn2
    downsample: ConvBNCache | None  # 1x1 conv (stride) -> BN, or None for the identity
    relu_out: Any  # ReLU after the residual sum


class ResNetCache(NamedTuple):
    """The cache of :func:`resnet_forward`: per-stage caches plus what the transform backward needs."""

    arch: str
    stem: StemCache
    blocks: tuple[BasicBlockCache, ...]
    pool: Any
    fc: Any
    latents: dict[str, np.ndarray]  # the params as given (u when a transform is used)
    transform: WeightTransform | None
    act_clip: float | None = None  # the ReLU ceiling used (for inspection; backward reads the caches)


def _conv_bn_forward(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    new_state: dict[str, np.ndarray],
    conv_name: str,
    bn_name: str,
    *,
    stride: int,
    padding: int,
    train: bool,
) -> tuple[np.ndarray, ConvBNCache]:
    """conv (no bias) then batch norm; writes the BN's running statistics into ``new_state``."""
    y, conv_cache = conv2d_forward(x, params[f"{conv_name}.weight"], None, stride=stride, padding=padding)
    y, mean, var, bn_cache = batchnorm2d_forward(
        y,
        params[f"{bn_name}.weight"],
        params[f"{bn_name}.bias"],
        state[f"{bn_name}.running_mean"],
        state[f"{bn_name}.running_var"],
        train=train,
    )
    new_state[f"{bn_name}.running_mean"] = mean
    new_state[f"{bn_name}.running_var"] = var
    return y, ConvBNCache(conv_name, bn_name, conv_cache, bn_cache)


def _conv_bn_backward(dy: np.ndarray, cache: ConvBNCache, grads: dict[str, np.ndarray]) -> np.ndarray:
    """Backward of :func:`_conv_bn_forward`; writes the parameter gradients into ``grads``."""
    bn_grads = batchnorm2d_backward(dy, cache.bn)
    grads[f"{cache.bn_name}.weight"] = bn_grads.dweight
    grads[f"{cache.bn_name}.bias"] = bn_grads.dbias
    conv_grads = conv2d_backward(bn_grads.dx, cache.conv)
    grads[f"{cache.conv_name}.weight"] = conv_grads.dw
    return conv_grads.dx


def basic_block_forward(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    prefix: str,
    *,
    stride: int,
    train: bool,
    act_clip: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], BasicBlockCache]:
    """One residual basic block, as ``torchvision.models.resnet.BasicBlock``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    params, state : dict
        The whole network's (effective) parameters and running statistics; this block reads the
        entries starting with ``prefix`` (e.g. ``"layer2.0."``).
    stride : int
        Stride of ``conv1`` and of the shortcut convolution.
    train : bool
        Batch statistics (and running-statistics update) or running statistics.
    act_clip : float or None
        Ceiling ``c > 0`` of both ReLUs (activation clipping, ``nn.Hardtanh(0, c)``); ``None``: ReLU.

    Returns
    -------
    y : ndarray, shape (N, C_out, H', W')
    new_state : dict
        This block's updated running statistics (only its own keys).
    cache : BasicBlockCache

    Math
    ----
    ``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))`` with ``s(x) = x`` or
    ``s(x) = bn_d(conv1x1(x))`` when the block has ``downsample`` parameters. With ``act_clip = c``
    every ``relu`` is ``relu_c(z) = min(max(z, 0), c)``.
    """
    act_clip = check_act_clip(act_clip, "basic_block_forward")
    new_state: dict[str, np.ndarray] = {}
    h, branch1 = _conv_bn_forward(
        x, params, state, new_state, f"{prefix}conv1", f"{prefix}bn1", stride=stride, padding=1, train=train
    )
    h, relu1 = _act_forward(h, act_clip)
    h, branch2 = _conv_bn_forward(
        h, params, state, new_state, f"{prefix}conv2", f"{prefix}bn2", stride=1, padding=1, train=train
    )
    if f"{prefix}downsample.0.weight" in params:
        shortcut, downsample = _conv_bn_forward(
            x,
            params,
            state,
            new_state,
            f"{prefix}downsample.0",
            f"{prefix}downsample.1",
            stride=stride,
            padding=0,
            train=train,
        )
    else:
        shortcut, downsample = x, None
    y, relu_out = _act_forward(h + shortcut, act_clip)
    return y, new_state, BasicBlockCache(prefix, branch1, relu1, branch2, downsample, relu_out)


def basic_block_backward(dy: np.ndarray, cache: BasicBlockCache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Backward of :func:`basic_block_forward`: ``(dx, grads)`` with this block's parameter names.

    Math
    ----
    With ``d = dy * [pre-activation > 0]`` (``[0 < pre-activation < c]`` with a ceiling ``c``): the
    residual branch and the shortcut both receive ``d``, and ``dx`` is the sum of their input gradients.
    """
    grads: dict[str, np.ndarray] = {}
    d = _act_backward(dy, cache.relu_out)
    dh = _conv_bn_backward(d, cache.branch2, grads)
    dh = _act_backward(dh, cache.relu1)
    dx = _conv_bn_backward(dh, cache.branch1, grads)
    if cache.downsample is None:
        dx = dx + d
    else:
        dx = dx + _conv_bn_backward(d, cache.downsample, grads)
    return dx, grads


# --------------------------------------------------------------------------------------------------
# Whole network
# --------------------------------------------------------------------------------------------------


def _infer_config(params: dict[str, np.ndarray], spec: ArchSpec, fn: str) -> tuple[int, int, int]:
    """(num_classes, in_channels, width) read from ``conv1.weight`` and ``fc.weight``."""
    for key, ndim in (("conv1.weight", 4), ("fc.weight", 2)):
        if key not in params:
            raise ValueError(f"{fn}: params must contain {key!r}, got no such key")
        check_float(params[key], f"params[{key!r}]", fn)
        check_ndim(params[key], f"params[{key!r}]", fn, ndim)
    width, in_channels = params["conv1.weight"].shape[:2]
    return params["fc.weight"].shape[0], in_channels, width


def check_named_arrays(
    fn: str,
    what: str,
    arrays: Any,
    shapes: dict[str, tuple[int, ...]],
    dtype: np.dtype | None = None,
) -> None:
    """Require ``arrays`` to have exactly the keys of ``shapes``, with those shapes (and ``dtype``).

    Every missing, unexpected or mis-shaped tensor is named in the one error message.
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"{fn}: {what} must be a dict of numpy arrays, got {type(arrays).__name__}")
    missing = [k for k in shapes if k not in arrays]
    unexpected = [k for k in arrays if k not in shapes]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    if problems:
        raise ValueError(f"{fn}: {what} must have the keys of the architecture, got " + "; ".join(problems))
    for k, shape in shapes.items():
        v = arrays[k]
        if not isinstance(v, np.ndarray):
            raise TypeError(f"{fn}: {what}[{k!r}] must be a numpy.ndarray, got {type(v).__name__}")
        if dtype is not None and v.dtype != dtype:
            raise TypeError(
                f"{fn}: {what}[{k!r}].dtype (={v.dtype}) must equal x.dtype (={dtype}); "
                "mixed dtypes are not promoted, cast explicitly"
            )
        if v.shape != shape:
            raise ValueError(f"{fn}: {what}[{k!r}] must have shape {shape}, got {v.shape}")


def resnet_forward(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    x: np.ndarray,
    *,
    arch: str,
    train: bool,
    transform: WeightTransform | None = None,
    act_clip: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], ResNetCache]:
    """Forward pass of a ResNet; PyTorch equivalent: ``model.train(train); logits = model(x)``.

    Parameters
    ----------
    params : dict[str, ndarray]
        As returned by :func:`init_resnet` (any ``width``/``num_classes``/``in_channels``: they are
        read from the shapes). With a ``transform`` these are the latents ``u``.
    state : dict[str, ndarray]
        Batch-norm running statistics.
    x : ndarray, shape (N, C_in, H, W)
        Same dtype as every parameter.
    arch : {"resnet20", "resnet18_cifar", "resnet18"}
    train : bool
        Training mode: batch norm uses batch statistics and updates the running ones (momentum 0.1,
        unbiased variance), as ``model.train()``. Evaluation mode uses the running statistics.
    transform : WeightTransform or None
        If given, conv and linear weights used in compute are ``transform.forward(u)``.
    act_clip : float or None
        Activation clipping: every ReLU becomes ``min(max(z, 0), act_clip)`` (``nn.Hardtanh(0, c)``;
        the ceiling is rounded to ``x.dtype``). ``None`` (default): plain ReLU, bit for bit.

    Returns
    -------
    logits : ndarray, shape (N, num_classes)
    new_state : dict[str, ndarray]
        A new dict with the updated running statistics (in eval mode, the same values).
    cache : ResNetCache
        For :func:`resnet_backward`.

    Math
    ----
    ``stem -> [basic blocks] -> global average pooling -> fc``; see :func:`basic_block_forward`.

    Notes
    -----
    Never mutates ``params``, ``state`` or ``x``. With ``act_clip`` the gradient is zero at both kinks
    (``z = 0`` and ``z = c``), PyTorch's ``hardtanh_backward`` convention.
    """
    fn = "resnet_forward"
    spec = _arch_spec(arch, fn)
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{fn}: train must be a bool, got {type(train).__name__}")
    _check_transform(transform, fn)
    act_clip = check_act_clip(act_clip, fn)
    check_float(x, "x", fn)
    check_ndim(x, "x", fn, 4, "(N, C, H, W)")
    if not isinstance(params, dict):
        raise TypeError(f"{fn}: params must be a dict of numpy arrays, got {type(params).__name__}")
    num_classes, in_channels, width = _infer_config(params, spec, fn)
    param_shapes, state_shapes = resnet_shapes(
        arch, num_classes=num_classes, in_channels=in_channels, width=width
    )
    check_named_arrays(fn, "params", params, param_shapes, x.dtype)
    check_named_arrays(fn, "state", state, state_shapes, x.dtype)
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{fn}: x.shape[1] (={x.shape[1]}) must equal params['conv1.weight'].shape[1] "
            f"(={in_channels}), the input channels"
        )

    weights = transform_weights(params, transform)
    new_state: dict[str, np.ndarray] = {}
    # Stem.
    stem_stride, stem_pad = (1, 1) if spec.stem == "cifar" else (2, 3)
    h, stem_cb = _conv_bn_forward(
        x, weights, state, new_state, "conv1", "bn1", stride=stem_stride, padding=stem_pad, train=train
    )
    h, stem_relu = _act_forward(h, act_clip)
    stem_pool = None
    if spec.stem == "imagenet":
        h, stem_pool = maxpool2d_forward(h, kernel_size=3, stride=2, padding=1)
    # Residual stages.
    block_caches = []
    for prefix, _c_in, _c_out, stride in _blocks(spec, _stage_widths(spec, width)):
        h, block_state, block_cache = basic_block_forward(
            h, weights, state, prefix, stride=stride, train=train, act_clip=act_clip
        )
        new_state.update(block_state)
        block_caches.append(block_cache)
    # Head.
    h, pool_cache = global_avgpool_forward(h)
    logits, fc_cache = linear_forward(h, weights["fc.weight"], weights["fc.bias"])
    # Same key order as the input state (torchvision's order).
    new_state = {k: new_state[k] for k in state_shapes}
    cache = ResNetCache(
        arch,
        StemCache(stem_cb, stem_relu, stem_pool),
        tuple(block_caches),
        pool_cache,
        fc_cache,
        dict(params),
        transform,
        act_clip,
    )
    return logits, new_state, cache


def resnet_backward(
    dlogits: np.ndarray, cache: ResNetCache, *, return_input_grad: bool = False
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray]:
    """Backward pass of :func:`resnet_forward`; PyTorch equivalent: ``logits.backward(dlogits)``.

    Parameters
    ----------
    dlogits : ndarray, shape (N, num_classes)
        Gradient of the loss with respect to the logits (same dtype as the forward pass).
    cache : ResNetCache
    return_input_grad : bool
        Also return ``dL/dx`` (for input-gradient attacks and gradient checks).

    Returns
    -------
    grads : dict[str, ndarray]
        Same keys (and order) as ``params``. With a transform, gradients with respect to the latents:
        ``du = f'(u) * dw`` for conv/linear weights.
    dx : ndarray, shape (N, C_in, H, W)
        Only if ``return_input_grad``.
    """
    fn = "resnet_backward"
    if not isinstance(cache, ResNetCache):
        raise TypeError(
            f"{fn}: cache must be the ResNetCache returned by resnet_forward, got {type(cache).__name__}"
        )
    check_float(dlogits, "dlogits", fn)
    check_ndim(dlogits, "dlogits", fn, 2, "(N, num_classes)")
    grads: dict[str, np.ndarray] = {}
    fc_grads = linear_backward(dlogits, cache.fc)
    grads["fc.weight"], grads["fc.bias"] = fc_grads.dw, fc_grads.db
    dh = global_avgpool_backward(fc_grads.dx, cache.pool).dx
    for block in reversed(cache.blocks):
        dh, block_grads = basic_block_backward(dh, block)
        grads.update(block_grads)
    if cache.stem.maxpool is not None:
        dh = maxpool2d_backward(dh, cache.stem.maxpool).dx
    dh = _act_backward(dh, cache.stem.relu)
    dx = _conv_bn_backward(dh, cache.stem.conv_bn, grads)
    grads = {k: grads[k] for k in cache.latents}  # params' order
    grads = transform_weights_backward(grads, cache.latents, cache.transform)
    return (grads, dx) if return_input_grad else grads
