"""ResNet models: init, shapes, validation, no mutation, and central finite differences of the whole model.

The gradient checks are independent of the code under test: the loss is a fixed random linear functional
of the logits, ``L = sum(logits * R)``, so ``dL/dlogits = R`` exactly, and every analytic gradient
(parameters, latents through each weight transform, the input) is compared with a float64 central
difference ``(L(p + h e_i) - L(p - h e_i)) / 2h`` at random coordinates of every tensor.

The models compute with the weights they are given; a weight transform ``w = f(u)`` is applied before
them by :func:`saf_ref.protect.effective_weights` and its chain rule after them by
:func:`saf_ref.protect.effective_weights_backward`, so the latent gradients are checked through that
composition (``nn_helpers.assert_latent_gradients``).
"""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import IDENTITY_MAP, WeightMap, assert_latent_gradients, protect_map

from saf_ref.nn.blocks import ModelGrads
from saf_ref.nn.resnet import (
    ARCHS,
    BasicBlockCache,
    ResNetCache,
    basic_block_backward,
    basic_block_forward,
    init_resnet,
    resnet_backward,
    resnet_forward,
    resnet_shapes,
)
from saf_ref.nn.small import mlp_shapes, small_cnn_shapes
from saf_ref.protect import default_spec, effective_weights, effective_weights_backward, param_role

TRANSFORMS = ["identity", "tanh", "arctan", "softsign", "hardtanh"]


def _tiny(arch="resnet20", *, width=2, num_classes=3, in_channels=3, seed=0, dtype=np.float64):
    params, state = init_resnet(
        arch, num_classes=num_classes, in_channels=in_channels, width=width, rng=seed, dtype=dtype
    )
    return params, state


def _random_state(state, rng):
    """Non-trivial running statistics, so that eval mode is not the identity normalization."""
    return {
        k: (rng.normal(0, 0.5, v.shape) if k.endswith("mean") else rng.uniform(0.5, 2.0, v.shape)).astype(
            v.dtype
        )
        for k, v in state.items()
    }


def _random_bn(params, rng):
    """Batch-norm weights/biases away from 1/0 so that their gradients are exercised non-trivially."""
    out = dict(params)
    for k, v in params.items():
        if v.ndim == 1 and not k.startswith("fc"):
            out[k] = rng.uniform(0.5, 1.5, v.shape) if k.endswith("weight") else rng.normal(0, 0.3, v.shape)
    return out


def _calibrated_state(weights, state, x, rng, arch="resnet20"):
    """Running statistics close to (but not equal to) the batch statistics of ``x``.

    Eval-mode batch norm does not renormalize, so with arbitrary running statistics the activations of a
    20-layer network grow geometrically and the loss becomes too large for float64 central differences.
    30 train-mode passes (with the weights the network computes with) bring the running statistics
    within ~4% of the batch's; a random factor keeps eval mode distinct from train mode.
    """
    for _ in range(30):
        _, state, _ = resnet_forward(weights, state, x, arch=arch, train=True)
    return {k: v * rng.uniform(0.8, 1.2, v.shape) for k, v in state.items()}


def _conv_and_linear_weights(shapes):
    """The conv/linear weights of a model, by an independent rule: ``*.weight`` of rank 4 or 2."""
    return {k for k, s in shapes.items() if k.endswith(".weight") and len(s) in (2, 4)}


# --------------------------------------------------------------------------------------------------
# Shapes and initialization
# --------------------------------------------------------------------------------------------------


def test_resnet20_layout():
    ps, ss = resnet_shapes("resnet20")
    convs = [k for k, s in ps.items() if len(s) == 4]
    # 1 stem + 9 blocks x 2 convs + 2 shortcut convs; "20" counts the 19 3x3 convs and the fc.
    assert len(convs) == 1 + 18 + 2
    assert sum(1 for k in convs if ps[k][2:] == (3, 3)) == 19
    assert ps["conv1.weight"] == (16, 3, 3, 3)
    assert ps["layer2.0.conv1.weight"] == (32, 16, 3, 3)
    assert ps["layer2.0.downsample.0.weight"] == (32, 16, 1, 1)
    assert ps["layer3.2.conv2.weight"] == (64, 64, 3, 3)
    assert "layer1.0.downsample.0.weight" not in ps
    assert ps["fc.weight"] == (10, 64)
    assert ss["layer3.0.downsample.1.running_var"] == (64,)
    n_params = sum(int(np.prod(s)) for s in ps.values())
    assert n_params == 272_474  # ResNet-20 with 1x1 projection shortcuts (0.27M, He et al. Table 6)


