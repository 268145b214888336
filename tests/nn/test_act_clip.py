"""Activation clipping (ReLU with a ceiling) in the models: gradients, PyTorch, bounds, names, campaigns.

References are independent of the code under test:

- gradients: float64 central differences of ``L = sum(logits * R)`` at random coordinates of every
  tensor. ``relu_c`` has kinks at 0 and ``c``; a coordinate whose difference quotient straddles one
  (some activation mask differs between ``p - h``, ``p`` and ``p + h``) is skipped and counted;
- PyTorch models built here from ``torch.nn`` with ``F.hardtanh(x, 0, c)`` in place of every ReLU;
- ``act_clip=None`` against the same model composed by hand from the ``saf_ref.nn`` ops with plain ReLU
  (the code path before activation clipping existed);
- boundedness read from the caches: every activation a layer consumes is in ``[0, c]``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nn_helpers import rel_error

from saf_ref.data.shipped import load_digits
from saf_ref.nn.activations import ReluCache, ReluClippedCache, relu_backward, relu_forward
from saf_ref.nn.batchnorm import batchnorm2d_forward
from saf_ref.nn.conv import conv2d_forward
from saf_ref.nn.linear import linear_backward, linear_forward
from saf_ref.nn.registry import MODEL_NAMES, ModelName, format_model_name, model_fns, parse_model_name
from saf_ref.nn.resnet import basic_block_forward, init_resnet, resnet_backward, resnet_forward
from saf_ref.nn.small import (
    init_mlp,
    init_small_cnn,
    mlp_backward,
    mlp_forward,
    small_cnn_backward,
    small_cnn_forward,
)
from saf_ref.train.loop import evaluate, train
from saf_ref.train.optim import SGD

H = 1e-6  # central-difference step


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _masks(cache) -> list[np.ndarray]:
    """Every activation's gradient mask in a model cache (walks the nested NamedTuples)."""
    if isinstance(cache, (ReluCache, ReluClippedCache)):
        return [cache.passes]
    if isinstance(cache, tuple):
        return [m for item in cache for m in _masks(item)]
    return []


def _activation_types(cache) -> set[type]:
    if isinstance(cache, (ReluCache, ReluClippedCache)):
        return {type(cache)}
    if isinstance(cache, tuple):
        return set().union(*(_activation_types(item) for item in cache))
    return set()


def _random_bn(params, rng):
    """Batch-norm weights/biases away from 1/0 so that their gradients are exercised non-trivially."""
    return {
        k: (rng.uniform(0.5, 1.5, v.shape) if k.endswith("weight") else rng.normal(0, 0.3, v.shape))
        if v.ndim == 1 and not k.startswith("fc")
        else v
        for k, v in params.items()
    }


def _check_fd(forward, backward, params, x, r, rng, *, per_tensor):
    """Central differences of ``sum(forward(p, x)[0] * r)`` at random coordinates; skip kink crossings.

    Returns ``(checked, skipped)``.
    """
    _, _, cache = forward(params, x)
    model_grads = backward(r, cache)
    grads, dx = model_grads.params, model_grads.x
    base = _masks(cache)
    checked = skipped = 0
    for name, value, analytic in [(k, params[k], grads[k]) for k in params] + [("x", x, dx)]:
        for _ in range(per_tensor):
            idx = tuple(int(rng.integers(n)) for n in value.shape)
            losses, same_side = [], True
            for sign in (1, -1):
                moved = value.copy()
                moved[idx] += sign * H
                p, xx = (params, moved) if name == "x" else ({**params, name: moved}, x)
                logits, _, c = forward(p, xx)
                losses.append(float(np.sum(logits * r)))
                same_side &= all(np.array_equal(a, b) for a, b in zip(_masks(c), base, strict=True))
            if not same_side:  # an activation crossed 0 or c inside [p - h, p + h]
                skipped += 1
                continue
            fd = (losses[0] - losses[1]) / (2 * H)
            assert abs(fd - analytic[idx]) <= 1e-6 + 1e-5 * abs(analytic[idx]), (name, idx, fd, analytic[idx])
            checked += 1
    return checked, skipped


