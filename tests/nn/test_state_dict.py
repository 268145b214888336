"""Loading PyTorch state dicts (mappings, tensors duck-typed, .npz files) and exporting back."""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.nn.resnet import init_resnet
from saf_ref.nn.small import init_mlp, init_small_cnn
from saf_ref.nn.state_dict import export_state_dict, load_torch_state_dict, split_state_dict


def _torch_like_sd(arch="resnet20", width=2, dtype=np.float32):
    """A flat state dict in PyTorch's layout, with the int64 num_batches_tracked counters."""
    params, state = init_resnet(arch, width=width, num_classes=4, rng=0, dtype=dtype)
    sd = export_state_dict(params, state)
    for k in list(state):
        if k.endswith("running_var"):
            sd[k.replace("running_var", "num_batches_tracked")] = np.array(7, dtype=np.int64)
    return params, state, sd


class FakeTensor:
    """Duck-typed stand-in for a torch tensor: only .detach().cpu().numpy()."""

    def __init__(self, a):
        self._a = a

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self._a


def test_export_order_and_copies():
    params, state = init_small_cnn(width=2, rng=0)
    sd = export_state_dict(params, state)
    assert list(sd)[:5] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    assert set(sd) == set(params) | set(state)
    sd["conv1.weight"][...] = 5
    assert not np.any(params["conv1.weight"] == 5)


@pytest.mark.parametrize("source", ["dict", "tensors", "npz_path", "npz_file"])
def test_load_round_trip(source, tmp_path):
    params, state, sd = _torch_like_sd()
    if source == "tensors":
        sd = {k: FakeTensor(v) for k, v in sd.items()}
    elif source.startswith("npz"):
        path = tmp_path / "net.npz"
        np.savez(path, **sd)
        sd = path if source == "npz_path" else np.load(path)
    p, s = load_torch_state_dict(sd, arch="resnet20")
    assert list(p) == list(params) and list(s) == list(state)
    for k in params:
        assert p[k].dtype == np.float32
        np.testing.assert_array_equal(p[k], params[k])
        assert not np.shares_memory(p[k], params[k])
    for k in state:
        np.testing.assert_array_equal(s[k], state[k])
    assert not any("num_batches_tracked" in k for k in (*p, *s))


def test_load_without_validation_and_split():
    _, _, sd = _torch_like_sd()
    p, s = load_torch_state_dict(sd)
    assert set(p) | set(s) == {k for k in sd if "num_batches" not in k}
    p2, s2 = split_state_dict(sd)
    assert list(p2) == list(p) and list(s2) == list(s)


def test_load_with_reference_and_dtype():
    params, state, sd = _torch_like_sd(dtype=np.float64)
    ref = init_resnet("resnet20", width=2, num_classes=4, rng=1, dtype=np.float32)
    p, s = load_torch_state_dict(sd, reference=ref)  # dtype follows the reference
    assert all(v.dtype == np.float32 for v in (*p.values(), *s.values()))
    np.testing.assert_array_equal(p["fc.weight"], params["fc.weight"].astype(np.float32))
    p64, _ = load_torch_state_dict(sd, arch="resnet20", dtype=np.float64)
    assert p64["fc.weight"].dtype == np.float64


@pytest.mark.parametrize("arch", ["small_cnn", "mlp"])
def test_load_small_models(arch):
    if arch == "mlp":
        params, state = init_mlp(16, hidden=(5, 4), num_classes=3, rng=0)
    else:
        params, state = init_small_cnn(width=3, in_channels=2, rng=0)
    p, s = load_torch_state_dict(export_state_dict(params, state), arch=arch)
    assert list(p) == list(params) and list(s) == list(state)


