"""Small CNN and MLP: shapes, init, finite-difference gradients (with transforms), torch, validation.

The models compute with the weights they are given; the transform cases go through
``saf_ref.protect.effective_weights`` before the model and ``effective_weights_backward`` after it.
"""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import IDENTITY_MAP, assert_gradient, assert_latent_gradients, protect_map

from saf_ref.nn.blocks import ModelGrads
from saf_ref.nn.small import (
    init_mlp,
    init_small_cnn,
    mlp_backward,
    mlp_forward,
    mlp_shapes,
    small_cnn_backward,
    small_cnn_forward,
    small_cnn_shapes,
)


def test_shapes():
    ps, ss = small_cnn_shapes(in_channels=1, num_classes=10, width=4)
    assert ps == {
        "conv1.weight": (4, 1, 3, 3), "bn1.weight": (4,), "bn1.bias": (4,),
        "conv2.weight": (8, 4, 3, 3), "bn2.weight": (8,), "bn2.bias": (8,),
        "conv3.weight": (16, 8, 3, 3), "bn3.weight": (16,), "bn3.bias": (16,),
        "fc.weight": (10, 16), "fc.bias": (10,),
    }  # fmt: skip
    assert set(ss) == {f"bn{i}.running_{s}" for i in (1, 2, 3) for s in ("mean", "var")}
    assert mlp_shapes(64, hidden=(32, 16), num_classes=10) == {
        "fc1.weight": (32, 64), "fc1.bias": (32,), "fc2.weight": (16, 32), "fc2.bias": (16,),
        "fc3.weight": (10, 16), "fc3.bias": (10,),
    }  # fmt: skip


def test_init_rules_and_determinism():
    p, s = init_small_cnn(width=8, rng=0)
    q, _ = init_small_cnn(width=8, rng=0, dtype=np.float64)
    for k in p:
        np.testing.assert_array_equal(p[k], q[k].astype(np.float32))
    assert abs(p["conv3.weight"].std() / np.sqrt(2 / (32 * 9)) - 1) < 0.1
    assert np.all(p["bn2.weight"] == 1) and np.all(p["bn2.bias"] == 0)
    bound = 1 / np.sqrt(32)
    assert np.all(np.abs(p["fc.weight"]) <= bound) and np.all(np.abs(p["fc.bias"]) <= bound)
    m, ms = init_mlp(64, hidden=(32,), rng=1)
    assert ms == {} and np.all(np.abs(m["fc1.weight"]) <= 1 / 8) and np.abs(m["fc1.weight"]).max() > 0.12
    assert np.all(np.abs(m["fc2.bias"]) <= 1 / np.sqrt(32))


@pytest.mark.parametrize("hw", [8, 28])
def test_small_cnn_runs_on_digits_and_mnist_sizes(hw):
    params, state = init_small_cnn(width=4, rng=0)
    x = np.random.default_rng(0).random((3, 1, hw, hw), dtype=np.float32)
    logits, new_state, cache = small_cnn_forward(params, state, x, train=True)
    assert logits.shape == (3, 10) and logits.dtype == np.float32
    assert list(new_state) == list(state)
    grads = small_cnn_backward(np.ones_like(logits), cache)
    assert isinstance(grads, ModelGrads)
    assert list(grads.params) == list(params) and all(g.dtype == np.float32 for g in grads.params.values())
    assert grads.x.shape == x.shape and grads.x.dtype == np.float32
    m, ms = init_mlp(hw * hw, rng=0)
    logits, new_ms, cache = mlp_forward(m, ms, x, train=True)
    assert logits.shape == (3, 10) and new_ms == {}
    grads = mlp_backward(np.ones_like(logits), cache)
    assert isinstance(grads, ModelGrads)
    assert grads.x.shape == x.shape and list(grads.params) == list(m)