def _consumed_activations_small_cnn(cache):
    """What layers 2, 3 and fc read: the (clipped) activations of layers 1, 2 and the mean of layer 3."""
    return [cache.layers[1][0].conv.x_padded, cache.layers[2][0].conv.x_padded, cache.fc.x]


def _consumed_activations_resnet(cache):
    acts = [cache.fc.x]
    for block in cache.blocks:
        acts += [block.branch1.conv.x_padded, block.branch2.conv.x_padded]  # block input, relu1 output
    return acts


# --------------------------------------------------------------------------------------------------
# act_clip=None is the plain ReLU, bit for bit
# --------------------------------------------------------------------------------------------------


def _small_cnn_by_hand(params, state, x, *, train):
    """small_cnn's forward composed from the ops with plain ReLU: the pre-act_clip code path."""
    h = x
    for i, stride in enumerate((1, 2, 2), start=1):
        h, _ = conv2d_forward(h, params[f"conv{i}.weight"], None, stride=stride, padding=1)
        h, *_ = batchnorm2d_forward(
            h, params[f"bn{i}.weight"], params[f"bn{i}.bias"],
            state[f"bn{i}.running_mean"], state[f"bn{i}.running_var"], train=train,
        )  # fmt: skip
        h, _ = relu_forward(h)
    return linear_forward(h.mean(axis=(2, 3)), params["fc.weight"], params["fc.bias"])[0]


@pytest.mark.parametrize("train_mode", [True, False])
def test_none_is_the_plain_relu_bit_for_bit(train_mode):
    rng = np.random.default_rng(0)
    params, state = init_small_cnn(width=4, rng=1)
    x = rng.random((5, 1, 8, 8), dtype=np.float32)
    logits, _, cache = small_cnn_forward(params, state, x, train=train_mode, act_clip=None)
    assert logits.tobytes() == _small_cnn_by_hand(params, state, x, train=train_mode).tobytes()
    assert cache.act_clip is None and _activation_types(cache) == {ReluCache}
    default = small_cnn_forward(params, state, x, train=train_mode)[0]
    assert default.tobytes() == logits.tobytes()

    # The MLP by hand, forward and input gradient.
    mp, ms = init_mlp(64, hidden=(16,), rng=2)
    h1, lin1 = linear_forward(x.reshape(5, -1), mp["fc1.weight"], mp["fc1.bias"])
    a1, relu1 = relu_forward(h1)
    ref, lin2 = linear_forward(a1, mp["fc2.weight"], mp["fc2.bias"])
    got, _, mcache = mlp_forward(mp, ms, x, train=train_mode, act_clip=None)
    assert got.tobytes() == ref.tobytes()
    dlogits = rng.standard_normal(got.shape).astype(np.float32)
    d_a1 = linear_backward(dlogits, lin2).dx
    ref_dx = linear_backward(relu_backward(d_a1, relu1).dx, lin1).dx.reshape(x.shape)
    assert mlp_backward(dlogits, mcache).x.tobytes() == ref_dx.tobytes()


