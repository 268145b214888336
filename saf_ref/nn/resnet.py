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

Weights, not latents
--------------------
A ResNet computes with the weights it is given. Saturated weight transforms (``w = f(u)``), weight
scaling and faulty memory are applied before, by :mod:`saf_ref.protect` (``effective_weights``), and the
gradient with respect to the latents is taken there (``effective_weights_backward``); DESIGN.md section 1.

Activation clipping
-------------------
``resnet_forward(..., act_clip=c)`` replaces every ReLU (stem, both ReLUs of every block) by a ReLU with
a ceiling, ``min(max(z, 0), c)`` (PyTorch: ``nn.Hardtanh(0, c)``, ``nn.ReLU6`` for ``c = 6``). This is
the prior-work baseline that the saturated-transform paper contrasts with: bounded activations limit how
far a corrupted weight can push the signal, whereas a weight transform bounds the weight itself.
``act_clip=None`` (the default) is the plain ReLU, bit for bit. The backward pass needs no flag: it
dispatches on the type of each activation's cache (``ReluCache`` or ``ReluClippedCache``).

Normalisation
-------------
``init_resnet`` / ``resnet_forward`` take ``norm="batch"`` (default) or ``"group"`` and ``reparam=False``
(default) or ``True`` (the reference code's scale ``1 + weight``, weight initialised at 0); see
:mod:`saf_ref.nn.norms`. The names stay torchvision's (``bn1.weight``, ...); group norm has no running
statistics. The defaults are the plain batch-norm ResNet, bit for bit.

Batch-norm ``num_batches_tracked``
----------------------------------
PyTorch keeps an int64 counter per batch-norm layer; it only matters when ``momentum=None`` (cumulative
averaging), which saf_ref does not implement. saf_ref's state therefore holds only the float
``running_mean`` / ``running_var`` arrays: the loader accepts and drops the counters, and PyTorch's
``load_state_dict`` recreates them (as 0) when a saf_ref state dict is loaded into a torch model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from saf_ref.nn.blocks import (
    ModelGrads,
    act_backward,
    act_forward,
    check_act_clip,
    check_dlogits,
    check_model_input,
    check_named_arrays,
    check_named_entries,
    conv_bn_act_forward,
    conv_bn_inference,
    init_from_shapes,
)
from saf_ref.nn.conv import grid_batch, output_size
from saf_ref.nn.linear import linear_backward, linear_forward
from saf_ref.nn.norms import check_norm, conv_norm_backward, conv_norm_forward, norm_shapes, reparam_init
from saf_ref.nn.pool import (
    global_avgpool_backward,
    global_avgpool_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
from saf_ref.nn.taps import apply_tap, check_tap_hook, resnet_taps
from saf_ref.validation import (
    check_bool,
    check_choice,
    check_float,
    check_float_dtype,
    check_int,
    check_ndim,
    check_rng,
)

__all__ = [
    "ARCHS",
    "ArchSpec",
    "BasicBlockCache",
    "ResNetCache",
    "StemCache",
    "basic_block_backward",
    "basic_block_forward",
    "init_resnet",
    "resnet_backward",
    "resnet_forward",
    "resnet_shapes",
    "resnet_tap_names",
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


def _last_hw(spec: ArchSpec, h: int, w: int) -> tuple[int, int]:
    """The height and width of the last stage's feature maps for ``h x w`` input images (the smallest
    maps of the network: every layer keeps or shrinks its input)."""
    if spec.stem == "imagenet":  # 7x7 stride-2 convolution (padding 3), then 3x3 stride-2 max pooling
        h, w = output_size(h, 7, 2, 3), output_size(w, 7, 2, 3)
        h, w = output_size(h, 3, 2, 1), output_size(w, 3, 2, 1)
    for *_, stride in _blocks(spec, spec.widths):  # a 3x3 convolution with padding 1 (and its shortcut)
        h, w = output_size(h, 3, stride, 1), output_size(w, 3, stride, 1)
    return h, w


def _has_downsample(c_in: int, c_out: int, stride: int) -> bool:
    """torchvision adds the 1x1 conv + BN shortcut exactly when the block changes the shape."""
    return stride != 1 or c_in != c_out


def resnet_shapes(
    arch: str, *, num_classes: int = 10, in_channels: int = 3, width: int | None = None, norm: str = "batch"
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
    norm : {"batch", "group"}
        Group norm has no running statistics (``state_shapes`` is then empty).

    Returns
    -------
    param_shapes, state_shapes : dict[str, tuple[int, ...]]
        Insertion-ordered like ``torch.nn.Module.state_dict()`` (without ``num_batches_tracked``).
    """
    return _resnet_shapes(arch, num_classes, in_channels, width, "resnet_shapes", norm)


def _resnet_shapes(arch, num_classes, in_channels, width, fn, norm="batch"):
    """:func:`resnet_shapes`, with errors reported as coming from ``fn``."""
    spec = _arch_spec(arch, fn)
    check_norm(norm, False, fn)
    check_int(num_classes, "num_classes", fn, low=1)
    check_int(in_channels, "in_channels", fn, low=1)
    if width is not None:
        check_int(width, "width", fn, low=1)
    widths = _stage_widths(spec, width)
    params: dict[str, tuple[int, ...]] = {}
    state: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        norm_shapes(name, c, norm, params, state)

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


def resnet_tap_names(arch: str) -> tuple[str, ...]:
    """The activation tap names of a ResNet, in forward order (see :mod:`saf_ref.nn.taps`).

    ``resnet_tap_names("resnet20")`` is ``("relu", "layer1.0.relu1", "layer1.0.relu2", ...,
    "layer3.2.relu2")``: the stem's ReLU, then both ReLUs of every basic block. They do not depend on
    ``width``, ``num_classes`` or ``in_channels``.
    """
    spec = _arch_spec(arch, "resnet_tap_names")
    return resnet_taps(prefix for prefix, *_ in _blocks(spec, spec.widths))


# --------------------------------------------------------------------------------------------------
# Initialization
# --------------------------------------------------------------------------------------------------


def init_resnet(
    arch: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int | None = None,
    rng: np.random.Generator | int,
    dtype: Any = np.float32,
    norm: str = "batch",
    reparam: bool = False,
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
    norm : {"batch", "group"}
        The normalisation layers (:mod:`saf_ref.nn.norms`).
    reparam : bool
        Reparameterized normalisation (scale ``1 + weight``): the normalisation weights start at 0.

    Returns
    -------
    params : dict[str, ndarray]
        Convolution weights ``(C_out, C_in, k, k)`` (no biases), normalisation ``weight``/``bias``
        ``(C,)``, ``fc.weight`` ``(num_classes, C)``, ``fc.bias`` ``(num_classes,)``.
    state : dict[str, ndarray]
        ``running_mean`` (zeros) and ``running_var`` (ones) of every batch norm, shape ``(C,)``; empty
        with group norm.

    Math
    ----
    conv: ``w ~ N(0, 2 / (C_out k^2))`` (Kaiming normal, fan-out, ReLU gain);
    fc: ``w, b ~ U(-1/sqrt(C), 1/sqrt(C))``; normalisation: ``gamma = 1`` (``0`` reparameterized, so
    that the scale ``1 + gamma`` is 1), ``beta = 0``.

    Notes
    -----
    Parameters are drawn in ``state_dict`` order, each in float64 then rounded to ``dtype``; the same
    seed gives the same network in float32 and float64 (up to that rounding). The options draw nothing:
    the convolution and linear weights are the same for every ``norm`` and ``reparam``.
    """
    fn = "init_resnet"
    gen = check_rng(rng, fn)
    dt = check_float_dtype(dtype, fn)
    norm, reparam = check_norm(norm, reparam, fn)
    param_shapes, state_shapes = _resnet_shapes(arch, num_classes, in_channels, width, fn, norm)
    params, state = init_from_shapes(param_shapes, state_shapes, gen, dt)
    return (reparam_init(params, param_shapes) if reparam else params), state


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class StemCache(NamedTuple):
    """Stem: conv1 -> bn1 -> ReLU [-> 3x3/2 max pooling for the ImageNet layout]."""

    conv_bn: Any  # ConvBNCache (or ConvNormCache with the norm options)
    relu: Any  # ReluCache, or ReluClippedCache with act_clip
    maxpool: Any  # None for the CIFAR stem


class BasicBlockCache(NamedTuple):
    """Everything a basic block's backward needs, by stage of the block.

    ``downsample`` is ``None`` when the shortcut is the identity.
    """

    prefix: str
    branch1: Any  # conv1 (3x3, stride) -> bn1: ConvBNCache (or ConvNormCache with the norm options)
    relu1: Any
    branch2: Any  # conv2 (3x3) -> bn2
    downsample: Any  # 1x1 conv (stride) -> BN, or None for the identity
    relu_out: Any  # ReLU after the residual sum


class ResNetCache(NamedTuple):
    """The cache of :func:`resnet_forward`: per-stage caches, and the parameter names in order."""

    arch: str
    stem: StemCache
    blocks: tuple[BasicBlockCache, ...]
    pool: Any
    fc: Any
    param_names: tuple[str, ...]  # the order of the gradients
    act_clip: float | None = None  # the ReLU ceiling used (for inspection; backward reads the caches)
    norm: str = "batch"  # the normalisation options used (for inspection; backward reads the caches)
    reparam: bool = False


def basic_block_forward(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    prefix: str,
    *,
    stride: int,
    train: bool,
    act_clip: float | None = None,
    activation_faults: Any = None,
    norm: str = "batch",
    reparam: bool = False,
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
    activation_faults : callable or None
        A tap hook ``hook(name, h) -> h`` called after each ReLU, with the tap names
        ``f"{prefix}relu1"`` and ``f"{prefix}relu2"`` (:mod:`saf_ref.nn.taps`); ``None``: no tap.
    norm : {"batch", "group"}
    reparam : bool
        The normalisation layers (:mod:`saf_ref.nn.norms`); default plain batch norm.

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
    fn = "basic_block_forward"
    act_clip = check_act_clip(act_clip, fn)
    hook = check_tap_hook(activation_faults, fn)
    norm, reparam = check_norm(norm, reparam, fn)
    _check_block_inputs(fn, x, params, state, prefix, stride, train, norm)
    return _basic_block(x, params, state, prefix, stride, train, act_clip, hook, norm, reparam)


def _check_block_inputs(fn, x, params, state, prefix, stride, train, norm) -> None:
    """The checks of :func:`basic_block_forward`'s arrays and options (those its layers skip): ``x`` a
    non-empty float NCHW batch, ``stride`` and ``train``, and this block's entries of ``params`` and
    ``state`` present, of ``x``'s dtype and of the shapes ``conv1.weight`` and ``x`` imply."""
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{fn}: train must be a bool, got {type(train).__name__}")
    stride = check_int(stride, "stride", fn, low=1)
    if not isinstance(prefix, str):
        raise TypeError(f"{fn}: prefix must be a str, got {type(prefix).__name__}")
    check_float(x, "x", fn)
    check_ndim(x, "x", fn, 4, "(N, C, H, W)")
    for what, d in (("params", params), ("state", state)):
        if not isinstance(d, dict):
            raise TypeError(f"{fn}: {what} must be a dict of numpy arrays, got {type(d).__name__}")
    key = f"{prefix}conv1.weight"
    if key not in params:
        raise ValueError(f"{fn}: params must contain {key!r}, got no such key")
    check_float(params[key], f"params[{key!r}]", fn)
    check_ndim(params[key], f"params[{key!r}]", fn, 4, "(C_out, C_in, 3, 3)")
    c_in, c_out = x.shape[1], params[key].shape[0]
    if params[key].shape[1] != c_in:
        raise ValueError(
            f"{fn}: x.shape[1] (={c_in}) must equal params[{key!r}].shape[1] (={params[key].shape[1]}), "
            "the input channels"
        )
    shapes = {f"{prefix}conv1.weight": (c_out, c_in, 3, 3), f"{prefix}conv2.weight": (c_out, c_out, 3, 3)}
    norms = [f"{prefix}bn1", f"{prefix}bn2"]
    if f"{prefix}downsample.0.weight" in params:
        shapes[f"{prefix}downsample.0.weight"] = (c_out, c_in, 1, 1)
        norms.append(f"{prefix}downsample.1")
    elif _has_downsample(c_in, c_out, stride):
        raise ValueError(
            f"{fn}: params must contain {prefix + 'downsample.0.weight'!r} (the block changes the shape: "
            f"stride {stride}, {c_in} -> {c_out} channels, so its shortcut is no identity), got no such key"
        )
    state_shapes: dict[str, tuple[int, ...]] = {}
    for name in norms:
        norm_shapes(name, c_out, norm, shapes, state_shapes)
    check_named_entries(fn, "params", params, shapes, x.dtype)
    check_named_entries(fn, "state", state, state_shapes, x.dtype)
    out_hw = (output_size(x.shape[2], 3, stride, 1), output_size(x.shape[3], 3, stride, 1))
    check_model_input(fn, x, out_hw, bool(train) and norm == "batch")


def _basic_block(x, params, state, prefix, stride, train, act_clip, hook, norm, reparam):
    """:func:`basic_block_forward` with its arguments checked (``act_clip`` a float or None, ``hook`` a
    callable or None): what :func:`resnet_forward`'s unfused path runs for each block."""
    nk = {"norm": norm, "reparam": reparam}
    new_state: dict[str, np.ndarray] = {}
    h, branch1 = conv_norm_forward(
        x, params, state, new_state, f"{prefix}conv1", f"{prefix}bn1", stride=stride, padding=1, train=train,
        **nk,
    )
    h, relu1 = act_forward(h, act_clip)
    if hook is not None:
        h = apply_tap(hook, f"{prefix}relu1", h)
    h, branch2 = conv_norm_forward(
        h, params, state, new_state, f"{prefix}conv2", f"{prefix}bn2", stride=1, padding=1, train=train, **nk
    )
    if f"{prefix}downsample.0.weight" in params:
        shortcut, downsample = conv_norm_forward(
            x,
            params,
            state,
            new_state,
            f"{prefix}downsample.0",
            f"{prefix}downsample.1",
            stride=stride,
            padding=0,
            train=train,
            **nk,
        )
    else:
        shortcut, downsample = x, None
    y, relu_out = act_forward(h + shortcut, act_clip)
    if hook is not None:
        y = apply_tap(hook, f"{prefix}relu2", y)
    return y, new_state, BasicBlockCache(prefix, branch1, relu1, branch2, downsample, relu_out)


def basic_block_backward(dy: np.ndarray, cache: BasicBlockCache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Backward of :func:`basic_block_forward`: ``(dx, grads)`` with this block's parameter names.

    Math
    ----
    With ``d = dy * [pre-activation > 0]`` (``[0 < pre-activation < c]`` with a ceiling ``c``): the
    residual branch and the shortcut both receive ``d``, and ``dx`` is the sum of their input gradients.
    """
    fn = "basic_block_backward"
    if not isinstance(cache, BasicBlockCache):
        raise TypeError(
            f"{fn}: cache must be the BasicBlockCache of basic_block_forward, got {type(cache).__name__}"
        )
    check_float(dy, "dy", fn)
    out = cache.relu_out  # ReluCache or ReluClippedCache: the block output's mask and dtype
    if dy.dtype != out.dtype:
        raise TypeError(
            f"{fn}: dy.dtype (={dy.dtype}) must equal the block output's dtype (={out.dtype}); "
            "mixed dtypes are not promoted, cast explicitly"
        )
    if dy.shape != out.passes.shape:
        raise ValueError(f"{fn}: dy must have the block output's shape {out.passes.shape}, got {dy.shape}")
    return _basic_block_backward(dy, cache)


def _basic_block_backward(dy: np.ndarray, cache: BasicBlockCache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`basic_block_backward` with ``dy`` and ``cache`` checked: what :func:`resnet_backward` runs
    for each block (its gradients come from the checked ``dlogits``)."""
    grads: dict[str, np.ndarray] = {}
    d = act_backward(dy, cache.relu_out)
    dh = conv_norm_backward(d, cache.branch2, grads)
    dh = act_backward(dh, cache.relu1)
    dx = conv_norm_backward(dh, cache.branch1, grads)  # a new array: summed into in place
    if cache.downsample is None:
        dx += d
    else:
        dx += conv_norm_backward(d, cache.downsample, grads)
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


def resnet_forward(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    x: np.ndarray,
    *,
    arch: str,
    train: bool,
    act_clip: float | None = None,
    activation_faults: Any = None,
    norm: str = "batch",
    reparam: bool = False,
    keep_cache: bool = True,
) -> tuple[np.ndarray, dict[str, np.ndarray], ResNetCache | None]:
    """Forward pass of a ResNet; PyTorch equivalent: ``model.train(train); logits = model(x)``.

    Parameters
    ----------
    params : dict[str, ndarray]
        As returned by :func:`init_resnet` (any ``width``/``num_classes``/``in_channels``: they are
        read from the shapes): the weights computed with (effective weights, see
        :func:`saf_ref.protect.effective_weights`).
    state : dict[str, ndarray]
        Batch-norm running statistics (empty with group norm).
    x : ndarray, shape (N, C_in, H, W)
        Same dtype as every parameter; no dimension 0. In training mode with batch norm the last
        stage's maps must hold more than one value per channel (``N * H' * W' > 1``), as in PyTorch.
    arch : {"resnet20", "resnet18_cifar", "resnet18"}
    train : bool
        Training mode: batch norm uses batch statistics and updates the running ones (momentum 0.1,
        unbiased variance), as ``model.train()``. Evaluation mode uses the running statistics.
    act_clip : float or None
        Activation clipping: every ReLU becomes ``min(max(z, 0), act_clip)`` (``nn.Hardtanh(0, c)``;
        the ceiling is rounded to ``x.dtype``). ``None`` (default): plain ReLU, bit for bit.
    activation_faults : callable or None
        A tap hook ``hook(name, h) -> h`` called after every ReLU with its tap name
        (:func:`resnet_tap_names`), e.g. a :class:`saf_ref.faults_act.ActivationFaults`; the network
        computes on with what it returns. ``None`` (default): no tap, bit for bit the plain forward pass.
    norm : {"batch", "group"}
        Batch norm (default) or group norm over ``default_num_groups(C)`` groups (the same in training
        and evaluation mode); see :mod:`saf_ref.nn.norms`.
    reparam : bool
        Reparameterized normalisation: every normalisation layer scales by ``1 + weight``.
    keep_cache : bool
        False: return ``None`` for the cache and keep nothing for a backward pass (inference, like
        ``torch.no_grad()``); the logits and state are the same bits.

    Returns
    -------
    logits : ndarray, shape (N, num_classes)
    new_state : dict[str, ndarray]
        A new dict with the updated running statistics (in eval mode, the same values).
    cache : ResNetCache or None
        For :func:`resnet_backward`; ``None`` with ``keep_cache=False``.

    Math
    ----
    ``stem -> [basic blocks] -> global average pooling -> fc``; see :func:`basic_block_forward`.

    Notes
    -----
    Never mutates ``params``, ``state`` or ``x``. With ``act_clip`` the gradient is zero at both kinks
    (``z = 0`` and ``z = c``), PyTorch's ``hardtanh_backward`` convention.

    Speed: with plain batch norm and no tap hook, each layer's batch norm, residual sum and (clipped)
    ReLU run fused over the convolution's output, chunk by chunk of images while it is in the cache
    (:func:`saf_ref.nn.blocks.conv_bn_act_forward`; in evaluation mode inside the convolution's chunk
    loop), and with ``keep_cache=False`` in evaluation mode the activations stay in the convolutions'
    grid layout from layer to layer (:func:`saf_ref.nn.blocks.conv_bn_inference`). The same operations
    in the same order: the same bits and the same caches as the unfused layers (which a tap hook or the
    other normalisation options use). Measured on ResNet-20, batch 128, one thread: evaluation with
    ``keep_cache=False`` 1.4-1.5x faster than the unfused pass (253 against 380 ms); with the caches
    about as fast as unfused (their arrays' page faults dominate); a training step about 5% faster.
    """
    fn = "resnet_forward"
    spec = _arch_spec(arch, fn)
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{fn}: train must be a bool, got {type(train).__name__}")
    act_clip = check_act_clip(act_clip, fn)
    hook = check_tap_hook(activation_faults, fn)
    norm, reparam = check_norm(norm, reparam, fn)
    check_float(x, "x", fn)
    check_ndim(x, "x", fn, 4, "(N, C, H, W)")
    if not isinstance(params, dict):
        raise TypeError(f"{fn}: params must be a dict of numpy arrays, got {type(params).__name__}")
    num_classes, in_channels, width = _infer_config(params, spec, fn)
    param_shapes, state_shapes = resnet_shapes(
        arch, num_classes=num_classes, in_channels=in_channels, width=width, norm=norm
    )
    check_named_arrays(fn, "params", params, param_shapes, x.dtype)
    check_named_arrays(fn, "state", state, state_shapes, x.dtype)
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{fn}: x.shape[1] (={x.shape[1]}) must equal params['conv1.weight'].shape[1] "
            f"(={in_channels}), the input channels"
        )
    keep_cache = check_bool(keep_cache, "keep_cache", fn)
    check_model_input(fn, x, _last_hw(spec, x.shape[2], x.shape[3]), bool(train) and norm == "batch")
    if hook is None and norm == "batch" and not reparam:
        if not train and not keep_cache:
            logits = _inference(params, state, x, spec, width, act_clip)
            return logits, {k: state[k].copy() for k in state_shapes}, None
        logits, new_state, cache = _forward_fused(
            params, state, x, arch, spec, width, train, keep_cache, act_clip
        )
        return logits, {k: new_state[k] for k in state_shapes}, cache

    new_state: dict[str, np.ndarray] = {}
    # Stem.
    stem_stride, stem_pad = (1, 1) if spec.stem == "cifar" else (2, 3)
    h, stem_cb = conv_norm_forward(
        x, params, state, new_state, "conv1", "bn1", stride=stem_stride, padding=stem_pad, train=train,
        norm=norm, reparam=reparam,
    )
    h, stem_relu = act_forward(h, act_clip)
    if hook is not None:
        h = apply_tap(hook, "relu", h)
    stem_pool = None
    if spec.stem == "imagenet":
        h, stem_pool = maxpool2d_forward(h, kernel_size=3, stride=2, padding=1)
    # Residual stages.
    block_caches = []
    for prefix, _c_in, _c_out, stride in _blocks(spec, _stage_widths(spec, width)):
        h, block_state, block_cache = _basic_block(
            h, params, state, prefix, stride, train, act_clip, hook, norm, reparam
        )
        new_state.update(block_state)
        block_caches.append(block_cache)
    # Head.
    h, pool_cache = global_avgpool_forward(h)
    logits, fc_cache = linear_forward(h, params["fc.weight"], params["fc.bias"])
    # Same key order as the input state (torchvision's order).
    new_state = {k: new_state[k] for k in state_shapes}
    if not keep_cache:
        return logits, new_state, None
    cache = ResNetCache(
        arch,
        StemCache(stem_cb, stem_relu, stem_pool),
        tuple(block_caches),
        pool_cache,
        fc_cache,
        tuple(params),
        act_clip,
        norm,
        reparam,
    )
    return logits, new_state, cache


def _forward_fused(params, state, x, arch, spec, width, train, keep_cache, act_clip):
    """Forward pass with the elementwise layers fused (see :func:`resnet_forward`'s Notes):
    ``(logits, new_state, cache or None)``, the new state in layer order. Arguments checked."""
    new_state: dict[str, np.ndarray] = {}
    kc = {"train": train, "keep_cache": keep_cache, "act_clip": act_clip}
    stem_stride, stem_pad = (1, 1) if spec.stem == "cifar" else (2, 3)
    h, stem_cb, stem_relu = conv_bn_act_forward(
        x, params, state, new_state, "conv1", "bn1", stride=stem_stride, padding=stem_pad, relu=True, **kc
    )
    stem_pool = None
    if spec.stem == "imagenet":
        h, stem_pool = maxpool2d_forward(h, kernel_size=3, stride=2, padding=1)
    block_caches = []
    for prefix, _c_in, _c_out, stride in _blocks(spec, _stage_widths(spec, width)):
        h, block_cache = _basic_block_fused(h, params, state, new_state, prefix, stride, kc)
        block_caches.append(block_cache)
    h, pool_cache = global_avgpool_forward(h)
    logits, fc_cache = linear_forward(h, params["fc.weight"], params["fc.bias"])
    if not keep_cache:
        return logits, new_state, None
    stem = StemCache(stem_cb, stem_relu, stem_pool)
    cache = ResNetCache(arch, stem, tuple(block_caches), pool_cache, fc_cache, tuple(params), act_clip)
    return logits, new_state, cache


#: The grid layout every 3x3 convolution of a ResNet block reads (padding 1).
_GRID_3X3 = ((1, 1), (3, 3))


def _inference(params, state, x, spec, width, act_clip) -> np.ndarray:
    """Evaluation-mode logits with nothing kept for a backward pass (``keep_cache=False``): every
    activation stays in the grid layout of the 3x3 convolution that reads it
    (:func:`saf_ref.nn.blocks.conv_bn_inference`), batch norm, residual sums and ReLUs fused. The same
    bits as :func:`_forward_fused`. Arguments checked."""
    if spec.stem == "cifar":
        h = conv_bn_inference(
            grid_batch(x, *_GRID_3X3), params, state, "conv1", "bn1", stride=1, padding=1, relu=True,
            act_clip=act_clip, out_grid=_GRID_3X3,
        )
    else:  # the ImageNet stem, 7x7 stride 2 and max pooling, as in the cached pass
        h, *_ = conv_bn_act_forward(
            x, params, state, {}, "conv1", "bn1", stride=2, padding=3, train=False, relu=True,
            act_clip=act_clip, keep_cache=False,
        )
        h, _ = maxpool2d_forward(h, kernel_size=3, stride=2, padding=1)
        h = grid_batch(h, *_GRID_3X3)
    for prefix, _c_in, _c_out, stride in _blocks(spec, _stage_widths(spec, width)):
        shortcut = h
        if f"{prefix}downsample.0.weight" in params:
            shortcut = conv_bn_inference(
                h, params, state, f"{prefix}downsample.0", f"{prefix}downsample.1", stride=stride,
                padding=0, relu=False, out_grid=None,
            )
        mid = conv_bn_inference(
            h, params, state, f"{prefix}conv1", f"{prefix}bn1", stride=stride, padding=1, relu=True,
            act_clip=act_clip, out_grid=_GRID_3X3,
        )
        h = conv_bn_inference(
            mid, params, state, f"{prefix}conv2", f"{prefix}bn2", stride=1, padding=1, residual=shortcut,
            relu=True, act_clip=act_clip, out_grid=_GRID_3X3,
        )
    h, _ = global_avgpool_forward(h.nchw())
    logits, _ = linear_forward(h, params["fc.weight"], params["fc.bias"])
    return logits


def _basic_block_fused(x, params, state, new_state, prefix, stride, kc):
    """One basic block with fused layers: ``(y, BasicBlockCache or None)``; the new running statistics
    go into ``new_state`` in the state's order. ``kc``: ``train``, ``keep_cache`` and ``act_clip``."""
    keep_cache = kc["keep_cache"]
    h, branch1, relu1 = conv_bn_act_forward(
        x, params, state, new_state, f"{prefix}conv1", f"{prefix}bn1", stride=stride, padding=1, relu=True,
        **kc,
    )
    shortcut, downsample, shortcut_state = x, None, {}
    if f"{prefix}downsample.0.weight" in params:
        shortcut, downsample, _ = conv_bn_act_forward(
            x, params, state, shortcut_state, f"{prefix}downsample.0", f"{prefix}downsample.1",
            stride=stride, padding=0, relu=False, **{**kc, "act_clip": None},
        )
    y, branch2, relu_out = conv_bn_act_forward(
        h, params, state, new_state, f"{prefix}conv2", f"{prefix}bn2", stride=1, padding=1, residual=shortcut,
        relu=True, **kc,
    )
    new_state.update(shortcut_state)  # the state's layer order: bn1, bn2, then the shortcut's batch norm
    if not keep_cache:
        return y, None
    return y, BasicBlockCache(prefix, branch1, relu1, branch2, downsample, relu_out)


def resnet_backward(dlogits: np.ndarray, cache: ResNetCache) -> ModelGrads:
    """Backward pass of :func:`resnet_forward`; PyTorch equivalent: ``logits.backward(dlogits)``.

    Parameters
    ----------
    dlogits : ndarray, shape (N, num_classes)
        Gradient of the loss with respect to the logits (same dtype as the forward pass).
    cache : ResNetCache

    Returns
    -------
    ModelGrads
        ``params``: gradients with the keys (and order) of the forward pass's ``params``;
        ``x``: ``dL/dx``, shape (N, C_in, H, W).
    """
    fn = "resnet_backward"
    if not isinstance(cache, ResNetCache):
        raise TypeError(
            f"{fn}: cache must be the ResNetCache returned by resnet_forward, got {type(cache).__name__}"
        )
    check_dlogits(fn, dlogits, cache.fc.x, cache.fc.w)
    grads: dict[str, np.ndarray] = {}
    fc_grads = linear_backward(dlogits, cache.fc)
    grads["fc.weight"], grads["fc.bias"] = fc_grads.dw, fc_grads.db
    dh = global_avgpool_backward(fc_grads.dx, cache.pool).dx
    for block in reversed(cache.blocks):
        dh, block_grads = _basic_block_backward(dh, block)
        grads.update(block_grads)
    if cache.stem.maxpool is not None:
        dh = maxpool2d_backward(dh, cache.stem.maxpool).dx
    dh = act_backward(dh, cache.stem.relu)
    dx = conv_norm_backward(dh, cache.stem.conv_bn, grads)
    return ModelGrads({k: grads[k] for k in cache.param_names}, dx)
