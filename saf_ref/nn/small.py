"""Small models for fast tests and tutorials: a 3-layer CNN and an MLP.

They follow the conventions of :mod:`saf_ref.nn.blocks`: parameters and running statistics in two dicts
keyed by PyTorch ``state_dict`` names, ``*_forward(params, state, x, *, train, act_clip=None) ->
(logits, new_state, cache)`` computing with the weights given, ``*_backward(dlogits, cache) ->
ModelGrads(params, x)``, and every ReLU clipped at ``act_clip`` when a ceiling is given (activation
clipping, see :mod:`saf_ref.nn.resnet`).

Both work on the shipped 8x8 digits and 28x28 MNIST images (any size, in fact: the CNN ends with global
average pooling, the MLP flattens its input).
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
    init_from_shapes,
)
from saf_ref.nn.conv import check_nonempty, output_size
from saf_ref.nn.linear import linear_backward, linear_forward
from saf_ref.nn.norms import check_norm, conv_norm_backward, conv_norm_forward, norm_shapes, reparam_init
from saf_ref.nn.pool import global_avgpool_backward, global_avgpool_forward
from saf_ref.nn.taps import apply_tap, check_tap_hook, mlp_taps, small_cnn_taps
from saf_ref.validation import check_float, check_float_dtype, check_int, check_ndim, check_rng

__all__ = [
    "MLPCache",
    "SMALL_CNN_STRIDES",
    "SmallCNNCache",
    "init_mlp",
    "init_small_cnn",
    "mlp_backward",
    "mlp_forward",
    "mlp_shapes",
    "mlp_tap_names",
    "small_cnn_backward",
    "small_cnn_forward",
    "small_cnn_shapes",
    "small_cnn_tap_names",
]

# --------------------------------------------------------------------------------------------------
# Small CNN: (conv3x3 -> BN -> ReLU) x 3 with strides 1, 2, 2 and widths w, 2w, 4w -> GAP -> fc
# --------------------------------------------------------------------------------------------------

SMALL_CNN_STRIDES = (1, 2, 2)


def small_cnn_shapes(
    *, in_channels: int = 1, num_classes: int = 10, width: int = 8, norm: str = "batch"
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Names and shapes of the small CNN's parameters and running statistics (PyTorch order).

    Layers ``conv{i}`` (3x3, padding 1, no bias) and ``bn{i}`` for ``i = 1, 2, 3`` with
    ``width * 2**(i-1)`` channels, then ``fc``. With ``norm="group"`` the ``bn{i}`` layers are group
    norms (same names, no running statistics; :mod:`saf_ref.nn.norms`).
    """
    return _small_cnn_shapes(in_channels, num_classes, width, "small_cnn_shapes", norm)


def small_cnn_tap_names() -> tuple[str, ...]:
    """The activation tap names of the small CNN (:mod:`saf_ref.nn.taps`): ``("relu1", "relu2", "relu3")``,
    the ReLU after ``bn{i}``."""
    return small_cnn_taps(len(SMALL_CNN_STRIDES))


def _small_cnn_shapes(in_channels, num_classes, width, fn, norm="batch"):
    check_norm(norm, False, fn)
    check_int(in_channels, "in_channels", fn, low=1)
    check_int(num_classes, "num_classes", fn, low=1)
    check_int(width, "width", fn, low=1)
    params: dict[str, tuple[int, ...]] = {}
    state: dict[str, tuple[int, ...]] = {}
    c_in = in_channels
    for i in range(1, len(SMALL_CNN_STRIDES) + 1):
        c_out = width * 2 ** (i - 1)
        params[f"conv{i}.weight"] = (c_out, c_in, 3, 3)
        norm_shapes(f"bn{i}", c_out, norm, params, state)
        c_in = c_out
    params["fc.weight"] = (num_classes, c_in)
    params["fc.bias"] = (num_classes,)
    return params, state