def test_none_basic_block_by_hand():
    rng = np.random.default_rng(3)
    params, state = init_resnet("resnet20", width=4, in_channels=4, rng=0)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    prefix = "layer2.0."  # a block with a 1x1 downsample shortcut (4 -> 8 channels, stride 2)
    params = {
        **params,
        f"{prefix}conv1.weight": (0.3 * rng.standard_normal((8, 4, 3, 3))).astype(np.float32),
        f"{prefix}downsample.0.weight": rng.standard_normal((8, 4, 1, 1)).astype(np.float32),
    }

    def conv_bn(h, conv, bn, stride, padding):
        h, _ = conv2d_forward(h, params[f"{prefix}{conv}.weight"], None, stride=stride, padding=padding)
        return batchnorm2d_forward(
            h, params[f"{prefix}{bn}.weight"], params[f"{prefix}{bn}.bias"],
            state[f"{prefix}{bn}.running_mean"], state[f"{prefix}{bn}.running_var"], train=True,
        )[0]  # fmt: skip

    h = relu_forward(conv_bn(x, "conv1", "bn1", 2, 1))[0]
    ref = relu_forward(conv_bn(h, "conv2", "bn2", 1, 1) + conv_bn(x, "downsample.0", "downsample.1", 2, 0))[0]
    y, _, cache = basic_block_forward(x, params, state, prefix, stride=2, train=True, act_clip=None)
    assert y.tobytes() == ref.tobytes() and _activation_types(cache) == {ReluCache}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_ceiling_nothing_reaches_equals_none_bit_for_bit(dtype):
    """relu_c with c above every activation is relu exactly: same logits, gradients and statistics."""
    rng = np.random.default_rng(1)
    huge = 1e30
    params, state = init_resnet("resnet20", width=2, in_channels=1, num_classes=4, rng=0, dtype=dtype)
    x = rng.standard_normal((2, 1, 8, 8)).astype(dtype)
    r = rng.standard_normal((2, 4)).astype(dtype)
    a = resnet_forward(params, state, x, arch="resnet20", train=True)
    b = resnet_forward(params, state, x, arch="resnet20", train=True, act_clip=huge)
    assert _activation_types(b[2]) == {ReluClippedCache} and b[2].act_clip == huge
    assert a[0].tobytes() == b[0].tobytes()
    assert all(a[1][k].tobytes() == b[1][k].tobytes() for k in a[1])
    ga, gb = resnet_backward(r, a[2]), resnet_backward(r, b[2])
    assert all(ga.params[k].tobytes() == gb.params[k].tobytes() for k in ga.params)
    assert ga.x.tobytes() == gb.x.tobytes()
    p, s = init_small_cnn(width=3, rng=2, dtype=dtype)
    xs = rng.random((4, 1, 8, 8)).astype(dtype)
    la, _, ca = small_cnn_forward(p, s, xs, train=True)
    lb, _, cb = small_cnn_forward(p, s, xs, train=True, act_clip=huge)
    assert la.tobytes() == lb.tobytes()
    rs = rng.standard_normal(la.shape).astype(dtype)
    da, db = small_cnn_backward(rs, ca), small_cnn_backward(rs, cb)
    assert all(da.params[k].tobytes() == db.params[k].tobytes() for k in da.params)
    assert da.x.tobytes() == db.x.tobytes()


# --------------------------------------------------------------------------------------------------
# Gradients: central differences (float64)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_mode", [True, False])
def test_small_cnn_finite_differences(train_mode):
    rng = np.random.default_rng(4)
    c = 0.6  # batch-normalized pre-activations are ~N(beta, gamma^2): a good share lies above 0.6
    params, state = init_small_cnn(in_channels=2, num_classes=3, width=3, rng=rng, dtype=np.float64)
    params = _random_bn(params, rng)
    state = {k: v * rng.uniform(0.7, 1.3, v.shape) for k, v in state.items()}
    x = rng.standard_normal((3, 2, 8, 8))
    r = rng.standard_normal((3, 3))

    def forward(p, xx):
        return small_cnn_forward(p, state, xx, train=train_mode, act_clip=c)

    logits, _, cache = forward(params, x)
    acts = _consumed_activations_small_cnn(cache)
    assert any(np.any(a == c) for a in acts), "the ceiling must actually clip something"
    checked, skipped = _check_fd(forward, small_cnn_backward, params, x, r, rng, per_tensor=4)
    assert checked >= 0.9 * (checked + skipped), (checked, skipped)


