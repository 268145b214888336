"""Building blocks shared by the models: conv + batch norm, (clipped) ReLU, initialization, checks.

The models of :mod:`saf_ref.nn.resnet` and :mod:`saf_ref.nn.small` are compositions of these. Every model
has the same interface:

- ``forward(params, state, x, *, train, act_clip=None) -> (logits, new_state, cache)``: computes with the
  weights it is given (latents become weights only in :mod:`saf_ref.protect`);
- ``backward(dlogits, cache) -> ModelGrads(params, x)``: the gradients with respect to every parameter
  (same keys and order as ``params``) and with respect to the input ``x``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from saf_ref.nn.activations import (
    ReluCache,
    ReluClippedCache,
    relu_backward,
    relu_clipped_backward,
    relu_clipped_ceiling,
    relu_clipped_forward,
    relu_clipped_inplace,
    relu_forward,
    relu_inplace,
)
from saf_ref.nn.batchnorm import (
    BatchNorm2dCache,
    batchnorm2d_backward,
    batchnorm2d_eval_inplace,
    batchnorm2d_eval_operands,
    batchnorm2d_forward,
    batchnorm2d_forward_into,
)
from saf_ref.nn.conv import (
    GridBatch,
    check_nonempty,
    conv2d_backward_unchecked,
    conv2d_forward_fused,
    conv2d_forward_unchecked,
    conv2d_inference,
)
from saf_ref.validation import check_float, check_ndim, check_real, check_same_dtype, check_shape

__all__ = [
    "ConvBNCache",
    "ModelGrads",
    "act_backward",
    "act_forward",
    "check_act_clip",
    "check_dlogits",
    "check_model_input",
    "check_named_arrays",
    "check_named_entries",
    "conv_bn_backward",
    "conv_bn_act_forward",
    "conv_bn_forward",
    "conv_bn_inference",
    "init_from_shapes",
]


class ModelGrads(NamedTuple):
    """What a model's backward pass returns.

    Attributes
    ----------
    params : dict[str, ndarray]
        ``dL/dparams``, same keys (and order), shapes and dtype as the ``params`` of the forward pass.
    x : ndarray
        ``dL/dx``, the shape of the forward input (for input-gradient attacks and gradient checks).
    """

    params: dict[str, np.ndarray]
    x: np.ndarray


# --------------------------------------------------------------------------------------------------
# Initialization and checks
# --------------------------------------------------------------------------------------------------


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
    check_named_entries(fn, what, arrays, shapes, dtype)


def check_named_entries(
    fn: str,
    what: str,
    arrays: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    dtype: np.dtype | None = None,
) -> None:
    """Require each key of ``shapes`` in ``arrays`` to be an ndarray of that shape (and ``dtype``); other
    keys of ``arrays`` are not looked at (a block's entries in a whole model's dict)."""
    for k, shape in shapes.items():
        if k not in arrays:
            raise ValueError(f"{fn}: {what} must contain {k!r}, got no such key")
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


def check_model_input(fn: str, x: np.ndarray, last_hw: tuple[int, int], batch_statistics: bool) -> None:
    """A model's input images: every dimension at least 1, and, where batch norm normalises with batch
    statistics (``batch_statistics``: training mode with batch norm), more than one value per channel in
    every layer, as PyTorch requires (``N*H*W > 1``; the last layer's ``last_hw`` maps are the smallest).

    Checked at the model's entry point, before any work: the layers themselves skip their checks (an
    empty image gave a ``ZeroDivisionError`` in the convolution, one value per channel another in batch
    norm's unbiased-variance factor ``n / (n - 1)``).
    """
    check_nonempty(x, "x", fn)
    count = x.shape[0] * last_hw[0] * last_hw[1]
    if batch_statistics and count < 2:
        raise ValueError(
            f"{fn}: x must leave more than one value per channel in every batch norm in training mode "
            f"(N*H*W > 1), got x of shape {tuple(x.shape)}, whose last layer has N*H*W = {count}"
        )


def check_dlogits(fn: str, dlogits: Any, logits_x: np.ndarray, logits_w: np.ndarray) -> None:
    """A model backward's ``dlogits``: float, the logits' dtype and shape ``(N, num_classes)``, read from
    the cache of the last linear layer (its input ``logits_x`` and weight ``logits_w``), so that a wrong
    one is reported in the model's name and not as the linear layer's ``dy``."""
    check_float(dlogits, "dlogits", fn)
    check_ndim(dlogits, "dlogits", fn, 2, "(N, num_classes)")
    check_same_dtype(fn, logits=logits_x, dlogits=dlogits)
    check_shape(dlogits, "dlogits", fn, (logits_x.shape[0], logits_w.shape[0]))


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


def act_forward(x: np.ndarray, act_clip: float | None) -> tuple[np.ndarray, Any]:
    """``relu(x)``, or ``min(max(x, 0), act_clip)`` when a ceiling is given; ``(y, cache)``."""
    if act_clip is None:
        return relu_forward(x)
    return relu_clipped_forward(x, ceiling=act_clip)


def act_backward(dy: np.ndarray, cache: Any) -> np.ndarray:
    """Backward of :func:`act_forward`; the cache's type says which activation ran."""
    if isinstance(cache, ReluClippedCache):
        return relu_clipped_backward(dy, cache).dx
    return relu_backward(dy, cache).dx


# --------------------------------------------------------------------------------------------------
# Convolution + batch norm
# --------------------------------------------------------------------------------------------------


class ConvBNCache(NamedTuple):
    """Caches of one convolution followed by batch norm, with the two layers' parameter prefixes."""

    conv_name: str
    bn_name: str
    conv: Any
    bn: Any


def conv_bn_forward(
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
    """Convolution (no bias) then batch norm, the composite every model here is built of.

    PyTorch equivalent: ``bn(conv(x))`` with ``nn.Conv2d(..., bias=False)`` and ``nn.BatchNorm2d``.
    Reads ``params[f"{conv_name}.weight"]``, ``params[f"{bn_name}.weight"]`` / ``.bias`` and the running
    statistics ``state[f"{bn_name}.running_mean"]`` / ``.running_var``; writes the updated running
    statistics into ``new_state`` (a dict the caller owns and builds up layer by layer).

    The arrays are expected checked, as a model's entry point does (``check_named_arrays`` with the
    input's dtype): the convolution runs without its own argument checks (batch norm keeps its).

    Math
    ----
    ``y = gamma * (conv(x, w) - mu) / sqrt(var + eps) + beta`` with batch statistics (``train``) or
    running ones; see :func:`saf_ref.nn.conv.conv2d_forward` and
    :func:`saf_ref.nn.batchnorm.batchnorm2d_forward`.
    """
    # The model's entry point has checked x and every parameter (dtype, shape): skip conv2d's checks.
    w = params[f"{conv_name}.weight"]
    y, conv_cache = conv2d_forward_unchecked(x, w, None, (stride, stride), (padding, padding))
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


def conv_bn_backward(dy: np.ndarray, cache: ConvBNCache, grads: dict[str, np.ndarray]) -> np.ndarray:
    """Backward of :func:`conv_bn_forward`: returns ``dL/dx``; writes the gradients of the conv weight
    and the BN scale and shift into ``grads`` (a dict the caller owns, keyed by parameter name)."""
    bn_grads = batchnorm2d_backward(dy, cache.bn)
    grads[f"{cache.bn_name}.weight"] = bn_grads.dweight
    grads[f"{cache.bn_name}.bias"] = bn_grads.dbias
    conv_grads = conv2d_backward_unchecked(bn_grads.dx, cache.conv)
    grads[f"{cache.conv_name}.weight"] = conv_grads.dw
    return conv_grads.dx


def conv_bn_act_forward(
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
    residual: np.ndarray | None = None,
    relu: bool,
    act_clip: float | None = None,
    keep_cache: bool = True,
) -> tuple[np.ndarray, ConvBNCache | None, Any]:
    """``relu(bn(conv(x)) [+ residual])`` with the elementwise layers fused; ``(y, conv_bn_cache,
    relu_cache)``. Unchecked core: the model validated its arguments.

    Bit for bit :func:`conv_bn_forward` followed by ``h + residual`` and
    :func:`saf_ref.nn.activations.relu_forward`, with the same caches: the same elementwise operations
    in the same order, but each applied to a chunk of images while it is in the cache, and written over
    the convolution's output (a temporary of this function) instead of new full-size arrays. In
    evaluation mode batch norm, the sum and the ReLU run inside the convolution's chunk loop
    (:func:`saf_ref.nn.batchnorm.batchnorm2d_eval_inplace`); in training mode they follow the batch
    statistics, which need the whole output (:func:`saf_ref.nn.batchnorm.batchnorm2d_forward_into`).
    ``keep_cache=False`` (evaluation mode) keeps nothing and returns ``None`` caches (inference).
    Arguments as in :func:`conv_bn_forward`; ``relu=False`` (no residual) stops after batch norm;
    ``act_clip``: the ReLU's ceiling (:func:`act_forward`'s), or None.
    """
    w = params[f"{conv_name}.weight"]
    weight, bias = params[f"{bn_name}.weight"], params[f"{bn_name}.bias"]
    running_mean, running_var = state[f"{bn_name}.running_mean"], state[f"{bn_name}.running_var"]
    out_shape = _conv_out_shape(x.shape, w.shape, stride, padding)
    keep_cache = keep_cache or train
    passes = np.empty(out_shape, bool) if keep_cache and relu else None
    activation = _activation_inplace(relu, act_clip, x.dtype)

    def residual_relu(y: np.ndarray, start: int, stop: int) -> None:
        if residual is not None:
            y += residual[start:stop]  # the unfused block's h + shortcut (addition commutes exactly)
        if activation is not None:
            activation(y, None if passes is None else passes[start:stop])

    if train:
        h, conv_cache = conv2d_forward_unchecked(x, w, None, (stride, stride), (padding, padding))
        y, mean, var, bn_cache = batchnorm2d_forward_into(
            h, h, weight, bias, running_mean, running_var, True, epilogue=residual_relu
        )
    else:
        ops = batchnorm2d_eval_operands(running_mean, running_var, weight, bias, out_shape[1:])
        x_hat = np.empty(out_shape, x.dtype) if keep_cache else None

        def epilogue(y: np.ndarray, start: int, stop: int) -> None:
            batchnorm2d_eval_inplace(y, ops, None if x_hat is None else x_hat[start:stop])
            residual_relu(y, start, stop)

        y, conv_cache = conv2d_forward_fused(
            x, w, (stride, stride), (padding, padding), epilogue, keep_cache=keep_cache
        )
        mean, var = running_mean.copy(), running_var.copy()
        bn_cache = BatchNorm2dCache(x_hat, ops.inv_std, weight, False)
    new_state[f"{bn_name}.running_mean"] = mean
    new_state[f"{bn_name}.running_var"] = var
    if not keep_cache:
        return y, None, None
    relu_cache = None
    if relu:
        relu_cache = ReluCache(passes, x.dtype) if act_clip is None else ReluClippedCache(passes, x.dtype)
    return y, ConvBNCache(conv_name, bn_name, conv_cache, bn_cache), relu_cache


def _activation_inplace(relu: bool, act_clip: float | None, dtype) -> Any:
    """``activation(y, passes)`` in place: :func:`act_forward`'s ReLU (clipped with ``act_clip``), or
    None without ReLU. The ceiling is checked and rounded here, once, with relu_clipped's errors."""
    if not relu:
        return None
    if act_clip is None:
        return relu_inplace
    ceiling = relu_clipped_ceiling(act_clip, dtype)
    return lambda y, passes: relu_clipped_inplace(y, ceiling, passes)


def conv_bn_inference(
    x: GridBatch,
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    conv_name: str,
    bn_name: str,
    *,
    stride: int,
    padding: int,
    residual: GridBatch | np.ndarray | None = None,
    relu: bool,
    act_clip: float | None = None,
    out_grid: tuple[tuple[int, int], tuple[int, int]] | None,
) -> GridBatch | np.ndarray:
    """Evaluation-mode ``relu(bn(conv(x)) [+ residual])`` for a model's inference pass: from a grid to
    the next layer's grid (:func:`saf_ref.nn.conv.conv2d_inference`), nothing kept for a backward pass.
    Unchecked core: the model validated its arguments.

    Bit for bit :func:`conv_bn_act_forward` with ``train=False``: the same operations in the same order
    (:func:`saf_ref.nn.batchnorm.batchnorm2d_eval_inplace`, ``+``,
    :func:`saf_ref.nn.activations.relu_inplace`), on each chunk of the convolution's product in its
    channel-major layout before it is written out. ``residual``: a grid of the output's shape (the
    identity shortcut) or an NCHW array (a downsampling shortcut's output). The running statistics are
    not copied into a new state here (the caller does).
    """
    w = params[f"{conv_name}.weight"]
    weight, bias = params[f"{bn_name}.weight"], params[f"{bn_name}.bias"]
    running_mean, running_var = state[f"{bn_name}.running_mean"], state[f"{bn_name}.running_var"]
    tables: dict[tuple[int, int], Any] = {}
    activation = _activation_inplace(relu, act_clip, w.dtype)

    def epilogue(chunk: np.ndarray, start: int, stop: int) -> None:
        # chunk (O, n, A, B), channel-major: per-channel tables of shape (O, 1, A, B)
        hw = chunk.shape[2:]
        if hw not in tables:
            tables[hw] = batchnorm2d_eval_operands(
                running_mean, running_var, weight, bias, (chunk.shape[0], 1, *hw)
            )
        batchnorm2d_eval_inplace(chunk, tables[hw])
        if isinstance(residual, GridBatch):
            chunk += _grid_residual(residual, chunk, start, stop)
        elif residual is not None:
            ho, wo = residual.shape[2:]
            chunk[:, :, :ho, :wo] += residual[start:stop].transpose(1, 0, 2, 3)
        if activation is not None:
            activation(chunk, None)

    return conv2d_inference(x, w, (stride, stride), (padding, padding), epilogue, out_grid)


def _grid_residual(r: GridBatch, chunk: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Images ``start:stop`` of grid ``r`` aligned with an output chunk ``(O, n, A, B)`` whose
    ``[:, :, :H, :W]`` corner is the output: the grid's own slice when ``(A, B)`` is its ``(Hg, Wg)``
    (then the extra positions meet zeros), else a zero-padded copy of its pixels."""
    (_, _, h, w), (ph, pw) = r.shape, r.padding
    hg, wg = h + ph, w + pw
    if chunk.shape[2:] == (hg, wg):
        return r.data[:, r.lead + start * hg * wg : r.lead + stop * hg * wg].reshape(chunk.shape)
    aligned = np.zeros(chunk.shape, chunk.dtype)
    aligned[:, :, :h, :w] = r.images()[:, start:stop, ph : ph + h, pw : pw + w]
    return aligned


def _conv_out_shape(x_shape, w_shape, stride: int, padding: int) -> tuple[int, int, int, int]:
    """``(N, O, Ho, Wo)`` of a square-strided, square-padded convolution."""
    (n, _, h, wd), (o, _, kh, kw) = x_shape, w_shape
    return (n, o, (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1)