def init_small_cnn(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    width: int = 8,
    rng: np.random.Generator | int,
    dtype: Any = np.float32,
    norm: str = "batch",
    reparam: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Initialize the small CNN as torchvision initializes a ResNet (Kaiming-normal fan-out convs,
    BN weight 1 / bias 0, PyTorch-default linear layer); see :func:`saf_ref.nn.resnet.init_from_shapes`.

    Parameters
    ----------
    in_channels : int
        1 for digits / MNIST.
    num_classes : int
    width : int
        Channels of the first layer (doubled by each of the two strided layers).
    rng : numpy.random.Generator or int
    dtype : float32 (default) or float64
    norm : {"batch", "group"}
        The normalisation layers (:mod:`saf_ref.nn.norms`); group norm has no running statistics.
    reparam : bool
        Reparameterized normalisation (scale ``1 + weight``): the normalisation weights start at 0.

    Returns
    -------
    params, state : dict[str, ndarray]
        The options draw nothing: the convolution and linear weights are the same for every ``norm``
        and ``reparam``.
    """
    fn = "init_small_cnn"
    gen = check_rng(rng, fn)
    dt = check_float_dtype(dtype, fn)
    norm, reparam = check_norm(norm, reparam, fn)
    param_shapes, state_shapes = _small_cnn_shapes(in_channels, num_classes, width, fn, norm)
    params, state = init_from_shapes(param_shapes, state_shapes, gen, dt)
    return (reparam_init(params, param_shapes) if reparam else params), state


class SmallCNNCache(NamedTuple):
    """Caches of the small CNN, layer by layer."""

    layers: tuple[tuple[Any, Any], ...]  # (conv+norm cache, ReLU cache) per layer
    pool: Any
    fc: Any
    param_names: tuple[str, ...]  # the order of the gradients
    act_clip: float | None = None  # the ReLU ceiling used (for inspection; backward reads the caches)
    norm: str = "batch"  # the normalisation options used (for inspection; backward reads the caches)
    reparam: bool = False


def _check_model_inputs(
    fn: str, params: Any, state: Any, x: Any, train: Any, ndim: int | None
) -> None:
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{fn}: train must be a bool, got {type(train).__name__}")
    check_float(x, "x", fn)
    if ndim is not None:
        check_ndim(x, "x", fn, ndim, "(N, C, H, W)")
    if not isinstance(params, dict):
        raise TypeError(f"{fn}: params must be a dict of numpy arrays, got {type(params).__name__}")
    if not isinstance(state, dict):
        raise TypeError(f"{fn}: state must be a dict of numpy arrays, got {type(state).__name__}")
    for key in ("conv1.weight", "fc.weight") if ndim == 4 else ("fc1.weight",):
        if key not in params:
            raise ValueError(f"{fn}: params must contain {key!r}, got keys {list(params)}")
        check_float(params[key], f"params[{key!r}]", fn)


def small_cnn_forward(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    x: np.ndarray,
    *,
    train: bool,
    act_clip: float | None = None,
    activation_faults: Any = None,
    norm: str = "batch",
    reparam: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray], SmallCNNCache]:
    """Forward pass of the small CNN (PyTorch: an ``nn.Sequential`` of Conv2d/BatchNorm2d/ReLU, then
    ``AdaptiveAvgPool2d(1)``, ``Flatten`` and ``Linear``).

    Parameters
    ----------
    params, state : dict[str, ndarray]
        From :func:`init_small_cnn`; the width, input channels and classes are read from the shapes.
    x : ndarray, shape (N, C_in, H, W)
        No dimension 0. In training mode with batch norm the last layer's maps must hold more than one
        value per channel (``N * H' * W' > 1``), as in PyTorch.
    train : bool
        Batch norm in training mode (batch statistics, running-statistics update) or evaluation mode.
    act_clip : float or None
        Activation clipping: every ReLU becomes ``min(max(z, 0), act_clip)`` (PyTorch:
        ``nn.Hardtanh(0, act_clip)``). ``None`` (default): plain ReLU, bit for bit.
    activation_faults : callable or None
        A tap hook ``hook(name, h) -> h`` called after each ReLU with its tap name (``relu1``, ``relu2``,
        ``relu3``; :func:`small_cnn_tap_names`), e.g. a :class:`saf_ref.faults_act.ActivationFaults`.
        ``None`` (default): no tap, bit for bit the plain forward pass.
    norm : {"batch", "group"}
    reparam : bool
        The normalisation layers (default plain batch norm; :mod:`saf_ref.nn.norms`).

    Returns
    -------
    logits : ndarray, shape (N, num_classes)
    new_state : dict[str, ndarray]
    cache : SmallCNNCache

    Math
    ----
    ``h_i = relu(bn_i(conv_i(h_{i-1})))`` with strides 1, 2, 2; ``logits = fc(mean_{H,W}(h_3))``;
    with a ceiling ``c``, ``relu_c(z) = min(max(z, 0), c)`` in place of ``relu``.
    """
    fn = "small_cnn_forward"
    _check_model_inputs(fn, params, state, x, train, ndim=4)
    act_clip = check_act_clip(act_clip, fn)
    hook = check_tap_hook(activation_faults, fn)
    norm, reparam = check_norm(norm, reparam, fn)
    if params["conv1.weight"].ndim != 4 or params["fc.weight"].ndim != 2:
        raise ValueError(f"{fn}: params['conv1.weight'] must be 4-D and params['fc.weight'] 2-D")
    width, in_channels = params["conv1.weight"].shape[:2]
    param_shapes, state_shapes = small_cnn_shapes(
        in_channels=in_channels, num_classes=params["fc.weight"].shape[0], width=width, norm=norm
    )
    check_named_arrays(fn, "params", params, param_shapes, x.dtype)
    check_named_arrays(fn, "state", state, state_shapes, x.dtype)
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{fn}: x.shape[1] (={x.shape[1]}) must equal params['conv1.weight'].shape[1] "
            f"(={in_channels}), the input channels"
        )
    last_hw = tuple(x.shape[2:])
    for stride in SMALL_CNN_STRIDES:  # 3x3 convolutions with padding 1
        last_hw = tuple(output_size(v, 3, stride, 1) for v in last_hw)
    check_model_input(fn, x, last_hw, bool(train) and norm == "batch")
    new_state: dict[str, np.ndarray] = {}
    h = x
    layers = []
    for i, stride in enumerate(SMALL_CNN_STRIDES, start=1):
        h, cb = conv_norm_forward(
            h, params, state, new_state, f"conv{i}", f"bn{i}", stride=stride, padding=1, train=train,
            norm=norm, reparam=reparam,
        )
        h, relu_cache = act_forward(h, act_clip)
        if hook is not None:
            h = apply_tap(hook, f"relu{i}", h)
        layers.append((cb, relu_cache))
    h, pool_cache = global_avgpool_forward(h)
    logits, fc_cache = linear_forward(h, params["fc.weight"], params["fc.bias"])
    cache = SmallCNNCache(tuple(layers), pool_cache, fc_cache, tuple(params), act_clip, norm, reparam)
    return logits, new_state, cache


def small_cnn_backward(dlogits: np.ndarray, cache: SmallCNNCache) -> ModelGrads:
    """Backward pass of :func:`small_cnn_forward`: ``ModelGrads(params, x)``, the gradients with the keys
    (and order) of ``params`` and ``dL/dx``."""
    fn = "small_cnn_backward"
    if not isinstance(cache, SmallCNNCache):
        raise TypeError(
            f"{fn}: cache must be the SmallCNNCache of small_cnn_forward, got {type(cache).__name__}"
        )
    check_dlogits(fn, dlogits, cache.fc.x, cache.fc.w)
    grads: dict[str, np.ndarray] = {}
    fc_grads = linear_backward(dlogits, cache.fc)
    grads["fc.weight"], grads["fc.bias"] = fc_grads.dw, fc_grads.db
    dh = global_avgpool_backward(fc_grads.dx, cache.pool).dx
    for cb, relu_cache in reversed(cache.layers):
        dh = act_backward(dh, relu_cache)
        dh = conv_norm_backward(dh, cb, grads)
    return ModelGrads({k: grads[k] for k in cache.param_names}, dh)


# --------------------------------------------------------------------------------------------------
# MLP: flatten -> (fc -> ReLU) x len(hidden) -> fc
# --------------------------------------------------------------------------------------------------


def mlp_shapes(
    in_features: int, *, hidden: tuple[int, ...] = (64,), num_classes: int = 10
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the MLP's parameters: ``fc1 ... fc{L}`` with ``L = len(hidden) + 1``."""
    return _mlp_shapes(in_features, hidden, num_classes, "mlp_shapes")


def _mlp_shapes(in_features, hidden, num_classes, fn):
    check_int(in_features, "in_features", fn, low=1)
    check_int(num_classes, "num_classes", fn, low=1)
    if not isinstance(hidden, (tuple, list)):
        raise TypeError(f"{fn}: hidden must be a tuple of integers, got {type(hidden).__name__}")
    sizes = [in_features] + [check_int(h, "hidden[i]", fn, low=1) for h in hidden] + [num_classes]
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, len(sizes)):
        shapes[f"fc{i}.weight"] = (sizes[i], sizes[i - 1])
        shapes[f"fc{i}.bias"] = (sizes[i],)
    return shapes


