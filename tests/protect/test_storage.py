"""The storage pipeline: spec, store / inject / load, effective weights and their gradient.

References never call the code under test: stored words come from NumPy views and casts
(``u.view(np.uint32)``, ``u.astype(np.float16).view(np.uint16)``), fixed-point words from
``np.rint`` on float64, transforms from ``np.tanh`` / ``np.cosh`` in float64, gradients from central
finite differences in float64.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import BitErrors, Bursts, ExactCount, FaultModel, Replay, StuckAt
from saf_ref.bits.faults import inject_bit_errors, inject_bursts, inject_exact_k, sample_stuck_at_map
from saf_ref.bits.quantize import Quantizer
from saf_ref.protect.storage import (
    EffectiveWeightsCache,
    Injection,
    StorageRule,
    StorageSpec,
    StoredModel,
    default_spec,
    effective_weights,
    effective_weights_backward,
    inject,
    inject_nested,
    load,
    param_role,
    store,
)
from saf_ref.protect.transforms import Transform

SHAPES = {
    "conv1.weight": (4, 3, 3, 3),
    "bn1.weight": (4,),
    "bn1.bias": (4,),
    "layer1.0.conv1.weight": (4, 4, 3, 3),
    "layer1.0.bn1.weight": (4,),
    "layer1.0.bn1.bias": (4,),
    "fc.weight": (3, 4),
    "fc.bias": (3,),
}
WEIGHTS = ("conv1.weight", "layer1.0.conv1.weight", "fc.weight")


def make_params(dtype=np.float32, seed=0, std=0.3):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * std).astype(dtype) for k, s in SHAPES.items()}


def digest(params) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of every array."""
    h = hashlib.sha256()
    for k, v in params.items():
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(str(v.shape).encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def tanh32(u):
    """float32 tanh computed in float64 and rounded once (the project's convention), independently."""
    return np.tanh(u.astype(np.float64)).astype(np.float32)


def xor_diff_bits(a, b):
    """Set of (flat index, bit) where the words of a and b differ (a plain loop over differing words)."""
    out = set()
    diff = (a ^ b).reshape(-1)
    for i in np.nonzero(diff)[0]:
        d = int(diff[i])
        out |= {(int(i), bit) for bit in range(64) if (d >> bit) & 1}
    return out


# ==================================================================================================
# Roles and specs
# ==================================================================================================


def test_param_role_table():
    shapes = dict(SHAPES)
    shapes.update({"layer2.0.downsample.0.weight": (8, 4, 1, 1), "layer2.0.downsample.1.weight": (8,),
                   "layer2.0.downsample.1.bias": (8,), "conv2.bias": (4,), "conv2.weight": (4, 4, 3, 3),
                   "weight": (2, 2), "bias": (2,), "alpha": (1,), "bn9.running_mean": (4,)})
    expected = {
        "conv1.weight": "weight", "bn1.weight": "bn", "bn1.bias": "bn", "layer1.0.conv1.weight": "weight",
        "layer1.0.bn1.weight": "bn", "layer1.0.bn1.bias": "bn", "fc.weight": "weight", "fc.bias": "bias",
        "layer2.0.downsample.0.weight": "weight", "layer2.0.downsample.1.weight": "bn",
        "layer2.0.downsample.1.bias": "bn", "conv2.bias": "bias", "conv2.weight": "weight",
        "weight": "weight", "bias": "bias", "alpha": "other", "bn9.running_mean": "other",
    }
    assert {k: param_role(k, shapes) for k in shapes} == expected


def test_param_role_validation():
    with pytest.raises(TypeError, match="param_role: name must be a str, got NoneType"):
        param_role(None, SHAPES)
    with pytest.raises(TypeError, match="param_role: shapes must be a dict of name -> shape, got list"):
        param_role("fc.bias", [(3,)])
    with pytest.raises(ValueError, match="param_role: name must be a key of shapes, got 'fc.gone'"):
        param_role("fc.gone", SHAPES)


def test_default_spec_rules():
    params = make_params()
    spec = default_spec("float16", "tanh")
    rules = spec.resolve({k: v.shape for k, v in params.items()})
    for name, rule in rules.items():
        assert rule.format_name == "float16"
        assert rule.exposed
        assert rule.transform.name == ("tanh" if name in WEIGHTS else "identity")
    rules = default_spec("q2.5", "arctan", expose_non_weights=False).resolve(
        {k: v.shape for k, v in params.items()})
    assert {k for k, r in rules.items() if r.exposed} == set(WEIGHTS)
    assert {k for k, r in rules.items() if r.transform.name == "arctan"} == set(WEIGHTS)
    clipped = default_spec(weight_clip=0.1).resolve(SHAPES)
    assert {k for k, r in clipped.items() if r.clip == 0.1} == set(WEIGHTS)


def test_rule_matching_first_match_glob_regex_role():
    spec = StorageSpec([
        StorageRule("fc.*", format="float16"),
        StorageRule(r"layer\d+\..*conv\d\.weight", regex=True, format="bfloat16"),
        StorageRule("*", role="bn", format="q2.5"),
        StorageRule("*", format="float8_e4m3fn"),
    ])
    got = {k: r.format_name for k, r in spec.resolve(SHAPES).items()}
    assert got == {
        "conv1.weight": "float8_e4m3fn", "bn1.weight": "q2.5", "bn1.bias": "q2.5",
        "layer1.0.conv1.weight": "bfloat16", "layer1.0.bn1.weight": "q2.5", "layer1.0.bn1.bias": "q2.5",
        "fc.weight": "float16", "fc.bias": "float16",
    }
    # Aliases resolve to canonical names.
    assert StorageRule(format="fp16").format_name == "float16"
    assert StorageRule(format="Q1.6").format_name == "q1.6"


def test_no_rule_matches_is_an_error():
    spec = StorageSpec([StorageRule("*", role="weight")])
    with pytest.raises(ValueError, match=r"store: parameter 'bn1.weight' \(role 'bn'\) must match a rule"):
        store(make_params(), spec)


def spec_examples():
    return [
        default_spec(),
        default_spec("q2.5", Transform("tanh", 0.5), expose_non_weights=False, weight_clip=2.0),
        default_spec(Quantizer(8, clip=0.5, margin=1e-3), "softsign"),
        StorageSpec([
            StorageRule(r"fc\..*", regex=True, format="float16", scale=3.25, clip=1.5, exposed=False),
            StorageRule("*", role="bn", format=Quantizer(4, scheme="symmetric", code="twos_complement",
                                                          rounding="toward_zero", max_abs=2.0)),
            StorageRule("*", format="float8_e5m2", transform="hardtanh"),
        ]),
    ]


@pytest.mark.parametrize("spec", spec_examples(), ids=range(4))
def test_spec_json_round_trip(spec):
    text = json.dumps(spec.to_dict())
    again = StorageSpec.from_dict(json.loads(text))
    assert again.to_dict() == spec.to_dict()
    # The restored spec stores and loads the same model bit for bit.
    params = make_params(seed=3)
    a, b = store(params, spec), store(params, again)
    for k in params:
        np.testing.assert_array_equal(a[k].codes, b[k].codes)
        assert a[k].context == b[k].context
    ea, eb = load(a), load(b, again)
    for k in params:
        np.testing.assert_array_equal(ea[k].view(np.uint32), eb[k].view(np.uint32))


# ==================================================================================================
# Round trips without faults
# ==================================================================================================


def test_round_trip_float32_identity_is_bit_exact():
    params = make_params()
    params["fc.bias"][:3] = [-0.0, np.inf, np.float32(1e-45)]  # signed zero, inf, a subnormal survive
    stored = store(params, default_spec("float32", "identity"))
    for k, v in params.items():
        np.testing.assert_array_equal(stored[k].codes, v.view(np.uint32))  # the stored words are the bits
        assert stored[k].codes.dtype == np.uint32 and stored[k].nbits == 32
    eff = load(stored)
    for k, v in params.items():
        assert eff[k].dtype == np.float32
        np.testing.assert_array_equal(eff[k].view(np.uint32), v.view(np.uint32))


def test_round_trip_float64_latents_float64_format():
    params = make_params(np.float64)
    eff = load(store(params, default_spec("float64")))
    for k, v in params.items():
        assert eff[k].dtype == np.float64
        np.testing.assert_array_equal(eff[k].view(np.uint64), v.view(np.uint64))


def test_float64_latents_in_float16_come_back_float64():
    params = make_params(np.float64)
    eff = load(store(params, default_spec("float16")))
    for k, v in params.items():
        assert eff[k].dtype == np.float64
        np.testing.assert_array_equal(eff[k], v.astype(np.float16).astype(np.float64))  # NumPy cast: RNE once


def test_float32_latents_stored_in_float16_match_numpy_cast():
    params = make_params()
    stored = store(params, default_spec("float16", "tanh"))
    eff = load(stored)
    for k, v in params.items():
        ref_codes = v.astype(np.float16).view(np.uint16)
        np.testing.assert_array_equal(stored[k].codes, ref_codes)
        decoded = v.astype(np.float16).astype(np.float32)
        ref = tanh32(decoded) if k in WEIGHTS else decoded
        np.testing.assert_array_equal(eff[k], ref)


def test_round_trip_tanh_float32_equals_independent_tanh():
    params = make_params(std=2.0)
    eff = load(store(params, default_spec("float32", "tanh")))
    for k, v in params.items():
        ref = tanh32(v) if k in WEIGHTS else v
        np.testing.assert_array_equal(eff[k].view(np.uint32), ref.view(np.uint32))


def test_round_trip_q25_within_half_step():
    params = make_params(std=1.5)
    params["fc.bias"][:] = [5.0, -7.0, 3.99]  # outside the range [-4, 4 - 2**-5]: saturate
    stored = store(params, default_spec("q2.5"))
    eff = load(stored)
    for k, v in params.items():
        assert stored[k].codes.dtype == np.uint8 and eff[k].dtype == np.float32
        x = v.astype(np.float64)
        inside = (x >= -4.0) & (x <= 4.0 - 2.0**-5)
        assert np.all(np.abs(eff[k][inside] - x[inside]) <= 2.0**-6)
        # Reference codes: round half to even of 32 x, saturated, two's complement in 8 bits.
        k_ref = np.clip(np.rint(x * 32.0), -128, 127).astype(np.int64)
        np.testing.assert_array_equal(stored[k].codes, (k_ref & 0xFF).astype(np.uint8))
        np.testing.assert_array_equal(eff[k], (k_ref / 32.0).astype(np.float32))
    np.testing.assert_array_equal(eff["fc.bias"], np.float32([127 / 32, -4.0, 128 / 32 - 1 / 32]))


def test_round_trip_quantizer_within_half_step():
    params = make_params()
    stored = store(params, default_spec(Quantizer(8)))  # asymmetric, offset binary, rounded
    eff = load(stored)
    for k, v in params.items():
        x = v.astype(np.float64)
        lo, hi = x.min(), x.max()
        # Asymmetric: [lo, hi] maps onto [-1, 1] with step 1/127, i.e. (hi - lo) / 254 in x.
        half_step = (hi - lo) / 254 / 2
        slack = 8 * np.spacing(np.float32(np.abs(x).max()))  # float32 arithmetic of the quantizer
        assert np.abs(eff[k] - x).max() <= half_step + slack
        assert stored[k].context is not None and stored[k].codes.dtype == np.uint8


def test_clip_and_scale_before_encoding():
    params = make_params(std=1.0)
    spec = StorageSpec([StorageRule("*", format="float32", clip=0.5, scale=4.0)])
    stored = store(params, spec)
    eff = load(stored)
    for k, v in params.items():
        ref = np.clip(v, np.float32(-0.5), np.float32(0.5)) * np.float32(4.0)
        np.testing.assert_array_equal(stored[k].codes, ref.view(np.uint32))
        np.testing.assert_array_equal(eff[k], ref / np.float32(4.0))


def test_stored_model_properties_and_immutability():
    params = make_params()
    stored = store(params, default_spec("q2.5", expose_non_weights=False))
    n_weights = sum(params[k].size for k in WEIGHTS)
    n_all = sum(v.size for v in params.values())
    assert stored.total_bits == 8 * n_all
    assert stored.exposed_bits == 8 * n_weights
    assert stored.exposed_names == WEIGHTS
    assert stored.names == tuple(params) and list(stored) == list(params) and len(stored) == len(params)
    assert stored.shapes == {k: v.shape for k, v in params.items()}
    for codes in stored.codes.values():
        with pytest.raises(ValueError):
            codes[...] = 0  # read-only
    with pytest.raises(TypeError):
        stored.tensors["fc.weight"] = stored["fc.bias"]  # read-only mapping
    new = np.zeros(SHAPES["fc.bias"], np.uint8)
    other = stored.with_codes({"fc.bias": new})
    new[...] = 1  # the stored model took a copy
    np.testing.assert_array_equal(other["fc.bias"].codes, 0)
    assert other["fc.weight"].codes is stored["fc.weight"].codes  # unchanged tensors are shared
    assert not np.array_equal(stored["fc.bias"].codes, 0)


def test_7_bit_fixed_point_counts_its_bits():
    stored = store(make_params(), default_spec("q1.5"))
    assert stored.total_bits == 7 * sum(int(np.prod(s)) for s in SHAPES.values())


# ==================================================================================================
# Faults
# ==================================================================================================


@pytest.mark.slow
def test_latents_byte_identical_after_thousands_of_injections():
    params = make_params()
    before = digest(params)
    spec = default_spec("float16", "tanh")
    stored = store(params, spec)
    stored_before = digest(stored.codes)
    rng = np.random.default_rng(7)
    for _ in range(1000):
        eff, cache = effective_weights(params, spec, faults=BitErrors(0.02), rng=rng)
        effective_weights_backward({k: np.ones_like(v) for k, v in eff.items()}, cache)
        inject(stored, BitErrors(0.05), rng=rng)
    for rates in ([1e-3, 1e-2, 0.1],) * 500:
        inject_nested(stored, rates, rng=rng)
    assert digest(params) == before
    assert digest(stored.codes) == stored_before


def test_same_seed_same_bits_and_different_seed_differs():
    stored = store(make_params(), default_spec())
    a, b, c = (inject(stored, BitErrors(0.05), rng=s).stored for s in (11, 11, 12))
    assert all(np.array_equal(a[k].codes, b[k].codes) for k in stored)
    assert any(not np.array_equal(a[k].codes, c[k].codes) for k in stored)
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    d, e = inject(stored, BitErrors(0.05), rng=g1).stored, inject(stored, BitErrors(0.05), rng=g2).stored
    assert all(np.array_equal(d[k].codes, e[k].codes) for k in stored)


def test_unexposed_tensors_never_change():
    params = make_params()
    stored = store(params, default_spec("float32", "tanh", expose_non_weights=False))
    faulty, fl = inject(stored, BitErrors(0.5), rng=0)
    for k in params:
        same = np.array_equal(faulty[k].codes, stored[k].codes)
        assert same == (k not in WEIGHTS)
    assert set(fl.tensors) == set(WEIGHTS)
    nested = inject_nested(stored, [0.1, 0.5], rng=0)
    for m, _ in nested:
        for k in params:
            assert np.array_equal(m[k].codes, stored[k].codes) == (k not in WEIGHTS)


def test_faultlist_matches_the_changed_bits_and_replays():
    stored = store(make_params(), default_spec("float16"))
    faulty, fl = inject(stored, BitErrors(0.03), rng=4)
    assert len(fl) > 0
    recorded = {}
    for rec in fl:
        assert rec.kind == "flip" and rec.format == "float16"
        recorded.setdefault(rec.tensor, set()).add((rec.index, rec.bit))
    for k in stored:
        assert xor_diff_bits(stored[k].codes, faulty[k].codes) == recorded.get(k, set())
    # Replay, also after a JSON round trip of the list.
    for replay_list in (fl, FaultList.from_json(fl.to_json())):
        again, fl2 = inject(stored, replay_list)
        assert fl2 == replay_list
        for k in stored:
            np.testing.assert_array_equal(again[k].codes, faulty[k].codes)


def test_bit_error_rate_is_p():
    # ~2100 words * 32 bits = 67k bits at p = 0.1: the flip count is Binomial(N, p); 6 sigma band.
    params = {"w.weight": np.zeros((64, 33), np.float32)}
    stored = store(params, default_spec())
    n = stored.exposed_bits
    _, fl = inject(stored, BitErrors(0.1), rng=2)
    sigma = np.sqrt(n * 0.1 * 0.9)
    assert abs(len(fl) - 0.1 * n) < 6 * sigma


# A spec serialised by the code before the codec protocol (hand-written here, not produced by to_dict):
# the JSON form of every format must load and re-serialise to exactly these bytes.
SPEC_JSON = (
    '{"rules": [{"pattern": "fc.*", "regex": false, "role": "weight", "format": {"quantizer": {"nbits": 8, '
    '"scheme": "asymmetric", "code": "offset_binary", "rounding": "nearest_even", "clip": null, "max_abs": '
    'null, "margin": 0.0}}, "transform": {"name": "tanh", "scale": 1.0}, "clip": 0.5, "scale": null, '
    '"exposed": true}, {"pattern": "*", "regex": false, "role": "weight", "format": "q2.5", "transform": '
    '{"name": "arctan", "scale": 1.0}, "clip": null, "scale": 2.0, "exposed": true}, {"pattern": "*", '
    '"regex": false, "role": null, "format": "bfloat16", "transform": {"name": "identity", "scale": 1.0}, '
    '"clip": null, "scale": null, "exposed": false}]}'
)


def test_stored_spec_json_loads_and_serialises_byte_identically():
    spec = StorageSpec.from_dict(json.loads(SPEC_JSON))
    assert [r.format_name for r in spec.rules] == ["quant8_asym_offset_rounded", "q2.5", "bfloat16"]
    assert json.dumps(spec.to_dict()) == SPEC_JSON


def test_a_custom_fault_model_and_its_replay():
    stored = store(make_params(), default_spec("q2.5", expose_non_weights=False))
    seen = []

    class StuckSign(FaultModel):  # every sign bit stuck at 1, recorded as stuck1 records
        def corrupt(self, codes, rng, target):
            seen.append((target.name, target.nbits, target.format))
            assert isinstance(rng, np.random.Generator)
            index = np.arange(codes.size)
            fl = FaultList.from_arrays(index, np.full(codes.size, 7), kind="stuck1", tensor=target.name,
                                       format_name=target.format)
            return codes | np.uint8(1 << (target.nbits - 1)), fl

    faulty, fl = inject(stored, StuckSign(), rng=0)
    assert seen == [(k, 8, "q2.5") for k in WEIGHTS]
    for k in stored:
        ref = stored[k].codes | np.uint8(0x80) if k in WEIGHTS else stored[k].codes
        np.testing.assert_array_equal(faulty[k].codes, ref)
    replay = inject(stored, fl).stored
    for k in stored:
        np.testing.assert_array_equal(replay[k].codes, faulty[k].codes)


def test_inject_nested_patterns_nest_and_replay():
    stored = store(make_params(), default_spec("float32"))
    rates = [0.05, 0.001, 0.2]  # any order; results follow it
    injections = inject_nested(stored, rates, rng=9)
    assert all(isinstance(i, Injection) for i in injections)
    models, lists = [i.stored for i in injections], [i.faults for i in injections]
    assert len(models) == 3
    diffs = [{k: xor_diff_bits(stored[k].codes, m[k].codes) for k in stored} for m in models]
    for k in stored:
        assert diffs[1][k] <= diffs[0][k] <= diffs[2][k]
    total = [sum(len(d) for d in dd.values()) for dd in diffs]
    assert total[1] < total[0] < total[2]
    for m, fl in zip(models, lists, strict=True):
        replay = inject(stored, fl).stored
        for k in stored:
            np.testing.assert_array_equal(replay[k].codes, m[k].codes)
    # Same seed, same patterns.
    again = [i.stored for i in inject_nested(stored, rates, rng=9)]
    for m, a in zip(models, again, strict=True):
        assert all(np.array_equal(m[k].codes, a[k].codes) for k in stored)


def test_bit_errors_equal_the_array_function_tensor_after_tensor():
    # inject(BitErrors(p)) = inject_bit_errors on each exposed tensor in stored order, one generator
    stored = store(make_params(), default_spec("bfloat16", expose_non_weights=False))
    got, fl = inject(stored, BitErrors(0.07), rng=np.random.default_rng(21))
    gen = np.random.default_rng(21)
    for k in stored:
        ref = inject_bit_errors(stored[k].codes, 0.07, rng=gen, nbits=16) if k in WEIGHTS else stored[k].codes
        np.testing.assert_array_equal(got[k].codes, ref)
        assert xor_diff_bits(stored[k].codes, ref) == {(r.index, r.bit) for r in fl if r.tensor == k}
    assert fl.tensors == WEIGHTS and set(fl.format) == {"bfloat16"}


def test_exact_count_bursts_and_stuck_at_through_inject_replay():
    stored = store(make_params(), default_spec("q2.5", expose_non_weights=False))
    gen = np.random.default_rng(4)
    faulty, fl = inject(stored, ExactCount(5), rng=np.random.default_rng(4))
    for k in stored:  # k flips per exposed tensor, the draws of inject_exact_k in stored order
        ref = inject_exact_k(stored[k].codes, 5, rng=gen, nbits=8) if k in WEIGHTS else stored[k].codes
        np.testing.assert_array_equal(faulty[k].codes, ref)
        assert len(xor_diff_bits(stored[k].codes, faulty[k].codes)) == (5 if k in WEIGHTS else 0)
    gen = np.random.default_rng(8)
    bursts, bl = inject(stored, Bursts(0.2, 3), rng=np.random.default_rng(8))
    for k in WEIGHTS:
        ref = inject_bursts(stored[k].codes, 0.2, 3, rng=gen, nbits=8)
        np.testing.assert_array_equal(bursts[k].codes, ref)
    chip = sample_stuck_at_map(SHAPES["fc.weight"], 8, 0.2, rng=1)
    stuck, sl = inject(stored, StuckAt({"fc.weight": chip}))
    ref = (stored["fc.weight"].codes & chip.and_mask) | chip.or_mask  # the stuck-at formula, by NumPy
    np.testing.assert_array_equal(stuck["fc.weight"].codes, ref)
    assert all(np.array_equal(stuck[k].codes, stored[k].codes) for k in stored if k != "fc.weight")
    assert set(sl.kind) <= {"stuck0", "stuck1"} and sl.tensors == ("fc.weight",)
    for model, faults in ((faulty, fl), (bursts, bl), (stuck, sl)):
        for replay in (inject(stored, faults), inject(stored, Replay(faults))):
            assert replay.faults == faults  # grouped in stored order already: the same list back
            for k in stored:
                np.testing.assert_array_equal(replay.stored[k].codes, model[k].codes)


def test_replay_of_an_interleaved_list_groups_records_by_tensor():
    stored = store(make_params(), default_spec("float32"))
    records = [("fc.weight", 1, 3, "flip", "float32"), ("conv1.weight", 0, 31, "flip", "float32"),
               ("fc.weight", 2, 0, "stuck1", "float32")]
    out, fl = inject(stored, FaultList(records))
    assert list(fl) == [records[1], records[0], records[2]]  # stored order: conv1.weight first
    ref = stored["fc.weight"].codes.reshape(-1).copy()
    ref[1] ^= np.uint32(1 << 3)
    ref[2] |= np.uint32(1)
    np.testing.assert_array_equal(out["fc.weight"].codes.reshape(-1), ref)


def test_effective_weights_with_a_fault_model_equals_load_of_inject_and_keeps_the_faults():
    params = make_params()
    spec = default_spec("float16", "tanh")
    eff, cache = effective_weights(params, spec, faults=BitErrors(0.03), rng=5)
    stored, fl = inject(store(params, spec), BitErrors(0.03), rng=5)
    assert cache.faults == fl and len(fl) > 0
    ref = load(stored)
    for k in params:
        np.testing.assert_array_equal(eff[k], ref[k])
    eff2, cache2 = effective_weights(params, spec, faults=fl)  # a FaultList: replay, no rng
    assert cache2.faults == fl
    for k in params:
        np.testing.assert_array_equal(eff2[k], ref[k])


# ==================================================================================================
# Load: independent checks of what faulty words read back as
# ==================================================================================================


def one_flip(stored, name, index, bit):
    fmt = stored[name].format
    return inject(stored, FaultList([(name, index, bit, "flip", fmt)])).stored


def test_float32_exponent_msb_flip_is_huge_and_tanh_bounds_it():
    params = make_params()
    u = params["conv1.weight"]
    idx = int(np.argmax(np.abs(u).reshape(-1) < 1.0))  # |u| < 1: exponent MSB is 0, flip multiplies by 2**128
    spec_id, spec_tanh = default_spec("float32"), default_spec("float32", "tanh")
    flipped = (u.reshape(-1)[idx:idx + 1].view(np.uint32) ^ np.uint32(1 << 30)).view(np.float32)[0]
    assert np.isfinite(flipped) and abs(flipped) > 1e30
    eff = load(one_flip(store(params, spec_id), "conv1.weight", idx, 30))
    assert eff["conv1.weight"].reshape(-1)[idx] == flipped
    eff_t = load(one_flip(store(params, spec_tanh), "conv1.weight", idx, 30))
    assert eff_t["conv1.weight"].reshape(-1)[idx] == np.sign(u.reshape(-1)[idx])  # tanh(huge) = +-1
    others = np.arange(u.size) != idx
    np.testing.assert_array_equal(eff_t["conv1.weight"].reshape(-1)[others], tanh32(u).reshape(-1)[others])


def test_inf_and_nan_from_memory_propagate_or_zero():
    params = make_params()
    params["fc.weight"][0, :2] = [1.0, -1.5]  # exponent 127: flipping bit 30 gives inf / NaN
    ref_inf = (np.float32(1.0).view(np.uint32) ^ np.uint32(1 << 30)).view(np.float32)
    ref_nan = (np.float32(-1.5).view(np.uint32) ^ np.uint32(1 << 30)).view(np.float32)
    assert np.isposinf(ref_inf) and np.isnan(ref_nan)
    faults = FaultList([("fc.weight", 0, 30, "flip", "float32"), ("fc.weight", 1, 30, "flip", "float32")])
    for transform, expected in (("identity", (np.inf, np.nan)), ("tanh", (1.0, np.nan))):
        spec = default_spec("float32", transform)
        faulty = inject(store(params, spec), faults).stored
        w = load(faulty)["fc.weight"].reshape(-1)
        np.testing.assert_array_equal(w[:2], np.float32(expected))
        wz = load(faulty, nonfinite="zero")["fc.weight"].reshape(-1)
        np.testing.assert_array_equal(wz[:2], np.float32([0.0, 0.0]))
        rest = params["fc.weight"].reshape(-1)[2:]
        np.testing.assert_array_equal(wz[2:], rest if transform == "identity" else tanh32(rest))


def test_float16_and_fixed_point_single_flips_against_numpy():
    params = make_params()
    u = params["fc.weight"].reshape(-1)
    for bit in range(16):
        faulty = one_flip(store(params, default_spec("float16")), "fc.weight", 5, bit)
        ref = (u[5:6].astype(np.float16).view(np.uint16) ^ np.uint16(1 << bit)).view(np.float16)
        got = load(faulty)["fc.weight"].reshape(-1)[5]
        np.testing.assert_array_equal(got, ref.astype(np.float32)[0])
    k = int(np.rint(np.float64(u[5]) * 32))
    for bit in range(8):
        faulty = one_flip(store(params, default_spec("q2.5")), "fc.weight", 5, bit)
        word = (k & 0xFF) ^ (1 << bit)
        k_flipped = word - 256 if word >= 128 else word  # two's complement of the flipped word
        assert load(faulty)["fc.weight"].reshape(-1)[5] == np.float32(k_flipped / 32)


def test_float64_format_read_into_float32_latents_rounds():
    params = make_params()
    faulty = one_flip(store(params, default_spec("float64")), "fc.bias", 0, 62)  # exponent MSB
    x64 = (params["fc.bias"][:1].astype(np.float64).view(np.uint64) ^ np.uint64(1 << 62)).view(np.float64)
    got = load(faulty)["fc.bias"]
    assert got.dtype == np.float32
    with np.errstate(over="ignore"):
        assert got[0] == x64.astype(np.float32)[0]  # 2**1024-ish overflows float32 to inf


def test_load_does_not_modify_and_returns_new_arrays():
    params = make_params()
    stored = store(params, default_spec("float32"))
    h = digest(stored.codes)
    eff = load(stored)
    eff["fc.weight"][...] = 7  # writable, and not a view of the codes
    assert digest(stored.codes) == h


# ==================================================================================================
# Gradients
# ==================================================================================================


def loss_and_grad_ref(latents, spec, g):
    """L(u) = sum_k <G_k, w_k(u)>, evaluated through the pipeline (no faults)."""
    eff, _ = effective_weights(latents, spec)
    return sum(float(np.sum(g[k].astype(np.float64) * eff[k])) for k in eff)


@pytest.mark.parametrize("transform", ["tanh", "arctan", "softsign", "identity"])
@pytest.mark.parametrize("scale", [None, 3.0, 0.37])
def test_backward_matches_central_differences_float64(transform, scale):
    params = make_params(np.float64, std=0.8)
    spec = StorageSpec([
        StorageRule("*", role="weight", format="float64", transform=transform, scale=scale),
        StorageRule("*", format="float64"),
    ])
    rng = np.random.default_rng(1)
    g = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    eff, cache = effective_weights(params, spec)
    grads = effective_weights_backward(g, cache)
    h = 1e-6
    for k in ("conv1.weight", "fc.weight", "fc.bias"):
        for flat in (0, params[k].size // 2, params[k].size - 1):
            plus = {n: v.copy() for n, v in params.items()}
            minus = {n: v.copy() for n, v in params.items()}
            plus[k].reshape(-1)[flat] += h
            minus[k].reshape(-1)[flat] -= h
            fd = (loss_and_grad_ref(plus, spec, g) - loss_and_grad_ref(minus, spec, g)) / (2 * h)
            got = grads[k].reshape(-1)[flat]
            assert abs(got - fd) <= 1e-7 * max(1.0, abs(fd)), (k, flat, got, fd)


def test_backward_is_straight_through_with_derivative_at_faulty_value():
    params = make_params(std=1.0)
    spec = StorageSpec([
        StorageRule("*", role="weight", format="float16", transform="tanh", clip=0.8, scale=2.5),
        StorageRule("*", format="float16"),
    ])
    rng = np.random.default_rng(3)
    dw = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    dw_before = digest(dw)
    eff, cache = effective_weights(params, spec, faults=BitErrors(0.05), rng=0)
    grads = effective_weights_backward(dw, cache)
    assert digest(dw) == dw_before
    assert isinstance(cache, EffectiveWeightsCache) and len(cache.faults) > 0
    for k, v in params.items():
        # Independent u_hat: the faulty float16 words viewed by NumPy, widened, divided by the scale.
        with np.errstate(invalid="ignore"):  # NaN words with the quiet bit clear: payloads differ, fine
            decoded = cache.stored[k].codes.view(np.float16).astype(np.float32)
        decoded = np.where(np.isnan(decoded), np.float32(np.nan), decoded)  # quiet NaNs for the arithmetic
        if k in WEIGHTS:
            u_hat = decoded / np.float32(2.5)
            with np.errstate(over="ignore"):  # cosh(large) = inf gives sech^2 = 0, correctly
                fprime = 1.0 / np.cosh(u_hat.astype(np.float64)) ** 2  # sech^2, another formula
            ref = (fprime * dw[k]).astype(np.float32)
            finite = np.isfinite(u_hat)
            np.testing.assert_allclose(grads[k][finite], ref[finite], rtol=4e-7, atol=1e-30)
            # f'(+-inf) = 0: an infinite read gives a zero gradient.
            assert np.all(grads[k][np.isinf(u_hat)] == 0)
            # Clip passes the gradient through: latents beyond 0.8 still get f'(u_hat) * dw, not 0.
            beyond = np.abs(v) > 0.8
            assert beyond.any() and np.any(grads[k][beyond] != 0)
        else:
            np.testing.assert_array_equal(grads[k][np.isfinite(decoded)], dw[k][np.isfinite(decoded)])
        np.testing.assert_array_equal(
            eff[k], tanh32(decoded / np.float32(2.5)) if k in WEIGHTS else decoded
        )


def test_backward_quantizer_identity_passes_gradient_and_zero_policy():
    params = make_params()
    spec8 = default_spec(Quantizer(8), "identity")
    eff, cache = effective_weights(params, spec8, faults=BitErrors(0.1), rng=1)
    dw = {k: np.full(v.shape, 0.5, np.float32) for k, v in eff.items()}
    grads = effective_weights_backward(dw, cache)
    for k in params:
        np.testing.assert_array_equal(grads[k], dw[k])
    # "zero": an inf read from memory becomes 0, and the gradient is f'(0) * dw = dw for tanh.
    params["fc.weight"][0, 0] = 1.0
    faults = FaultList([("fc.weight", 0, 30, "flip", "float32")])
    spec = default_spec("float32", "tanh")
    eff, cache = effective_weights(params, spec, faults=faults, nonfinite="zero")
    assert eff["fc.weight"][0, 0] == 0
    grads = effective_weights_backward({k: np.ones_like(v) for k, v in eff.items()}, cache)
    assert grads["fc.weight"][0, 0] == 1.0
    eff_p, cache_p = effective_weights(params, spec, faults=faults)
    assert eff_p["fc.weight"][0, 0] == 1.0  # tanh(inf)
    grads_p = effective_weights_backward({k: np.ones_like(v) for k, v in eff_p.items()}, cache_p)
    assert grads_p["fc.weight"][0, 0] == 0.0  # tanh'(inf)


@given(st.lists(st.floats(-10, 10, width=32), min_size=1, max_size=20),
       st.sampled_from(["float32", "float16", "bfloat16", "q2.5", "float8_e4m3fn"]))
def test_effective_weights_equals_load_of_store(values, fmt):
    u = np.array(values, np.float32)
    params = {"a.weight": u.reshape(1, -1), "a.bias": u[:1].copy()}
    spec = default_spec(fmt, "arctan")
    eff, cache = effective_weights(params, spec)
    eff2 = load(store(params, spec))
    for k in params:
        np.testing.assert_array_equal(eff[k], eff2[k])
    assert cache.faults is None


# ==================================================================================================
# Validation
# ==================================================================================================


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"pattern": 3}, TypeError, "StorageRule: pattern must be a str"),
        ({"pattern": "(", "regex": True}, ValueError, "pattern must be a valid regular expression"),
        ({"regex": 1}, TypeError, "regex must be a bool"),
        ({"pattern": "fc.*", "format": "float12"}, ValueError,
         r"StorageRule: rule 'fc.\*' format must be an IEEE format name .* got 'float12'"),
        ({"format": 32}, TypeError, "format must be a format name"),
        ({"format": "q40.5"}, ValueError, r"format 'q40.5' has 1 \+ M \+ N = 46 bits, expected 2..32"),
        ({"transform": 1.0}, TypeError, "transform must be a transform name or a Transform"),
        ({"transform": "sigmoid"}, ValueError, r"StorageRule: transform must be one of .*got 'sigmoid'"),
        ({"clip": 0.0}, ValueError, "clip must be None or a finite positive number"),
        ({"clip": "1"}, TypeError, "clip must be a real number"),
        ({"scale": float("inf")}, ValueError, "scale must be None or a finite positive number"),
        ({"exposed": 1}, TypeError, "exposed must be a bool"),
        ({"role": "conv"}, ValueError, "role must be one of"),
    ],
)
def test_rule_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        StorageRule(**kwargs)


