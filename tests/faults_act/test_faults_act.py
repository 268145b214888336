"""Activation faults: the law of the flips, rate 0 is the fault-free model, explicit lists, errors.

Statistical tests use fixed seeds and reject at p-value < ALPHA = 1e-4: a correct sampler fails one
seed in 10,000 (the false-alarm rate), and the chosen seeds pass, so the tests are deterministic.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from scipy import stats

from saf_ref.bits import FaultList, Quantizer
from saf_ref.faults_act import ActivationFaults, activation_format, activation_taps, select_taps
from saf_ref.nn.registry import model_fns
from saf_ref.nn.resnet import init_resnet
from saf_ref.nn.small import init_mlp, init_small_cnn

ALPHA = 1e-4


def _model(name):
    """(forward(hook) -> logits, taps) for a small instance of every model saf_ref has."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    if name == "small_cnn":
        params, state = init_small_cnn(in_channels=3, width=4, rng=1)
    elif name == "mlp":
        params, state = init_mlp(3 * 16 * 16, hidden=(12, 8), rng=1)
    else:
        params, state = init_resnet(name, width=4, rng=1)
    fns = model_fns(name)

    def forward(hook=None, xs=x):
        return fns.forward(params, state, xs, train=False, activation_faults=hook)[0]

    return forward, activation_taps(name, params), x


MODELS = ("resnet20", "resnet18_cifar", "resnet18", "small_cnn", "mlp")


# ------------------------------------------------------------------------------------ rate 0, formats
@pytest.mark.parametrize("name", MODELS)
def test_rate_zero_float32_is_the_fault_free_model_bit_for_bit(name):
    forward, taps, _ = _model(name)
    clean = forward()
    faults = ActivationFaults("*", taps=taps, format="float32", p=0.0, rng=0)
    assert forward(faults).tobytes() == clean.tobytes()
    assert all(c.flips == 0 and c.words > 0 for c in faults.counts.values())
    empty = ActivationFaults("*", taps=taps, faults=FaultList())
    assert forward(empty).tobytes() == clean.tobytes()