def test_mlp_finite_differences():
    rng = np.random.default_rng(5)
    c = 0.25
    params, state = init_mlp(12, hidden=(9, 7), num_classes=3, rng=rng, dtype=np.float64)
    x = 2.0 * rng.standard_normal((5, 3, 2, 2))
    r = rng.standard_normal((5, 3))

    def forward(p, xx):
        return mlp_forward(p, state, xx, train=True, act_clip=c)

    _, _, cache = forward(params, x)
    assert np.any(cache.layers[1][0].x == c) and np.any(cache.layers[2][0].x == c)
    checked, skipped = _check_fd(forward, mlp_backward, params, x, r, rng, per_tensor=4)
    assert checked >= 0.9 * (checked + skipped), (checked, skipped)


def test_resnet20_finite_differences():
    rng = np.random.default_rng(6)
    c = 0.8
    params, state = init_resnet("resnet20", width=2, in_channels=2, num_classes=3, rng=rng, dtype=np.float64)
    params = _random_bn(params, rng)
    x = rng.standard_normal((2, 2, 8, 8))
    r = rng.standard_normal((2, 3))

    def forward(p, xx):
        return resnet_forward(p, state, xx, arch="resnet20", train=True, act_clip=c)

    _, _, cache = forward(params, x)
    # Every activation but the pooled mean (fc's input) has entries clipped at exactly c.
    assert all(np.any(a == c) for a in _consumed_activations_resnet(cache)[1:])
    checked, skipped = _check_fd(forward, resnet_backward, params, x, r, rng, per_tensor=1)
    assert checked >= 0.9 * (checked + skipped), (checked, skipped)


def test_fd_check_detects_a_wrong_ceiling_gradient():
    """The check is sharp: a backward that ignores the ceiling (ReLU's mask) fails it."""
    rng = np.random.default_rng(7)
    params, state = init_small_cnn(in_channels=1, num_classes=2, width=2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 1, 8, 8))
    r = rng.standard_normal((2, 2))

    def forward(p, xx):
        return small_cnn_forward(p, state, xx, train=True, act_clip=0.3)

    def wrong_backward(d, cache):  # recompute with a plain ReLU cache: the gradient passes above c
        plain = small_cnn_forward(params, state, x, train=True)[2]
        return small_cnn_backward(d, plain)

    with pytest.raises(AssertionError):
        _check_fd(forward, wrong_backward, params, x, r, rng, per_tensor=3)


# --------------------------------------------------------------------------------------------------
# Against PyTorch: F.hardtanh(x, 0, c) in place of every ReLU
# --------------------------------------------------------------------------------------------------


