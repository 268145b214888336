"""Tap points of the models: names as published, a hook sees every activation, None changes nothing."""

import numpy as np
import pytest

from saf_ref.nn.resnet import init_resnet, resnet_forward, resnet_tap_names
from saf_ref.nn.small import (
    init_mlp,
    init_small_cnn,
    mlp_forward,
    mlp_tap_names,
    small_cnn_forward,
    small_cnn_tap_names,
)


def _models():
    rng = np.random.default_rng(0)
    x_img = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    for arch in ("resnet20", "resnet18_cifar", "resnet18"):
        p, s = init_resnet(arch, width=4, rng=1)
        yield (
            arch,
            lambda hook=None, p=p, s=s, a=arch, **kw: resnet_forward(
                p, s, x_img, arch=a, train=False, activation_faults=hook, **kw
            ),
            resnet_tap_names(arch),
        )
    p, s = init_small_cnn(in_channels=3, width=4, rng=2)
    yield (
        "small_cnn",
        lambda hook=None, **kw: small_cnn_forward(p, s, x_img, train=False, activation_faults=hook, **kw),
        small_cnn_tap_names(),
    )
    pm, sm = init_mlp(3 * 16 * 16, hidden=(16, 8), rng=3)
    yield (
        "mlp",
        lambda hook=None, **kw: mlp_forward(pm, sm, x_img, train=False, activation_faults=hook, **kw),
        mlp_tap_names(pm),
    )


MODELS = list(_models())


@pytest.mark.parametrize("name, forward, taps", MODELS, ids=[m[0] for m in MODELS])
def test_hook_sees_every_published_tap_in_order_and_none_changes_nothing(name, forward, taps):
    seen = []

    def record(tap, h):
        seen.append((tap, h.shape, h.dtype))
        return h.copy()

    plain = forward()[0]
    hooked = forward(record)[0]
    assert [t for t, _, _ in seen] == list(taps)
    assert all(dt == np.float32 for _, _, dt in seen)
    # an identity hook gives the plain forward pass bit for bit
    assert plain.tobytes() == hooked.tobytes()
    # and the hook is what the network computes on: zeroing the last tap's activations gives fc(0) = bias
    last = taps[-1]
    zeroed = forward(lambda tap, h: np.zeros_like(h) if tap == last else h)[0]
    bias = [v for k, v in _params_of(name).items() if k.endswith("bias")][-1]
    np.testing.assert_array_equal(zeroed, np.broadcast_to(bias, zeroed.shape))


def _params_of(name):
    if name.startswith("resnet"):
        return init_resnet(name, width=4, rng=1)[0]
    if name == "small_cnn":
        return init_small_cnn(in_channels=3, width=4, rng=2)[0]
    return init_mlp(3 * 16 * 16, hidden=(16, 8), rng=3)[0]


def test_published_names():
    assert small_cnn_tap_names() == ("relu1", "relu2", "relu3")
    assert mlp_tap_names(3) == ("relu1", "relu2")
    names = resnet_tap_names("resnet20")
    assert names[:3] == ("relu", "layer1.0.relu1", "layer1.0.relu2") and names[-1] == "layer3.2.relu2"
    assert len(names) == 1 + 2 * 9
    assert len(resnet_tap_names("resnet18")) == 1 + 2 * 8


@pytest.mark.parametrize("name, forward, taps", MODELS, ids=[m[0] for m in MODELS])
def test_bad_hooks(name, forward, taps):
    with pytest.raises(TypeError, match="activation_faults must be None or a callable"):
        forward(hook=42)
    with pytest.raises(TypeError, match=f"dtype float32 at tap '{taps[0]}', got"):
        forward(hook=lambda tap, h: h.astype(np.float64))
    with pytest.raises(TypeError, match="must return an ndarray"):
        forward(hook=lambda tap, h: h[:1])
    with pytest.raises(ValueError, match="mlp_tap_names: params_or_layers"):
        mlp_tap_names(0)
    with pytest.raises(ValueError, match="resnet_tap_names: arch"):
        resnet_tap_names("resnet50")


@pytest.mark.parametrize("name, forward, taps", MODELS, ids=[m[0] for m in MODELS])
def test_training_mode_backward_is_straight_through_the_hook(name, forward, taps):
    from saf_ref.nn.registry import model_fns

    fns = model_fns(name)
    params = _params_of(name)
    state = {k: v for k, v in _state_of(name).items()}
    x = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)
    dlogits = np.random.default_rng(6).standard_normal((2, 10)).astype(np.float32)
    plain = fns.backward(dlogits, fns.forward(params, state, x, train=True)[2])
    hooked = fns.backward(
        dlogits, fns.forward(params, state, x, train=True, activation_faults=lambda tap, h: h.copy())[2]
    )
    assert all(plain.params[k].tobytes() == hooked.params[k].tobytes() for k in plain.params)
    assert plain.x.tobytes() == hooked.x.tobytes()
    # a hook that doubles the last tap's activations doubles the fc weight gradient (it sees the hooked h)
    last = taps[-1]
    doubled = fns.backward(
        dlogits,
        fns.forward(
            params, state, x, train=True, activation_faults=lambda tap, h: 2 * h if tap == last else h
        )[2],
    )
    fc = [k for k in plain.params if k.endswith(".weight")][-1]
    np.testing.assert_allclose(doubled.params[fc], 2 * plain.params[fc], rtol=1e-5, atol=1e-7)


def _state_of(name):
    if name.startswith("resnet"):
        return init_resnet(name, width=4, rng=1)[1]
    if name == "small_cnn":
        return init_small_cnn(in_channels=3, width=4, rng=2)[1]
    return {}
