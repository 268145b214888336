"""The models' entry points check the input images before any work.

An empty image (a zero dimension) used to run into a ``ZeroDivisionError`` inside the convolution (the
models' layers skip their own checks), and training-mode batch norm with one value per channel
(``N*H*W == 1`` in the last layer) into another in the unbiased-variance factor ``n / (n - 1)`` of the
fused ResNet path (the unfused path refused it in ``batchnorm2d``'s name). PyTorch refuses the latter
too ("Expected more than 1 value per channel when training"); both are now ``ValueError``s naming the
model's function.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.nn.resnet import (
    basic_block_backward,
    basic_block_forward,
    init_resnet,
    resnet_backward,
    resnet_forward,
)
from saf_ref.nn.small import (
    init_mlp,
    init_small_cnn,
    mlp_backward,
    mlp_forward,
    small_cnn_backward,
    small_cnn_forward,
)


def _identity_hook(name, h):
    return h


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 3, 0, 8), (2, 3, 8, 0)])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("keep_cache", [True, False])
def test_resnet_refuses_empty_images(shape, train, keep_cache):
    params, state = init_resnet("resnet20", width=2, rng=0)
    axis = shape.index(0)
    with pytest.raises(ValueError, match=rf"resnet_forward: x.shape\[{axis}\] must be in \[1, inf\], got 0"):
        resnet_forward(params, state, np.zeros(shape, np.float32), arch="resnet20", train=train,
                       keep_cache=keep_cache)  # fmt: skip


# (arch, image size, the last stage's maps): resnet20 halves twice, the ResNet-18s three times, the
# ImageNet stem another two (7x7/2 and max pooling 3x3/2). The last stage has one value per channel.
ONE_VALUE = [
    ("resnet20", (1, 1)),
    ("resnet20", (4, 3)),
    ("resnet18_cifar", (8, 5)),
    ("resnet18", (1, 1)),
    ("resnet18", (32, 17)),
]


@pytest.mark.parametrize("arch, hw", ONE_VALUE)
@pytest.mark.parametrize("hook", [None, _identity_hook])
def test_resnet_training_needs_more_than_one_value_per_channel(arch, hw, hook):
    params, state = init_resnet(arch, width=2, rng=0)
    x = np.ones((1, 3, *hw), np.float32)
    with pytest.raises(ValueError, match=r"resnet_forward: x must leave more than one value per channel"):
        resnet_forward(params, state, x, arch=arch, train=True, activation_faults=hook)
    # Evaluation mode normalises with the running statistics: one value is fine.
    logits, _, _ = resnet_forward(params, state, x, arch=arch, train=False)
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
    # Two images (or group norm, which PyTorch accepts too for groups of more than one value) train.
    logits, _, _ = resnet_forward(params, state, np.ones((2, 3, *hw), np.float32), arch=arch, train=True)
    assert logits.shape == (2, 10)
    gparams, gstate = init_resnet(arch, width=2, rng=0, norm="group")
    logits, _, _ = resnet_forward(gparams, gstate, x, arch=arch, train=True, norm="group")
    assert logits.shape == (1, 10)


TWO_VALUES = [("resnet20", (5, 1)), ("resnet18_cifar", (9, 1)), ("resnet18", (33, 1))]


@pytest.mark.parametrize("arch, hw", TWO_VALUES)
def test_resnet_training_with_two_values_in_the_last_layer_runs(arch, hw):
    """The boundary: the last stage's maps are 2x1 for these sizes, so one image trains."""
    params, state = init_resnet(arch, width=2, rng=0)
    x = np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32)
    logits, _, _ = resnet_forward(params, state, x, arch=arch, train=True)
    hooked, _, _ = resnet_forward(params, state, x, arch=arch, train=True, activation_faults=_identity_hook)
    np.testing.assert_array_equal(logits, hooked)


def test_small_cnn_input_checks():
    params, state = init_small_cnn(rng=0)
    for shape in [(0, 1, 8, 8), (1, 1, 0, 8), (1, 1, 8, 0)]:
        message = r"small_cnn_forward: x.shape\[\d\] must be in \[1, inf\], got 0"
        with pytest.raises(ValueError, match=message):
            small_cnn_forward(params, state, np.zeros(shape, np.float32), train=False)
    # Strides 1, 2, 2: a 4x4 image leaves 1x1 maps, a 5x4 image 2x1.
    with pytest.raises(ValueError, match=r"small_cnn_forward: x must leave more than one value per channel"):
        small_cnn_forward(params, state, np.ones((1, 1, 4, 4), np.float32), train=True)
    logits, _, _ = small_cnn_forward(params, state, np.ones((1, 1, 5, 4), np.float32), train=True)
    assert logits.shape == (1, 10)
    logits, _, _ = small_cnn_forward(params, state, np.ones((1, 1, 4, 4), np.float32), train=False)
    assert logits.shape == (1, 10)