@pytest.mark.parametrize("transform_name", [None, "tanh", "hardtanh"])
@pytest.mark.parametrize("train", [True, False])
def test_small_cnn_finite_differences(transform_name, train):
    rng = np.random.default_rng(4)
    params, state = init_small_cnn(in_channels=2, num_classes=3, width=2, rng=rng, dtype=np.float64)
    weights = IDENTITY_MAP if transform_name is None else protect_map(transform_name)
    if transform_name is not None:
        params = {k: (2.0 * v if v.ndim in (2, 4) else v) for k, v in params.items()}
    state = {k: v * rng.uniform(0.7, 1.3, v.shape) for k, v in state.items()}
    x = rng.standard_normal((2, 2, 8, 8))
    r = rng.standard_normal((2, 3))

    def forward(w, xx):
        return small_cnn_forward(w, state, xx, train=train)

    n = assert_latent_gradients(forward, small_cnn_backward, params, x, r, rng, weights=weights, per_tensor=3)
    assert n == 3 * (len(params) + 1)


@pytest.mark.parametrize("transform_name", [None, "arctan", "softsign"])
def test_mlp_finite_differences(transform_name):
    rng = np.random.default_rng(5)
    params, state = init_mlp(12, hidden=(6, 5), num_classes=3, rng=rng, dtype=np.float64)
    weights = IDENTITY_MAP if transform_name is None else protect_map(transform_name)
    x = rng.standard_normal((4, 3, 2, 2))
    r = rng.standard_normal((4, 3))

    def forward(w, xx):
        return mlp_forward(w, state, xx, train=True)

    n = assert_latent_gradients(forward, mlp_backward, params, x, r, rng, weights=weights, per_tensor=3)
    assert n == 3 * (len(params) + 1)


@pytest.mark.parametrize("train", [True, False])
def test_model_grads_x_is_the_input_gradient(train):
    """``ModelGrads.x`` equals the float64 central-difference gradient with respect to *every* input
    element (not only sampled coordinates), for the small CNN and the MLP."""
    rng = np.random.default_rng(13)
    params, state = init_small_cnn(in_channels=2, num_classes=3, width=2, rng=rng, dtype=np.float64)
    params = {k: (rng.uniform(0.5, 1.5, v.shape) if k.startswith("bn") and k.endswith("weight") else v)
              for k, v in params.items()}  # fmt: skip
    state = {k: v * rng.uniform(0.7, 1.3, v.shape) for k, v in state.items()}
    x = rng.standard_normal((2, 2, 6, 6))
    r = rng.standard_normal((2, 3))
    _, _, cache = small_cnn_forward(params, state, x, train=train)
    dx = small_cnn_backward(r, cache).x
    assert dx.shape == x.shape and np.any(dx != 0)
    assert_gradient(
        dx, lambda xx: small_cnn_forward(params, state, xx, train=train)[0], x, r, what="small_cnn dL/dx"
    )

    mp, ms = init_mlp(12, hidden=(6,), num_classes=3, rng=rng, dtype=np.float64)
    xm = rng.standard_normal((4, 3, 2, 2))
    rm = rng.standard_normal((4, 3))
    dxm = mlp_backward(rm, mlp_forward(mp, ms, xm, train=train)[2]).x
    assert dxm.shape == xm.shape
    assert_gradient(dxm, lambda xx: mlp_forward(mp, ms, xx, train=train)[0], xm, rm, what="mlp dL/dx")


def test_against_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            for i, (c_in, c_out, s) in enumerate([(1, 3, 1), (3, 6, 2), (6, 12, 2)], start=1):
                setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, s, 1, bias=False))
                setattr(self, f"bn{i}", nn.BatchNorm2d(c_out))
            self.fc = nn.Linear(12, 4)

        def forward(self, x):
            for i in (1, 2, 3):
                x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            return self.fc(x.mean((2, 3)))

    rng = np.random.default_rng(0)
    params, state = init_small_cnn(in_channels=1, num_classes=4, width=3, rng=rng, dtype=np.float64)
    model = SmallCNN().double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in (params | state).items()}, strict=False)
    x = rng.standard_normal((3, 1, 8, 8))
    r = rng.standard_normal((3, 4))
    xt = torch.from_numpy(x)
    out = model.train()(xt)
    out.backward(torch.from_numpy(r))
    logits, new_state, cache = small_cnn_forward(params, state, x, train=True)
    grads = small_cnn_backward(r, cache).params
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    for k, p in model.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
    for k in state:
        np.testing.assert_allclose(new_state[k], model.state_dict()[k].numpy(), rtol=1e-12, err_msg=k)

    mlp = nn.Sequential()
    mlp.fc1, mlp.relu, mlp.fc2 = nn.Linear(64, 7), nn.ReLU(), nn.Linear(7, 4)
    mlp = mlp.double()
    params, state = init_mlp(64, hidden=(7,), num_classes=4, rng=rng, dtype=np.float64)
    mlp.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    out = mlp(xt.flatten(1))
    out.backward(torch.from_numpy(r))
    logits, _, cache = mlp_forward(params, state, x, train=True)
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    grads = mlp_backward(r, cache).params
    for k, p in mlp.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_no_mutation():
    params, state = init_small_cnn(width=2, rng=0)
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    before = ({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in state.items()}, x.copy())
    _, _, cache = small_cnn_forward(params, state, x, train=True)
    small_cnn_backward(np.ones((2, 10), np.float32), cache)
    for k in params:
        np.testing.assert_array_equal(params[k], before[0][k])
    for k in state:
        np.testing.assert_array_equal(state[k], before[1][k])
    np.testing.assert_array_equal(x, before[2])


