"""Review fixes in saf_ref.protect: errors name the public function that was called, every argument is
checked before work starts, reading faulty memory through a scale below 1 is silent, and the "auto" scale
of float64 storage is capped instead of refused.

Each test failed before its fix (``test_default_spec_builds_the_same_rules_as_by_hand`` and the accepted
forms in ``test_unknown_transform_names_the_caller`` guard what did not change): the errors named
``StorageRule``, ``default_spec``, ``scale_constants`` or ``get_transform`` (and its argument
``name_or_transform``) instead of the function the user called; ``power_of_two`` was not checked when no
tensor got a constant; ``effective_weights_backward`` formed products before it had checked every
gradient; ``load`` warned (RuntimeWarning) when ``û / s`` overflowed; ``weight_scaling_spec(params,
"auto", "float64")`` raised for every tensor with ``max|W| < 1/2``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from saf_ref.bits.ieee import get_ieee_format
from saf_ref.protect import (
    StorageRule,
    StorageSpec,
    Transform,
    convert_to_saf,
    default_spec,
    effective_weights,
    effective_weights_backward,
    load,
    store,
    weight_scaling_spec,
)

PARAMS = {"conv.weight": np.ones((2, 2), np.float32), "conv.bias": np.zeros(2, np.float32)}


# ------------------------------------------------------------------------------------------------
# default_spec: its own arguments are named as its own
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"format": "float12"}, ValueError, r"^default_spec: format must be an IEEE format .*got 'float12'$"),
        ({"format": 16}, TypeError, r"^default_spec: format must be a format name .*got int 16$"),
        ({"transform": "sigmoid"}, ValueError, r"^default_spec: transform must be one of \('identity', "),
        ({"transform": 1.0}, TypeError, r"^default_spec: transform must be a transform name or a Transform"),
        ({"weight_clip": -1.0}, ValueError,
         r"^default_spec: weight_clip must be None or a finite positive number, got -1.0$"),
        ({"weight_clip": "1"}, TypeError, r"^default_spec: weight_clip must be a real number, got str '1'$"),
    ],
)
def test_default_spec_names_itself(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        default_spec(**kwargs)


def test_default_spec_builds_the_same_rules_as_by_hand():
    # The arguments are now resolved before the rules are built: the rules must be those written out here.
    spec = default_spec("fp16", Transform("tanh", 0.5), expose_non_weights=False, weight_clip=2,
                        clip_roles=("weight", "bn"))
    by_hand = StorageSpec((
        StorageRule("*", format="float16", transform=Transform("tanh", 0.5), clip=2.0, role="weight"),
        StorageRule("*", format="float16", clip=2.0, exposed=False, role="bn"),
        StorageRule("*", format="float16", exposed=False),
    ))
    assert spec == by_hand
    assert spec.rules[0].format is get_ieee_format("float16")
    assert isinstance(spec.rules[0].clip, float)


# ------------------------------------------------------------------------------------------------
# weight_scaling_spec, convert_to_saf, StorageRule(.from_dict): unknown transforms and other arguments
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"expose_non_weights": 1}, TypeError, r"^weight_scaling_spec: expose_non_weights must be a bool"),
        ({"format": "float12"}, ValueError, r"^weight_scaling_spec: format must be an IEEE format name "),
        ({"format": 16}, TypeError, r"^weight_scaling_spec: format must be a format name "),
        ({"transform": "sigmoid"}, ValueError, r"^weight_scaling_spec: transform must be one of .*'sigmoid'"),
        ({"transform": 3}, TypeError, r"^weight_scaling_spec: transform must be a transform name"),
        ({"power_of_two": "yes"}, TypeError, r"^weight_scaling_spec: power_of_two must be a bool, got str"),
    ],
)
def test_weight_scaling_spec_names_itself(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        weight_scaling_spec(PARAMS, **kwargs)


def test_weight_scaling_spec_checks_power_of_two_without_scaled_tensors():
    # no conv/linear weight: no constant is computed, and the flag was never looked at
    with pytest.raises(TypeError, match=r"^weight_scaling_spec: power_of_two must be a bool, got int 1$"):
        weight_scaling_spec({"bn.weight": np.ones(2, np.float32)}, power_of_two=1)


def test_weight_scaling_spec_checks_params_before_the_rest():
    with pytest.raises(TypeError, match=r"^weight_scaling_spec: params must be a dict"):
        weight_scaling_spec([1.0], format="float12")


def test_unknown_transform_names_the_caller():
    with pytest.raises(ValueError, match=r"^convert_to_saf: transform must be one of .*'sigmoid'$"):
        convert_to_saf(PARAMS, "sigmoid")
    with pytest.raises(ValueError, match=r"^StorageRule: transform must be one of .*'sigmoid'$"):
        StorageRule(transform="sigmoid")
    with pytest.raises(ValueError, match=r"^StorageRule.from_dict: transform\['name'\] must be one of"):
        StorageRule.from_dict({"transform": {"name": "sig", "scale": 2.0}})
    with pytest.raises(TypeError, match=r"^StorageRule.from_dict: transform\['name'\] must be a str"):
        StorageRule.from_dict({"transform": {"name": 3}})
    # the accepted forms are unchanged
    rule = StorageRule.from_dict({"transform": {"name": "arctan", "scale": 2.0}})
    assert rule.transform == Transform("arctan", 2.0)
    assert StorageRule.from_dict({"transform": {"name": "tanh"}}).transform == Transform("tanh", 1.0)
    assert StorageRule(transform="softsign").transform == Transform("softsign", 1.0)


# ------------------------------------------------------------------------------------------------
# effective_weights_backward: every gradient is checked before any product is formed
# ------------------------------------------------------------------------------------------------
class _SpyTransform:
    """Stands in for a Transform in the cache and records whether a product was formed."""

    def __init__(self):
        self.calls = 0

    def vjp(self, u, dw):
        self.calls += 1
        return dw.copy()


def test_backward_checks_every_gradient_first():
    _, cache = effective_weights(PARAMS, default_spec())
    spies = {k: _SpyTransform() for k in cache.u_hat}
    cache = cache._replace(transforms=spies)
    grads = {"conv.weight": np.ones((2, 2), np.float32), "conv.bias": np.ones(2, np.float64)}  # last is bad
    with pytest.raises(TypeError, match=r"^effective_weights_backward: grads_eff\['conv.bias'\] must"):
        effective_weights_backward(grads, cache)
    assert [s.calls for s in spies.values()] == [0, 0]


# ------------------------------------------------------------------------------------------------
# load: û / s overflowing (a faulty word, a scale below 1) is inf, without a warning
# ------------------------------------------------------------------------------------------------
def test_unscale_overflow_is_silent_and_inf():
    spec = StorageSpec((StorageRule("*", format="float32", scale=0.5),))
    stored = store({"x": np.ones(3, np.float32)}, spec)
    words = np.array([0x7F7FFFFF, 0x3F800000, 0xFF7FFFFF], np.uint32)  # max finite, 1.0, -max finite
    faulty = stored.with_codes({"x": words})
    # independent reference: the decoded float32 words divided by 0.5 in float64, rounded to float32
    with np.errstate(over="ignore"):
        expect = (words.view(np.float32).astype(np.float64) / 0.5).astype(np.float32)
    assert np.isinf(expect[[0, 2]]).all() and expect[1] == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for nonfinite in ("propagate", "zero"):  # the overflow happens after the non-finite check
            np.testing.assert_array_equal(load(faulty, nonfinite=nonfinite)["x"], expect)


# ------------------------------------------------------------------------------------------------
# weight_scaling_spec, target "auto", float64 storage: 2**1023 / max|W| overflows float64 itself
# ------------------------------------------------------------------------------------------------
def test_auto_target_of_float64_storage_is_capped_not_refused():
    # Before the fix the cap was applied after scale_constants had refused the infinite t / max|W|:
    # every float64 tensor with max|W| < 1/2 (most weights) raised "scale_constants: ... got inf".
    f64max = float(np.finfo(np.float64).max)
    w = np.array([[0.25, -0.125], [0.0, 0.0625]])
    params = {"a.weight": w, "b.weight": 4 * w}  # max|W| 0.25 (capped) and 1.0 (not capped)
    shapes = {k: v.shape for k, v in params.items()}
    rules = weight_scaling_spec(params, "auto", "float64").resolve(shapes)
    assert rules["a.weight"].scale == f64max and rules["b.weight"].scale == 2.0**1023
    p2 = weight_scaling_spec(params, "auto", "float64", power_of_two=True).resolve(shapes)
    assert p2["a.weight"].scale == 2.0**1023 and p2["b.weight"].scale == 2.0**1023
    stored = store(params, weight_scaling_spec(params, "auto", "float64"))
    np.testing.assert_array_equal(stored["a.weight"].codes.view(np.float64), w * f64max)  # numpy's product
    # power-of-two constants: the clean round trip is exact
    back = load(store(params, weight_scaling_spec(params, "auto", "float64", power_of_two=True)))
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])
    # an explicit target is still never capped, and the errors name weight_scaling_spec
    with pytest.raises(ValueError, match=r"^weight_scaling_spec: the scale for 'a.weight', target"):
        weight_scaling_spec(params, 2.0**1023, "float64")
    bad = {"a.weight": np.array([[np.nan, 1.0]])}
    with pytest.raises(ValueError, match=r"^weight_scaling_spec: params\['a.weight'\] must be finite"):
        weight_scaling_spec(bad, "auto", "float64")


def test_auto_target_of_float64_storage_of_float32_latents_fits_the_latents():
    # s W is computed in float32: the float64 target 2**1023 is lowered to float32's 2**127, so the
    # largest weight is stored as 2**127 (it was inf: s was capped at float32's max, times max|W| = 3).
    w = np.array([[3.0, 1.0, -0.5]], np.float32)
    params = {"fc.weight": w, "fc2.weight": w / 16}  # max|W| 3 (target binds) and 0.1875 (cap binds)
    shapes = {k: v.shape for k, v in params.items()}
    rules = weight_scaling_spec(params, "auto", "float64").resolve(shapes)
    assert rules["fc.weight"].scale == 2.0**127 / 3.0
    assert rules["fc2.weight"].scale == float(np.finfo(np.float32).max)  # 2**127 / 0.1875 > float32 max
    for power_of_two in (False, True):
        spec = weight_scaling_spec(params, "auto", "float64", power_of_two=power_of_two)
        stored = store(params, spec)
        for k in params:
            assert np.isfinite(stored[k].codes.view(np.float64)).all()
        back = load(stored)
        np.testing.assert_allclose(back["fc.weight"], w, rtol=2**-23)
        if power_of_two:  # power-of-two constants: the clean round trip is exact
            for k in params:
                np.testing.assert_array_equal(back[k], params[k])