def test_spec_and_dict_validation():
    with pytest.raises(TypeError, match="StorageSpec: rules must be a list or tuple"):
        StorageSpec(StorageRule())
    with pytest.raises(TypeError, match=r"StorageSpec: rules\[1\] must be a StorageRule"):
        StorageSpec([StorageRule(), {"pattern": "*"}])
    with pytest.raises(ValueError, match="StorageSpec: rules must contain at least one"):
        StorageSpec([])
    with pytest.raises(TypeError, match="StorageSpec.from_dict: data must be a dict"):
        StorageSpec.from_dict([])
    with pytest.raises(ValueError, match=r"StorageSpec.from_dict: data must be \{'rules'"):
        StorageSpec.from_dict({"rule": []})
    with pytest.raises(TypeError, match="StorageRule.from_dict: data must be a dict"):
        StorageRule.from_dict("*")
    with pytest.raises(ValueError, match="data keys must be among"):
        StorageRule.from_dict({"pattern": "*", "fmt": "float16"})
    with pytest.raises(ValueError, match="format must be a name or"):
        StorageRule.from_dict({"format": {"quant": {}}})
    with pytest.raises(ValueError, match=r"rule '\*' quantizer must have 'nbits' and keys among .*, got keys "
                                         r"\['bits', 'scheme'\]"):
        StorageRule.from_dict({"format": {"quantizer": {"bits": 8, "scheme": "symmetric"}}})
    with pytest.raises(ValueError, match=r"quantizer must have 'nbits' .*, got keys \['margin'\]"):
        StorageRule.from_dict({"format": {"quantizer": {"margin": 0.1}}})
    with pytest.raises(ValueError, match="transform must be a name or"):
        StorageRule.from_dict({"transform": {"kind": "tanh"}})
    with pytest.raises(TypeError, match="default_spec: expose_non_weights must be a bool"):
        default_spec(expose_non_weights="no")


