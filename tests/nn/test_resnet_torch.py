"""Whole-model cross-checks against PyTorch (CPU): resnet20, resnet18_cifar and resnet18.

The torch reference models are built here from ``torch.nn`` modules (torchvision is not a dependency),
with torchvision's module names, so that their ``state_dict`` keys are the names saf_ref uses. Both sides
are loaded with the same named weights; then the logits, every parameter gradient, the input gradient,
the batch-norm running statistics after a train-mode forward, and the parameters after SGD steps
(momentum, weight decay) are compared:

- float64: relative error (max |a - b| / max |b|, per tensor) <= 1e-10;
- float32: both saf_ref-float32 and torch-float32 are compared with the float64 truth, and saf_ref's error
  must be of the same size as torch's (DESIGN.md section 5, "relative to our own float32").
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.nn.resnet import init_resnet, resnet_backward, resnet_forward, resnet_shapes
from saf_ref.nn.state_dict import export_state_dict, load_torch_state_dict

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.torch

ARCH_LAYOUT = {  # arch -> (ImageNet stem?, stage widths, blocks per stage)
    "resnet20": (False, (16, 32, 64), (3, 3, 3)),
    "resnet18_cifar": (False, (64, 128, 256, 512), (2, 2, 2, 2)),
    "resnet18": (True, (64, 128, 256, 512), (2, 2, 2, 2)),
}
# Small inputs keep the runtime low; resnet18's stem divides the resolution by 4 and layer4 by 8 more,
# so 64x64 leaves 2x2 maps in layer4 (train-mode batch norm needs more than one value per channel).
INPUT_HW = {"resnet20": 32, "resnet18_cifar": 32, "resnet18": 64}


class TorchBasicBlock(nn.Module):
    """torchvision's BasicBlock: conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, ReLU."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class TorchResNet(nn.Module):
    def __init__(self, arch, num_classes=10, in_channels=3):
        super().__init__()
        imagenet, widths, blocks = ARCH_LAYOUT[arch]
        if imagenet:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        c_in = widths[0]
        for s, (c_out, n) in enumerate(zip(widths, blocks, strict=True)):
            layers = []
            for b in range(n):
                layers.append(TorchBasicBlock(c_in, c_out, 2 if (b == 0 and s > 0) else 1))
                c_in = c_out
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.n_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        # torchvision's initialization.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for s in range(self.n_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _model_and_data(arch, seed, *, n=2, num_classes=5):
    """saf_ref float64 params/state with non-trivial BN parameters and statistics, an input, a dlogits."""
    rng = np.random.default_rng(seed)
    params, state = init_resnet(arch, num_classes=num_classes, rng=rng, dtype=np.float64)
    for k, v in params.items():
        if v.ndim == 1 and not k.startswith("fc"):
            params[k] = (
                rng.uniform(0.5, 1.5, v.shape) if k.endswith("weight") else rng.normal(0, 0.2, v.shape)
            )
    for k, v in state.items():
        state[k] = rng.normal(0, 0.2, v.shape) if k.endswith("mean") else rng.uniform(0.5, 2.0, v.shape)
    hw = INPUT_HW[arch]
    x = rng.standard_normal((n, 3, hw, hw))
    r = rng.standard_normal((n, num_classes))
    return params, state, x, r


def _torch_model(arch, params, state, dtype, num_classes=5):
    # Convert first, then load: loading float64 values into float32 parameters would round them.
    model = TorchResNet(arch, num_classes=num_classes).to(dtype)
    sd = export_state_dict(params, state)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return model


def _torch_run(model, x, r, *, train):
    model.train(train)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt)
    out.backward(torch.from_numpy(r))
    grads = {k: p.grad.detach().numpy().copy() for k, p in model.named_parameters()}
    buffers = {k: b.detach().numpy().copy() for k, b in model.named_buffers() if "num_batches" not in k}
    return out.detach().numpy(), grads, xt.grad.numpy(), buffers


def _ours_run(arch, params, state, x, r, *, train):
    logits, new_state, cache = resnet_forward(params, state, x, arch=arch, train=train)
    grads = resnet_backward(r, cache)
    return logits, grads.params, grads.x, new_state


def _errors(a, b):
    """Per-tensor relative errors between two runs (logits, each grad, dx, each running statistic)."""
    out = {"logits": _relerr(a[0], b[0]), "dx": _relerr(a[2], b[2])}
    out.update({f"grad {k}": _relerr(a[1][k], b[1][k]) for k in b[1]})
    out.update({f"state {k}": _relerr(a[3][k], b[3][k]) for k in b[3]})
    return out