def test_resnet18_layouts():
    ps, _ = resnet_shapes("resnet18", num_classes=1000)
    # torchvision's resnet18 has 11,689,512 parameters.
    assert sum(int(np.prod(s)) for s in ps.values()) == 11_689_512
    assert ps["conv1.weight"] == (64, 3, 7, 7)
    pc, _ = resnet_shapes("resnet18_cifar")
    assert pc["conv1.weight"] == (64, 3, 3, 3)
    assert set(pc) == set(ps)
    assert "layer1.0.downsample.0.weight" not in ps and "layer4.0.downsample.1.bias" in ps


def test_width_option():
    ps, _ = resnet_shapes("resnet20", width=4, in_channels=1, num_classes=7)
    assert ps["conv1.weight"] == (4, 1, 3, 3)
    assert ps["layer3.0.conv1.weight"] == (16, 8, 3, 3)
    assert ps["fc.weight"] == (7, 16)


def test_init_distributions():
    params, state = init_resnet("resnet18_cifar", rng=0)
    w = params["layer4.1.conv2.weight"].astype(np.float64)  # 512*512*9 samples
    fan_out = 512 * 9
    assert abs(w.std() / np.sqrt(2.0 / fan_out) - 1) < 0.01
    assert abs(w.mean()) < 0.01 * w.std()
    fc = params["fc.weight"]
    bound = 1 / np.sqrt(512)
    assert np.all(np.abs(fc) <= bound) and np.abs(fc).max() > 0.9 * bound
    assert np.all(np.abs(params["fc.bias"]) <= bound)
    assert np.all(params["bn1.weight"] == 1) and np.all(params["layer3.0.downsample.1.bias"] == 0)
    assert all(np.all(v == 0) for k, v in state.items() if k.endswith("mean"))
    assert all(np.all(v == 1) for k, v in state.items() if k.endswith("var"))
    assert all(v.dtype == np.float32 for v in (*params.values(), *state.values()))


def test_init_deterministic_and_dtype():
    a, _ = init_resnet("resnet20", rng=3)
    b, _ = init_resnet("resnet20", rng=np.random.default_rng(3))
    c, _ = init_resnet("resnet20", rng=4)
    d, _ = init_resnet("resnet20", rng=3, dtype=np.float64)
    assert list(a) == list(resnet_shapes("resnet20")[0])
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()
        # float32 init = float64 init rounded once.
        np.testing.assert_array_equal(a[k], d[k].astype(np.float32))
        assert d[k].dtype == np.float64
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def _all_model_shapes():
    """Parameter shapes of every architecture (the ResNets at their own and at a reduced width)."""
    out = {arch: resnet_shapes(arch)[0] for arch in ARCHS}
    out["resnet20 width 2"] = resnet_shapes("resnet20", width=2, num_classes=3)[0]
    out["small_cnn"] = small_cnn_shapes(in_channels=1, num_classes=10, width=8)[0]
    out["mlp"] = mlp_shapes(64, hidden=(32, 16), num_classes=10)
    return out


@pytest.mark.parametrize("model", list(_all_model_shapes()))
def test_param_role_picks_exactly_the_conv_and_linear_weights(model):
    """``param_role == "weight"`` (the tensors a weight transform applies to) is exactly the conv and
    linear weights: not the batch-norm gammas (also ``*.weight``), not any bias."""
    shapes = _all_model_shapes()[model]
    chosen = {k for k in shapes if param_role(k, shapes) == "weight"}
    assert chosen == _conv_and_linear_weights(shapes)
    if model.startswith("resnet"):
        # By name: every weight that is not a batch norm's (bn*, downsample.1).
        assert chosen == {
            k for k in shapes if k.endswith(".weight") and "bn" not in k and "downsample.1" not in k
        }
        assert "fc.weight" in chosen and "fc.bias" not in chosen and "bn1.weight" not in chosen
        n_convs = {"resnet20": 21, "resnet18_cifar": 20, "resnet18": 20}[model.split()[0]]
        assert len(chosen) == n_convs + 1  # + fc
    elif model == "small_cnn":
        assert chosen == {"conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"}
    else:
        assert chosen == {"fc1.weight", "fc2.weight", "fc3.weight"}
    # The rest are biases (fc*.bias) and batch-norm parameters, never transformed.
    others = {param_role(k, shapes) for k in shapes if k not in chosen}
    assert others <= {"bias", "bn"}
    assert all(param_role(k, shapes) == "bias" for k in shapes if k.startswith("fc") and k.endswith("bias"))