def test_store_validation():
    spec = default_spec()
    good = make_params()
    with pytest.raises(TypeError, match=r"store: params must be a dict of str -> ndarray, got list"):
        store([good["fc.bias"]], spec)
    with pytest.raises(TypeError, match="store: params keys must be str"):
        store({1: good["fc.bias"]}, spec)
    with pytest.raises(TypeError, match=r"store: params\['fc.bias'\] must be a numpy.ndarray"):
        store({"fc.bias": [1.0]}, spec)
    with pytest.raises(TypeError, match=r"store: params\['fc.bias'\] must have dtype in \(float32, float64"):
        store({"fc.bias": np.zeros(3, np.float16)}, spec)
    with pytest.raises(TypeError, match="mixed dtypes are not promoted"):
        store({"fc.bias": np.zeros(3, np.float32), "fc.weight": np.zeros((3, 3))}, spec)
    with pytest.raises(TypeError, match="store: spec must be a StorageSpec"):
        store(good, [StorageRule()])
    with pytest.raises(TypeError, match=r"store: params\['fc.bias'\] must be float32 to be stored with"):
        store({"fc.bias": np.zeros(3)}, default_spec(Quantizer(8)))
    with pytest.raises(ValueError, match=r"store: params\['fc.bias'\] cannot be stored as q2.5: .*NaN"):
        store({"fc.bias": np.float32([0.0, np.nan])}, default_spec("q2.5"))
    # A scale that is finite in float64 but not in float32 would silently store inf (or divide by 0).
    huge = StorageSpec([StorageRule("*", scale=1e40)])
    match = r"store: the scale of the rule for 'fc.bias' must be finite and nonzero in float32, the latent "
    with pytest.raises(ValueError, match=match + r"dtype, got 1e\+40, which rounds to"):
        store({"fc.bias": np.ones(3, np.float32)}, huge)
    with pytest.raises(ValueError, match=r"store: the clip of the rule for 'fc.bias' must be finite and"):
        store({"fc.bias": np.ones(3, np.float32)}, StorageSpec([StorageRule("*", clip=1e-50)]))
    wide = StorageSpec([StorageRule("*", format="float64", scale=1e40)])  # float64 latents hold 1e40
    np.testing.assert_array_equal(load(store({"fc.bias": np.ones(3)}, wide))["fc.bias"], np.ones(3))


