"""saf_ref.testing.torch_replay: a saf_ref FaultList replayed on a PyTorch state_dict, with torch operations.

The reference is saf_ref's own pipeline (store, inject, load, predict); the replay shares none of its code
(torch casts, bit views and int64 tensor arithmetic), so every comparison here can fail. The campaign test
runs a campaign defined in saf_ref and replays every trial in a torch.nn model: the same effective
weights bit for bit and the same predictions, image by image, for float32, float16, bfloat16, an 8-bit
quantizer and the six MX block formats (faults in the stored bytes: scales and packed elements).
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.bits import FaultList, Quantizer
from saf_ref.bits.faultmodels import BitErrors
from saf_ref.bits.formats import resolve_format
from saf_ref.data.shipped import load_digits
from saf_ref.experiments.campaign import Subject, predict, run_campaign, trial_rng
from saf_ref.nn.small import init_small_cnn
from saf_ref.protect import (
    StorageRule,
    StorageSpec,
    default_spec,
    effective_weights,
    inject,
    inject_nested,
    load,
    store,
)
from saf_ref.train.loop import train

torch = pytest.importorskip("torch")
from saf_ref.testing.torch_replay import (  # noqa: E402
    decode_tensor,
    encode_tensor,
    flip_codes,
    replay_faults,
)

pytestmark = pytest.mark.torch
nn = torch.nn


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is fastest (two threads on a busy 2-core machine are 30 times slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

IEEE = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
FIXED = ("q2.5", "q0.1", "q7.24", "q15.16")
MX = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8")


def _values(dtype, rng) -> np.ndarray:
    """Normal values over 85 decades and the boundary cases of every format (ties, overflow edges)."""
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 448.0, 464.0, -464.0, 465.0, 480.0, 57344.0,
               61440.0, 65504.0, 65519.99, 65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-149, 2.0**-150,
               1 + 2.0**-8 + 2.0**-30, 1 + 2.0**-11 + 2.0**-40, 3.4028235e38, 3.5e38, 1e-46, -1e-46,
               127.99, 128.0, -128.0, -128.01, 0.5 / 32, 1.5 / 32, 2.5 / 32]
    x = rng.standard_normal(3000) * 10.0 ** rng.integers(-45, 40, 3000)
    with np.errstate(over="ignore"):
        return np.concatenate([x, special, np.negative(special)]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", IEEE + FIXED)
def test_encode_decode_match_saf_ref_bit_for_bit(name, dtype):
    fmt = resolve_format(name)
    x = _values(dtype, np.random.default_rng(1))
    if name.startswith("q"):
        x = x[~np.isnan(x)]  # fixed point has no NaN code (an error, tested below)
    with np.errstate(over="ignore"):
        ref, _ = fmt.encode_tensor(x)
    got, context = encode_tensor(torch.from_numpy(x), fmt)
    assert context is None
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy().astype(np.uint64), ref.astype(np.uint64))
    # decoding every code of an 8/16-bit format (every NaN, subnormal and infinity), else the encoded ones
    if fmt.nbits <= 16:
        ref = np.arange(2**fmt.nbits, dtype=np.uint64).astype(fmt.container)
    want = fmt.decode_tensor(ref).astype(dtype)
    words = torch.from_numpy(ref.astype(np.uint64).view(np.int64))
    got_values = decode_tensor(words, fmt, None, getattr(torch, np.dtype(dtype).name)).numpy()
    assert got_values.tobytes() == want.tobytes()  # NaNs included: the canonical quiet NaN of each sign


def _mx_values(dtype, rng) -> np.ndarray:
    """Rows of 96 values (3 blocks, the last padded by 32 zeros in a row of 80): blocks of one magnitude
    over 85 decades with a wide spread inside, blocks with NaN, inf, -0, ties of every element format,
    values past the element maximum (saturation), subnormal inputs and float64 beyond 2**127."""
    rows = rng.standard_normal((40, 80)) * 10.0 ** rng.integers(-45, 39, (40, 1)) * 10.0 ** rng.uniform(
        -4, 0, (40, 80))
    rows[0, 5], rows[1, 70], rows[2, 0], rows[3, 40] = np.nan, np.inf, -np.inf, -np.nan
    rows[4] = -0.0
    rows[5] = 0.0
    rows[5, 3] = -1e-3
    grid = np.arange(80) / 8.0 + 1 / 16  # ties of quarter and half steps: FP4 / FP6 / FP8 midpoints
    rows[6], rows[7] = grid, -grid * 2.0**-3
    rows[8] = np.linspace(-8.0, 8.0, 80)  # past +-6 (FP4), +-7.5 (e2m3): saturation
    rows[9] = np.ldexp(np.arange(1, 81), -160)  # float32 subnormals (float64: normal, below 2**-127)
    if dtype == np.float64:
        rows[10] = np.ldexp(np.arange(1, 81), -1074)  # float64 subnormals
        rows[11] = 3e38 * 2.0**20  # a shared exponent above 127: NaN scale
    with np.errstate(over="ignore"):
        return rows.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", MX + ("mxfp4_k16", "mxfp6_e3m2_axis0", "mxint8_k8_axis-1"))
def test_mx_codes_and_values_match_saf_ref_bit_for_bit(name, dtype):
    fmt = resolve_format(name)
    x = _mx_values(dtype, np.random.default_rng(7)).reshape(40, 4, 20)  # rows of 80: padded blocks
    with np.errstate(over="ignore"):  # float64 values beyond float32 read into float32 latents: inf
        _check_mx_codec(fmt, x, dtype)


def _check_mx_codec(fmt, x, dtype):
    ref, ref_context = fmt.encode_tensor(x)
    got, context = encode_tensor(torch.from_numpy(x), fmt)
    assert got.dtype == torch.int64 and context == {"shape": x.shape}
    np.testing.assert_array_equal(got.numpy(), ref.astype(np.int64))
    want = fmt.decode_tensor(ref, ref_context).astype(dtype)
    got_values = decode_tensor(got, fmt, context, getattr(torch, np.dtype(dtype).name)).numpy()
    assert got_values.tobytes() == want.tobytes()
    # every byte value in every position: all scales (NaN 0xFF included) and all element codes
    rng = np.random.default_rng(8)
    for codes in (np.arange(ref.size) % 256, rng.integers(0, 256, ref.size)):
        codes = codes.astype(np.uint8)
        want = fmt.decode_tensor(codes, ref_context).astype(dtype)
        words = torch.from_numpy(codes.astype(np.int64))
        got_values = decode_tensor(words, fmt, context, getattr(torch, np.dtype(dtype).name)).numpy()
        assert got_values.tobytes() == want.tobytes()  # NaNs included: canonical, the scale's positive


def test_mx_decode_needs_the_shape_context():
    fmt = resolve_format("mxfp4")
    codes, context = encode_tensor(torch.zeros(2, 40), fmt)
    assert tuple(decode_tensor(codes, fmt, context, torch.float32).shape) == (2, 40)
    with pytest.raises(TypeError, match=r"decode_tensor: context must be the \{'shape': ...\} dict "
                                        r"encode_tensor returns for mxfp4, got None"):
        decode_tensor(codes, fmt, None, torch.float32)


@pytest.mark.parametrize(
    "quantizer",
    [Quantizer(8), Quantizer(8, scheme="symmetric"), Quantizer(4, code="twos_complement", clip=0.5),
     Quantizer(8, scheme="symmetric", max_abs=0.3, rounding="toward_zero", margin=1e-3)],
    ids=["asym", "sym", "tc4-clip", "sym-fixed-trunc"],
)
def test_quantizer_codes_and_context_match_saf_ref(quantizer):
    x = (np.random.default_rng(2).standard_normal((4, 3, 3, 3)) * 0.2).astype(np.float32)
    ref, ref_context = quantizer.encode_tensor(x)
    got, context = encode_tensor(torch.from_numpy(x), quantizer)
    np.testing.assert_array_equal(got.numpy(), ref.astype(np.int64))
    assert context == ref_context.to_dict()
    values = decode_tensor(got, quantizer, context, torch.float32).numpy()
    assert values.tobytes() == quantizer.decode_tensor(ref, ref_context).tobytes()


def _fault_list(shape, nbits, fmt, rng, n=200) -> FaultList:
    """Random records with duplicates (flips that cancel) and stuck bits, never stuck both ways."""
    size = int(np.prod(shape))
    index = rng.integers(0, size, n)
    bit = rng.integers(0, nbits, n)
    index = np.concatenate([index, index[:20]])  # 20 flips repeated: they cancel
    bit = np.concatenate([bit, bit[:20]])
    kinds = ["flip"] * (n + 20)
    cells = sorted({(int(i), int(b)) for i, b in zip(index, bit, strict=True)})
    stuck = [(i, b, "stuck0" if j % 2 else "stuck1") for j, (i, b) in enumerate(cells[:30])]
    return FaultList.from_arrays(
        np.concatenate([index, [s[0] for s in stuck]]).astype(np.int64),
        np.concatenate([bit, [s[1] for s in stuck]]).astype(np.int64),
        kind=kinds + [s[2] for s in stuck],
        tensor="w",
        format_name=fmt,
    )


@pytest.mark.parametrize("container,nbits", [(np.uint8, 8), (np.uint16, 16), (np.uint32, 32), (np.uint64, 64),
                                             (np.uint8, 7)])
def test_flip_codes_matches_faultlist_apply_on_a_4d_tensor(container, nbits):
    rng = np.random.default_rng(nbits)
    shape = (3, 4, 2, 5)  # multi-dimensional: the flat C-order index must land on the right element
    codes = rng.integers(0, 2**nbits, shape, dtype=np.uint64).astype(container)
    faults = _fault_list(shape, nbits, f"raw{nbits}", rng)
    want = faults.apply(codes, nbits=nbits)
    words = torch.from_numpy(codes.astype(np.uint64).view(np.int64))
    got = flip_codes(words, faults.index, faults.bit, faults.kind)
    np.testing.assert_array_equal(got.numpy().view(np.uint64).astype(container), want)
    assert not np.array_equal(want, codes)  # the faults did something


def test_flip_codes_rejects_a_bit_stuck_both_ways():
    words = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="flip_codes: a bit of codes must not be both stuck0 and stuck1"):
        flip_codes(words, np.array([2, 2]), np.array([3, 3]), ["stuck0", "stuck1"])


def test_encode_tensor_errors_name_encode_tensor():
    """Called directly, encode_tensor names itself (replay_faults names itself: tested below)."""
    from saf_ref.bits.ieee import MX_ELEMENT_FORMATS

    u = torch.ones(3)
    with pytest.raises(TypeError, match=r"encode_tensor: u format must be an IEEE, fixed-point, quantizer "
                       r"or MX format, got str"):
        encode_tensor(u, "float16")
    with pytest.raises(ValueError, match=r"encode_tensor: w format must have a torch dtype, got "
                       r"'float4_e2m1fn'"):
        encode_tensor(u, MX_ELEMENT_FORMATS["float4_e2m1fn"], where="w")
    with pytest.raises(ValueError, match=r"encode_tensor: u must not contain NaN to be stored as q2.5"):
        encode_tensor(torch.tensor([0.5, float("nan")]), resolve_format("q2.5"))
    with pytest.raises(TypeError, match=r"encode_tensor: u must be float32 to be stored with"):
        encode_tensor(torch.ones(3, dtype=torch.float64), Quantizer(8))


def _torch_state(params: dict, state: dict | None = None) -> dict:
    out = {k: torch.from_numpy(v.copy()) for k, v in params.items()}
    out.update({k: torch.from_numpy(v.copy()) for k, v in (state or {}).items()})
    return out


SPECS = {
    "float32": default_spec("float32"),
    "float16-tanh": default_spec("float16", "tanh"),
    "bfloat16-clip-arctan": default_spec("bfloat16", "arctan", weight_clip=0.4),
    "e4m3fn-scaled": StorageSpec((StorageRule("*", format="float8_e4m3fn", scale=64.0, transform="softsign",
                                              role="weight"),
                                  StorageRule("*", format="float8_e5m2", exposed=True))),
    "e5m2-hardtanh": default_spec("float8_e5m2", "hardtanh"),
    "q2.5-clip": default_spec("q2.5", weight_clip=1.0),
    "quant8": default_spec(Quantizer(8)),
    "quant4-sym": default_spec(Quantizer(4, scheme="symmetric")),
    **{f"{m}-tanh": default_spec(m, "tanh") for m in MX},
    "mxfp4_k16_axis0-clip-softsign": default_spec("mxfp4_k16_axis0", "softsign", weight_clip=0.3),
    "mxfp8_e5m2-scaled-hardtanh": StorageSpec((StorageRule("*", format="mxfp8_e5m2", scale=1e30,
                                                           transform="hardtanh", role="weight"),
                                               StorageRule("*", format="mxfp6_e3m2", exposed=True))),
}


@pytest.mark.parametrize("nonfinite", ["propagate", "zero"])
@pytest.mark.parametrize("name", list(SPECS))
def test_replay_gives_saf_refs_effective_weights_bit_for_bit(name, nonfinite):
    spec = SPECS[name]
    params, state = init_small_cnn(width=3, rng=4)
    faults = inject(store(params, spec), BitErrors(0.02), rng=5).faults
    want, _ = effective_weights(params, spec, faults=faults, nonfinite=nonfinite)
    sd = _torch_state(params, state)
    got = replay_faults(sd, spec, faults, nonfinite=nonfinite)
    assert all(sd[k].numpy().tobytes() == v.tobytes() for k, v in {**params, **state}.items())  # untouched
    assert list(got) == list(params) + list(state)
    for k, w in want.items():
        assert got[k].dtype == torch.float32
        assert got[k].numpy().tobytes() == w.tobytes(), k
    for k, v in state.items():  # buffers copied, untouched
        assert got[k].numpy().tobytes() == v.tobytes()
    # clean replay: the stored model read back
    clean, _ = effective_weights(params, spec, nonfinite=nonfinite)
    got_clean = replay_faults(_torch_state(params), spec, nonfinite=nonfinite)
    assert all(got_clean[k].numpy().tobytes() == w.tobytes() for k, w in clean.items())


def test_replay_float64_latents_round_once():
    """float64 latents in bfloat16: torch's own cast rounds through float32 (1 + 2**-8 + 2**-30 -> 1.0);
    the replay rounds once, as saf_ref does (-> 1 + 2**-7)."""
    spec = default_spec("bfloat16")
    params = {"fc.weight": np.array([[1 + 2.0**-8 + 2.0**-30, -(1 + 2.0**-8 + 2.0**-30)]]),
              "fc.bias": np.array([0.1])}
    got = replay_faults(_torch_state(params), spec)
    assert got["fc.weight"].tolist() == [[1 + 2.0**-7, -(1 + 2.0**-7)]]
    assert torch.tensor(1 + 2.0**-8 + 2.0**-30, dtype=torch.float64).to(torch.bfloat16).item() == 1.0
    want, _ = effective_weights(params, spec)
    assert got["fc.weight"].numpy().tobytes() == want["fc.weight"].tobytes()


class TorchSmallCNN(nn.Module):
    """saf_ref.nn.small's CNN as torch modules, with its state_dict names: (conv3x3-BN-ReLU) x 3 with
    strides 1, 2, 2 and widths w, 2w, 4w, global average pooling, fc."""

    def __init__(self, width: int, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        c_in = in_channels
        for i, stride in enumerate((1, 2, 2), start=1):
            c_out = width * 2 ** (i - 1)
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c_out))
            c_in = c_out
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        for i in (1, 2, 3):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.fc(x.mean((2, 3)))


def _torch_predictions(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """argmax of the eval-mode logits; -1 for a row with a NaN or infinite logit (saf_ref's predict)."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x))
    finite = torch.isfinite(logits).all(1)
    return torch.where(finite, logits.argmax(1), -1).numpy()


@pytest.fixture(scope="module")
def trained_cnn():
    digits = load_digits()
    params, state = init_small_cnn(in_channels=1, num_classes=10, width=4, rng=0)
    params, state, _ = train(params, state, digits, model="small_cnn", epochs=3, batch_size=64, rng=0,
                             augment=None, verbose=False)
    return params, state, digits.x_test[:200], digits.y_test[:200]


FORMATS = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "quant8": Quantizer(8)}
#: MX formats in the campaign: stored with a tanh weight transform (SAF). A flipped scale bit multiplies
#: 32 weights by up to 2**128; with the identity transform the float32 sums of such weights overflow or
#: not depending on the summation order, which torch's and saf_ref's kernels do not share, so two correct
#: implementations could predict differently (the weights still agree bit for bit: checked above for the
#: identity transform). The saturating transform bounds every weight; batch-norm parameters are not
#: exposed for the same reason (no transform bounds them).
MX_SAF = {m: (m, "tanh") for m in MX}
RATES = (1e-4, 1e-3, 1e-2)
SEED, TRIALS = 3, 4