# --------------------------------------------------------------------------------------------------
# Forward behaviour
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_shapes_dtype_and_state(arch):
    rng = np.random.default_rng(0)
    params, state = _tiny(arch, dtype=np.float32)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits, new_state, cache = resnet_forward(params, state, x, arch=arch, train=True)
    assert logits.shape == (2, 3) and logits.dtype == np.float32
    assert isinstance(cache, ResNetCache) and all(isinstance(b, BasicBlockCache) for b in cache.blocks)
    assert list(new_state) == list(state)
    assert all(v.dtype == np.float32 for v in new_state.values())
    # Train mode moved the running mean away from 0; eval mode leaves the statistics unchanged.
    assert not np.array_equal(new_state["bn1.running_mean"], state["bn1.running_mean"])
    _, eval_state, _ = resnet_forward(params, new_state, x, arch=arch, train=False)
    for k in state:
        np.testing.assert_array_equal(eval_state[k], new_state[k])
    grads = resnet_backward(np.ones_like(logits), cache)
    assert isinstance(grads, ModelGrads) and list(grads.params) == list(params)
    assert all(
        grads.params[k].shape == params[k].shape and grads.params[k].dtype == np.float32 for k in params
    )
    assert grads.x.shape == x.shape and grads.x.dtype == np.float32


def test_input_gradient_shape():
    for arch in ARCHS:
        params, state = _tiny(arch)
        x = np.zeros((2, 3, 32, 32))
        _, _, cache = resnet_forward(params, state, x, arch=arch, train=False)
        grads = resnet_backward(np.ones((2, 3)), cache)
        assert grads.x.shape == x.shape and grads.x.dtype == x.dtype
        assert list(grads.params) == list(params)


def test_no_mutation_and_repeatable():
    rng = np.random.default_rng(1)
    params, state = _tiny(dtype=np.float32)
    state = _random_state(state, rng)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    dl = rng.standard_normal((2, 3)).astype(np.float32)
    copies = ({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in state.items()}, x.copy())
    dl_copy = dl.copy()
    spec = default_spec("float32", "tanh")

    def run():  # latents -> tanh weights -> model -> latent gradients
        weights, wcache = effective_weights(params, spec)
        out = resnet_forward(weights, state, x, arch="resnet20", train=True)
        grads = resnet_backward(dl, out[2])
        return out, effective_weights_backward(grads.params, wcache), grads.x

    out1, g1, dx1 = run()
    out2, g2, dx2 = run()
    assert dx1.tobytes() == dx2.tobytes()
    for k in params:
        np.testing.assert_array_equal(params[k], copies[0][k])
        assert g1[k].tobytes() == g2[k].tobytes()
    for k in state:
        np.testing.assert_array_equal(state[k], copies[1][k])
    np.testing.assert_array_equal(x, copies[2])
    np.testing.assert_array_equal(dl, dl_copy)
    assert out1[0].tobytes() == out2[0].tobytes()


def test_transform_is_applied_to_conv_and_linear_weights_only():
    """With a transform, the output equals the plain model run on explicitly transformed weights."""
    rng = np.random.default_rng(2)
    params, state = _tiny()
    params = _random_bn(params, rng)
    x = rng.standard_normal((2, 3, 8, 8))
    explicit = {k: (np.arctan(v) if (v.ndim in (2, 4)) else v) for k, v in params.items()}
    weights, _ = effective_weights(params, default_spec("float64", "arctan"))
    for k, v in params.items():  # the raw tensors pass through unchanged
        if v.ndim not in (2, 4):
            assert weights[k].tobytes() == v.tobytes(), k
    y1, _, _ = resnet_forward(weights, state, x, arch="resnet20", train=True)
    y2, _, _ = resnet_forward(explicit, state, x, arch="resnet20", train=True)
    np.testing.assert_allclose(y1, y2, rtol=1e-13, atol=1e-13)


def test_basic_block_pair_shapes():
    rng = np.random.default_rng(0)
    params, state = _tiny()
    x = rng.standard_normal((2, 2, 8, 8))
    y, st, cache = basic_block_forward(x, params, state, "layer2.0.", stride=2, train=True)
    assert y.shape == (2, 4, 4, 4)
    assert set(st) == {k for k in state if k.startswith("layer2.0.")}
    dx, grads = basic_block_backward(np.ones_like(y), cache)
    assert dx.shape == x.shape
    assert set(grads) == {k for k in params if k.startswith("layer2.0.")}


# --------------------------------------------------------------------------------------------------
# Finite differences of the whole model
# --------------------------------------------------------------------------------------------------


