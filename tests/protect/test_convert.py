"""SAF conversion of a pretrained model: copy or inverse transform, checked with float64 NumPy math."""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.protect.convert import convert_to_saf
from saf_ref.protect.storage import default_spec, load, store
from saf_ref.protect.transforms import Transform

SHAPES = {
    "conv1.weight": (4, 3, 3, 3),
    "bn1.weight": (4,),
    "bn1.bias": (4,),
    "layer1.0.downsample.0.weight": (4, 4, 1, 1),
    "layer1.0.downsample.1.weight": (4,),
    "layer1.0.downsample.1.bias": (4,),
    "fc.weight": (3, 4),
    "fc.bias": (3,),
}
WEIGHTS = ("conv1.weight", "layer1.0.downsample.0.weight", "fc.weight")

# f^{-1} in float64 for the smooth transforms (scale 1), independent of saf_ref.
INVERSES = {"tanh": np.arctanh, "arctan": np.tan, "softsign": lambda y: y / (1 - np.abs(y))}
FORWARDS = {"tanh": np.tanh, "arctan": np.arctan, "softsign": lambda x: x / (1 + np.abs(x))}


def make_params(dtype=np.float32, std=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * std).astype(dtype) for k, s in SHAPES.items()}


def test_copy_mode_copies_everything():
    params = make_params()
    before = {k: v.copy() for k, v in params.items()}
    out = convert_to_saf(params, "tanh", mode="copy")
    assert list(out) == list(params)
    for k, v in params.items():
        assert out[k] is not v and not np.shares_memory(out[k], v)
        np.testing.assert_array_equal(out[k], v)
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("name", ["tanh", "arctan", "softsign"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inverse_mode_reproduces_weights(name, dtype):
    params = make_params(dtype)
    before = {k: v.copy() for k, v in params.items()}
    out = convert_to_saf(params, name, mode="inverse")
    eps = np.finfo(dtype).eps
    for k, w in params.items():
        assert out[k].dtype == dtype
        np.testing.assert_array_equal(w, before[k])  # input untouched
        if k not in WEIGHTS:
            np.testing.assert_array_equal(out[k], w)  # biases and BN parameters stay raw
            continue
        ref_u = INVERSES[name](w.astype(np.float64))
        np.testing.assert_allclose(out[k], ref_u, rtol=2 * eps, atol=0)
        back = FORWARDS[name](out[k].astype(np.float64))  # f(u) ~= w
        np.testing.assert_allclose(back, w, rtol=4 * eps, atol=0)


def test_inverse_then_pipeline_gives_back_the_pretrained_weights():
    params = make_params()
    latents = convert_to_saf(params, "tanh", mode="inverse")
    eff = load(store(latents, default_spec("float32", "tanh")))
    for k, w in params.items():
        np.testing.assert_allclose(eff[k], w, rtol=2 * np.finfo(np.float32).eps, atol=0)
    copied = load(store(convert_to_saf(params, "tanh"), default_spec("float32", "tanh")))
    for k in WEIGHTS:
        # copy mode: f(w) != w, tanh shrinks every nonzero weight
        assert np.all(np.abs(copied[k]) < np.abs(params[k]))


def test_scaled_transform_and_weights_beyond_the_bound():
    params = make_params(np.float64, std=1.0)
    params["fc.weight"][0, :3] = [0.5, 1.2, -7.0]  # the last two are beyond the bound a = 1 of tanh
    out = convert_to_saf(params, Transform("tanh", 2.0), mode="inverse")
    w = params["conv1.weight"]
    inside = np.abs(w) < 1.99
    assert inside.mean() > 0.9
    ref = 2.0 * np.arctanh(w[inside] / 2.0)
    np.testing.assert_allclose(out["conv1.weight"][inside], ref, rtol=4e-16, atol=0)
    u = convert_to_saf(params, "tanh", mode="inverse")["fc.weight"][0, :3]
    assert u[0] == pytest.approx(np.arctanh(0.5), rel=1e-15)
    assert np.all(np.isfinite(u)) and u[1] > 15 and u[2] < -15  # clipped just below 1: finite and large


def test_clip_eps_caps_the_latents():
    params = make_params(std=1.0)
    for name, cap in (("tanh", np.arctanh(1 - 1e-3)), ("arctan", np.tan((1 - 1e-3) * np.pi / 2)),
                      ("softsign", (1 - 1e-3) / 1e-3)):
        out = convert_to_saf(params, name, mode="inverse", clip_eps=1e-3)
        for k in WEIGHTS:
            assert np.abs(out[k]).max() <= cap * (1 + 1e-6)
            small = np.abs(params[k]) < 0.5  # untouched by the clip: plain inverse
            ref = INVERSES[name](params[k][small].astype(np.float64))
            np.testing.assert_allclose(out[k][small], ref, rtol=2.5e-7, atol=0)
    zero = convert_to_saf(params, "tanh", mode="inverse", clip_eps=0.0)
    plain = convert_to_saf(params, "tanh", mode="inverse")
    for k in params:
        np.testing.assert_array_equal(zero[k], plain[k])


def test_hardtanh_and_identity():
    params = make_params(std=1.0)
    out = convert_to_saf(params, "hardtanh", mode="inverse")
    for k, w in params.items():
        np.testing.assert_array_equal(out[k], np.clip(w, -1, 1) if k in WEIGHTS else w)
    for mode in ("copy", "inverse"):
        extra = {"clip_eps": 0.1} if mode == "inverse" else {}
        ident = convert_to_saf(params, "identity", mode=mode, **extra)
        for k, w in params.items():
            np.testing.assert_array_equal(ident[k], w)


def test_validation():
    params = make_params()
    with pytest.raises(TypeError, match="convert_to_saf: transform must be a transform name or a Transform"):
        convert_to_saf(params, None)
    with pytest.raises(ValueError, match=r"convert_to_saf: transform must be one of .*got 'sigmoid'"):
        convert_to_saf(params, "sigmoid")
    with pytest.raises(ValueError, match="convert_to_saf: mode must be one of"):
        convert_to_saf(params, "tanh", mode="invert")
    with pytest.raises(ValueError, match="convert_to_saf: clip_eps must be None with mode='copy'"):
        convert_to_saf(params, "tanh", clip_eps=0.1)
    with pytest.raises(ValueError, match=r"convert_to_saf: clip_eps must be in \[0, 1\)"):
        convert_to_saf(params, "tanh", mode="inverse", clip_eps=1.0)
    with pytest.raises(TypeError, match="convert_to_saf: clip_eps must be a real number"):
        convert_to_saf(params, "tanh", mode="inverse", clip_eps="0.1")
    with pytest.raises(TypeError, match="convert_to_saf: params must be a dict"):
        convert_to_saf(list(params.values()), "tanh")
    with pytest.raises(TypeError, match="mixed dtypes are not promoted"):
        convert_to_saf({"a.weight": np.zeros((2, 2)), "a.bias": np.zeros(2, np.float32)}, "tanh")
