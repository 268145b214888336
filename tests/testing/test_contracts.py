"""The contract functions of saf_ref.testing.contracts: each tier passes what it should, fails what it
should, and says where and by how much. References are independent: NumPy's spacing, hand-built bit
patterns, explicit arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.bits import get_ieee_format
from saf_ref.testing.contracts import (
    KNOWN_DIVERGENCES,
    ContractFailure,
    assert_dot_bound,
    assert_exact,
    assert_relative,
    assert_ulp,
    ulp,
)
from saf_ref.testing.tolerance import gamma

U32 = 2.0**-24


# ---------------------------------------------------------------------------------------------- exact
def test_exact_passes_identical_bits_and_counts_nothing():
    a = np.array([1.0, -0.0, np.inf, 3.5], np.float32)
    assert assert_exact(a.copy(), a, what="t") == (0.0, {})


def test_exact_signed_zero_counts():
    with pytest.raises(
        ContractFailure,
        match=r"t: not bit-exact at index \(1,\): got 0.0 \(0x00000000\), "
        r"expected -0.0 \(0x80000000\).*1 of 2 elements differ",
    ):
        assert_exact(np.array([1.0, 0.0], np.float32), np.array([1.0, -0.0], np.float32), what="t")


def test_exact_message_names_multi_index_and_inputs():
    expected = np.zeros((2, 3), np.float64)
    got = expected.copy()
    got[1, 2] = 1.0
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises(ContractFailure, match=r"index \(1, 2\).*x = 5.0"):
        assert_exact(got, expected, what="t", inputs={"x": x})


def test_exact_nan_payload_is_reported_or_strict():
    bits = np.array([0x7FC00000, 0xFFC00001, 0x3F800000], np.uint32)
    other = np.array([0x7FC00000, 0x7FC00000, 0x3F800000], np.uint32)
    got, expected = bits.view(np.float32), other.view(np.float32)
    assert assert_exact(got, expected, what="t") == (0.0, {"nan-payload": 1})
    with pytest.raises(ContractFailure, match="not bit-exact at index"):
        assert_exact(got, expected, what="t", nan_payloads="strict")


def test_exact_codes_use_is_nan_and_decode():
    fmt = get_ieee_format("bfloat16")
    expected = np.array([0x7FC0, 0x3F80], np.uint16)
    got = np.array([0xFFFF, 0x3F81], np.uint16)
    with pytest.raises(ContractFailure, match=r"got 0x3f81 \(1.0078125\), expected 0x3f80 \(1.0\)"):
        assert_exact(got, expected, what="t", is_nan=fmt.is_nan, decode=fmt.decode)
    got[1] = 0x3F80
    assert assert_exact(got, expected, what="t", is_nan=fmt.is_nan) == (0.0, {"nan-payload": 1})


def test_exact_explain_accepts_known_divergences_only_where_they_apply():
    expected = np.array([1, 2, 3, 4], np.uint8)
    got = np.array([1, 9, 3, 8], np.uint8)

    def explain(bad):
        return {"e4m3fn-overflow": bad & (got == 9)}

    with pytest.raises(ContractFailure, match=r"index \(3,\).*1 of 4 elements differ"):
        assert_exact(got, expected, what="t", explain=explain)
    got[3] = 4
    assert assert_exact(got, expected, what="t", explain=explain) == (0.0, {"e4m3fn-overflow": 1})


def test_exact_layout_checks():
    a = np.zeros(3, np.float32)
    with pytest.raises(ContractFailure, match="got dtype float64, expected float32"):
        assert_exact(a.astype(np.float64), a, what="t")
    with pytest.raises(ContractFailure, match=r"got shape \(2,\), expected \(3,\)"):
        assert_exact(a[:2], a, what="t")
    with pytest.raises(ContractFailure, match="expected a numpy.ndarray, got list"):
        assert_exact([0.0, 0.0, 0.0], a, what="t")
    with pytest.raises(ValueError, match="assert_exact: nan_payloads must be one of"):
        assert_exact(a, a, what="t", nan_payloads="ignore")


# ------------------------------------------------------------------------------------------------ ulp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ulp_is_numpy_spacing_for_the_dtype_roundoff(dtype):
    u = 2.0 ** -(np.finfo(dtype).nmant + 1)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200) * 10.0 ** rng.uniform(-30, 30, 200)).astype(dtype)
    x = np.concatenate(
        [x, np.finfo(dtype).tiny * np.array([1, 0.5, 3], dtype), np.array([1, 2, 0.75], dtype)]
    )
    np.testing.assert_array_equal(ulp(x, u=u, dtype=dtype), np.spacing(np.abs(x)).astype(np.float64))


def test_ulp_scales_with_declared_roundoff_and_has_a_subnormal_floor():
    assert ulp(np.array([1.0]), u=2.0**-11, dtype=np.float32)[0] == 2.0**-10
    assert ulp(np.array([0.0]), u=U32, dtype=np.float32)[0] == 2.0**-149


def test_assert_ulp_bound_is_n_ulps():
    ref = np.array([1.0, 3.0])
    got = np.array([1.0 + 2 * 2.0**-23, 3.0], np.float32)
    ratio, divs = assert_ulp(got, ref, n=2, u=U32, what="t")
    assert ratio == pytest.approx(1.0) and divs == {}
    got[0] = np.nextafter(got[0], np.float32(2))  # 3 ulps
    with pytest.raises(ContractFailure, match=r"exceeds 2 ulp at index \(0,\).*1 of 2 elements fail"):
        assert_ulp(got, ref, n=2, u=U32, what="t")


def test_assert_ulp_magnitude_and_atol():
    ref = np.array([1e-6])
    got = np.array([1e-6 + 1e-11], np.float32)  # about 90 ulps of 1e-6, but tiny next to 1.0
    with pytest.raises(ContractFailure):
        assert_ulp(got, ref, n=4, u=U32, what="t")
    assert assert_ulp(got, ref, n=4, u=U32, what="t", magnitude=np.array([1.0]))[0] < 1
    assert assert_ulp(got, ref, n=4, u=U32, what="t", atol=1e-10)[0] < 1


def test_assert_ulp_nonfinite_must_match_unless_explained():
    ref = np.array([np.inf, np.nan, 1.0])
    assert assert_ulp(np.array([np.inf, np.nan, 1.0], np.float32), ref, n=1, u=U32, what="t") == (0.0, {})
    got = np.array([np.nan, np.nan, 1.0], np.float32)
    with pytest.raises(ContractFailure, match=r"at index \(0,\) got nan but the reference is inf"):
        assert_ulp(got, ref, n=1, u=U32, what="t")
    ratio, divs = assert_ulp(got, ref, n=1, u=U32, what="t", explain=lambda bad: {"softsign-infinity": bad})
    assert divs == {"softsign-infinity": 1}
    with pytest.raises(ContractFailure, match=r"got nan, ref 1.0"):
        assert_ulp(np.array([np.inf, np.nan, np.nan], np.float32), ref, n=1, u=U32, what="t")


# ------------------------------------------------------------------------------------------------ dot
def test_dot_bound_accepts_a_float32_dot_product_and_rejects_a_float16_one():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((8, 100)), rng.standard_normal((100, 5))
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    ref = x32.astype(np.float64) @ w32.astype(np.float64)
    mag = np.abs(x32.astype(np.float64)) @ np.abs(w32.astype(np.float64))
    ratio = assert_dot_bound(x32 @ w32, ref, mag, 100, u=U32, what="t")
    assert 0 < ratio <= 1
    half = (x32.astype(np.float16) @ w32.astype(np.float16)).astype(np.float32)
    with pytest.raises(ContractFailure, match=r"exceeds c\*gamma_K\(u\)\*\(\|x\|.\|w\|\) at index .*K = 100"):
        assert_dot_bound(half, ref, mag, 100, u=U32, what="t")


def test_dot_bound_is_gamma_k_times_magnitude():
    ref, mag = np.array([0.0]), np.array([4.0])
    edge = 4.0 * gamma(10, U32)
    assert assert_dot_bound(np.array([edge]), ref, mag, 10, u=U32, what="t") == pytest.approx(1.0)
    with pytest.raises(ContractFailure, match="1 of 1 elements fail"):
        assert_dot_bound(np.array([edge * 1.01]), ref, mag, 10, u=U32, what="t")
    assert assert_dot_bound(np.array([edge * 1.01]), ref, mag, 10, u=U32, what="t", c=2.0) < 1


def test_dot_bound_shape_and_dtype_errors():
    z = np.zeros(2)
    with pytest.raises(ContractFailure, match="shapes differ"):
        assert_dot_bound(np.zeros(3), z, z, 1, u=U32, what="t")
    with pytest.raises(ContractFailure, match="got dtype int64, expected a float dtype"):
        assert_dot_bound(np.zeros(2, np.int64), z, z, 1, u=U32, what="t")


# ------------------------------------------------------------------------------------------- relative
def test_relative_allows_factor_times_float32_error():
    ref = np.array([1.0, 2.0])
    ours = np.array([1.0 + 2**-20, 2.0], np.float32)  # saf_ref float32 off by 2**-20
    ok = np.array([1.0 + 31 * 2**-20, 2.0], np.float32)
    assert assert_relative(ok, ref, ours, u=U32, factor=32, what="t") < 1
    bad = np.array([1.0 + 2**-14, 2.0], np.float32)
    with pytest.raises(
        ContractFailure,
        match=r"at index \(0,\).*saf_ref float32 1.0000009536.*E32 = max\|saf_ref_float32 - ref64\| = 9.5",
    ):
        assert_relative(bad, ref, ours, u=U32, factor=32, what="t")


def test_relative_uses_the_worst_of_several_float32_results():
    ref = np.array([1.0])
    got = np.array([1.0 + 2**-15], np.float32)
    lucky, spread = np.array([1.0], np.float32), np.array([1.0 + 2**-19], np.float32)
    with pytest.raises(ContractFailure):
        assert_relative(got, ref, lucky, u=U32, factor=32, what="t")
    assert assert_relative(got, ref, [lucky, spread], u=U32, factor=32, what="t") < 1


def test_relative_floor_and_float64_scaling():
    ref = np.array([1.0])
    exact32 = np.array([1.0], np.float32)
    # saf_ref float32 exact: the floor factor * u * scale still allows a few ulps
    assert assert_relative(np.array([1.0 + 2**-23], np.float32), ref, exact32, u=U32, what="t") < 1
    # a float64 backend must be 2**29 times closer
    ours = np.array([1.0 + 2**-20], np.float32)
    assert assert_relative(np.array([1.0 + 2**-48]), ref, ours, u=2.0**-53, factor=32, what="t") < 1
    with pytest.raises(ContractFailure):
        assert_relative(np.array([1.0 + 2**-30]), ref, ours, u=2.0**-53, factor=32, what="t")


def test_relative_adds_the_float64_references_own_allowance():
    # |got - ref64| <= |got - exact| + |ref64 - exact|: the reference (unit roundoff u_ref = 2**-53) is
    # held to the same contract, so its allowance is added: (u + u_ref) in place of u.
    u64, e32 = 2.0**-53, 2.0**-20
    ref, ours = np.array([1.0]), np.array([1.0 + e32], np.float32)
    backend_share = 32 * ((u64 / U32) * e32 + u64 * 1.0)
    just_in = np.array([1.0 + 1.9 * backend_share])  # within the two allowances, not within one
    assert 0.9 < assert_relative(just_in, ref, ours, u=u64, factor=32, what="t") < 1
    with pytest.raises(ContractFailure, match=r"u_ref = 0.000e\+00"):
        assert_relative(just_in, ref, ours, u=u64, factor=32, what="t", ref_u=0.0)
    out = np.array([1.0 + 2.1 * backend_share])
    with pytest.raises(ContractFailure, match=r"\(\(u \+ u_ref\)/2\*\*-24\) \* E32.*u_ref = 1.110e-16"):
        assert_relative(out, ref, ours, u=u64, factor=32, what="t")


def test_relative_float32_allowance_moves_by_the_reference_share_only():
    # for a float32 backend the reference's share is 2**-29 of the allowance
    ref, ours = np.array([1.0]), np.array([1.0 + 2.0**-20], np.float32)
    got = np.array([1.0 + 2.0**-16], np.float32)
    with_ref = assert_relative(got, ref, ours, u=U32, factor=32, what="t")
    exact_ref = assert_relative(got, ref, ours, u=U32, factor=32, what="t", ref_u=0.0)
    assert exact_ref / with_ref == pytest.approx(1 + 2.0**-29, rel=1e-15)


@pytest.mark.parametrize("bad", [-1e-16, float("nan"), float("inf")])
def test_relative_ref_u_must_be_finite_and_non_negative(bad):
    with pytest.raises(ValueError, match=r"assert_relative: ref_u must be a finite number >= 0, got"):
        assert_relative(np.ones(1), np.ones(1), np.ones(1, np.float32), u=U32, what="t", ref_u=bad)


def test_relative_zero_allowance_demands_exactness():
    ref, ours = np.zeros(2), np.zeros(2, np.float32)
    assert assert_relative(np.zeros(2, np.float32), ref, ours, u=U32, what="t") == 0.0
    with pytest.raises(ContractFailure, match="inf x"):
        assert_relative(np.array([0.0, 1e-30], np.float32), ref, ours, u=U32, what="t")


def test_known_divergences_are_documented():
    assert set(KNOWN_DIVERGENCES) == {
        "nan-payload",
        "e4m3fn-overflow",
        "narrowing-via-float32",
        "softsign-infinity",
        "nan-latent-gradient",
        "relu-negative-zero",
        "flush-to-zero",
        "relu-nan-gradient",
        "hardtanh-bound-gradient",
    }
    assert all(len(v) > 40 for v in KNOWN_DIVERGENCES.values())