def _on_weights(params, fn):
    """``fn`` applied to the conv/linear weights (``param_role == "weight"``), the rest unchanged."""
    shapes = {k: v.shape for k, v in params.items()}
    return {k: (fn(v) if param_role(k, shapes) == "weight" else v) for k, v in params.items()}


def _cube_forward(u):
    return _on_weights(u, lambda v: v**3 / 3), u


def _cube_backward(grads, u):
    shapes = {k: v.shape for k, v in u.items()}
    return {k: (u[k] ** 2 * g if param_role(k, shapes) == "weight" else g) for k, g in grads.items()}


#: A user-defined transform composed by hand (not from saf_ref.protect): w = u^3 / 3, du = u^2 dw.
_CUBE = WeightMap(_cube_forward, _cube_backward)


def _gradcheck(arch, params, state, x, *, train, weights, coords_per_tensor, rng, what, h=1e-6):
    r = rng.standard_normal((x.shape[0], params["fc.weight"].shape[0]))

    def forward(w, xx):
        return resnet_forward(w, state, xx, arch=arch, train=train)

    return assert_latent_gradients(
        forward, resnet_backward, params, x, r, rng, weights=weights, per_tensor=coords_per_tensor, h=h,
        what=f"{arch} train={train} transform={what}",
    )  # fmt: skip


@pytest.mark.parametrize("transform_name", [None, *TRANSFORMS, "cube"])
@pytest.mark.parametrize("train", [True, False])
def test_resnet20_gradients_finite_differences(transform_name, train):
    rng = np.random.default_rng(
        10 + 2 * TRANSFORMS.index(transform_name) if transform_name in TRANSFORMS else 7
    )
    params, state = _tiny("resnet20")
    params = _random_bn(params, rng)
    x = rng.standard_normal((2, 3, 8, 8))
    if transform_name is None:  # no transform: the model computes with the latents themselves
        weights = IDENTITY_MAP
    elif transform_name == "cube":
        weights = _CUBE
    else:  # latents -> effective_weights -> model -> effective_weights_backward
        weights = protect_map(transform_name)
        # Latents of size ~1-2: the saturating transforms are far from linear, and hardtanh clips some.
        params = _on_weights(params, lambda v: 2.5 * v)
    if not train:
        state = _calibrated_state(weights.forward(params)[0], state, x, rng)
    n = _gradcheck(
        "resnet20", params, state, x, train=train, weights=weights, coords_per_tensor=2, rng=rng,
        what=transform_name,
    )  # fmt: skip
    assert n == 2 * (len(params) + 1)


@pytest.mark.parametrize("arch", ["resnet18", "resnet18_cifar"])
def test_resnet18_gradients_finite_differences(arch):
    """The ResNet-18 layouts (ImageNet stem with max pooling; CIFAR stem), narrow, train mode, tanh."""
    rng = np.random.default_rng(3)
    params, state = _tiny(arch, width=2)
    params = _random_bn(params, rng)
    x = rng.standard_normal((2, 3, 16 if arch == "resnet18" else 8, 16 if arch == "resnet18" else 8))
    # resnet18 at 16x16: 8x8 after the stem, 4x4 after max pooling, 1x1 in layer4 (2 values per channel).
    _gradcheck(
        arch, params, state, x, train=True, weights=protect_map("tanh"), coords_per_tensor=1, rng=rng,
        what="tanh",
    )  # fmt: skip