def test_with_codes_validation():
    stored = store(make_params(), default_spec("q1.5"))
    with pytest.raises(TypeError, match="StoredModel.with_codes: new_codes must be a dict"):
        stored.with_codes([])
    with pytest.raises(ValueError, match="new_codes key must be a stored tensor name, got 'nope'"):
        stored.with_codes({"nope": np.zeros(3, np.uint8)})
    with pytest.raises(TypeError, match=r"new_codes\['fc.bias'\] must have dtype in \(uint8\)"):
        stored.with_codes({"fc.bias": np.zeros(3, np.uint16)})
    with pytest.raises(ValueError, match=r"new_codes\['fc.bias'\] must have shape \(3,\)"):
        stored.with_codes({"fc.bias": np.zeros(4, np.uint8)})
    with pytest.raises(ValueError, match=r"new_codes\['fc.bias'\] must fit in 7 bits, got a code 0x80"):
        stored.with_codes({"fc.bias": np.uint8([0, 0x80, 1])})


def test_inject_validation():
    stored = store(make_params(), default_spec(expose_non_weights=False))
    fl = FaultList([("fc.weight", 0, 1, "flip", "float32")])
    with pytest.raises(TypeError, match="inject: stored must be a StoredModel"):
        inject({}, BitErrors(0.1), rng=0)
    with pytest.raises(TypeError, match=r"inject: faults must be a fault model \(BitErrors, ExactCount"):
        inject(stored, 0.1, rng=0)
    with pytest.raises(TypeError, match="inject: faults must be a fault model .* or a FaultList, got list"):
        inject(stored, [("fc.weight", 0, 1, "flip", "float32")])
    with pytest.raises(ValueError, match="inject: rng must be None for Replay"):
        inject(stored, fl, rng=0)
    with pytest.raises(ValueError, match="inject: rng must be None for StuckAt"):
        inject(stored, StuckAt({}), rng=0)
    with pytest.raises(TypeError, match="inject: rng must be a numpy.random.Generator"):
        inject(stored, BitErrors(0.1))
    with pytest.raises(ValueError, match="inject: k must be at most the candidate bits of tensor 'fc.w"):
        inject(stored, ExactCount(385), rng=0)
    with pytest.raises(ValueError, match="inject: burst_len must be at most the nbits of tensor 'conv1"):
        inject(store(make_params(), default_spec("float16")), Bursts(0.1, 17), rng=0)
    with pytest.raises(ValueError, match=r"inject: bit_mask must be an integer mask in \[0, 2\*\*8\)"):
        inject(store(make_params(), default_spec("q2.5")), BitErrors(0.1, bit_mask=0x100), rng=0)
    for bad, match in (
        (FaultList([("fc.bias", 0, 1, "flip", "float32")]),
         "faults must only hit exposed tensors, got the unexposed tensor 'fc.bias'"),
        (FaultList([("fc.nope", 0, 1, "flip", "float32")]),
         r"faults must name stored tensors \('conv1.weight', .*\), got 'fc.nope'"),
        (FaultList([("fc.weight", 0, 1, "flip", "float16")]),
         "faults for 'fc.weight' must carry its format 'float32', got 'float16'"),
        (FaultList([("fc.weight", 12, 1, "flip", "float32")]),
         r"faults for 'fc.weight' must have index < its size \(=12\), got 12"),
    ):
        with pytest.raises(ValueError, match="inject: " + match):
            inject(stored, bad)
    chip = sample_stuck_at_map(SHAPES["fc.weight"], 32, 0.1, rng=0, dtype=np.uint32)
    with pytest.raises(ValueError, match="inject: the stuck-at maps must name stored tensors .*'fc.wieght'"):
        inject(stored, StuckAt({"fc.wieght": chip}))
    with pytest.raises(ValueError, match="inject: the stuck-at maps must only hit exposed tensors.* 'fc.bia"):
        inject(stored, StuckAt({"fc.bias": chip}))
    with pytest.raises(ValueError, match="inject: the stuck-at map of tensor 'conv1.weight' shape"):
        inject(stored, StuckAt(chip))  # one map for every tensor: conv1.weight has another shape