def test_a_saf_ref_campaign_replays_in_pytorch_trial_by_trial(trained_cnn):
    params, state, x, y = trained_cnn
    subjects = [Subject("baseline", "identity", k, "small_cnn", params, state, default_spec(f), label=k)
                for k, f in FORMATS.items()]
    subjects += [
        Subject("saf", t, k, "small_cnn", params, state, default_spec(f, t, expose_non_weights=False),
                label=k)
        for k, (f, t) in MX_SAF.items()
    ]
    result = run_campaign(subjects, x, y, RATES, trials=TRIALS, seed=SEED, executor="serial", progress=False)
    records = {(r["subject"], r["ber"], r["trial"]): r for r in result.trials}
    model = TorchSmallCNN(width=4)
    clean_sd = {**model.state_dict(), **_torch_state(params, state)}  # num_batches_tracked kept
    changed = set()
    for trial in range(TRIALS):
        for s in subjects:
            model.load_state_dict(replay_faults(clean_sd, s.spec))  # the stored model, no faults
            clean = _torch_predictions(model, x)
            # the trial's faults, as the campaign drew them: one nested draw per (subject, trial)
            injections = inject_nested(store(s.params, s.spec), list(RATES), rng=trial_rng(SEED, trial))
            for rate, inj in zip(RATES, injections, strict=True):
                sd = replay_faults(clean_sd, s.spec, inj.faults)
                weights = load(inj.stored, s.spec)
                for k, w in weights.items():
                    assert sd[k].numpy().tobytes() == w.tobytes(), (s.key, rate, trial, k)
                model.load_state_dict(sd)
                got = _torch_predictions(model, x)
                want, _ = predict("small_cnn", weights, s.state, x)
                np.testing.assert_array_equal(got, want, err_msg=f"{s.key} ber={rate} trial={trial}")
                rec = records[(s.key, rate, trial)]
                assert rec["accuracy"] == np.mean(got == y)
                assert rec["rerr"] == np.mean((got != y) | (clean != y))
                if not np.array_equal(got, clean):
                    changed.add(s.key)
    assert changed == set(FORMATS) | set(MX_SAF)  # faults changed predictions in every format (teeth)