def test_fd_detects_a_wrong_gradient():
    """The check itself can fail: a latent gradient without the transform's derivative is caught."""
    tanh = protect_map("tanh")
    wrong_tanh = WeightMap(tanh.forward, lambda grads, _cache: grads)  # missing the factor 1 - tanh(u)^2
    rng = np.random.default_rng(0)
    params, state = _tiny()
    params = _on_weights(params, lambda v: 2.5 * v)
    x = rng.standard_normal((2, 3, 8, 8))
    with pytest.raises(AssertionError, match="central difference"):
        _gradcheck(
            "resnet20", params, state, x, train=True, weights=wrong_tanh, coords_per_tensor=2, rng=rng,
            what="wrong tanh",
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def test_validation_init():
    with pytest.raises(ValueError, match="init_resnet: arch must be one of"):
        init_resnet("resnet50", rng=0)
    with pytest.raises(TypeError, match="init_resnet: dtype must be float32 or float64, got float16"):
        init_resnet("resnet20", rng=0, dtype=np.float16)
    with pytest.raises(TypeError, match="init_resnet: dtype must be float32 or float64"):
        init_resnet("resnet20", rng=0, dtype="nonsense")
    with pytest.raises(TypeError, match="init_resnet: rng must be a numpy.random.Generator"):
        init_resnet("resnet20", rng=None)
    with pytest.raises(ValueError, match=r"init_resnet: num_classes must be in \[1, inf\], got 0"):
        init_resnet("resnet20", rng=0, num_classes=0)
    with pytest.raises(ValueError, match=r"resnet_shapes: in_channels must be in \[1, inf\]"):
        resnet_shapes("resnet20", in_channels=0)
    with pytest.raises(TypeError, match="resnet_shapes: width must be an integer"):
        resnet_shapes("resnet20", width=2.0)


def test_validation_forward():
    params, state = _tiny()
    x = np.zeros((2, 3, 8, 8))
    f = resnet_forward
    with pytest.raises(ValueError, match="resnet_forward: arch must be one of"):
        f(params, state, x, arch="vgg", train=True)
    with pytest.raises(TypeError, match="resnet_forward: train must be a bool, got int"):
        f(params, state, x, arch="resnet20", train=1)
    # Models compute with the weights they are given: no transform= (saf_ref.protect.effective_weights).
    with pytest.raises(TypeError, match="unexpected keyword argument 'transform'"):
        f(params, state, x, arch="resnet20", train=True, transform="tanh")
    with pytest.raises(TypeError, match="resnet_forward: x must have dtype in"):
        f(params, state, x.astype(np.float16), arch="resnet20", train=True)
    with pytest.raises(ValueError, match=r"resnet_forward: x must be 4-dimensional \(N, C, H, W\)"):
        f(params, state, x[0], arch="resnet20", train=True)
    with pytest.raises(TypeError, match="resnet_forward: params must be a dict"):
        f(list(params.values()), state, x, arch="resnet20", train=True)
    with pytest.raises(ValueError, match="resnet_forward: params must contain 'fc.weight'"):
        f({k: v for k, v in params.items() if k != "fc.weight"}, state, x, arch="resnet20", train=True)
    with pytest.raises(ValueError, match=r"missing \['layer2.0.downsample.0.weight'\]"):
        f(
            {k: v for k, v in params.items() if "layer2.0.downsample.0" not in k},
            state,
            x,
            arch="resnet20",
            train=True,
        )
    with pytest.raises(ValueError, match=r"unexpected \['extra.weight'\]"):
        f({**params, "extra.weight": np.ones(1)}, state, x, arch="resnet20", train=True)
    with pytest.raises(
        ValueError, match=r"state must have the keys of the architecture, got missing \['bn1.running_var'\]"
    ):
        f(params, {k: v for k, v in state.items() if k != "bn1.running_var"}, x, arch="resnet20", train=True)
    bad = {**params, "layer1.1.conv2.weight": np.zeros((2, 2, 1, 1))}
    with pytest.raises(ValueError, match=r"params\['layer1.1.conv2.weight'\] must have shape \(2, 2, 3, 3\)"):
        f(bad, state, x, arch="resnet20", train=True)
    with pytest.raises(
        TypeError, match=r"params\['bn1.bias'\].dtype \(=float32\) must equal x.dtype \(=float64\)"
    ):
        f(
            {**params, "bn1.bias": params["bn1.bias"].astype(np.float32)},
            state,
            x,
            arch="resnet20",
            train=True,
        )
    with pytest.raises(TypeError, match=r"params\['layer1.0.bn1.bias'\] must be a numpy.ndarray, got list"):
        f({**params, "layer1.0.bn1.bias": [0.0, 0.0]}, state, x, arch="resnet20", train=True)
    with pytest.raises(
        ValueError, match=r"x.shape\[1\] \(=1\) must equal params\['conv1.weight'\].shape\[1\] \(=3\)"
    ):
        f(params, state, np.zeros((2, 1, 8, 8)), arch="resnet20", train=True)
    with pytest.raises(TypeError, match="resnet_forward: state must be a dict"):
        f(params, None, x, arch="resnet20", train=True)


def test_validation_backward():
    params, state = _tiny()
    _, _, cache = resnet_forward(params, state, np.zeros((2, 3, 8, 8)), arch="resnet20", train=True)
    with pytest.raises(TypeError, match="resnet_backward: cache must be the ResNetCache"):
        resnet_backward(np.zeros((2, 3)), {"not": "a cache"})
    with pytest.raises(ValueError, match=r"resnet_backward: dlogits must be 2-dimensional"):
        resnet_backward(np.zeros(3), cache)
    with pytest.raises(TypeError, match="resnet_backward: dlogits must have dtype in"):
        resnet_backward(np.zeros((2, 3), dtype=np.int64), cache)