def mlp_tap_names(params_or_layers: dict[str, np.ndarray] | int) -> tuple[str, ...]:
    """The activation tap names of an MLP (:mod:`saf_ref.nn.taps`): ``relu1 .. relu{L-1}`` for ``L`` linear
    layers, given as the number ``L`` or as the MLP's ``params`` (``fc1.weight`` ... ``fc{L}.bias``)."""
    fn = "mlp_tap_names"
    if isinstance(params_or_layers, dict):
        n = len([k for k in params_or_layers if k.startswith("fc") and k.endswith(".weight")])
    else:
        n = check_int(params_or_layers, "params_or_layers", fn, low=1)
    return mlp_taps(n)


def init_mlp(
    in_features: int,
    *,
    hidden: tuple[int, ...] = (64,),
    num_classes: int = 10,
    rng: np.random.Generator | int,
    dtype: Any = np.float32,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Initialize an MLP as PyTorch's ``nn.Linear`` does (``U(-1/sqrt(in), 1/sqrt(in))`` for weights
    and biases). Returns ``(params, state)`` with an empty ``state`` (no batch norm), so the MLP has the
    same interface as the other models.

    Parameters
    ----------
    in_features : int
        Flattened input size (64 for 8x8 digits, 784 for MNIST).
    hidden : tuple of int
        Hidden layer sizes.
    num_classes : int
    rng : numpy.random.Generator or int
    dtype : float32 (default) or float64
    """
    fn = "init_mlp"
    gen = check_rng(rng, fn)
    dt = check_float_dtype(dtype, fn)
    shapes = _mlp_shapes(in_features, hidden, num_classes, fn)
    params, _ = init_from_shapes(shapes, {}, gen, dt)
    return params, {}


class MLPCache(NamedTuple):
    """Caches of the MLP: input shape (to unflatten ``dx``), then (linear, ReLU or None) per layer."""

    x_shape: tuple[int, ...]
    layers: tuple[tuple[Any, Any], ...]
    param_names: tuple[str, ...]  # the order of the gradients
    act_clip: float | None = None  # the ReLU ceiling used (for inspection; backward reads the caches)


def mlp_forward(
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    x: np.ndarray,
    *,
    train: bool,
    act_clip: float | None = None,
    activation_faults: Any = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], MLPCache]:
    """Forward pass of the MLP (PyTorch: ``Flatten`` then ``Linear``/``ReLU`` layers).

    Parameters
    ----------
    params : dict[str, ndarray]
        From :func:`init_mlp`.
    state : dict
        Empty (accepted for a uniform interface); returned as a new empty dict.
    x : ndarray, shape (N, ...)
        Flattened to ``(N, in_features)``.
    train : bool
        Unused (no batch norm or dropout); accepted for a uniform interface.
    act_clip : float or None
        Ceiling of every hidden ReLU, ``min(max(z, 0), act_clip)``; ``None`` (default): plain ReLU.
    activation_faults : callable or None
        A tap hook ``hook(name, h) -> h`` called after each hidden ReLU (tap ``relu{i}`` after ``fc{i}``;
        :func:`mlp_tap_names`). ``None`` (default): no tap, bit for bit the plain forward pass.

    Returns
    -------
    logits : ndarray, shape (N, num_classes)
    new_state : dict (empty)
    cache : MLPCache

    Math
    ----
    ``h_0 = flatten(x)``, ``h_i = relu(h_{i-1} W_i^T + b_i)``, ``logits = h_{L-1} W_L^T + b_L``; with a
    ceiling ``c``, ``relu_c(z) = min(max(z, 0), c)`` in place of ``relu``.
    """
    fn = "mlp_forward"
    _check_model_inputs(fn, params, state, x, train, ndim=None)
    act_clip = check_act_clip(act_clip, fn)
    hook = check_tap_hook(activation_faults, fn)
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must have at least 2 dimensions (N, ...), got shape {x.shape}")
    n_layers = len(params) // 2
    for i in range(1, n_layers + 1):  # the sizes are read from these: check them first
        key = f"fc{i}.weight"
        if key in params:
            value = params[key]
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{fn}: params[{key!r}] must be a numpy.ndarray, got {type(value).__name__}")
            check_ndim(value, f"params[{key!r}]", fn, 2, "(out_features, in_features)")
    w1 = params["fc1.weight"]
    hidden = tuple(params[f"fc{i}.weight"].shape[0] for i in range(1, n_layers) if f"fc{i}.weight" in params)
    last = params.get(f"fc{n_layers}.weight")
    num_classes = last.shape[0] if isinstance(last, np.ndarray) and last.ndim == 2 else 1
    check_named_arrays(
        fn, "params", params, mlp_shapes(w1.shape[1], hidden=hidden, num_classes=num_classes), x.dtype
    )
    check_named_arrays(fn, "state", state, {})
    check_nonempty(x, "x", fn)
    h = x.reshape(x.shape[0], -1)
    if h.shape[1] != w1.shape[1]:
        raise ValueError(
            f"{fn}: x.shape[1:] (={x.shape[1:]}, {h.shape[1]} features) must flatten to "
            f"params['fc1.weight'].shape[1] (={w1.shape[1]}), the input features"
        )
    layers = []
    for i in range(1, n_layers + 1):
        h, lin_cache = linear_forward(h, params[f"fc{i}.weight"], params[f"fc{i}.bias"])
        relu_cache = None
        if i < n_layers:
            h, relu_cache = act_forward(h, act_clip)
            if hook is not None:
                h = apply_tap(hook, f"relu{i}", h)
        layers.append((lin_cache, relu_cache))
    return h, {}, MLPCache(x.shape, tuple(layers), tuple(params), act_clip)


def mlp_backward(dlogits: np.ndarray, cache: MLPCache) -> ModelGrads:
    """Backward pass of :func:`mlp_forward`: ``ModelGrads(params, x)``, the gradients with the keys (and
    order) of ``params`` and ``dL/dx`` in the shape of ``x``."""
    fn = "mlp_backward"
    if not isinstance(cache, MLPCache):
        raise TypeError(f"{fn}: cache must be the MLPCache of mlp_forward, got {type(cache).__name__}")
    check_dlogits(fn, dlogits, cache.layers[-1][0].x, cache.layers[-1][0].w)
    grads: dict[str, np.ndarray] = {}
    dh = dlogits
    for i in range(len(cache.layers), 0, -1):
        lin_cache, relu_cache = cache.layers[i - 1]
        if relu_cache is not None:
            dh = act_backward(dh, relu_cache)
        g = linear_backward(dh, lin_cache)
        grads[f"fc{i}.weight"], grads[f"fc{i}.bias"] = g.dw, g.db
        dh = g.dx
    return ModelGrads({k: grads[k] for k in cache.param_names}, dh.reshape(cache.x_shape))