def test_inject_nested_validation():
    stored = store(make_params(), default_spec())
    with pytest.raises(TypeError, match="inject_nested: stored must be a StoredModel"):
        inject_nested(None, [0.1], rng=0)
    with pytest.raises(TypeError, match="inject_nested: rates must be a sequence of bit-error rates"):
        inject_nested(stored, 0.1, rng=0)
    with pytest.raises(ValueError, match=r"inject_nested: rates\[1\] must be a probability"):
        inject_nested(stored, [0.1, -0.1], rng=0)
    with pytest.raises(TypeError, match="inject_nested: rng must be"):
        inject_nested(stored, [0.1], rng=None)
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'return_faults'"):
        inject_nested(stored, [0.1], rng=0, return_faults=True)  # one return type: no modes


def test_load_and_effective_weights_validation():
    params = make_params()
    stored = store(params, default_spec("float16"))
    with pytest.raises(TypeError, match="load: stored must be a StoredModel"):
        load(params)
    with pytest.raises(ValueError, match="load: nonfinite must be one of"):
        load(stored, nonfinite="nan")
    with pytest.raises(TypeError, match="load: spec must be a StorageSpec"):
        load(stored, "float16")
    with pytest.raises(
        ValueError, match=r"load: spec format for 'conv1.weight' \(='bfloat16'\) must equal the stored format"
    ):
        load(stored, default_spec("bfloat16"))
    with pytest.raises(ValueError, match="effective_weights: rng must be None when no faults are requested"):
        effective_weights(params, default_spec(), rng=0)
    with pytest.raises(TypeError, match="effective_weights: rng must be a numpy.random.Generator"):
        effective_weights(params, default_spec(), faults=BitErrors(0.1))
    with pytest.raises(TypeError, match="effective_weights: faults must be a fault model"):
        effective_weights(params, default_spec(), faults=0.1, rng=0)
    with pytest.raises(ValueError, match="effective_weights: faults must name stored tensors .*'fc.wieght'"):
        effective_weights(params, default_spec(), faults=FaultList([("fc.wieght", 0, 0, "flip", "float32")]))
    with pytest.raises(ValueError, match="effective_weights: nonfinite must be one of"):
        effective_weights(params, default_spec(), nonfinite="nan")
    with pytest.raises(TypeError, match=r"effective_weights: latents\['fc.bias'\] must have dtype"):
        effective_weights({**params, "fc.bias": np.ones(3, np.int32)}, default_spec())
    with pytest.raises(TypeError, match="effective_weights: spec must be a StorageSpec"):
        effective_weights(params, "float32")
    with pytest.raises(TypeError, match=r"effective_weights: latents\['conv1.weight'\] must be float32 to"):
        effective_weights({k: v.astype(np.float64) for k, v in params.items()}, default_spec(Quantizer(8)))
    # The spec given to load may differ from the storing one in its scale: checked in the latent dtype too.
    stored32 = store({"fc.bias": np.ones(3, np.float32)}, default_spec())
    with pytest.raises(ValueError, match=r"load: the scale of the rule for 'fc.bias' must be finite and"):
        load(stored32, StorageSpec([StorageRule("*", scale=1e-50)]))