def test_mismatches_name_every_tensor():
    _, _, sd = _torch_like_sd()
    bad = dict(sd)
    del bad["layer2.0.downsample.0.weight"]
    bad["layer3.0.bn1.weight"] = np.zeros(3, np.float32)
    bad["module.extra"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as info:
        load_torch_state_dict(bad, arch="resnet20")
    msg = str(info.value)
    assert msg.startswith("load_torch_state_dict: the state dict does not match the model")
    assert "missing parameters ['layer2.0.downsample.0.weight']" in msg
    assert "unexpected parameters ['module.extra']" in msg
    assert "layer3.0.bn1.weight: expected shape (8,), got (3,)" in msg
    del bad["layer3.0.bn1.running_mean"]
    with pytest.raises(ValueError, match=r"missing buffers \['layer3.0.bn1.running_mean'\]"):
        load_torch_state_dict(bad, arch="resnet20")
    ref = init_resnet("resnet20", width=4, num_classes=4, rng=0)
    with pytest.raises(ValueError, match=r"conv1.weight: expected shape \(4, 3, 3, 3\), got \(2, 3, 3, 3\)"):
        load_torch_state_dict(sd, reference=ref)


def test_load_validation(tmp_path):
    _, _, sd = _torch_like_sd()
    fn = "load_torch_state_dict"
    with pytest.raises(TypeError, match=f"{fn}: state_dict must be a mapping"):
        load_torch_state_dict([1, 2])
    with pytest.raises(TypeError, match=f"{fn}: state_dict keys must be str"):
        load_torch_state_dict({1: np.zeros(1)})
    with pytest.raises(TypeError, match=r"state_dict\['a'\] must be a numpy.ndarray or a tensor"):
        load_torch_state_dict({"a": [1.0]})

    class Broken(FakeTensor):
        def numpy(self):
            raise TypeError("Got unsupported ScalarType BFloat16")

    with pytest.raises(TypeError, match=r"state_dict\['a'\] could not be converted .*BFloat16"):
        load_torch_state_dict({"a": Broken(None)})
    with pytest.raises(ValueError, match=f"{fn}: arch must be one of"):
        load_torch_state_dict(sd, arch="vgg16")
    with pytest.raises(ValueError, match=f"{fn}: give arch or reference, not both"):
        load_torch_state_dict(sd, arch="resnet20", reference=({}, {}))
    with pytest.raises(TypeError, match=f"{fn}: reference must be a \\(params, state\\) tuple"):
        load_torch_state_dict(sd, reference={})
    with pytest.raises(TypeError, match=f"{fn}: dtype must be float32 or float64"):
        load_torch_state_dict(sd, dtype=np.float16)
    with pytest.raises(ValueError, match=r"\['fc.weight'\] must be a 2-D tensor for arch 'resnet20'"):
        load_torch_state_dict({k: v for k, v in sd.items() if k != "fc.weight"}, arch="resnet20")
    with pytest.raises(ValueError, match=f"{fn}: an mlp state dict must have 2-D weights"):
        load_torch_state_dict({"fc2.weight": np.zeros((2, 2))}, arch="mlp")
    half = {k: v.astype(np.float16) if k == "fc.bias" else v for k, v in sd.items()}
    with pytest.raises(TypeError, match=r"float32 or float64 \(or pass dtype=\), got \['fc.bias"):
        load_torch_state_dict(half, arch="resnet20")
    assert load_torch_state_dict(half, arch="resnet20", dtype=np.float32)[0]["fc.bias"].dtype == np.float32
    mixed = {k: v.astype(np.float64) if k == "fc.bias" else v for k, v in sd.items()}
    with pytest.raises(TypeError, match=f"{fn}: all tensors must share one dtype"):
        load_torch_state_dict(mixed, arch="resnet20")
    # An .npz holding an object array is refused, not unpickled.
    path = tmp_path / "evil.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_torch_state_dict(path)


def test_export_validation():
    params, state = init_small_cnn(width=2, rng=0)
    with pytest.raises(TypeError, match="export_state_dict: params must be a dict"):
        export_state_dict([], state)
    with pytest.raises(TypeError, match=r"export_state_dict: state\['x'\] must be a numpy.ndarray"):
        export_state_dict(params, {"x": 1.0})
    with pytest.raises(ValueError, match=r"must not share keys, got \['bn1.bias'\]"):
        export_state_dict(params, {"bn1.bias": np.zeros(2)})


def test_torch_strict_load_of_export():
    """PyTorch accepts the exported dict with strict=True, recreating num_batches_tracked."""
    torch = pytest.importorskip("torch")
    params, state = init_small_cnn(width=2, in_channels=1, num_classes=3, rng=0)
    model = torch.nn.Module()
    model.conv1, model.bn1 = torch.nn.Conv2d(1, 2, 3, bias=False), torch.nn.BatchNorm2d(2)
    model.conv2, model.bn2 = torch.nn.Conv2d(2, 4, 3, bias=False), torch.nn.BatchNorm2d(4)
    model.conv3, model.bn3 = torch.nn.Conv2d(4, 8, 3, bias=False), torch.nn.BatchNorm2d(8)
    model.fc = torch.nn.Linear(8, 3)
    sd = export_state_dict(params, state)
    result = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert int(model.bn2.num_batches_tracked) == 0
    p, s = load_torch_state_dict(model.state_dict(), arch="small_cnn")
    for k in params:
        np.testing.assert_array_equal(p[k], params[k])