def test_mlp_refuses_an_empty_batch():
    params, state = init_mlp(4, rng=0)
    with pytest.raises(ValueError, match=r"mlp_forward: x.shape\[0\] must be in \[1, inf\], got 0"):
        mlp_forward(params, state, np.zeros((0, 4), np.float32), train=False)


def _models():
    """(backward name, forward pass run, its backward) for each model, batch 2, 10 classes."""
    x = np.ones((2, 3, 4, 4), np.float32)
    p, s = init_resnet("resnet20", width=2, rng=0)
    yield "resnet_backward", resnet_forward(p, s, x, arch="resnet20", train=True)[2], resnet_backward
    p, s = init_small_cnn(in_channels=3, rng=0)
    yield "small_cnn_backward", small_cnn_forward(p, s, x, train=True)[2], small_cnn_backward
    p, s = init_mlp(48, rng=0)
    yield "mlp_backward", mlp_forward(p, s, x, train=True)[2], mlp_backward


@pytest.mark.parametrize("name, cache, backward", list(_models()), ids=["resnet", "small_cnn", "mlp"])
def test_model_backward_checks_dlogits_in_its_own_name(name, cache, backward):
    """A wrong dlogits used to be reported as linear_backward's dy."""
    with pytest.raises(ValueError, match=rf"{name}: dlogits must have shape \(2, 10\), got \(3, 10\)"):
        backward(np.ones((3, 10), np.float32), cache)
    with pytest.raises(ValueError, match=rf"{name}: dlogits must have shape \(2, 10\), got \(2, 9\)"):
        backward(np.ones((2, 9), np.float32), cache)
    with pytest.raises(TypeError, match=rf"{name}: dlogits.dtype \(=float64\) must equal logits.dtype"):
        backward(np.ones((2, 10), np.float64), cache)
    grads = backward(np.ones((2, 10), np.float32), cache)
    assert grads.x.shape == (2, 3, 4, 4) and grads.x.dtype == np.float32


@pytest.mark.parametrize(
    "key, value, error, message",
    [
        ("fc1.weight", np.ones(3, np.float32), ValueError, r"params\['fc1.weight'\] must be 2-dimensional"),
        ("fc3.weight", np.ones(3, np.float32), ValueError, r"params\['fc3.weight'\] must be 2-dimensional"),
        ("fc2.weight", np.ones((), np.float32), ValueError, r"params\['fc2.weight'\] must be 2-dimensional"),
        ("fc2.weight", [[1.0] * 3] * 3, TypeError, r"params\[.fc2.weight.\] must be a numpy.ndarray"),
    ],
)
def test_mlp_checks_the_weights_it_reads_its_sizes_from(key, value, error, message):
    """The MLP reads its layer sizes from the fc*.weight shapes: a 1-D fc1.weight raised IndexError, a
    list or a 0-d array as a hidden layer's weight AttributeError/IndexError."""
    params, state = init_mlp(4, hidden=(3, 3), rng=0)
    with pytest.raises(error, match=rf"mlp_forward: {message}"):
        mlp_forward({**params, key: value}, state, np.ones((2, 4), np.float32), train=False)


def _block_case(change):
    """basic_block_forward's arguments for resnet20's layer1.0 (2 -> 2 channels, identity shortcut),
    with ``change`` applied to them (a dict of keyword arguments)."""
    params, state = init_resnet("resnet20", width=2, rng=0)
    kwargs = {"x": np.ones((2, 2, 4, 4), np.float32), "params": params, "state": state, "prefix": "layer1.0.",
              "stride": 1, "train": True}  # fmt: skip
    change(kwargs)
    return kwargs


def _set(key, value):
    return lambda kw: kw.__setitem__(key, value)


def _set_param(where, key, value):
    return lambda kw: kw.__setitem__(where, {**kw[where], key: value})