def test_replay_of_another_trial_gives_other_predictions(trained_cnn):
    """The comparison above is sensitive: trial 1's faults do not reproduce trial 0's predictions."""
    params, state, x, _ = trained_cnn
    spec = default_spec("float16")
    model = TorchSmallCNN(width=4)
    clean_sd = {**model.state_dict(), **_torch_state(params, state)}
    stored = store(params, spec)
    inj = [inject_nested(stored, [1e-3], rng=trial_rng(SEED, t))[0] for t in range(2)]
    model.load_state_dict(replay_faults(clean_sd, spec, inj[1].faults))
    want, _ = predict("small_cnn", load(inj[0].stored, spec), state, x)
    assert not np.array_equal(_torch_predictions(model, x), want)


# ------------------------------------------------------------------------------------------ bad input
def _bad(params=None):
    params = params or {"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.zeros(2, np.float32)}
    return _torch_state(params)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(state_dict=[1]), TypeError, "replay_faults: state_dict must be a mapping of str -> torch"),
        (dict(state_dict={"fc.weight": np.ones(2)}), TypeError,
         r"replay_faults: state_dict\['fc.weight'\] must be a torch.Tensor, got"),
        (dict(spec="float16"), TypeError, "replay_faults: spec must be a StorageSpec"),
        (dict(nonfinite="nan"), ValueError, "replay_faults: nonfinite must be"),
        (dict(params=["nope"]), ValueError, "replay_faults: params must name keys of state_dict, got 'nope'"),
        (dict(faults=[("fc.weight", 0, 0, "flip", "float16")]), TypeError,
         "replay_faults: faults must be a FaultList or None"),
        (dict(faults=FaultList([("conv.weight", 0, 0, "flip", "float16")])), ValueError,
         "replay_faults: faults must name parameters of state_dict, got tensor 'conv.weight'"),
        (dict(faults=FaultList([("fc.weight", 0, 0, "flip", "float32")])), ValueError,
         "replay_faults: faults on 'fc.weight' must carry its storage format 'float16', got 'float32'"),
        (dict(faults=FaultList([("fc.weight", 6, 0, "flip", "float16")])), ValueError,
         r"replay_faults: faults on 'fc.weight' must have index < 6 \(its size\), got 6"),
        (dict(faults=FaultList([("fc.weight", 0, 16, "flip", "float16")])), ValueError,
         r"replay_faults: faults on 'fc.weight' must have bit < 16 \(float16\), got 16"),
    ],
)
def test_replay_faults_rejects_bad_input(kwargs, error, message):
    args = dict(state_dict=_bad(), spec=default_spec("float16"))
    args.update(kwargs)
    with pytest.raises(error, match=message):
        replay_faults(**args)