def test_validation():
    params, state = init_small_cnn(width=2, rng=0, dtype=np.float64)
    x = np.zeros((2, 1, 8, 8))
    with pytest.raises(TypeError, match="small_cnn_forward: train must be a bool"):
        small_cnn_forward(params, state, x, train=None)
    with pytest.raises(ValueError, match=r"small_cnn_forward: x must be 4-dimensional"):
        small_cnn_forward(params, state, x[0], train=True)
    with pytest.raises(ValueError, match=r"small_cnn_forward: x.shape\[1\] \(=3\) must equal"):
        small_cnn_forward(params, state, np.zeros((2, 3, 8, 8)), train=True)
    with pytest.raises(ValueError, match=r"small_cnn_forward: params must contain 'conv1.weight'"):
        small_cnn_forward({}, state, x, train=True)
    with pytest.raises(ValueError, match=r"missing \['bn3.bias'\]"):
        small_cnn_forward({k: v for k, v in params.items() if k != "bn3.bias"}, state, x, train=True)
    with pytest.raises(TypeError, match="small_cnn_forward: state must be a dict"):
        small_cnn_forward(params, [], x, train=True)
    with pytest.raises(ValueError, match=r"small_cnn_forward: params\['conv1.weight'\] must be 4-D"):
        small_cnn_forward({**params, "conv1.weight": np.zeros((2, 1))}, state, x, train=True)
    with pytest.raises(TypeError, match="small_cnn_backward: cache must be the SmallCNNCache"):
        small_cnn_backward(np.zeros((2, 10)), None)
    with pytest.raises(ValueError, match=r"init_small_cnn: width must be in \[1, inf\]"):
        init_small_cnn(width=0, rng=0)
    with pytest.raises(TypeError, match="init_small_cnn: dtype must be float32 or float64"):
        init_small_cnn(rng=0, dtype=np.int32)
    mp, ms = init_mlp(64, hidden=(8,), rng=0, dtype=np.float64)
    with pytest.raises(ValueError, match=r"x.shape\[1:\] \(=\(1, 4, 4\), 16 features\) must flatten"):
        mlp_forward(mp, ms, np.zeros((2, 1, 4, 4)), train=True)
    with pytest.raises(ValueError, match=r"mlp_forward: x must have at least 2 dimensions"):
        mlp_forward(mp, ms, np.zeros(64), train=True)
    with pytest.raises(ValueError, match=r"mlp_forward: params must contain 'fc1.weight'"):
        mlp_forward({}, ms, np.zeros((2, 64)), train=True)
    with pytest.raises(ValueError, match=r"unexpected \['fc3.bias'\]"):
        mlp_forward({**mp, "fc3.bias": np.zeros(3)}, ms, np.zeros((2, 64)), train=True)
    with pytest.raises(ValueError, match=r"mlp_forward: state must have the keys of the .*, got unexpected"):
        mlp_forward(mp, {"bn.running_mean": np.zeros(1)}, np.zeros((2, 64)), train=True)
    with pytest.raises(TypeError, match="mlp_backward: cache must be the MLPCache"):
        mlp_backward(np.zeros((2, 10)), None)
    with pytest.raises(TypeError, match="mlp_shapes: hidden must be a tuple of integers"):
        mlp_shapes(4, hidden=8)
    with pytest.raises(ValueError, match=r"init_mlp: hidden\[i\] must be in \[1, inf\]"):
        init_mlp(4, hidden=(0,), rng=0)