def _torch_models(c):
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class Act(nn.Module):
        """``F.hardtanh(x, 0, c)``; records its inputs (to check that the ceiling is exercised)."""

        seen: list = []

        def forward(self, x):
            Act.seen.append(x.detach().numpy().copy())
            return F.hardtanh(x, 0.0, c)

    class SmallCNN(nn.Module):
        def __init__(self, c_in, width, num_classes):
            super().__init__()
            for i, s in enumerate((1, 2, 2), start=1):
                c_out = width * 2 ** (i - 1)
                setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, s, 1, bias=False))
                setattr(self, f"bn{i}", nn.BatchNorm2d(c_out))
                c_in = c_out
            self.act = Act()
            self.fc = nn.Linear(c_in, num_classes)

        def forward(self, x):
            for i in (1, 2, 3):
                x = self.act(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            return self.fc(x.mean((2, 3)))

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.act = Act()
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x):
            out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
            return self.act(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet20(nn.Module):
        def __init__(self, c_in, width, num_classes):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.act = Act()
            c = width
            for s in range(3):
                blocks = []
                for b in range(3):
                    blocks.append(Block(c, width * 2**s, 2 if (b == 0 and s > 0) else 1))
                    c = width * 2**s
                setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.act(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean((2, 3)))

    return torch, Act, SmallCNN, ResNet20


@pytest.mark.torch
@pytest.mark.parametrize("model", ["small_cnn", "resnet20"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_against_torch_hardtanh(model, train_mode):
    c = 0.7
    torch, Act, SmallCNN, ResNet20 = _torch_models(c)
    rng = np.random.default_rng(8)
    if model == "small_cnn":
        params, state = init_small_cnn(in_channels=2, num_classes=4, width=3, rng=rng, dtype=np.float64)
        ref = SmallCNN(2, 3, 4).double()
    else:
        params, state = init_resnet(
            "resnet20", in_channels=2, num_classes=4, width=4, rng=rng, dtype=np.float64
        )
        ref = ResNet20(2, 4, 4).double()
    params = _random_bn(params, rng)
    if not train_mode:  # running statistics near the batch's, so eval-mode activations stay O(1)
        state = {k: (rng.normal(0, 0.1, v.shape) if "mean" in k else rng.uniform(0.8, 1.2, v.shape))
                 for k, v in state.items()}  # fmt: skip
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in (params | state).items()}, strict=False)
    x = rng.standard_normal((4, 2, 8, 8))
    r = rng.standard_normal((4, 4))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    Act.seen.clear()
    out = ref.train(train_mode)(xt)
    out.backward(torch.from_numpy(r))

    pre = np.concatenate([a.ravel() for a in Act.seen])
    assert np.mean(pre > c) > 0.02 and np.mean((pre > 0) & (pre < c)) > 0.1, "ceiling and ReLU both active"
    # No pre-activation within 1e-6 of a kink: the two float64 computations agree on every mask.
    assert np.min(np.minimum(np.abs(pre), np.abs(pre - c))) > 1e-6

    fwd = (
        small_cnn_forward
        if model == "small_cnn"
        else lambda *a, **k: resnet_forward(*a, arch="resnet20", **k)
    )
    bwd = small_cnn_backward if model == "small_cnn" else resnet_backward
    logits, new_state, cache = fwd(params, state, x, train=train_mode, act_clip=c)
    model_grads = bwd(r, cache)
    grads, dx = model_grads.params, model_grads.x
    # Normwise per tensor (max |a - b| / max |b|), as in test_resnet_torch: gradients that cancel to
    # nearly zero carry an absolute error of the size of the tensor's largest entries times 1e-15.
    assert rel_error(logits, out.detach().numpy()) <= 1e-12
    assert rel_error(dx, xt.grad.numpy()) <= 1e-10
    for k, p in ref.named_parameters():
        assert rel_error(grads[k], p.grad.numpy()) <= 1e-10, k
    for k in state:
        assert rel_error(new_state[k], ref.state_dict()[k].numpy()) <= 1e-12, k


# --------------------------------------------------------------------------------------------------
# Boundedness: what the clipping is for
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_are_bounded_by_the_ceiling(dtype):
    c = 1.0
    rng = np.random.default_rng(9)
    p, s = init_small_cnn(width=4, rng=0, dtype=dtype)
    x = rng.random((6, 1, 8, 8)).astype(dtype)
    clipped = _consumed_activations_small_cnn(small_cnn_forward(p, s, x, train=True, act_clip=c)[2])
    plain = _consumed_activations_small_cnn(small_cnn_forward(p, s, x, train=True)[2])
    assert all(a.min() >= 0 and a.max() <= c for a in clipped)
    assert any(a.max() == c for a in clipped) and max(a.max() for a in plain) > c  # the ceiling binds

    params, state = init_resnet("resnet20", width=2, in_channels=1, rng=0, dtype=dtype)
    cache = resnet_forward(params, state, x, arch="resnet20", train=True, act_clip=c)[2]
    acts = _consumed_activations_resnet(cache)
    assert all(a.min() >= 0 and a.max() <= c for a in acts) and any(a.max() == c for a in acts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_corrupted_weight_cannot_blow_up_clipped_activations(dtype):
    """An exponent bit flip makes one weight ~1e30; with a ceiling the logits keep the bound
    ``|logits - b| <= c * sum_j |W_kj|``, without one they explode."""
    c = 2.0
    rng = np.random.default_rng(10)
    p, s = init_small_cnn(width=4, rng=0, dtype=dtype)
    x = rng.random((8, 1, 8, 8)).astype(dtype)
    # Corrupt the centre tap from the most active layer-1 channel, so the flip reaches the output.
    layer1 = small_cnn_forward(p, s, x, train=False)[2].layers[1][0].conv.x_padded
    channel = int(np.argmax(layer1.max(axis=(0, 2, 3))))
    w = p["conv2.weight"].copy()
    w[3, channel, 1, 1] = dtype(1e30)
    bad = {**p, "conv2.weight": w}
    with np.errstate(all="ignore"):
        plain = small_cnn_forward(bad, s, x, train=False)[0]
    clipped = small_cnn_forward(bad, s, x, train=False, act_clip=c)[0]
    assert np.max(np.abs(plain)) > 1e20
    bound = c * np.sum(np.abs(p["fc.weight"].astype(np.float64)), axis=1)
    excess = np.abs(clipped.astype(np.float64) - p["fc.bias"]) - bound * (1 + 1e-5)
    assert np.all(excess <= 0), excess.max()


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _callers():
    sp, ss = init_small_cnn(width=2, rng=0, dtype=np.float64)
    mp, ms = init_mlp(64, hidden=(4,), rng=0, dtype=np.float64)
    rp, rs = init_resnet("resnet20", width=2, in_channels=1, rng=0, dtype=np.float64)
    x = np.zeros((2, 1, 8, 8))
    return {
        "small_cnn_forward": lambda a: small_cnn_forward(sp, ss, x, train=True, act_clip=a),
        "mlp_forward": lambda a: mlp_forward(mp, ms, x, train=True, act_clip=a),
        "resnet_forward": lambda a: resnet_forward(rp, rs, x, arch="resnet20", train=True, act_clip=a),
        "basic_block_forward": lambda a: basic_block_forward(
            np.zeros((2, 2, 8, 8)), rp, rs, "layer1.0.", stride=1, train=True, act_clip=a
        ),
    }


@pytest.mark.parametrize("fn", ["small_cnn_forward", "mlp_forward", "resnet_forward", "basic_block_forward"])
def test_act_clip_validation(fn):
    call = _callers()[fn]
    for bad in (0, 0.0, -1.0, math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=rf"{fn}: act_clip must be None or a finite number > 0, got"):
            call(bad)
    for bad in ("6", True, np.array(6.0), [6.0]):
        with pytest.raises(TypeError, match=rf"{fn}: act_clip must be a real number, got"):
            call(bad)
    call(np.float32(6.0))  # numpy scalars and ints are numbers
    call(6)


# --------------------------------------------------------------------------------------------------
# Model names
# --------------------------------------------------------------------------------------------------


def test_model_names_resolve_and_pass_act_clip():
    assert parse_model_name("small_cnn") == ModelName("small_cnn", None)
    assert parse_model_name("small_cnn@act_clip=6") == ModelName("small_cnn", 6.0)
    assert parse_model_name("resnet20@act_clip=0.5") == ModelName("resnet20", 0.5)
    assert parse_model_name("mlp@act_clip=2e-1") == ModelName("mlp", 0.2)
    assert model_fns("small_cnn@act_clip=6").name == "small_cnn@act_clip=6.0"
    assert model_fns("small_cnn").name == "small_cnn" and model_fns("small_cnn").forward is small_cnn_forward
    assert format_model_name("resnet18", act_clip=0.25) == "resnet18@act_clip=0.25"
    assert format_model_name("mlp") == "mlp"

    rng = np.random.default_rng(11)
    x = rng.random((3, 1, 8, 8))
    sp, ss = init_small_cnn(width=3, rng=0, dtype=np.float64)
    rp, rs = init_resnet("resnet20", width=2, in_channels=1, rng=0, dtype=np.float64)
    mp, ms = init_mlp(64, hidden=(5,), rng=0, dtype=np.float64)
    cases = [
        ("small_cnn@act_clip=0.5", sp, ss, lambda: small_cnn_forward(sp, ss, x, train=True, act_clip=0.5)),
        ("mlp@act_clip=0.5", mp, ms, lambda: mlp_forward(mp, ms, x, train=True, act_clip=0.5)),
        ("resnet20@act_clip=0.5", rp, rs,
         lambda: resnet_forward(rp, rs, x, arch="resnet20", train=True, act_clip=0.5)),
    ]  # fmt: skip
    for name, p, s, direct in cases:
        fns = model_fns(name)
        got, _, cache = fns.forward(p, s, x, train=True)
        want = direct()[0]
        assert got.tobytes() == want.tobytes(), name
        assert cache.act_clip == 0.5 and _activation_types(cache) == {ReluClippedCache}, name
        plain = model_fns(parse_model_name(name).base).forward(p, s, x, train=True)[0]
        assert not np.array_equal(plain, got), f"{name}: the ceiling changed nothing"
        grads = fns.backward(np.ones_like(got), cache)
        assert list(grads.params) == list(p) and grads.x.shape == x.shape


@given(
    base=st.sampled_from(MODEL_NAMES),
    c=st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_subnormal=True),
)
def test_format_parse_round_trip(base, c):
    name = format_model_name(base, act_clip=c)
    assert parse_model_name(name) == ModelName(base, c)
    assert model_fns(name).name == name


BAD_NAMES = [
    ("small_cnn@", "option '' is not of the form key=value"),
    ("small_cnn@act_clip", "option 'act_clip' is not of the form key=value"),
    ("small_cnn@act_clip=", "option 'act_clip=' is not of the form key=value"),
    ("small_cnn@=6", "option '=6' is not of the form key=value"),
    ("small_cnn@clip=6", r"option 'clip' is unknown \(known: \('act_clip', 'norm', 'reparam'\)\)"),
    ("small_cnn@act_clip=6,act_clip=7", "option 'act_clip' is given twice"),
    ("small_cnn@act_clip=6,", "option '' is not of the form key=value"),
    ("small_cnn@act_clip=six", "act_clip='six' is not a number"),
    ("small_cnn@act_clip=0", "act_clip='0' is not a finite number > 0"),
    ("small_cnn@act_clip=-1", "act_clip='-1' is not a finite number > 0"),
    ("small_cnn@act_clip=nan", "act_clip='nan' is not a finite number > 0"),
    ("small_cnn@act_clip=inf", "act_clip='inf' is not a finite number > 0"),
    ("small_cnn@act_clip= 6", "must not contain whitespace"),
    ("small_cnn@act_clip=6\n", "must not contain whitespace"),
]


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_bad_model_names(name, problem):
    with pytest.raises(
        ValueError, match=rf"model_fns: model {problem}; expected '<base>' or '<base>@act_clip"
    ):
        model_fns(name)


def test_bad_model_names_other_errors():
    for name in ("vgg", "vgg@act_clip=6", "small_cnn_@act_clip=6", "Small_CNN", "", "@act_clip=6"):
        with pytest.raises(
            ValueError, match=r"model_fns: model must be one of \('resnet20'.*optionally followed"
        ):
            model_fns(name)
    with pytest.raises(ValueError, match=r"train: model option 'clip' is unknown"):
        train(
            {"w": np.zeros(1)}, {}, (np.zeros((1, 1)), np.zeros(1, int)), model="mlp@clip=1", epochs=0, rng=0
        )
    for bad in (3, None, b"small_cnn", ("small_cnn",)):
        with pytest.raises(
            TypeError, match=r"model_fns: model must be a model name \(str\) or a ModelFns, got"
        ):
            model_fns(bad)
    with pytest.raises(TypeError, match=r"format_model_name: base must be a str, got int"):
        format_model_name(3)
    with pytest.raises(ValueError, match=r"format_model_name: base must be one of"):
        format_model_name("small_cnn@act_clip=1")
    with pytest.raises(ValueError, match=r"format_model_name: act_clip must be None or a finite number > 0"):
        format_model_name("mlp", act_clip=0.0)
    with pytest.raises(TypeError, match=r"format_model_name: act_clip must be a real number, got str"):
        format_model_name("mlp", act_clip="6")


# --------------------------------------------------------------------------------------------------
# The loop and fault campaigns with a named act-clip model
# --------------------------------------------------------------------------------------------------

CLIP_MODEL = "small_cnn@act_clip=1"


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.x_train[:480], d.y_train[:480], d.x_test[:150], d.y_test[:150]


@pytest.fixture(scope="module")
def trained(digits):
    params, state = init_small_cnn(width=6, rng=0)
    return train(params, state, digits, model=CLIP_MODEL, epochs=3, batch_size=32,
                 optimizer=SGD(0.1, momentum=0.9), augment=None, rng=1, verbose=False)  # fmt: skip


def test_loop_trains_an_act_clip_model(digits, trained):
    params, state, history = trained
    assert history[-1]["test_acc"] > 0.6 and history[-1]["loss"] < history[0]["loss"]
    assert evaluate(params, state, *digits[2:], model=CLIP_MODEL).accuracy == history[-1]["test_acc"]
    # The option reached every step: the same run with plain ReLU gives other weights.
    p0, s0 = init_small_cnn(width=6, rng=0)
    plain, _, _ = train(p0, s0, digits, model="small_cnn", epochs=1, batch_size=32,
                        optimizer=SGD(0.1, momentum=0.9), augment=None, rng=1, verbose=False)  # fmt: skip
    clip1, _, _ = train(p0, s0, digits, model=CLIP_MODEL, epochs=1, batch_size=32,
                        optimizer=SGD(0.1, momentum=0.9), augment=None, rng=1, verbose=False)  # fmt: skip
    assert not np.array_equal(plain["conv1.weight"], clip1["conv1.weight"])


def test_campaign_subject_with_act_clip_name_in_a_process_pool(digits, trained):
    from saf_ref.experiments.campaign import Subject, run_campaign
    from saf_ref.protect import default_spec

    params, state, _ = trained
    x, y = digits[2], digits[3]
    subject = Subject("act_clip", "identity", "float32", CLIP_MODEL, params, state, default_spec("float32"))
    rates = (0.0, 1e-3, 1e-2)
    kw = {"trials": 2, "seed": 5, "progress": False}
    pooled = run_campaign([subject], x, y, rates, executor="process", max_workers=2, **kw)
    serial = run_campaign([subject], x, y, rates, executor="serial", **kw)
    assert pooled.trials == serial.trials and pooled.summary == serial.summary
    # At rate 0 the workers evaluate the clean model: with the ceiling (their accuracy equals evaluate's
    # with the act-clip name), not without it (which classifies differently).
    clipped_acc = evaluate(params, state, x, y, model=CLIP_MODEL).accuracy
    plain_acc = evaluate(params, state, x, y, model="small_cnn").accuracy
    assert clipped_acc != plain_acc
    zero = [r for r in pooled.trials if r["ber"] == 0.0]
    assert len(zero) == 2 and all(r["accuracy"] == clipped_acc for r in zero)
    assert pooled.clean[0]["clean_accuracy"] == clipped_acc


def test_model_fns_travel_to_a_worker_process():
    """The ModelFns of an act-clip name is made of partials, not closures: it crosses a process pool."""
    import concurrent.futures as cf

    params, state = init_small_cnn(width=2, rng=0)
    x = np.random.default_rng(12).random((3, 1, 8, 8), dtype=np.float32)
    fns = model_fns("small_cnn@act_clip=0.25")
    with cf.ProcessPoolExecutor(max_workers=1) as pool:
        remote = pool.submit(fns.forward, params, state, x, train=False).result()
    assert remote[0].tobytes() == fns.forward(params, state, x, train=False)[0].tobytes()
    assert remote[2].act_clip == 0.25