def test_replay_faults_rejects_bad_tensors_and_specs():
    spec = default_spec("float16")
    half = {"fc.weight": torch.ones(2, 3, dtype=torch.float16), "fc.bias": torch.zeros(2)}
    with pytest.raises(TypeError, match=r"state_dict\['fc.weight'\] must be float32 or float64"):
        replay_faults(half, spec, params=["fc.weight", "fc.bias"])
    unexposed = default_spec("float16", expose_non_weights=False)
    with pytest.raises(ValueError, match="replay_faults: faults must name exposed tensors, got 'fc.bias'"):
        replay_faults(_bad(), unexposed, FaultList([("fc.bias", 0, 0, "flip", "float16")]))
    nan = {"fc.weight": np.full((1, 1), np.nan, np.float32), "fc.bias": np.zeros(1, np.float32)}
    with pytest.raises(ValueError, match=r"replay_faults: state_dict\['fc.weight'\] must not contain NaN "
                       r"to be stored as q2.5"):
        replay_faults(_bad(nan), default_spec("q2.5"))
    with pytest.raises(TypeError, match=r"replay_faults: state_dict\['fc.weight'\] must be float32 to be "
                       r"stored"):
        replay_faults(_torch_state({"fc.weight": np.ones((1, 2)), "fc.bias": np.zeros(1)}),
                      default_spec(Quantizer(8)))
    # MX: the records index the stored bytes (fc.weight (2, 3) in mxfp4: a block per row, each 1 scale
    # byte and 16 bytes of 32 packed 4-bit elements, padding included)
    with pytest.raises(ValueError, match=r"on 'fc.weight' must have index < 34 \(its stored bytes\), got 34"):
        replay_faults(_bad(), default_spec("mxfp4"), FaultList([("fc.weight", 34, 0, "flip", "mxfp4")]))
    with pytest.raises(ValueError, match=r"faults on 'fc.weight' must have bit < 8 \(mxfp4\), got 8"):
        replay_faults(_bad(), default_spec("mxfp4"), FaultList([("fc.weight", 16, 8, "flip", "mxfp4")]))
    with pytest.raises(ValueError, match="replay_faults: parameter 'fc.bias'"):
        replay_faults(_bad(), StorageSpec((StorageRule("fc.weight"),)))
