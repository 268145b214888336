"""The hypothesis strategies of saf_ref.testing: boundary lists hold the values they promise (checked
against ml_dtypes' format parameters and NumPy's finfo), cases are valid inputs of the ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saf_ref.nn.conv import conv2d_forward
from saf_ref.testing import strategies as sst

ml_dtypes = pytest.importorskip("ml_dtypes")

ML = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}
FEW = settings(max_examples=25)


def _has(values: np.ndarray, v: float) -> bool:
    return any(
        (math.isnan(v) and math.isnan(x)) or (x == v and math.copysign(1, x) == math.copysign(1, v))
        for x in values.tolist()
    )


@pytest.mark.parametrize("fmt", list(ML))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boundary_values_hold_the_format_edges(fmt, dtype):
    info = ml_dtypes.finfo(ML[fmt])
    top, tiny, sub = float(info.max), float(info.smallest_normal), float(info.smallest_subnormal)
    ulp_top = top - float(np.nextafter(np.asarray(top, ML[fmt]), np.asarray(0, ML[fmt])))
    values = sst.boundary_values(fmt, dtype)
    assert values.dtype == dtype
    expected = [
        0.0,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        top,
        -top,
        tiny,
        -tiny,
        sub,
        -sub,
        sub / 2,
        3 * sub / 2,
    ]
    if fmt != "float8_e4m3fn":  # e4m3fn: the next code up is NaN, its overflow threshold is beyond top
        expected.append(top + ulp_top / 2)  # the overflow threshold: a tie rounding to inf
    for v in expected:
        assert _has(values, v), (fmt, dtype, v)
    finite = values[np.isfinite(values)]
    np.testing.assert_array_equal(finite.astype(np.float64).astype(dtype), finite)  # exactly representable


def test_boundary_values_double_rounding_traps_only_in_float64():
    trap = 1 + 2.0**-8 + 2.0**-40  # above a bfloat16 tie by less than half a float32 ulp
    assert _has(sst.boundary_values("bfloat16", np.float64), trap)
    assert not _has(sst.boundary_values("bfloat16", np.float32), trap)
    assert np.float32(trap) == 1 + 2.0**-8  # rounding to float32 first lands on the tie


@pytest.mark.parametrize("fmt", list(ML))
def test_boundary_codes_cover_every_class(fmt):
    codes = sst.boundary_codes(fmt)
    with np.errstate(invalid="ignore"):  # NaN codes cast to float64 NaN
        values = codes.view(ML[fmt]).astype(np.float64)
    assert np.isnan(values).any() and (values == 0).any() and np.signbit(values[values == 0]).any()
    tiny = float(ml_dtypes.finfo(ML[fmt]).smallest_normal)
    finite = values[np.isfinite(values)]
    assert ((np.abs(finite) < tiny) & (finite != 0)).any()  # subnormals
    assert np.abs(finite).max() == float(ml_dtypes.finfo(ML[fmt]).max)
    assert np.isinf(values).any() == (fmt != "float8_e4m3fn")


@FEW
@given(sst.codes("bfloat16", max_size=8))
def test_codes_are_container_arrays(codes):
    assert codes.dtype == np.uint16 and 1 <= codes.size <= 8


@FEW
@given(sst.flip_cases())
def test_flip_cases_are_valid(case):
    nbits = case.uniform.shape[-1]
    assert case.uniform.shape == case.codes.shape + (nbits,) and case.uniform.dtype == np.float32
    assert ((case.uniform >= 0) & (case.uniform < 1)).all() and 0 <= case.p <= 1
    assert int(case.codes.max()) < 2**nbits
    assert case.protected is None or 0 <= case.protected < 2**nbits


@FEW
@given(st.data())
def test_fault_lists_are_valid_and_never_stuck_both_ways(data):
    size, nbits = data.draw(st.integers(1, 6)), data.draw(st.sampled_from([8, 12, 16]))
    faults = data.draw(sst.fault_lists(size, nbits))
    stuck = {}
    for f in faults:
        assert 0 <= f.index < size and 0 <= f.bit < nbits and f.format == f"raw{nbits}"
        if f.kind != "flip":
            assert stuck.setdefault((f.index, f.bit), f.kind) == f.kind
    faults.apply(np.zeros(size, np.uint16), nbits=nbits)  # FaultList accepts it


@FEW
@given(sst.conv_cases())
def test_conv_cases_are_valid_convolutions(case):
    x, w, b, dy = case.arrays(np.float32)
    y, _ = conv2d_forward(x, w, b, stride=case.stride, padding=case.padding)
    assert y.shape == dy.shape == (case.x_shape[0], case.w_shape[0], *case.out_hw)


@FEW
@given(sst.quantizer_cases())
def test_quantizer_cases_encode(case):
    from saf_ref.bits import Quantizer

    config, x = case
    codes, _ = Quantizer(**config).encode(x)
    assert codes.shape == x.shape and x.dtype == np.float32 and np.isfinite(x).all()


@FEW
@given(sst.sgd_cases())
def test_sgd_cases_follow_pytorch_rules(case):
    assert 1 <= case.steps <= 4
    if case.nesterov:
        assert case.momentum > 0 and case.dampening == 0
    params, grads = case.arrays(np.float64)
    assert len(grads) == case.steps and all(set(g) == set(params) for g in grads)


def _last_stage_pixels(arch: str, image: int) -> int:
    """Side of the last stage's feature map, from the conv output-size formula (independent of saf_ref)."""

    def out(size, k, s, p):
        return (size + 2 * p - k) // s + 1

    side = image
    if arch == "resnet18":
        side = out(out(side, 7, 2, 3), 3, 2, 1)  # stem conv and max pooling
    stages = 3 if arch == "resnet20" else 4
    for _ in range(stages - 1):
        side = out(side, 3, 2, 1)
    return side


@pytest.mark.parametrize("arch", ["resnet20", "resnet18_cifar", "resnet18"])
def test_model_images_keep_eight_values_per_batch_norm(arch):
    lo, hi = sst.MODEL_IMAGES[arch]
    for image in range(lo, hi + 1):
        assert 2 * _last_stage_pixels(arch, image) ** 2 >= 8  # with the smallest batch, 2


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
def test_model_case_arrays_are_float32_values(arch):
    case = sst.ModelCase(arch, 2, 3, 2, sst.MODEL_IMAGES[arch][0], True, None, 5)
    params, state, x, labels = case.arrays(np.float64)
    for a in [*params.values(), *state.values(), x]:
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a.astype(np.float32).astype(np.float64), a)
    assert labels.dtype == np.int64 and labels.max() < 3
    assert all((v > 0).all() for k, v in state.items() if k.endswith("running_var"))