# --------------------------------------------------------------------------------------------------
# Names, shapes and initialization
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCH_LAYOUT))
def test_names_and_shapes_match_torch_state_dict(arch):
    model = TorchResNet(arch, num_classes=10)
    torch_sd = {
        k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    params, state = init_resnet(arch, num_classes=10, rng=0)
    ours = export_state_dict(params, state)
    assert list(ours) == list(torch_sd)  # same names, same order
    assert {k: v.shape for k, v in ours.items()} == torch_sd
    assert list(params) == [k for k, _ in model.named_parameters()]
    assert list(state) == [k for k, _ in model.named_buffers() if not k.endswith("num_batches_tracked")]
    ps, ss = resnet_shapes(arch)
    assert {**ps, **ss} == torch_sd


def test_init_distribution_matches_torchvision():
    """Our Kaiming-normal (fan-out) and nn.Linear-default draws have torch's spreads, tensor by tensor."""
    torch.manual_seed(0)
    model = TorchResNet("resnet18_cifar", num_classes=10)
    params, _ = init_resnet("resnet18_cifar", num_classes=10, rng=0)
    for name, p in model.named_parameters():
        t = p.detach().numpy().astype(np.float64)
        ours = params[name].astype(np.float64)
        if t.size >= 20_000:
            assert abs(ours.std() / t.std() - 1) < 0.03, name
        if name.startswith("fc"):
            bound = 1 / np.sqrt(512)
            assert np.abs(ours).max() <= bound and np.abs(t).max() <= bound
        if name.endswith("bn1.weight"):
            np.testing.assert_array_equal(ours, t)


def test_loading_torch_state_dict_round_trip():
    """load_torch_state_dict takes torch tensors directly (and drops num_batches_tracked)."""
    torch.manual_seed(1)
    model = TorchResNet("resnet20", num_classes=10).double()
    params, state = load_torch_state_dict(model.state_dict(), arch="resnet20")
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert k not in params and k not in state
        else:
            np.testing.assert_array_equal((params | state)[k], v.numpy())


# --------------------------------------------------------------------------------------------------
# Forward, backward, running statistics
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("arch", list(ARCH_LAYOUT))
def test_float64_matches_torch(arch, train):
    params, state, x, r = _model_and_data(arch, seed=list(ARCH_LAYOUT).index(arch) * 2 + int(train))
    model = _torch_model(arch, params, state, torch.float64)
    theirs = _torch_run(model, x, r, train=train)
    ours = _ours_run(arch, params, state, x, r, train=train)
    assert set(ours[1]) == set(theirs[1]) and set(ours[3]) == set(theirs[3])
    errors = _errors(ours, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, f"{arch} train={train}: {worst} differs by {errors[worst]:.2e} (relative)"
    if train:  # the running statistics did move
        assert not np.allclose(ours[3]["bn1.running_mean"], state["bn1.running_mean"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCH_LAYOUT))
def test_float32_error_comparable_to_torch(arch):
    """saf_ref-float32 and torch-float32 errors against the float64 truth are of the same size."""
    params, state, x, r = _model_and_data(arch, seed=5)

    def f32(d):
        return {k: v.astype(np.float32) for k, v in d.items()}

    def f64(d):
        return {k: v.astype(np.float64) for k, v in d.items()}

    x32, r32 = x.astype(np.float32), r.astype(np.float32)
    # The truth is the float64 run on the float32-rounded inputs, so that the errors measure the
    # float32 arithmetic only, not the (shared) rounding of the inputs.
    truth = _torch_run(
        _torch_model(arch, f64(f32(params)), f64(f32(state)), torch.float64),
        x32.astype(np.float64),
        r32.astype(np.float64),
        train=True,
    )
    ours = _ours_run(arch, f32(params), f32(state), x32, r32, train=True)
    theirs = _torch_run(_torch_model(arch, f32(params), f32(state), torch.float32), x32, r32, train=True)
    assert ours[0].dtype == np.float32 and all(g.dtype == np.float32 for g in ours[1].values())
    e_ours, e_torch = _errors(ours, truth), _errors(theirs, truth)
    # Aggregate: the worst tensor on each side.
    assert max(e_ours.values()) <= 4 * max(e_torch.values()), (max(e_ours.values()), max(e_torch.values()))
    # Per tensor: within a factor 10 of torch's error, or below float32's resolution near the truth.
    for k in e_ours:
        assert e_ours[k] <= 10 * e_torch[k] + 2e-6, (
            f"{arch}: {k}: saf_ref {e_ours[k]:.2e} vs torch {e_torch[k]:.2e}"
        )


# --------------------------------------------------------------------------------------------------
# Training steps
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCH_LAYOUT))
def test_sgd_steps_match_torch(arch):
    """Two training steps (cross-entropy, SGD with momentum and weight decay) agree in float64."""
    from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
    from saf_ref.train.optim import SGD, sgd_init, sgd_step

    params, state, x, _ = _model_and_data(arch, seed=11)
    labels = np.array([1, 4])
    model = _torch_model(arch, params, state, torch.float64)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    config = SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_state = sgd_init(params)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        opt.step()
        logits, state, cache = resnet_forward(params, state, x, arch=arch, train=True)
        _, loss_cache = cross_entropy_forward(logits, labels)
        grads = resnet_backward(cross_entropy_backward(1.0, loss_cache).dlogits, cache).params
        params, opt_state = sgd_step(params, grads, opt_state, config)
    theirs = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    errors = {k: _relerr(v, theirs[k]) for k, v in (params | state).items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, f"{arch}: {worst} differs by {errors[worst]:.2e} after two SGD steps"
    # The steps moved every conv weight (a vacuous comparison of unchanged weights would pass too).
    start, _, _, _ = _model_and_data(arch, seed=11)
    assert all(not np.array_equal(params[k], start[k]) for k in params if params[k].ndim == 4)