def test_backward_validation():
    params = make_params()
    eff, cache = effective_weights(params, default_spec("float32", "tanh"))
    good = {k: np.ones_like(v) for k, v in eff.items()}
    with pytest.raises(TypeError, match="effective_weights_backward: cache must be an EffectiveWeightsCache"):
        effective_weights_backward(good, (cache.u_hat,))
    with pytest.raises(TypeError, match="effective_weights_backward: grads_eff must be a dict"):
        effective_weights_backward(list(good.values()), cache)
    missing = dict(good)
    del missing["fc.bias"]
    with pytest.raises(ValueError, match=r"names, got missing \['fc.bias'\] and extra \[\]"):
        effective_weights_backward(missing, cache)
    with pytest.raises(ValueError, match=r"got missing \[\] and extra \['x'\]"):
        effective_weights_backward({**good, "x": good["fc.bias"]}, cache)
    with pytest.raises(TypeError, match=r"grads_eff\['fc.bias'\] must have dtype in \(float32, float64\)"):
        effective_weights_backward({**good, "fc.bias": np.ones(3, np.int64)}, cache)
    with pytest.raises(TypeError, match=r"grads_eff\['fc.bias'\] must have dtype in \(float32\)"):
        effective_weights_backward({**good, "fc.bias": good["fc.bias"].astype(np.float64)}, cache)
    with pytest.raises(ValueError, match=r"grads_eff\['fc.bias'\] must have shape \(3,\)"):
        effective_weights_backward({**good, "fc.bias": np.ones(4, np.float32)}, cache)
    assert isinstance(cache.stored, StoredModel)
