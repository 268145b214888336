"""Weight scaling: constants t / max|W| computed independently, stored words from NumPy casts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from saf_ref.bits.quantize import Quantizer
from saf_ref.protect.scaling import scale_constants, scale_target, weight_scaling_spec
from saf_ref.protect.storage import (
    StorageRule,
    StorageSpec,
    default_spec,
    effective_weights,
    effective_weights_backward,
    load,
    store,
)

SHAPES = {
    "conv1.weight": (4, 3, 3, 3),
    "bn1.weight": (4,),
    "bn1.bias": (4,),
    "fc.weight": (3, 4),
    "fc.bias": (3,),
}
WEIGHTS = ("conv1.weight", "fc.weight")


def make_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    # Different magnitudes per tensor, so the constants differ.
    return {
        k: (rng.standard_normal(shape) * (0.05 + 0.4 * i)).astype(dtype)
        for i, (k, shape) in enumerate(SHAPES.items())
    }


def test_scale_target():
    assert scale_target("q2.5") == 4 - 2**-5
    assert scale_target("q0.7") == 1 - 2**-7
    assert scale_target("float16") == 1.0
    assert scale_target(Quantizer(8)) == 1.0


def test_scale_constants_against_independent_max():
    params = make_params()
    consts = scale_constants(params, 2.0)
    assert list(consts) == list(WEIGHTS)  # only conv/linear weights by default, in order
    for k, c in consts.items():
        m = max(abs(float(x)) for x in params[k].reshape(-1))  # a plain loop
        assert c == 2.0 / m
    every = scale_constants(params, 1.0, roles=("weight", "bias", "bn"))
    assert list(every) == list(SHAPES)


def test_scale_constants_power_of_two_and_zeros():
    params = make_params()
    params["fc.weight"][...] = 0.0
    consts = scale_constants(params, 3.0, power_of_two=True)
    assert consts["fc.weight"] == 1.0
    c = consts["conv1.weight"]
    m = float(np.abs(params["conv1.weight"]).max())
    assert math.log2(c) == int(math.log2(c))  # a power of two
    assert c <= 3.0 / m < 2 * c


@pytest.mark.parametrize("fmt", ["float32", "float16"])
def test_stored_words_are_scaled_and_read_back(fmt):
    params = make_params()
    spec = weight_scaling_spec(params, 1.0, fmt)
    consts = scale_constants(params, 1.0)
    stored = store(params, spec)
    eff = load(stored)
    np_dtype = np.float32 if fmt == "float32" else np.float16
    view = np.uint32 if fmt == "float32" else np.uint16
    for k, u in params.items():
        s = np.float32(consts.get(k, 1.0))
        ref = (u * s).astype(np_dtype)  # scaled in float32, then NumPy's RNE cast
        np.testing.assert_array_equal(stored[k].codes, ref.view(view))
        np.testing.assert_array_equal(eff[k], ref.astype(np.float32) / s)
    # The largest stored magnitude of each scaled tensor is the target (rounding aside).
    for k in WEIGHTS:
        assert abs(np.abs(stored[k].codes.view(np_dtype)).max() - 1.0) <= 2**-10


def test_power_of_two_scaling_is_exact_in_float32():
    params = make_params()
    eff = load(store(params, weight_scaling_spec(params, 1.0, "float32", power_of_two=True)))
    for k, u in params.items():
        np.testing.assert_array_equal(eff[k].view(np.uint32), u.view(np.uint32))


def test_fixed_point_scaling_fills_the_range_and_shrinks_the_error():
    params = make_params()
    spec = weight_scaling_spec(params, "auto", "q2.5")
    consts = scale_constants(params, 4 - 2**-5)
    eff = load(store(params, spec))
    plain = load(store(params, default_spec("q2.5")))
    for k in WEIGHTS:
        x = params[k].astype(np.float64)
        s = consts[k]
        err = np.abs(eff[k] - x).max()
        # Error <= half a step of the scaled grid, divided back by s (plus float32 roundings of s u, / s).
        assert err <= 2**-6 / s + 4 * np.spacing(np.float32(np.abs(x).max()))
        assert err < np.abs(plain[k] - x).max()
    for k in ("bn1.weight", "bn1.bias", "fc.bias"):  # not scaled
        np.testing.assert_array_equal(eff[k], plain[k])


def test_scaled_spec_serialises_and_keeps_base_rules():
    params = make_params()
    base = default_spec("float16", "tanh", expose_non_weights=False, weight_clip=2.0)
    spec = weight_scaling_spec(params, 0.5, base=base)
    assert spec.rules[len(WEIGHTS):] == base.rules
    rules = spec.resolve(SHAPES)
    consts = scale_constants(params, 0.5)
    for k in SHAPES:
        r = rules[k]
        assert r.scale == consts.get(k)
        assert r.format_name == "float16"
        assert r.exposed == (k in WEIGHTS)
        assert r.transform.name == ("tanh" if k in WEIGHTS else "identity")
        assert r.clip == (2.0 if k in WEIGHTS else None)
    again = StorageSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_names_with_glob_characters_are_matched_exactly():
    params = {"a[0].weight": np.ones((2, 2), np.float32), "a0.weight": np.full((2, 2), 4.0, np.float32)}
    rules = weight_scaling_spec(params, 1.0).resolve({k: v.shape for k, v in params.items()})
    assert rules["a[0].weight"].scale == 1.0 and rules["a0.weight"].scale == 0.25


def test_gradient_through_scaling_is_the_transform_derivative():
    # w = f((s u) / s): the scale cancels in the chain rule, du = f'(u_hat / s) dw, checked against
    # central differences in float64.
    params = make_params(np.float64)
    spec = weight_scaling_spec(params, 3.0, "float64", transform="arctan")
    rng = np.random.default_rng(2)
    g = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    _, cache = effective_weights(params, spec)
    grads = effective_weights_backward(g, cache)

    def loss(p):
        eff, _ = effective_weights(p, spec)
        return sum(float(np.sum(g[k] * eff[k])) for k in eff)

    h = 1e-6
    for k in WEIGHTS:
        for i in (0, params[k].size - 1):
            plus = {n: v.copy() for n, v in params.items()}
            minus = {n: v.copy() for n, v in params.items()}
            plus[k].reshape(-1)[i] += h
            minus[k].reshape(-1)[i] -= h
            fd = (loss(plus) - loss(minus)) / (2 * h)
            assert abs(grads[k].reshape(-1)[i] - fd) <= 1e-7 * max(1.0, abs(fd))
            u = params[k].reshape(-1)[i]
            assert abs(grads[k].reshape(-1)[i] - g[k].reshape(-1)[i] / (1 + u * u)) <= 1e-12


def test_validation():
    params = make_params()
    with pytest.raises(ValueError, match="scale_constants: target must be a finite positive number"):
        scale_constants(params, 0.0)
    with pytest.raises(TypeError, match="scale_constants: target must be a real number"):
        scale_constants(params, "1")
    with pytest.raises(TypeError, match="scale_constants: power_of_two must be a bool"):
        scale_constants(params, 1.0, power_of_two=1)
    with pytest.raises(TypeError, match="scale_constants: roles must be a tuple of role names"):
        scale_constants(params, 1.0, roles="weight")
    with pytest.raises(ValueError, match=r"scale_constants: roles\[1\] must be one of .*, got 'conv'"):
        scale_constants(params, 1.0, roles=("weight", "conv"))
    tiny = {"fc.weight": np.full((2, 2), 1e-320)}  # a subnormal float64 maximum: 1e10 / 1e-320 overflows
    for p2 in (False, True):  # the power-of-two rounding used to turn the inf into 0.5
        match = r"scale_constants: the scale for 'fc.weight', target / max\|W\| = 10000000000.0 / 1e-320, "
        with pytest.raises(ValueError, match=match + "must be finite and positive, got inf"):
            scale_constants(tiny, 1e10, power_of_two=p2)
    with pytest.raises(TypeError, match="scale_constants: params must be a dict"):
        scale_constants([params["fc.weight"]], 1.0)
    bad = dict(params)
    bad["fc.weight"] = np.float32([[np.inf, 1.0]])
    with pytest.raises(ValueError, match=r"scale_constants: params\['fc.weight'\] must be finite"):
        scale_constants(bad, 1.0)
    with pytest.raises(TypeError, match="weight_scaling_spec: target must be a real number"):
        weight_scaling_spec(params, "max")
    with pytest.raises(ValueError, match="weight_scaling_spec: target must be a finite positive number"):
        weight_scaling_spec(params, -1.0)
    with pytest.raises(TypeError, match="weight_scaling_spec: base must be a StorageSpec"):
        weight_scaling_spec(params, 1.0, base=[StorageRule()])
    with pytest.raises(ValueError, match="weight_scaling_spec: format, transform and expose_non_weights"):
        weight_scaling_spec(params, 1.0, "float16", base=default_spec())
    with pytest.raises(ValueError, match="weight_scaling_spec: parameter 'fc.bias'"):
        weight_scaling_spec(params, 1.0, base=StorageSpec([StorageRule("*", role="weight"),
                                                            StorageRule("bn*")]))
    with pytest.raises(ValueError, match="scale_target: format must be an IEEE format name"):
        scale_target("float12")