BLOCK_ERRORS = [
    (_set("stride", 0), ValueError, r"stride must be in \[1, inf\], got 0"),
    (_set("stride", 1.5), TypeError, r"stride must be an integer, got float 1.5"),
    (_set("train", 1), TypeError, r"train must be a bool, got int"),
    (_set("prefix", 1), TypeError, r"prefix must be a str, got int"),
    (_set("x", [[1.0]]), TypeError, r"x must be a numpy.ndarray, got list"),
    (_set("x", np.ones((2, 2, 4), np.float32)), ValueError, r"x must be 4-dimensional"),
    (_set("x", np.ones((2, 2, 0, 4), np.float32)), ValueError, r"x.shape\[2\] must be in \[1, inf\], got 0"),
    (_set("x", np.ones((2, 3, 4, 4), np.float32)), ValueError, r"x.shape\[1\] \(=3\) must equal params\["),
    (_set("x", np.ones((2, 2, 4, 4))), TypeError,
     r"params\['layer1.0.conv1.weight'\]\.dtype \(=float32\) must equal x.dtype \(=float64\)"),
    (_set("x", np.ones((1, 2, 1, 1), np.float32)), ValueError, r"x must leave more than one value per"),
    (_set("prefix", "layer9.0."), ValueError, r"params must contain 'layer9.0.conv1.weight', got no such"),
    (_set("stride", 2), ValueError, r"params must contain 'layer1.0.downsample.0.weight'"),
    (_set("state", {}), ValueError, r"state must contain 'layer1.0.bn1.running_mean', got no such key"),
    (_set("params", [1]), TypeError, r"params must be a dict of numpy arrays, got list"),
    (_set_param("params", "layer1.0.bn2.bias", np.ones(3, np.float32)), ValueError,
     r"params\['layer1.0.bn2.bias'\] must have shape \(2,\), got \(3,\)"),
    (_set_param("params", "layer1.0.conv2.weight", [1.0]), TypeError,
     r"params\['layer1.0.conv2.weight'\] must be a numpy.ndarray, got list"),
    (_set_param("state", "layer1.0.bn1.running_var", np.ones(2)), TypeError,
     r"state\['layer1.0.bn1.running_var'\].dtype \(=float64\) must equal x.dtype \(=float32\)"),
]  # fmt: skip


@pytest.mark.parametrize("change, error, message", BLOCK_ERRORS)
def test_basic_block_forward_checks_its_arguments(change, error, message):
    """It checked none of these: they ran into ZeroDivisionError, KeyError, AttributeError, a reshape
    error or another function's message."""
    with pytest.raises(error, match=rf"^basic_block_forward: {message}"):
        basic_block_forward(**_block_case(change))


def test_basic_block_forward_of_checked_arguments_is_the_blocks_of_resnet_forward():
    """The checks change no result: a block of resnet_forward (unfused: a recording tap hook) maps the
    activation it reads to the one it writes exactly as basic_block_forward does."""
    params, state = init_resnet("resnet20", width=2, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    taps = {}

    def record(name, h):
        taps[name] = h.copy()
        return h

    resnet_forward(params, state, x, arch="resnet20", train=True, activation_faults=record)
    block_in, block_out = taps["layer1.2.relu2"], taps["layer2.0.relu2"]  # the last ReLU of each block
    y, new_state, _ = basic_block_forward(block_in, params, state, "layer2.0.", stride=2, train=True)
    np.testing.assert_array_equal(y, block_out)
    assert sorted(new_state) == sorted(k for k in state if k.startswith("layer2.0."))


def test_basic_block_backward_checks_its_arguments():
    """A wrong cache raised AttributeError, a wrong dy was reported in relu_backward's name."""
    kwargs = _block_case(lambda kw: None)
    y, _, cache = basic_block_forward(**kwargs)
    fn = "basic_block_backward"
    with pytest.raises(TypeError, match=rf"^{fn}: cache must be the BasicBlockCache of basic_block_forward"):
        basic_block_backward(np.ones_like(y), (1, 2))
    with pytest.raises(TypeError, match=rf"^{fn}: dy must be a numpy.ndarray, got list"):
        basic_block_backward(y.tolist(), cache)
    with pytest.raises(TypeError, match=rf"^{fn}: dy.dtype \(=float64\) must equal the block output's dtype"):
        basic_block_backward(np.ones(y.shape), cache)
    with pytest.raises(ValueError, match=rf"^{fn}: dy must have the block output's shape \(2, 2, 4, 4\)"):
        basic_block_backward(np.ones((2, 2, 4, 3), np.float32), cache)
    dx, grads = basic_block_backward(np.ones_like(y), cache)
    assert dx.shape == kwargs["x"].shape
    assert sorted(grads) == sorted(k for k in kwargs["params"] if k.startswith("layer1.0."))
