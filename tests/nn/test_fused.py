"""The fused layers against the unfused ops they replace, bit for bit.

The ResNets run batch norm, the residual sum and the ReLU fused, chunk by chunk of images, over the
convolution's output (:func:`saf_ref.nn.blocks.conv_bn_act_forward`; in evaluation mode inside the
convolution's chunk loop). The specification is the composition of
the public ops (``conv2d_forward``, ``batchnorm2d_forward(train=False)``, ``+``, ``relu_forward``), and
for whole models the unfused path, which a tap hook forces (an identity hook changes nothing, tested in
test_taps.py). Everything is compared on the bits, signed zeros and NaN payloads included.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.nn.activations import (
    relu_clipped_ceiling,
    relu_clipped_forward,
    relu_clipped_inplace,
    relu_forward,
    relu_inplace,
)
from saf_ref.nn.batchnorm import (
    batchnorm2d_eval_inplace,
    batchnorm2d_eval_operands,
    batchnorm2d_forward,
    channel_table,
)
from saf_ref.nn.blocks import conv_bn_act_forward
from saf_ref.nn.conv import GridBatch, conv2d_forward, conv2d_forward_fused, conv2d_inference, grid_batch
from saf_ref.nn.resnet import init_resnet, resnet_backward, resnet_forward

DTYPES = (np.float32, np.float64)
INT = {np.float32: np.uint32, np.float64: np.uint64}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes, dtypes and bit patterns."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a.view(INT[a.dtype.type]), b.view(INT[b.dtype.type])))


def special_values(rng, shape, dtype) -> np.ndarray:
    """Normal values with signed zeros, infinities, NaNs with payloads and subnormals sprinkled in."""
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    bits = flat.view(INT[np.dtype(dtype).type])
    picks = rng.choice(flat.size, size=min(flat.size, 40), replace=False)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(dtype).smallest_subnormal, -1e-40]
    for k, i in enumerate(picks[: len(specials)]):
        flat[i] = specials[k]
    for i in picks[len(specials) :]:  # NaNs with random payloads and either sign
        bits[i] = (bits[i] | (np.finfo(dtype).max.view(bits.dtype) + 1)) ^ (bits[i] & 1)
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (2, 16, 32, 32), (1,), ()])
def test_relu_inplace_is_relu_forward(dtype, shape):
    x = special_values(np.random.default_rng(1), shape, dtype)
    y_ref, cache = relu_forward(x)
    y, passes = x.copy(), np.empty(x.shape, bool)
    relu_inplace(y, passes)
    assert same_bits(y, y_ref)
    assert np.array_equal(passes, cache.passes)
    y2 = x.copy()
    relu_inplace(y2)  # without the mask
    assert same_bits(y2, y_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (2, 16, 32, 32), ()])
@pytest.mark.parametrize("ceiling", [0.5, 6.0, 1e-3])
def test_relu_clipped_inplace_is_relu_clipped_forward(dtype, shape, ceiling):
    x = special_values(np.random.default_rng(8), shape, dtype)
    if x.size >= 3:
        x.reshape(-1)[-3:] = [ceiling, np.nextafter(dtype(ceiling), dtype(np.inf)), -ceiling]
    y_ref, cache = relu_clipped_forward(x, ceiling=ceiling)
    y, passes = x.copy(), np.empty(x.shape, bool)
    relu_clipped_inplace(y, relu_clipped_ceiling(ceiling, dtype), passes)
    assert same_bits(y, y_ref)
    assert np.array_equal(passes, cache.passes)
    with pytest.raises(ValueError, match=r"relu_clipped: ceiling must be finite and > 0 in float32"):
        relu_clipped_ceiling(1e39, np.float32)


def test_channel_table():
    v = np.arange(3, dtype=np.float32)
    t = channel_table(v, (3, 2, 4))
    assert t.shape == (3, 2, 4) and t.flags.c_contiguous
    assert np.array_equal(t, np.broadcast_to(v[:, None, None], (3, 2, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_eval_inplace_is_batchnorm_forward(dtype):
    rng = np.random.default_rng(2)
    x = special_values(rng, (4, 6, 5, 3), dtype)
    weight, bias, mean = (rng.standard_normal(6).astype(dtype) for _ in range(3))
    var = np.abs(rng.standard_normal(6)).astype(dtype)
    var[0] = 0.0  # eps alone
    y_ref, _, _, cache = batchnorm2d_forward(x, weight, bias, mean, var, train=False)
    ops = batchnorm2d_eval_operands(mean, var, weight, bias, x.shape[1:])
    assert same_bits(ops.inv_std, cache.inv_std)
    y, x_hat = x.copy(), np.empty_like(x)
    batchnorm2d_eval_inplace(y, ops, x_hat)
    assert same_bits(y, y_ref) and same_bits(x_hat, cache.x_hat)
    y = x.copy()
    batchnorm2d_eval_inplace(y, ops)  # x_hat over y
    assert same_bits(y, y_ref)


# (x shape, w shape, stride, padding): the grid path, strided im2col, 1x1, and the im2col fallback.
CONV_CASES = [
    ((5, 4, 9, 8), (6, 4, 3, 3), 1, 1),
    ((5, 4, 9, 8), (6, 4, 3, 3), 2, 1),
    ((5, 4, 9, 8), (6, 4, 1, 1), 2, 0),
    ((3, 4, 7, 7), (8, 4, 3, 3), 1, 0),
    ((40, 2, 12, 12), (3, 2, 3, 3), 1, 1),  # several chunks
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, pad", CONV_CASES)
def test_conv_forward_fused_without_epilogue_is_conv_forward(dtype, xs, ws, stride, pad):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    y_ref, cache_ref = conv2d_forward(x, w, stride=stride, padding=pad)
    seen = []
    y, cache = conv2d_forward_fused(
        x, w, (stride,) * 2, (pad,) * 2, lambda c, a, b: seen.append((a, b, c.copy()))
    )
    assert same_bits(y, y_ref)
    assert same_bits(cache.x_padded, cache_ref.x_padded) and cache.stride == cache_ref.stride
    # the epilogue saw every image once, in order, each chunk as written
    assert [a for a, _, _ in seen] == sorted(a for a, _, _ in seen) and seen[0][0] == 0
    assert (
        all(b == a2 for (_, b, _), (a2, _, _) in zip(seen, seen[1:], strict=False)) and seen[-1][1] == xs[0]
    )
    assert all(same_bits(c, y_ref[a:b]) for a, b, c in seen)
    y2, none = conv2d_forward_fused(x, w, (stride,) * 2, (pad,) * 2, None, keep_cache=False)
    assert none is None and same_bits(y2, y_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, pad", CONV_CASES)
@pytest.mark.parametrize("mode", ["bn", "bn+relu", "bn+residual+relu"])
@pytest.mark.parametrize("train", [False, True])
def test_conv_bn_act_forward_is_the_composition(dtype, xs, ws, stride, pad, mode, train):
    rng = np.random.default_rng(4)
    x, w = special_values(rng, xs, dtype), rng.standard_normal(ws).astype(dtype)
    o = ws[0]
    params = {"c.weight": w, "b.weight": rng.standard_normal(o).astype(dtype)}
    params["b.bias"] = rng.standard_normal(o).astype(dtype)
    state = {"b.running_mean": rng.standard_normal(o).astype(dtype)}
    state["b.running_var"] = np.abs(rng.standard_normal(o)).astype(dtype)
    # the specification: the public ops one after the other
    with np.errstate(invalid="ignore"):  # NaN and inf inputs, on purpose
        h, conv_cache = conv2d_forward(x, w, stride=stride, padding=pad)
        h, mean, var, bn_cache = batchnorm2d_forward(
            h,
            params["b.weight"],
            params["b.bias"],
            state["b.running_mean"],
            state["b.running_var"],
            train=train,
        )
        residual = special_values(rng, h.shape, dtype) if "residual" in mode else None
        if residual is not None:
            h = h + residual
    relu = "relu" in mode
    ref, relu_cache = relu_forward(h) if relu else (h, None)
    for keep in (True, False):
        new_state = {}
        with np.errstate(invalid="ignore"):
            y, cb, rc = conv_bn_act_forward(
                x,
                params,
                state,
                new_state,
                "c",
                "b",
                stride=stride,
                padding=pad,
                train=train,
                residual=residual,
                relu=relu,
                keep_cache=keep,
            )
        assert same_bits(y, ref)
        assert same_bits(new_state["b.running_mean"], mean) and same_bits(new_state["b.running_var"], var)
        assert new_state["b.running_mean"] is not state["b.running_mean"]
        if not keep and not train:  # training mode keeps its caches
            assert cb is None and rc is None
            continue
        assert (cb.conv_name, cb.bn_name) == ("c", "b")
        assert same_bits(cb.bn.x_hat, bn_cache.x_hat) and same_bits(cb.bn.inv_std, bn_cache.inv_std)
        assert cb.bn.weight is params["b.weight"] and cb.bn.train is train
        assert same_bits(cb.conv.x_padded, conv_cache.x_padded)
        assert (rc is None) == (not relu)
        if relu:
            assert np.array_equal(rc.passes, relu_cache.passes) and rc.dtype == relu_cache.dtype


def identity_hook(name, h):
    return h


MODELS = [
    ("resnet20", None, (6, 3, 32, 32)),
    ("resnet20@act_clip=0.7", 4, (3, 3, 16, 16)),
    ("resnet20", 4, (3, 1, 12, 10)),
    ("resnet18_cifar", 4, (2, 3, 16, 16)),
    ("resnet18", 4, (2, 3, 40, 40)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch, width, xs", MODELS)
@pytest.mark.parametrize("train", [False, True])
def test_fused_model_is_the_unfused_forward_and_backward(dtype, arch, width, xs, train):
    arch, _, clip = arch.partition("@act_clip=")
    act_clip = float(clip) if clip else None
    rng = np.random.default_rng(5)
    params, state = init_resnet(arch, rng=rng, dtype=dtype, width=width, in_channels=xs[1])
    for k in params:  # batch norm away from its initial identity
        if params[k].ndim == 1:
            params[k] = (params[k] + 0.3 * rng.standard_normal(params[k].shape)).astype(dtype)
    state = {k: np.abs(v + 0.3 * rng.standard_normal(v.shape)).astype(dtype) for k, v in state.items()}
    x = special_values(rng, xs, dtype) if not train else rng.standard_normal(xs).astype(dtype)
    with np.errstate(all="ignore"):
        z_ref, s_ref, c_ref = resnet_forward(
            params, state, x, arch=arch, train=train, activation_faults=identity_hook, act_clip=act_clip
        )
        z, s, c = resnet_forward(params, state, x, arch=arch, train=train, act_clip=act_clip)
        z_nc, s_nc, c_nc = resnet_forward(
            params, state, x, arch=arch, train=train, keep_cache=False, act_clip=act_clip
        )
        dz = rng.standard_normal(z.shape).astype(dtype)
        g_ref, g = resnet_backward(dz, c_ref), resnet_backward(dz, c)
    assert same_bits(z, z_ref) and same_bits(z_nc, z_ref) and c_nc is None
    assert c.act_clip == c_ref.act_clip == act_clip
    assert list(s) == list(s_ref) == list(s_nc) == list(state)
    assert all(same_bits(s[k], s_ref[k]) and same_bits(s_nc[k], s_ref[k]) for k in s)
    assert all(s[k] is not state[k] for k in s)
    assert list(g.params) == list(g_ref.params)
    assert all(same_bits(g.params[k], g_ref.params[k]) for k in g.params)
    assert same_bits(g.x, g_ref.x)


def test_keep_cache_false_in_training_mode_and_its_check():
    params, state = init_resnet("resnet20", rng=0, width=2)
    x = np.random.default_rng(6).standard_normal((2, 3, 8, 8)).astype(np.float32)
    z_ref, s_ref, _ = resnet_forward(params, state, x, arch="resnet20", train=True)
    z, s, cache = resnet_forward(params, state, x, arch="resnet20", train=True, keep_cache=False)
    assert cache is None and same_bits(z, z_ref) and all(same_bits(s[k], s_ref[k]) for k in s)
    with pytest.raises(TypeError, match=r"resnet_forward: keep_cache must be a bool, got"):
        resnet_forward(params, state, x, arch="resnet20", train=False, keep_cache=1)


# (x shape, w shape, stride, padding, the input grid's padding): grid to grid on the grid path, a
# strided layer, a 1x1 shortcut, an input grid of another padding (im2col from an NCHW copy).
INFERENCE_CASES = [
    ((5, 4, 9, 8), (6, 4, 3, 3), 1, 1, 1),
    ((40, 2, 12, 12), (3, 2, 3, 3), 1, 1, 1),
    ((5, 4, 9, 8), (6, 4, 3, 3), 2, 1, 1),
    ((5, 4, 9, 8), (6, 4, 1, 1), 2, 0, 1),
    ((3, 4, 7, 7), (8, 4, 3, 3), 1, 0, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, pad, grid_pad", INFERENCE_CASES)
@pytest.mark.parametrize("to_grid", [True, False])
def test_conv2d_inference_is_conv2d_forward(dtype, xs, ws, stride, pad, grid_pad, to_grid):
    rng = np.random.default_rng(7)
    x, w = special_values(rng, xs, dtype), rng.standard_normal(ws).astype(dtype)
    offset = rng.standard_normal(ws[0]).astype(dtype)
    with np.errstate(invalid="ignore"):
        y, _ = conv2d_forward(x, w, stride=stride, padding=pad)
        ref = y + offset[:, None, None]  # what the epilogue below does, in NCHW

        def epilogue(chunk, start, stop):  # channel-major chunks: (O, n, A, B)
            assert chunk.shape[0] == ws[0] and chunk.shape[1] == stop - start
            chunk += offset[:, None, None, None]

        g = grid_batch(x, (grid_pad,) * 2, (3, 3))
        assert same_bits(g.nchw(), x) and same_bits(
            g.padded(), np.pad(x, [(0, 0)] * 2 + [(grid_pad,) * 2] * 2)
        )
        out_grid = ((1, 1), (3, 3)) if to_grid else None
        got = conv2d_inference(g, w, (stride,) * 2, (pad,) * 2, epilogue, out_grid)
    if to_grid:
        assert isinstance(got, GridBatch) and got.shape == ref.shape
        assert same_bits(got.data, grid_batch(ref, (1, 1), (3, 3)).data)  # the zero borders too
    else:
        assert same_bits(got, ref)