@pytest.mark.parametrize("name", ["resnet20", "small_cnn", "mlp"])
@pytest.mark.parametrize("fmt, dtype", [("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16),
                                        ("float8_e4m3fn", ml_dtypes.float8_e4m3fn)])  # fmt: skip
def test_rate_zero_rounds_to_the_format_as_numpy_and_ml_dtypes_cast(name, fmt, dtype):
    forward, taps, _ = _model(name)
    layer = taps[1]
    reference = forward(lambda tap, h: h.astype(dtype).astype(np.float32) if tap == layer else h)
    got = forward(ActivationFaults(layer, taps=taps, format=fmt, p=0.0, rng=0))
    assert got.tobytes() == reference.tobytes()


def test_quantizer_range_is_per_example_so_batching_does_not_matter():
    forward, taps, x = _model("small_cnn")
    faults = ActivationFaults("*", taps=taps, format="int8", p=0.0, rng=0)
    h = np.random.default_rng(4).standard_normal((3, 4, 5, 5)).astype(np.float32)
    together = faults("relu1", h)
    alone = np.concatenate([faults("relu1", h[i : i + 1]) for i in range(h.shape[0])])
    assert together.tobytes() == alone.tobytes()
    assert np.all(np.isfinite(forward(faults)))
    # and it is the symmetric 8-bit quantizer of each example's activations: q = max|h|, step q / 127
    h = np.abs(np.random.default_rng(3).standard_normal((2, 5))).astype(np.float32)
    got = ActivationFaults("relu1", taps=taps, format="int8", p=0.0, rng=0)("relu1", h)
    q = h.max(axis=1, keepdims=True).astype(np.float64)
    ref = np.round(h / (q / 127)) * (q / 127)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


# ------------------------------------------------------------------------------------ the law of flips
def _bit_count(a: np.ndarray) -> int:
    return int(np.unpackbits(a.view(np.uint8)).sum())


def test_flips_follow_binomial_and_are_the_bits_that_changed():
    """q3.4 fixed point (8 bits, no NaN codes): the changed bits are counted independently of the code."""
    rng = np.random.default_rng(11)
    h = (rng.integers(-100, 100, size=(4, 50)) / 16).astype(np.float32)  # exact in q3.4
    clean_codes = np.round(h * 16).astype(np.int8).view(np.uint8)
    p, calls, n_bits = 0.02, 400, h.size * 8
    faults = ActivationFaults("relu1", taps=("relu1", "relu2"), format="q3.4", p=p, rng=12345)
    counts = []
    for _ in range(calls):
        out = faults("relu1", h)
        codes = np.round(out * 16).astype(np.int8).view(np.uint8)
        counts.append(_bit_count(codes ^ clean_codes))
    counts = np.array(counts)
    assert faults.counts["relu1"] == (h.size * calls, n_bits * calls, int(counts.sum()))
    # counts ~ Binomial(n_bits, p): chi-square of the histogram against the pmf
    support = np.arange(n_bits + 1)
    pmf = stats.binom.pmf(support, n_bits, p)
    observed = np.bincount(counts, minlength=support.size)
    lo, hi = stats.binom.ppf([1e-3, 1 - 1e-3], n_bits, p).astype(int)
    obs = np.concatenate(([observed[:lo].sum()], observed[lo:hi], [observed[hi:].sum()]))
    exp = calls * np.concatenate(([pmf[:lo].sum()], pmf[lo:hi], [pmf[hi:].sum()]))
    keep = exp >= 5
    obs = np.append(obs[keep], obs[~keep].sum())
    exp = np.append(exp[keep], exp[~keep].sum())
    assert stats.chisquare(obs, exp).pvalue > ALPHA
    # and every bit position flips at rate p (the total over all calls and words per bit)
    per_bit = np.zeros(8)
    faults2 = ActivationFaults("relu1", taps=("relu1",), format="q3.4", p=p, rng=777)
    for _ in range(calls):
        diff = np.round(faults2("relu1", h) * 16).astype(np.int8).view(np.uint8) ^ clean_codes
        per_bit += ((diff[..., None] >> np.arange(8, dtype=np.uint8)) & 1).sum(axis=(0, 1))
    z = (per_bit - h.size * calls * p) / np.sqrt(h.size * calls * p * (1 - p))
    assert stats.chi2.sf(float(np.sum(z**2)), df=8) > ALPHA


def test_model_flip_count_per_forward_pass_is_binomial_over_all_tap_bits():
    forward, taps, _ = _model("small_cnn")
    p = 1e-3
    # int8: every code decodes to a finite value, so every activation stays exposed in every pass
    faults = ActivationFaults("*", taps=taps, format="int8", p=p, rng=2024)
    totals = []
    for _ in range(300):
        before = sum(c.flips for c in faults.counts.values())
        forward(faults)
        totals.append(sum(c.flips for c in faults.counts.values()) - before)
    n = sum(c.bits for c in faults.counts.values()) // 300
    assert n == sum(8 * 3 * int(np.prod(s)) for s in ((4, 16, 16), (8, 8, 8), (16, 4, 4)))
    mean, var = n * p, n * p * (1 - p)
    z = (np.mean(totals) - mean) / np.sqrt(var / len(totals))
    assert abs(z) < stats.norm.isf(ALPHA / 2)
    dispersion = np.var(totals, ddof=1) * (len(totals) - 1) / var  # ~ chi2(len - 1)
    df = len(totals) - 1
    assert min(stats.chi2.cdf(dispersion, df), stats.chi2.sf(dispersion, df)) > ALPHA


def test_fresh_draws_each_pass_deterministic_for_a_seed():
    forward, taps, _ = _model("resnet20")
    a = ActivationFaults("layer2.*", taps=taps, format="bfloat16", p=1e-4, rng=5)
    b = ActivationFaults("layer2.*", taps=taps, format="bfloat16", p=1e-4, rng=5)
    first, second = forward(a), forward(a)
    assert first.tobytes() != second.tobytes()  # a fresh pattern every pass
    assert forward(b).tobytes() == first.tobytes() and forward(b).tobytes() == second.tobytes()
    assert set(a.counts) == {t for t in taps if t.startswith("layer2.")}


def test_bit_mask_limits_the_flips_to_those_bits():
    h = np.full((2, 64), 1.5, dtype=np.float32)
    faults = ActivationFaults("a", taps=("a",), format="float16", p=0.5, bit_mask=[3], rng=0)
    diff = faults("a", h).astype(np.float16).view(np.uint16) ^ h.astype(np.float16).view(np.uint16)
    assert set(np.unique(diff)) == {0, 8}


# ------------------------------------------------------------------------------------ explicit lists
def test_explicit_fault_list_flips_that_element_of_every_example():
    forward, taps, _ = _model("small_cnn")
    fl = FaultList([("relu2", 5, 30, "flip", "float32"), ("relu2", 5, 2, "flip", "float32"),
                    ("relu2", 17, 22, "flip", "float32")])  # fmt: skip

    def reference(tap, h):
        if tap != "relu2":
            return h
        words = h.reshape(h.shape[0], -1).view(np.uint32).copy()
        words[:, 5] ^= np.uint32((1 << 30) | (1 << 2))
        words[:, 17] ^= np.uint32(1 << 22)
        return words.view(np.float32).reshape(h.shape)

    faults = ActivationFaults("relu2", taps=taps, faults=fl)
    assert forward(faults).tobytes() == forward(reference).tobytes()
    assert faults.counts["relu2"].flips == 3 * 3  # three flips in each of the 3 examples


def test_non_finite_activations_pass_through_unexposed():
    h = np.array([[1.0, np.inf, np.nan, 2.0]], dtype=np.float32)
    for fmt in ("float16", "int8"):
        faults = ActivationFaults("a", taps=("a",), format=fmt, p=1.0, rng=0)
        out = faults("a", h)
        assert np.isposinf(out[0, 1]) and np.isnan(out[0, 2])
        assert faults.counts["a"].words == 2


# ------------------------------------------------------------------------------------ errors
def _one(tap, bit, kind="flip", fmt="float32"):
    return FaultList([(tap, 0, bit, kind, fmt)])


def test_errors():
    taps = activation_taps("resnet20")
    with pytest.raises(ValueError, match=r"of the model \(relu, layer1.0.relu1, .*got 'layer9.\*'"):
        ActivationFaults("layer9.*", taps=taps, p=0.1, rng=0)
    with pytest.raises(ValueError, match="got 'layer1.0.relu'"):
        select_taps(["layer1.*", "layer1.0.relu"], taps)
    with pytest.raises(TypeError, match="layers must be a tap name or glob"):
        ActivationFaults(3, taps=taps, p=0.1, rng=0)
    with pytest.raises(ValueError, match="format must be an IEEE format name"):
        ActivationFaults("relu", taps=taps, format="float12", p=0.1, rng=0)
    with pytest.raises(TypeError, match="format must be a format name"):
        ActivationFaults("relu", taps=taps, format=16, p=0.1, rng=0)
    with pytest.raises(ValueError, match="'float64' with 64 bits"):
        activation_format("float64")
    with pytest.raises(ValueError, match="p must be"):
        ActivationFaults("relu", taps=taps, p=-1e-3, rng=0)
    with pytest.raises(ValueError, match="p must be"):
        ActivationFaults("relu", taps=taps, p=1.5, rng=0)
    with pytest.raises(ValueError, match="exactly one of p .* got neither"):
        ActivationFaults("relu", taps=taps)
    with pytest.raises(ValueError, match="exactly one of p .* got both"):
        ActivationFaults("relu", taps=taps, p=0.1, faults=FaultList(), rng=0)
    with pytest.raises(TypeError, match="rng"):
        ActivationFaults("relu", taps=taps, p=0.1)
    with pytest.raises(ValueError, match="bit_mask"):
        ActivationFaults("relu", taps=taps, p=0.1, bit_mask=[40], rng=0)
    with pytest.raises(ValueError, match="faults must name selected taps"):
        ActivationFaults("relu", taps=taps, faults=_one("layer1.0.relu1", 1))
    with pytest.raises(ValueError, match="faults must carry the format 'float16'"):
        ActivationFaults("relu", taps=taps, format="float16", faults=_one("relu", 1))
    with pytest.raises(ValueError, match="transient flips"):
        ActivationFaults("relu", taps=taps, faults=_one("relu", 1, "stuck1"))
    with pytest.raises(ValueError, match="bit < 16"):
        ActivationFaults("relu", taps=taps, format="float16", faults=_one("relu", 20, fmt="float16"))
    with pytest.raises(TypeError, match="taps must be a model name"):
        ActivationFaults("relu", taps=None, p=0.1, rng=0)
    with pytest.raises(TypeError, match="activation_taps: params must be the MLP"):
        activation_taps("mlp")
    with pytest.raises(ValueError, match="model must be one of"):
        activation_taps("vgg")
    # at call time: an index beyond one example's activations, a tap of another model, a float64 model
    faults = ActivationFaults("a", taps=("a",), faults=FaultList([("a", 10, 1, "flip", "float32")]))
    with pytest.raises(ValueError, match=r"index < 4 \(the activations of one example"):
        faults("a", np.zeros((2, 4), np.float32))
    with pytest.raises(
        ValueError, match="taps the model calls must be among the taps given \\(a; .*got 'relu9'"
    ):
        faults("relu9", np.zeros((2, 4), np.float32))
    with pytest.raises(
        TypeError,
        match="must have a dtype format 'quant8_sym_twos_rounded' accepts \\(float32\\), got float64",
    ):
        ActivationFaults("a", taps=("a",), format="int8", p=0.0, rng=0)("a", np.zeros((2, 4)))
    with pytest.raises(
        ValueError,
        match=r"float16 activations at tap 'a' \(at most 16 bits\), got 'float32' with 32 bits",
    ):
        ActivationFaults("a", taps=("a",), format="float32", p=0.0, rng=0)("a", np.zeros((2, 4), np.float16))


def test_format_objects_and_names():
    assert activation_format("int8").name == "quant8_sym_twos_rounded"
    q = Quantizer(8, scheme="asymmetric", code="offset_binary")
    assert activation_format(q) is q
    assert activation_format("fp16").name == "float16"
    assert activation_format("q2.5").name == "q2.5"


# ------------------------------------------------------------------------------------ MX block formats
@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp6_e2m3", "mxfp4", "mxint8"])
def test_mx_rate_zero_is_the_codec_round_trip_per_example_blocks(fmt):
    from saf_ref.bits.mx import get_mx_format

    codec = get_mx_format(fmt)
    forward, taps, x = _model("small_cnn")
    reference = forward(lambda tap, h: codec.decode_tensor(*codec.encode_tensor(h)).astype(np.float32)
                        if tap == "relu2" else h)  # fmt: skip
    faults = ActivationFaults("relu2", taps=taps, format=fmt, p=0.0, rng=0)
    assert forward(faults).tobytes() == reference.tobytes()
    # blocks run along each example's activations: one example alone reads back the same
    h = np.random.default_rng(1).standard_normal((3, 8, 4, 4)).astype(np.float32)
    together = faults("relu2", h)
    assert together.tobytes() == np.concatenate([faults("relu2", h[i : i + 1]) for i in range(3)]).tobytes()


def test_mx_flips_cover_scales_and_elements_binomially():
    h = np.abs(np.random.default_rng(2).standard_normal((4, 64))).astype(np.float32)
    p, calls = 0.01, 300
    faults = ActivationFaults("a", taps=("a",), format="mxfp4", p=p, rng=99)
    for _ in range(calls):
        faults("a", h)
    c = faults.counts["a"]
    assert c.words == calls * (4 * 2 + 4 * 64 // 2)  # per example: 2 scale bytes + 32 element bytes
    z = (c.flips - c.bits * p) / np.sqrt(c.bits * p * (1 - p))
    assert abs(z) < stats.norm.isf(ALPHA / 2)
    with pytest.raises(ValueError, match="need a format with one word per activation"):
        ActivationFaults("a", taps=("a",), format="mxfp4", faults=FaultList())


OPTIONED = ["resnet20@norm=group", "small_cnn@norm=group,reparam=1", "small_cnn@act_clip=6"]


@pytest.mark.parametrize("name", OPTIONED)
def test_taps_with_model_options(name):
    from saf_ref.nn.registry import init_model

    params, state = init_model(name, width=4, rng=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    forward = model_fns(name).forward
    clean = forward(params, state, x, train=False)[0]
    faults = ActivationFaults("*", taps=name, format="float32", p=0.0, rng=0)
    assert forward(params, state, x, train=False, activation_faults=faults)[0].tobytes() == clean.tobytes()
    assert set(faults.counts) == set(activation_taps(name))
    noisy = ActivationFaults("*", taps=name, format="float16", p=1e-2, rng=0)
    forward(params, state, x, train=False, activation_faults=noisy)
    assert sum(c.flips for c in noisy.counts.values()) > 0
