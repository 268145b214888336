"""Normalisation options of the models: batch/group norm x reparameterized (scale 1 + weight) or not.

References: torch models built here from ``torch.nn`` modules with torchvision's module names and the
reference code's reparameterized modules (``ReparameterizedBatchNorm2d``: ``batch_norm(..., 1 + weight,
bias)``; ``ReparameterizedGroupNorm``: ``group_norm(x, G, 1 + weight, bias)``), loaded with saf_ref's
exported state dict (``strict=True``: the names must match), compared in float64 (1e-10); central
differences of the whole model; the plain models for the defaults (bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import assert_model_gradients, rel_error

from saf_ref.nn.groupnorm import default_num_groups
from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
from saf_ref.nn.registry import ModelName, format_model_name, model_fns, parse_model_name
from saf_ref.nn.resnet import init_resnet, resnet_backward, resnet_forward, resnet_shapes
from saf_ref.nn.small import init_small_cnn, small_cnn_backward, small_cnn_forward, small_cnn_shapes
from saf_ref.nn.state_dict import export_state_dict, load_torch_state_dict

OPTIONS = [("batch", False), ("batch", True), ("group", False), ("group", True)]


def _init(model, norm, reparam, dtype=np.float64, seed=0):
    if model == "small_cnn":
        return init_small_cnn(in_channels=2, width=4, rng=seed, dtype=dtype, norm=norm, reparam=reparam)
    return init_resnet("resnet20", in_channels=2, width=4, rng=seed, dtype=dtype, norm=norm, reparam=reparam)


def _forward(model, params, state, x, *, train, norm, reparam):
    if model == "small_cnn":
        return small_cnn_forward(params, state, x, train=train, norm=norm, reparam=reparam)
    return resnet_forward(params, state, x, arch="resnet20", train=train, norm=norm, reparam=reparam)


def _backward(model, dlogits, cache):
    return (small_cnn_backward if model == "small_cnn" else resnet_backward)(dlogits, cache)


def _randomized(params, state, rng):
    """Random normalisation parameters and running statistics (the initial ones, 0/1, hide mistakes)."""
    params = {k: rng.normal(0.0, 0.3, v.shape) if v.ndim == 1 else v for k, v in params.items()}
    state = {k: rng.uniform(0.5, 2.0, v.shape) if k.endswith("var") else rng.normal(0, 0.2, v.shape)
             for k, v in state.items()}  # fmt: skip
    return params, state


# ==================================================================================================
# Against torch, float64
# ==================================================================================================


def _torch_models():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class ReBatchNorm2d(nn.BatchNorm2d):  # the reference code's ReparameterizedBatchNorm2d
        def forward(self, x):
            return F.batch_norm(x, self.running_mean, self.running_var, 1 + self.weight, self.bias,
                                self.training, self.momentum, self.eps)  # fmt: skip

    class ReGroupNorm(nn.GroupNorm):  # the reference code's ReparameterizedGroupNorm
        def forward(self, x):
            return F.group_norm(x, self.num_groups, 1 + self.weight, self.bias, self.eps)

    def make_norm(norm, reparam, c):
        if norm == "group":
            return (ReGroupNorm if reparam else nn.GroupNorm)(default_num_groups(c), c)
        return (ReBatchNorm2d if reparam else nn.BatchNorm2d)(c)

    class SmallCNN(nn.Module):
        def __init__(self, norm, reparam, c_in=2, width=4):
            super().__init__()
            for i in range(1, 4):
                c_out = width * 2 ** (i - 1)
                setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, (1, 2, 2)[i - 1], 1, bias=False))
                setattr(self, f"bn{i}", make_norm(norm, reparam, c_out))
                c_in = c_out
            self.fc = nn.Linear(c_in, 10)

        def forward(self, x):
            for i in range(1, 4):
                x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            return self.fc(x.mean(dim=(2, 3)))

    class Block(nn.Module):
        def __init__(self, norm, reparam, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = make_norm(norm, reparam, c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = make_norm(norm, reparam, c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                                make_norm(norm, reparam, c_out))  # fmt: skip

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet20(nn.Module):
        def __init__(self, norm, reparam, c_in=2, width=4):
            super().__init__()
            widths = (width, 2 * width, 4 * width)
            self.conv1 = nn.Conv2d(c_in, width, 3, 1, 1, bias=False)
            self.bn1 = make_norm(norm, reparam, width)
            c = width
            for s, c_out in enumerate(widths):
                blocks = []
                for b in range(3):
                    blocks.append(Block(norm, reparam, c, c_out, 2 if (b == 0 and s > 0) else 1))
                    c = c_out
                setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(c, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean(dim=(2, 3)))

    return torch, {"small_cnn": SmallCNN, "resnet20": ResNet20}


@pytest.mark.torch
@pytest.mark.parametrize("model", ["small_cnn", "resnet20"])
@pytest.mark.parametrize("norm, reparam", OPTIONS)
def test_models_match_torch_float64(model, norm, reparam):
    torch, classes = _torch_models()
    rng = np.random.default_rng(1)
    params, state = _randomized(*_init(model, norm, reparam), rng)
    x = rng.standard_normal((3, 2, 8, 8))
    net = classes[model](norm, reparam).double()
    # strict=True: every torchvision-style name must be there, and nothing else (num_batches_tracked is
    # recreated by torch for a state dict without version metadata).
    missing, unexpected = net.load_state_dict(
        {k: torch.tensor(v) for k, v in export_state_dict(params, state).items()}, strict=False
    )
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    for train in (True, False):
        net.train(train)
        net.zero_grad()
        tx = torch.tensor(x, requires_grad=True)
        t_logits = net(tx)
        logits, new_state, cache = _forward(model, params, state, x, train=train, norm=norm, reparam=reparam)
        assert rel_error(logits, t_logits.detach().numpy()) <= 1e-10, f"logits train={train}"
        dlogits = rng.standard_normal(logits.shape)
        t_logits.backward(torch.tensor(dlogits))
        grads = _backward(model, dlogits, cache)
        t_params = dict(net.named_parameters())
        assert list(grads.params) == list(params)
        for k, g in grads.params.items():
            assert rel_error(g, t_params[k].grad.numpy()) <= 1e-10, f"d{k} train={train}"
        assert rel_error(grads.x, tx.grad.numpy()) <= 1e-10, f"dx train={train}"
        t_buffers = dict(net.named_buffers())
        assert list(new_state) == list(state)
        for k, v in new_state.items():  # torch updated its buffers in train mode, kept them in eval
            assert rel_error(v, t_buffers[k].numpy()) <= 1e-10, f"{k} train={train}"
        if train:  # saf_ref never mutates: evaluate with the same statistics torch now holds
            state = new_state


@pytest.mark.parametrize("norm, reparam", [("group", True), ("batch", True), ("group", False)])
def test_small_cnn_gradients_match_central_differences(norm, reparam):
    rng = np.random.default_rng(2)
    params, state = _randomized(*_init("small_cnn", norm, reparam), rng)
    x = rng.standard_normal((4, 2, 6, 6))
    y = rng.integers(0, 10, 4)

    def loss(p, x_):
        logits, *_ = small_cnn_forward(p, state, x_, train=True, norm=norm, reparam=reparam)
        return float(cross_entropy_forward(logits, y)[0])

    logits, _, cache = small_cnn_forward(params, state, x, train=True, norm=norm, reparam=reparam)
    dlogits = cross_entropy_backward(1.0, cross_entropy_forward(logits, y)[1]).dlogits
    grads = small_cnn_backward(dlogits, cache)
    checked = assert_model_gradients(loss, params, x, grads.params, grads.x, rng, per_tensor=3)
    assert checked == 3 * 12  # 11 tensors and x


# ==================================================================================================
# Initialisation, defaults, names
# ==================================================================================================


@pytest.mark.parametrize("model", ["small_cnn", "resnet20"])
def test_options_change_only_the_normalisation_layers(model):
    plain_p, plain_s = _init(model, "batch", False, dtype=np.float32, seed=5)
    for norm, reparam in OPTIONS:
        p, s = _init(model, norm, reparam, dtype=np.float32, seed=5)
        assert list(p) == list(plain_p)  # torchvision's names and order
        for k, v in p.items():
            if v.ndim == 1 and k.endswith(".weight") and "fc" not in k:
                np.testing.assert_array_equal(v, np.zeros_like(v) if reparam else np.ones_like(v))
            else:  # the same draws: conv and fc weights, biases
                assert v.tobytes() == plain_p[k].tobytes(), k
        assert s == {} if norm == "group" else (s.keys() == plain_s.keys())
        # Reparameterized, the initial scale 1 + 0 is exactly the plain 1: the same network, bit for bit.
        x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
        plain_norm = _init(model, norm, False, dtype=np.float32, seed=5)
        a = _forward(model, p, s, x, train=True, norm=norm, reparam=reparam)[0]
        b = _forward(model, *plain_norm, x, train=True, norm=norm, reparam=False)[0]
        assert a.tobytes() == b.tobytes()
    shapes, state_shapes = resnet_shapes("resnet20", width=4, norm="group")
    assert state_shapes == {} and "layer2.0.downsample.1.weight" in shapes
    assert small_cnn_shapes(width=4, norm="group")[1] == {}


def test_default_options_are_the_plain_model_bit_for_bit():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    for model in ("small_cnn", "resnet20"):
        p, s = _init(model, "batch", False, dtype=np.float32)
        a, sa, ca = _forward(model, p, s, x, train=True, norm="batch", reparam=False)
        if model == "small_cnn":
            b, sb, cb = small_cnn_forward(p, s, x, train=True)
        else:
            b, sb, cb = resnet_forward(p, s, x, arch="resnet20", train=True)
        assert a.tobytes() == b.tobytes() and all(sa[k].tobytes() == sb[k].tobytes() for k in sa)
        ga, gb = _backward(model, np.ones_like(a), ca), _backward(model, np.ones_like(b), cb)
        assert all(ga.params[k].tobytes() == gb.params[k].tobytes() for k in ga.params)


@pytest.mark.parametrize("model", ["small_cnn", "resnet20"])
@pytest.mark.parametrize("norm, reparam", OPTIONS)
def test_state_dict_round_trip_keeps_names_and_bits(model, norm, reparam, tmp_path):
    params, state = _randomized(*_init(model, norm, reparam, dtype=np.float32), np.random.default_rng(4))
    params = {k: v.astype(np.float32) for k, v in params.items()}
    state = {k: v.astype(np.float32) for k, v in state.items()}
    sd = export_state_dict(params, state)
    if norm == "group":
        assert not any(k.endswith(("running_mean", "running_var")) for k in sd)
    else:  # torchvision's order: each layer's buffers after its bias
        i = list(sd).index("bn1.bias")
        assert list(sd)[i + 1 : i + 3] == ["bn1.running_mean", "bn1.running_var"]
    np.savez(tmp_path / "net.npz", **sd)
    p2, s2 = load_torch_state_dict(tmp_path / "net.npz", arch=model, norm=norm)
    assert list(p2) == list(params) and list(s2) == list(state)
    assert all(p2[k].tobytes() == params[k].tobytes() for k in params)
    assert all(s2[k].tobytes() == state[k].tobytes() for k in state)
    # The loaded model computes what the saved one did.
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    a = _forward(model, params, state, x, train=False, norm=norm, reparam=reparam)[0]
    b = _forward(model, p2, s2, x, train=False, norm=norm, reparam=reparam)[0]
    assert a.tobytes() == b.tobytes()


def test_state_dict_of_the_wrong_norm_is_refused_by_name():
    p, s = _init("small_cnn", "group", True)
    with pytest.raises(ValueError, match=r"missing buffers \['bn1.running_mean', 'bn1.running_var', "):
        load_torch_state_dict(export_state_dict(p, s), arch="small_cnn")
    p, s = _init("resnet20", "batch", True)
    with pytest.raises(ValueError, match=r"unexpected buffers \['bn1.running_mean', 'bn1.running_var', "):
        load_torch_state_dict(export_state_dict(p, s), arch="resnet20", norm="group")
    with pytest.raises(ValueError, match=r"load_torch_state_dict: norm must be one of \('batch', 'group'\)"):
        load_torch_state_dict(export_state_dict(p, s), arch="resnet20", norm="layer")
    with pytest.raises(ValueError, match="load_torch_state_dict: norm='group' needs arch, a model with "):
        load_torch_state_dict(export_state_dict(p, s), norm="group")


# ==================================================================================================
# Model names and validation
# ==================================================================================================


def test_model_names_carry_the_options():
    assert parse_model_name("resnet20@norm=group,reparam=1") == ModelName("resnet20", None, "group", True)
    assert parse_model_name("small_cnn@reparam=true,act_clip=6") == ModelName("small_cnn", 6.0, "batch", True)
    assert parse_model_name("small_cnn@norm=batch,reparam=0") == ModelName("small_cnn")
    assert format_model_name("resnet20", norm="group", reparam=True) == "resnet20@norm=group,reparam=1"
    assert format_model_name("small_cnn", act_clip=6, reparam=True) == "small_cnn@act_clip=6.0,reparam=1"
    assert format_model_name("small_cnn", norm="batch", reparam=False) == "small_cnn"
    assert model_fns("small_cnn@reparam=true,norm=group").name == "small_cnn@norm=group,reparam=1"
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 8, 8))
    for model in ("small_cnn", "resnet20"):
        for norm, reparam in OPTIONS:
            p, s = _randomized(*_init(model, norm, reparam), rng)
            name = format_model_name(model, norm=norm, reparam=reparam)
            got, _, cache = model_fns(name).forward(p, s, x, train=True)
            want = _forward(model, p, s, x, train=True, norm=norm, reparam=reparam)[0]
            assert got.tobytes() == want.tobytes() and (cache.norm, cache.reparam) == (norm, reparam)


@pytest.mark.parametrize("name, problem", [
    ("small_cnn@norm=layer", r"norm='layer' is not one of \('batch', 'group'\)"),
    ("small_cnn@reparam=yes", r"reparam='yes' is not one of \('0', '1', 'false', 'true'\)"),
    ("small_cnn@norm=group,norm=batch", "option 'norm' is given twice"),
    ("mlp@norm=group", "options norm and reparam need normalisation layers, which mlp has not"),
    ("mlp@reparam=0", "options norm and reparam need normalisation layers, which mlp has not"),
])  # fmt: skip
def test_bad_norm_options_in_names(name, problem):
    with pytest.raises(ValueError, match=rf"model_fns: model {problem}; expected"):
        model_fns(name)


def test_option_validation():
    with pytest.raises(ValueError, match=r"init_small_cnn: norm must be one of \('batch', 'group'\)"):
        init_small_cnn(rng=0, norm="instance")
    with pytest.raises(TypeError, match="init_resnet: reparam must be a bool, got int"):
        init_resnet("resnet20", rng=0, reparam=1)
    with pytest.raises(ValueError, match="format_model_name: norm and reparam need a model with norm"):
        format_model_name("mlp", reparam=True)
    with pytest.raises(ValueError, match=r"resnet_shapes: norm must be one of"):
        resnet_shapes("resnet20", norm="Group")
    p, s = _init("small_cnn", "batch", False)
    x = np.zeros((2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"small_cnn_forward: state must have the keys of the architecture, "
                                         r"got unexpected \['bn1.running_mean'"):  # fmt: skip
        small_cnn_forward(p, s, x, train=True, norm="group")
    with pytest.raises(TypeError, match="resnet_forward: reparam must be a bool, got str"):
        resnet_forward(*_init("resnet20", "batch", False), x, arch="resnet20", train=True, reparam="1")
    with pytest.raises(ValueError, match=r"small_cnn_forward: norm must be one of"):
        small_cnn_forward(p, s, x, train=True, norm=None)


def test_init_model_follows_the_name():
    from saf_ref.nn.registry import init_model

    for model in ("small_cnn", "resnet20"):
        for norm, reparam in OPTIONS:
            name = format_model_name(model, act_clip=6, norm=norm, reparam=reparam)
            got = init_model(name, in_channels=2, width=4, rng=3, dtype=np.float64)
            want = _init(model, norm, reparam, seed=3)
            for a, b in zip(got, want, strict=True):
                assert list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    p, _ = init_model("small_cnn", in_channels=1, rng=0)
    assert p["conv1.weight"].shape == (8, 1, 3, 3) and p["conv1.weight"].dtype == np.float32
    p, _ = init_model("resnet18", num_classes=7, rng=0)
    assert p["conv1.weight"].shape == (64, 3, 7, 7) and p["fc.bias"].shape == (7,)
    with pytest.raises(ValueError, match=r"init_model: model must have image inputs \(not 'mlp'"):
        init_model("mlp", rng=0)
    with pytest.raises(ValueError, match="init_model: model must be one of"):
        init_model("vgg", rng=0)


@pytest.mark.parametrize(
    "name",
    ["resnet20", "resnet20@act_clip=6", "resnet20@norm=group,reparam=1", "resnet18_cifar", "small_cnn"],
)
def test_inference_gives_the_forward_logits_bit_for_bit_without_a_cache(name):
    """``model_fns(name).inference()`` (what campaigns and ``evaluate`` use) computes the logits and new
    state of ``forward(..., train=False)`` bit for bit and keeps no cache; a ResNet has such a mode
    (``keep_cache=False``), small_cnn and mlp evaluate with their ``forward``."""
    import pickle

    from saf_ref.nn.registry import init_model

    fns = model_fns(name)
    params, state = init_model(name, in_channels=3, num_classes=10, width=4, rng=1)
    x = np.random.default_rng(2).standard_normal((5, 3, 16, 16)).astype(np.float32)
    state = {k: v + np.float32(0.25) for k, v in state.items()}  # running statistics not at their init
    want_logits, want_state, _ = fns.forward(params, state, x, train=False)
    logits, new_state, cache = fns.inference()(params, state, x, train=False)
    assert logits.tobytes() == want_logits.tobytes()
    assert list(new_state) == list(want_state)
    assert all(new_state[k].tobytes() == want_state[k].tobytes() for k in state)
    if name == "small_cnn":
        assert fns.infer is None and fns.inference() is fns.forward
    else:
        assert cache is None
    assert pickle.loads(pickle.dumps(fns)).name == fns.name  # ModelFns still pickles (process pools)
