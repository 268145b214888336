"""RandBET, weight clipping and robust quantization through the storage pipeline.

References never call the code under test's backward pass:

- gradients are central finite differences (float64) of *independent forward-only* implementations of
  the loss: plain NumPy for the MLP, :mod:`saf_ref.nn.naive` loops for the small CNN;
- bit flips of the reference are XORs on ``u.view(np.uint64)``, ``tanh`` and its derivative come from
  ``np.tanh`` in float64;
- the fault-free float32 pipeline is compared bit for bit with the step without a pipeline
  (``spec=None``, computing with ``f(u)`` applied by hand and the chain rule by the transform's VJP).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import BitErrors
from saf_ref.bits.quantize import Quantizer
from saf_ref.data.shipped import load_digits
from saf_ref.nn import naive
from saf_ref.nn.small import init_mlp, init_small_cnn
from saf_ref.protect.storage import default_spec, effective_weights
from saf_ref.protect.transforms import get_transform
from saf_ref.train.loop import train, train_step
from saf_ref.train.optim import SGD, sgd_init
from saf_ref.train.randbet import (
    RandBETConfig,
    RandBETGradients,
    StepInfo,
    clip_weights,
    randbet_gradients,
)
from saf_ref.train.schedules import Cosine

QUANT8 = Quantizer(8, scheme="asymmetric", code="offset_binary", rounding="nearest_even", margin=1e-3)


@pytest.fixture(scope="module")
def digits32():
    d = load_digits(dtype=np.float32)
    return d.x_train[:192], d.y_train[:192], d.x_test[:96], d.y_test[:96]


def _cnn32(seed=0, width=2):
    return init_small_cnn(in_channels=1, num_classes=10, width=width, rng=seed, dtype=np.float32)


def digest(*dicts) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of every array of every dict."""
    h = hashlib.sha256()
    for d in dicts:
        for k, v in d.items():
            h.update(k.encode())
            h.update(str(v.dtype).encode())
            h.update(str(v.shape).encode())
            h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def _same_bits(a, b):
    return list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


# ==================================================================================================
# The gradient against finite differences of its definition
# ==================================================================================================


def _xor_flips(u: np.ndarray, flips: list[tuple[int, int]]) -> np.ndarray:
    """Reference bit flips on float64 words: XOR ``1 << bit`` into ``u.view(uint64)`` at flat indices."""
    words = u.reshape(-1).view(np.uint64).copy()
    for index, bit in flips:
        words[index] ^= np.uint64(1) << np.uint64(bit)
    return words.view(np.float64).reshape(u.shape)


def _fault_list(flips: dict[str, list[tuple[int, int]]]) -> FaultList:
    lists = [
        FaultList.from_arrays([i for i, _ in fl], [b for _, b in fl], tensor=name, format_name="float64")
        for name, fl in flips.items()
    ]
    return FaultList.concat(lists)


def _ce_ref(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy in float64, from the definition (log-sum-exp with the max shifted)."""
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


def _central_fd(loss, params: dict[str, np.ndarray], h: float) -> dict[str, np.ndarray]:
    """Central differences of ``loss(params)`` with respect to every element of every tensor."""
    out = {}
    for name, value in params.items():
        g = np.empty_like(value)
        for i in np.ndindex(value.shape):
            plus = {**params, name: value.copy()}
            minus = {**params, name: value.copy()}
            plus[name][i] += h
            minus[name][i] -= h
            g[i] = (loss(plus) - loss(minus)) / (2 * h)
        out[name] = g
    return out


def _effective_ref(u: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``w = tanh(u)`` for conv/linear weights (ndim >= 2), raw otherwise (the default spec's rules)."""
    return {k: (np.tanh(v) if v.ndim >= 2 else v) for k, v in u.items()}


def _ste_reference(loss_of_w, u, flips, clamp, h=1e-6):
    """Independent references for the clean, perturbed and combined latent gradients.

    Clean: central differences of ``u -> loss(f(u))`` (float64 storage is exact, so the pipeline is the
    identity and straight-through is the true derivative).
    Perturbed, straight-through: ``f'(û) * dL/dw`` at ``w = f(û)``, ``û`` = the flipped latents, with
    ``dL/dw`` by central differences of ``w -> loss(w)`` and ``f' = 1 - tanh^2``.
    """
    g_clean = _central_fd(lambda p: loss_of_w(_effective_ref(p)), u, h)
    u_hat = {k: _xor_flips(v, flips.get(k, [])) for k, v in u.items()}
    dl_dw = _central_fd(loss_of_w, _effective_ref(u_hat), h)
    g_pert = {k: (1.0 - np.tanh(u_hat[k]) ** 2) * g if u_hat[k].ndim >= 2 else g for k, g in dl_dw.items()}
    update = {k: (g_clean[k] + np.clip(g_pert[k], -clamp, clamp)) / 2 for k in u}
    return g_clean, g_pert, update, u_hat


def _check_against_reference(got: RandBETGradients, g_clean, g_pert, update, clamp, atol):
    clamped = sum(int(np.sum(np.abs(g) > clamp)) for g in g_pert.values())
    free = sum(int(np.sum(np.abs(g) < clamp)) for g in g_pert.values())
    assert clamped > 0 and free > 0, "the clamp must bind for some elements and not others"
    for name in g_clean:
        for what, a, b in (("clean", got.clean, g_clean), ("perturbed", got.perturbed, g_pert),
                           ("update", got.update, update)):  # fmt: skip
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=f"{name}: {what}")


def test_gradient_matches_finite_differences_mlp():
    """update = (g_clean + clamp(g_pert)) / 2 for an MLP, float64 storage, tanh, a fixed fault list."""
    rng = np.random.default_rng(7)
    params, state = init_mlp(4, hidden=(5,), num_classes=3, rng=1, dtype=np.float64)
    params = {k: v * 2.0 for k, v in params.items()}  # larger weights: tanh' is far from 1
    x = rng.standard_normal((6, 4))
    y = np.array([0, 1, 2, 0, 1, 2])
    # Sign flips (bit 63) and low mantissa bits: û is a smooth (affine) function of u near u.
    flips = {
        "fc1.weight": [(0, 63), (3, 0), (7, 2), (12, 63), (19, 1)],
        "fc1.bias": [(2, 63)],
        "fc2.weight": [(4, 63), (9, 3)],
        "fc2.bias": [(1, 0)],
    }

    def loss_of_w(w):  # independent forward: plain NumPy, float64
        hidden = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0.0)
        return _ce_ref(hidden @ w["fc2.weight"].T + w["fc2.bias"], y)

    g_clean_ref, g_pert_ref, _, u_hat = _ste_reference(loss_of_w, params, flips, 1.0)
    clamp = float(np.median(np.abs(np.concatenate([g.ravel() for g in g_pert_ref.values()]))))
    update_ref = {k: (g_clean_ref[k] + np.clip(g_pert_ref[k], -clamp, clamp)) / 2 for k in params}

    spec = default_spec("float64", "tanh")
    got = randbet_gradients(params, state, x, y, model="mlp", spec=spec, faults=_fault_list(flips),
                            grad_clamp=clamp)  # fmt: skip
    _check_against_reference(got, g_clean_ref, g_pert_ref, update_ref, clamp, atol=1e-8)
    assert got.info.errors_on and got.info.n_flips == sum(len(v) for v in flips.values())
    assert got.info.loss == pytest.approx(loss_of_w(_effective_ref(params)), rel=1e-12)
    assert got.info.perturbed_loss == pytest.approx(loss_of_w(_effective_ref(u_hat)), rel=1e-12)


def test_gradient_matches_finite_differences_small_cnn():
    """The same with batch norm (train mode) in the loop; the forward reference is saf_ref.nn.naive."""
    rng = np.random.default_rng(3)
    params, state = init_small_cnn(in_channels=1, num_classes=3, width=1, rng=2, dtype=np.float64)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}  # BN params != 1, 0
    x = rng.standard_normal((3, 1, 5, 5))
    y = np.array([0, 2, 1])
    flips = {
        "conv1.weight": [(0, 63), (4, 1)],
        "bn1.weight": [(0, 63)],
        "conv2.weight": [(3, 0), (5, 63), (11, 2)],
        "bn3.bias": [(2, 63)],
        "conv3.weight": [(1, 63), (30, 0), (50, 63)],
        "fc.weight": [(5, 63), (7, 1)],
    }

    def loss_of_w(w):  # independent forward: the naive loops, training-mode batch norm
        h = x
        for i, stride in enumerate((1, 2, 2), start=1):
            h = naive.conv2d_naive(h, w[f"conv{i}.weight"], stride=stride, padding=1)
            h, _, _ = naive.batchnorm2d_naive(h, w[f"bn{i}.weight"], w[f"bn{i}.bias"],
                                              state[f"bn{i}.running_mean"], state[f"bn{i}.running_var"],
                                              train=True)  # fmt: skip
            h = naive.relu_naive(h)
        logits = naive.linear_naive(naive.global_avgpool_naive(h), w["fc.weight"], w["fc.bias"])
        return naive.cross_entropy_naive(logits, y)

    g_clean_ref, g_pert_ref, _, _ = _ste_reference(loss_of_w, params, flips, 1.0)
    clamp = float(np.median(np.abs(np.concatenate([g.ravel() for g in g_pert_ref.values()]))))
    update_ref = {k: (g_clean_ref[k] + np.clip(g_pert_ref[k], -clamp, clamp)) / 2 for k in params}

    spec = default_spec("float64", "tanh")
    got = randbet_gradients(params, state, x, y, model="small_cnn", spec=spec, faults=_fault_list(flips),
                            grad_clamp=clamp)  # fmt: skip
    _check_against_reference(got, g_clean_ref, g_pert_ref, update_ref, clamp, atol=1e-7)


# ==================================================================================================
# Equivalences: no errors is the clean step; the float32 pipeline is the plain loop
# ==================================================================================================


def _step_by_hand(params, state, opt_state, x, y, opt, transform):
    """One SGD step computing with ``w = f(u)`` for conv/linear weights, without the storage pipeline:
    the model on ``w``, then ``du = f'(u) dw`` by the transform's VJP."""
    from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
    from saf_ref.nn.small import small_cnn_backward, small_cnn_forward
    from saf_ref.train.optim import sgd_step

    is_weight = {k: v.ndim >= 2 for k, v in params.items()}
    w = {k: (transform.forward(v) if is_weight[k] else v) for k, v in params.items()}
    logits, new_state, cache = small_cnn_forward(w, state, x, train=True)
    loss, loss_cache = cross_entropy_forward(logits, y)
    dw = small_cnn_backward(cross_entropy_backward(1.0, loss_cache).dlogits, cache).params
    du = {k: (transform.vjp(params[k], g) if is_weight[k] else g) for k, g in dw.items()}
    new_params, new_opt = sgd_step(params, du, opt_state, opt)
    return new_params, new_state, new_opt, float(loss), int(np.sum(np.argmax(logits, axis=1) == y))


@pytest.mark.parametrize("transform", ["identity", "tanh", "arctan"])
def test_step_bit_identical_to_step_without_pipeline(digits32, transform):
    """float32 storage, p_train = 0, no clip: the step through the pipeline is the step computing with
    f(u) directly, bit for bit (float32 storage of float32 latents is exact)."""
    params, state = _cnn32()
    x, y = digits32[0][:32], digits32[1][:32]
    opt = SGD(0.1, momentum=0.9, weight_decay=5e-4)
    t = get_transform(transform)
    p_ref, s_ref, o_ref = params, state, sgd_init(params)
    p_got, s_got, o_got = params, state, sgd_init(params)
    for _ in range(3):  # a few steps: momentum buffers in play
        p_ref, s_ref, o_ref, loss_ref, correct_ref = _step_by_hand(p_ref, s_ref, o_ref, x, y, opt, t)
        p_got, s_got, o_got, info = train_step(
            p_got, s_got, o_got, x, y, model="small_cnn", optimizer=opt,
            spec=default_spec("float32", transform),
        )
        assert info.loss == loss_ref and info.n_correct == correct_ref and info.perturbed_loss is None
    assert _same_bits(p_ref, p_got) and _same_bits(s_ref, s_got) and _same_bits(o_ref, o_got)
    if transform == "identity":  # and the identity pipeline is the step without any spec
        p_plain, s_plain, o_plain = params, state, sgd_init(params)
        for _ in range(3):
            p_plain, s_plain, o_plain, _ = train_step(p_plain, s_plain, o_plain, x, y, model="small_cnn",
                                                      optimizer=opt)  # fmt: skip
        assert _same_bits(p_plain, p_got) and _same_bits(o_plain, o_got)


@pytest.mark.parametrize("transform", ["identity", "tanh"])
def test_transform_shorthand_bit_identical_to_spec(digits32, transform):
    params, state = _cnn32()
    opt = SGD(0.05, momentum=0.9, weight_decay=5e-4)
    kw = dict(model="small_cnn", epochs=2, batch_size=32, optimizer=opt, schedule=Cosine(0.05, t_max=2),
              augment="crop", pad=1, rng=11, verbose=False)  # fmt: skip
    t = None if transform == "identity" else get_transform(transform)
    p1, s1, h1 = train(params, state, digits32, transform=t, **kw)
    p2, s2, h2 = train(params, state, digits32, spec=default_spec("float32", transform), **kw)
    assert all("errors_on" not in r for r in h1)  # the shorthand's records are those of plain training
    assert _same_bits(p1, p2) and _same_bits(s1, s2)
    for a, b in zip(h1, h2, strict=True):
        for key in ("epoch", "lr", "loss", "train_acc", "test_acc", "test_loss"):
            assert a[key] == b[key], key
        assert b["errors_on"] is False and b["perturbed_loss"] is None and b["flips"] == 0


def test_p_train_zero_equals_clean_step(digits32):
    """p_train = 0, or errors_on=False, gives exactly the step on the clean (quantized) gradient."""
    params, state = _cnn32()
    x, y = digits32[0][:32], digits32[1][:32]
    spec = default_spec(QUANT8)
    opt = SGD(0.1, momentum=0.9)
    o = sgd_init(params)
    zero = train_step(params, state, o, x, y, model="small_cnn", optimizer=opt, spec=spec,
                      randbet=RandBETConfig(0.0), rng=5)  # fmt: skip
    off = train_step(params, state, o, x, y, model="small_cnn", optimizer=opt, spec=spec,
                     randbet=RandBETConfig(0.1), rng=5, errors_on=False)  # fmt: skip
    grads = randbet_gradients(params, state, x, y, model="small_cnn", spec=spec)
    manual = opt.step(params, grads.clean, o)
    for got in (zero, off):
        assert _same_bits(got[0], manual[0]) and _same_bits(got[2], manual[1])
        assert _same_bits(got[1], grads.state)
        assert got[3] == StepInfo(grads.info.loss, None, grads.info.n_correct, grads.info.accuracy, False, 0)
    assert grads.perturbed is None and grads.update is grads.clean


def test_clean_pass_uses_the_quantized_weights(digits32):
    """The clean loss is that of the model computing with decode(encode(u)), not with u itself."""
    params, state = _cnn32()
    x, y = digits32[0][:32], digits32[1][:32]
    spec = default_spec(QUANT8)
    w, _ = effective_weights(params, spec)
    assert not _same_bits(w, params)  # 8 bits do change the weights
    quantized_step = train_step(w, state, sgd_init(w), x, y, model="small_cnn", optimizer=SGD(0.1))
    got = train_step(params, state, sgd_init(params), x, y, model="small_cnn", optimizer=SGD(0.1), spec=spec)
    assert got[3].loss == quantized_step[3].loss
    assert _same_bits(got[1], quantized_step[1])


# ==================================================================================================
# The perturbed pass: fresh patterns, replay, clamp, running statistics, purity
# ==================================================================================================


def test_perturbed_pass_never_mutates_inputs(digits32):
    params, state = _cnn32()
    x, y = digits32[0][:32], digits32[1][:32]
    o = sgd_init(params)
    before = digest(params, state, o, {"x": x, "y": y})
    gen = np.random.default_rng(0)
    losses = set()
    for _ in range(40):
        p, s, o2, info = train_step(params, state, o, x, y, model="small_cnn", optimizer=SGD(0.1),
                                    spec=default_spec(QUANT8), randbet=RandBETConfig(0.05, weight_clip=0.1),
                                    rng=gen)  # fmt: skip
        assert info.errors_on and info.n_flips > 0
        losses.add(info.perturbed_loss)
    assert digest(params, state, o, {"x": x, "y": y}) == before
    assert len(losses) == 40  # a fresh pattern every call


def test_replayed_faults_equal_drawn_pattern(digits32):
    """Drawing at p with a seed and replaying the FaultList that draw produced give the same gradient."""
    params, state = _cnn32()
    x, y = digits32[0][:32], digits32[1][:32]
    spec = default_spec(QUANT8)
    _, cache = effective_weights(params, spec, faults=BitErrors(0.02), rng=123)
    drawn = randbet_gradients(params, state, x, y, model="small_cnn", spec=spec, p_train=0.02, rng=123)
    replay = randbet_gradients(params, state, x, y, model="small_cnn", spec=spec, faults=cache.faults)
    assert _same_bits(drawn.update, replay.update) and drawn.info == replay.info
    assert drawn.info.n_flips == len(cache.faults) > 0


def test_clamp_bounds_the_perturbed_contribution(digits32):
    """|update - clean / 2| <= c / 2 elementwise, and the bound is reached (it is the clamp that binds)."""
    params, state = _cnn32()
    x, y = digits32[0][:32], digits32[1][:32]
    spec = default_spec(QUANT8)
    c = 0.01
    kw = dict(model="small_cnn", spec=spec, p_train=0.2, rng=4)
    clamped = randbet_gradients(params, state, x, y, grad_clamp=c, **kw)
    free = randbet_gradients(params, state, x, y, grad_clamp=None, **kw)
    excess_clamped, excess_free = 0.0, 0.0
    for name in params:
        half = clamped.clean[name].astype(np.float64) / 2
        contribution = clamped.update[name].astype(np.float64) - half
        assert np.all(np.abs(contribution) <= c / 2 * (1 + 1e-6)), name
        excess_clamped = max(excess_clamped, float(np.max(np.abs(contribution))))
        excess_free = max(excess_free, float(np.max(np.abs(free.update[name].astype(np.float64) - half))))
        np.testing.assert_array_equal(free.perturbed[name], clamped.perturbed[name])
    assert excess_clamped == pytest.approx(c / 2, rel=1e-6)
    assert excess_free > c  # without the clamp the same pattern moves some element much further


def test_running_statistics_come_from_the_clean_pass(digits32):
    params, state = _cnn32()
    x, y = digits32[0][:32], digits32[1][:32]
    spec = default_spec(QUANT8)
    on = randbet_gradients(params, state, x, y, model="small_cnn", spec=spec, p_train=0.05, rng=1)
    off = randbet_gradients(params, state, x, y, model="small_cnn", spec=spec, errors_on=False)
    assert on.info.errors_on and on.info.perturbed_loss != on.info.loss
    assert _same_bits(on.state, off.state) and _same_bits(on.clean, off.clean)
    assert not _same_bits(on.state, state)  # the clean pass did update them


# ==================================================================================================
# Weight clipping
# ==================================================================================================


def test_clip_weights_projects_conv_and_linear_weights_only():
    params, _ = _cnn32()
    params = {k: v * 3 for k, v in params.items()}
    before = digest(params)
    out = clip_weights(params, 0.05)
    assert digest(params) == before  # not mutated
    for name, v in params.items():
        if name.endswith(".weight") and v.ndim >= 2:
            c = np.float32(0.05)
            np.testing.assert_array_equal(out[name], np.minimum(np.maximum(v, -c), c))
            assert out[name].dtype == np.float32 and np.max(np.abs(v)) > 0.05
        else:
            assert out[name] is v  # biases and batch-norm parameters untouched


def test_weight_clipping_bounds_weights_during_training(digits32):
    params, state = _cnn32()
    params = {k: v * 3 for k, v in params.items()}  # start outside the box: the initial projection matters
    seen = []

    def callback(epoch, p, s, record):
        seen.append(max(float(np.max(np.abs(v))) for k, v in p.items() if v.ndim >= 2))

    config = RandBETConfig(p_train=0.01, weight_clip=0.08)
    p, _, history = train(params, state, digits32, model="small_cnn", spec=default_spec(QUANT8), epochs=2,
                          batch_size=64, optimizer=SGD(0.5, momentum=0.9), randbet=config, augment=None,
                          rng=0, verbose=False, callback=callback)  # fmt: skip
    assert seen == [pytest.approx(0.08, rel=1e-7)] * 2  # clipped, and the box is active
    assert all(np.max(np.abs(v)) <= np.float32(0.08) for k, v in p.items() if v.ndim >= 2)
    assert max(float(np.max(np.abs(p[k]))) for k in ("bn1.weight", "fc.bias", "bn2.bias")) > 0.08
    assert all(r["errors_on"] and r["flips"] > 0 for r in history)


def test_initial_projection_before_the_first_step(digits32):
    """train clips the initial latents, so its first step is a step from the projected point."""
    params, state = _cnn32()
    params = {k: v * 3 for k, v in params.items()}
    x, y = digits32[0], digits32[1]
    spec, opt = default_spec(QUANT8), SGD(0.1)
    p, s, _ = train(params, state, (x, y), model="small_cnn", spec=spec, epochs=1, batch_size=len(y),
                    optimizer=opt, randbet=RandBETConfig(0.0, weight_clip=0.05), augment=None, rng=0,
                    verbose=False)  # fmt: skip
    projected = {k: (np.clip(v, np.float32(-0.05), np.float32(0.05)) if v.ndim >= 2 else v)
                 for k, v in params.items()}  # fmt: skip
    # One full batch: the shuffle only permutes the samples, which changes the float sums; compare
    # with the same permutation.
    order = np.random.default_rng([int(np.random.default_rng(0).integers(2**63)), 0]).permutation(len(y))
    ref = train_step(projected, state, sgd_init(params), x[order], y[order], model="small_cnn",
                     optimizer=opt, spec=spec, randbet=RandBETConfig(0.0, weight_clip=0.05))  # fmt: skip
    assert _same_bits(p, ref[0]) and _same_bits(s, ref[1])


def test_step_weight_clip_equals_projection_of_unclipped_step(digits32):
    params, state = _cnn32()
    x, y = digits32[0][:32], digits32[1][:32]
    kw = dict(model="small_cnn", optimizer=SGD(1.0), spec=default_spec(QUANT8))
    o = sgd_init(params)
    free = train_step(params, state, o, x, y, rng=9, randbet=RandBETConfig(0.02), **kw)
    clipped = train_step(params, state, o, x, y, rng=9, randbet=RandBETConfig(0.02, weight_clip=0.03), **kw)
    for name, v in free[0].items():
        expected = np.clip(v, np.float32(-0.03), np.float32(0.03)) if v.ndim >= 2 else v
        np.testing.assert_array_equal(clipped[0][name], expected)
    assert clipped[3] == free[3] and _same_bits(clipped[2], free[2])


# ==================================================================================================
# The loop: determinism, curriculum, output, purity
# ==================================================================================================


def _protected_run(data, *, seed=0, epochs=2, config=None, verbose=False, **kw):
    params, state = _cnn32()
    kw.setdefault("augment", None)
    return train(params, state, data, model="small_cnn", spec=default_spec(QUANT8), epochs=epochs,
                 batch_size=64, optimizer=SGD(0.05, momentum=0.9, weight_decay=5e-4),
                 randbet=config or RandBETConfig(0.0), rng=seed, verbose=verbose, **kw)  # fmt: skip


def _without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history]


def test_same_seed_identical_training(digits32):
    config = RandBETConfig(p_train=0.02, weight_clip=0.2)
    p1, s1, h1 = _protected_run(digits32, seed=3, config=config, augment="crop", pad=1)
    p2, s2, h2 = _protected_run(digits32, seed=np.random.default_rng(3), config=config, augment="crop", pad=1)
    assert _same_bits(p1, p2) and _same_bits(s1, s2) and _without_timing(h1) == _without_timing(h2)
    p3, _, _ = _protected_run(digits32, seed=4, config=config, augment="crop", pad=1)
    assert not _same_bits(p1, p3)
    assert all(r["errors_on"] and r["perturbed_loss"] > 0 for r in h1)


def test_bit_errors_never_change_the_batches(digits32):
    """The fault patterns come from their own stream: the shuffled, augmented batches are the same."""
    from saf_ref.nn.registry import ModelFns
    from saf_ref.nn.small import small_cnn_backward, small_cnn_forward

    def recording(seen):
        def forward(params, state, x, *, train):
            if train:
                seen.append(hashlib.sha256(x.tobytes()).hexdigest())
            return small_cnn_forward(params, state, x, train=train)

        return ModelFns("small_cnn", forward, small_cnn_backward)

    batches = {}
    for p_train in (0.0, 0.05):
        seen = batches.setdefault(p_train, [])
        params, state = _cnn32()
        train(params, state, digits32[:2], model=recording(seen), spec=default_spec(QUANT8), epochs=2,
              batch_size=64, randbet=RandBETConfig(p_train), augment="crop", pad=1, rng=0,
              verbose=False)  # fmt: skip
    assert len(batches[0.0]) == 6 and batches[0.05] == [b for b in batches[0.0] for _ in range(2)]


def test_curriculum_turns_errors_on_at_the_right_epoch(digits32):
    """The per-epoch latch: errors come on the epoch after the first epoch whose mean clean loss is below
    the threshold."""
    off = RandBETConfig(p_train=0.02, curriculum_loss=1e-9, curriculum="epoch")  # never: errors stay off
    _, _, h_off = _protected_run(digits32, epochs=4, config=off)
    losses = [r["loss"] for r in h_off]
    assert losses[2] < losses[1] < losses[0] and not any(r["errors_on"] for r in h_off)
    threshold = (losses[0] + losses[1]) / 2  # epoch 1 is the first below: errors on from epoch 2
    on = RandBETConfig(0.02, curriculum_loss=threshold, curriculum="epoch")
    _, _, h_on = _protected_run(digits32, epochs=4, config=on)
    assert [r["errors_on"] for r in h_on] == [False, False, True, True]
    # Until errors come on the runs are the same (the fault stream never touches the batches).
    assert _without_timing(h_on[:2]) == _without_timing(h_off[:2])
    assert h_on[2]["perturbed_loss"] is not None and h_on[2]["flips"] > 0 and h_on[2]["loss"] != losses[2]
    # A threshold above the first epoch's loss turns them on from epoch 1; no curriculum: from epoch 0.
    early = RandBETConfig(0.02, curriculum_loss=100.0, curriculum="epoch")
    _, _, h_early = _protected_run(digits32, epochs=2, config=early)
    _, _, h_always = _protected_run(digits32, epochs=2, config=RandBETConfig(0.02))
    assert [r["errors_on"] for r in h_early] == [False, True]
    assert [r["errors_on"] for r in h_always] == [True, True]


def test_progress_lines_and_no_mutation(digits32, capsys):
    params, state = _cnn32()
    before = digest(params, state, {str(i): a for i, a in enumerate(digits32)})
    train(params, state, digits32, model="small_cnn", spec=default_spec(QUANT8), epochs=2, batch_size=64,
          randbet=RandBETConfig(0.01, curriculum_loss=100.0, curriculum="epoch"), augment=None,
          rng=0)  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2  lr 0.10000  loss ") and "img/s" in lines[0]
    assert lines[0].endswith("errors off") and "test" in lines[0]
    assert "errors on (perturbed loss " in lines[1]
    assert digest(params, state, {str(i): a for i, a in enumerate(digits32)}) == before
    _protected_run(digits32, epochs=1)
    assert capsys.readouterr().out == ""


def test_test_accuracy_is_that_of_the_clean_stored_model(digits32):
    from saf_ref.protect.storage import load, store
    from saf_ref.train.loop import evaluate

    p, s, history = _protected_run(digits32, epochs=1, config=RandBETConfig(0.02))
    res = evaluate(load(store(p, default_spec(QUANT8))), s, digits32[2], digits32[3], model="small_cnn")
    assert history[-1]["test_acc"] == res.accuracy and history[-1]["test_loss"] == res.loss
    _, _, h_train_only = _protected_run(digits32[:2], epochs=1)
    assert h_train_only[0]["test_acc"] is None


def test_saf_training_through_the_pipeline_learns(digits32):
    """SAF (tanh, float16 storage, p_train = 0) trains through the pipeline."""
    params, state = init_mlp(64, hidden=(32,), rng=0, dtype=np.float32)
    spec = default_spec("float16", "tanh")
    _, _, history = train(params, state, digits32, model="mlp", spec=spec, epochs=6, batch_size=32,
                          optimizer=SGD(0.1, momentum=0.9), augment=None, rng=0, verbose=False)  # fmt: skip
    assert history[-1]["loss"] < 0.5 * history[0]["loss"] and history[-1]["test_acc"] > 0.6


# ==================================================================================================
# Validation
# ==================================================================================================


def test_config_validation():
    fn = "RandBETConfig"
    with pytest.raises(ValueError, match=rf"{fn}: p_train must be a probability in \[0, 1\], got 1.5"):
        RandBETConfig(1.5)
    with pytest.raises(TypeError, match="RandBETConfig: p_train must be a real number, got str"):
        RandBETConfig("0.1")
    for name in ("grad_clamp", "weight_clip", "curriculum_loss"):
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"RandBETConfig: {name} must be None or a finite positive"):
                RandBETConfig(0.01, **{name: bad})
        with pytest.raises(TypeError, match=f"RandBETConfig: {name} must be a real number, got bool"):
            RandBETConfig(0.01, **{name: True})
    c = RandBETConfig(0.01, grad_clamp=None, weight_clip=1, curriculum_loss=np.float32(0.5))
    assert c.grad_clamp is None and type(c.weight_clip) is float and type(c.curriculum_loss) is float


def test_gradient_and_step_validation(digits32):
    params, state = _cnn32()
    x, y = digits32[0][:8], digits32[1][:8]
    spec = default_spec(QUANT8)
    kw = dict(model="small_cnn", spec=spec)
    fn = "randbet_gradients"
    with pytest.raises(TypeError, match=f"{fn}: spec must be a StorageSpec"):
        randbet_gradients(params, state, x, y, model="small_cnn", spec="float32")
    with pytest.raises(TypeError, match=f"{fn}: params must be a non-empty dict of numpy arrays, got list"):
        randbet_gradients([], state, x, y, **kw)
    with pytest.raises(TypeError, match=f"{fn}: params must be a non-empty dict"):
        randbet_gradients({}, state, x, y, **kw)
    with pytest.raises(TypeError, match=rf"{fn}: params\['fc.bias'\] must have dtype in"):
        randbet_gradients({**params, "fc.bias": params["fc.bias"].astype(np.int32)}, state, x, y, **kw)
    with pytest.raises(ValueError, match=f"{fn}: model must be one of"):
        randbet_gradients(params, state, x, y, model="vgg", spec=spec)
    with pytest.raises(ValueError, match=rf"{fn}: p_train must be a probability in \[0, 1\], got -0.1"):
        randbet_gradients(params, state, x, y, p_train=-0.1, rng=0, **kw)
    with pytest.raises(ValueError, match=f"{fn}: grad_clamp must be None or a finite positive number, got 0"):
        randbet_gradients(params, state, x, y, grad_clamp=0, **kw)
    with pytest.raises(TypeError, match=f"{fn}: errors_on must be a bool, got int"):
        randbet_gradients(params, state, x, y, errors_on=1, **kw)
    with pytest.raises(TypeError, match=f"{fn}: label_smoothing must be a real number, got NoneType"):
        randbet_gradients(params, state, x, y, label_smoothing=None, **kw)
    with pytest.raises(ValueError, match=f"{fn}: nonfinite must be one of"):
        randbet_gradients(params, state, x, y, nonfinite="clip", **kw)
    with pytest.raises(TypeError, match=f"{fn}: faults must be None or a FaultList, got list"):
        randbet_gradients(params, state, x, y, faults=[], **kw)
    fl = FaultList.from_arrays([0], [7], tensor="conv1.weight", format_name=QUANT8.name)
    with pytest.raises(ValueError, match=f"{fn}: p_train must be 0 when faults is given"):
        randbet_gradients(params, state, x, y, faults=fl, p_train=0.1, **kw)
    with pytest.raises(TypeError, match=f"{fn}: rng must be a numpy.random.Generator or a non-negative"):
        randbet_gradients(params, state, x, y, p_train=0.1, **kw)  # errors on and nothing to draw from
    with pytest.raises(TypeError, match=f"{fn}: rng must be a numpy.random.Generator"):
        randbet_gradients(params, state, x, y, rng="seed", **kw)  # unused, still checked
    # Passed down: a quantizer stores float32 only; a fault list must name stored tensors.
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    s64 = {k: v.astype(np.float64) for k, v in state.items()}
    with pytest.raises(TypeError, match="effective_weights: latents\\['conv1.weight'\\] must be float32"):
        randbet_gradients(p64, s64, x.astype(np.float64), y, **kw)
    bad_fl = FaultList.from_arrays([0], [7], tensor="nope", format_name=QUANT8.name)
    with pytest.raises(ValueError, match="effective_weights: faults must name stored tensors"):
        randbet_gradients(params, state, x, y, faults=bad_fl, **kw)


    fn = "clip_weights"
    with pytest.raises(ValueError, match=f"{fn}: weight_clip must be a finite positive number, got None"):
        clip_weights(params, None)
    with pytest.raises(ValueError, match=f"{fn}: weight_clip must be None or a finite positive number"):
        clip_weights(params, float("inf"))
    with pytest.raises(TypeError, match=f"{fn}: params must be a non-empty dict"):
        clip_weights(None, 0.1)
    match = rf"{fn}: weight_clip must be finite and > 0 in float32, the dtype of params\['conv1.weight'\], "
    with pytest.raises(ValueError, match=match + "got 1e-50, which rounds to"):
        clip_weights({k: v.astype(np.float32) for k, v in params.items()}, 1e-50)


def test_train_validation(digits32):
    params, state = _cnn32()
    fn = "train"
    spec = default_spec(QUANT8)
    kw = dict(model="small_cnn", epochs=1, rng=0, verbose=False)
    with pytest.raises(TypeError, match=f"{fn}: spec must be None or a StorageSpec, got str"):
        train(params, state, digits32, spec="float32", **kw)
    with pytest.raises(ValueError, match=f"{fn}: randbet needs a storage spec"):
        train(params, state, digits32, randbet=RandBETConfig(0.1), **kw)
    with pytest.raises(ValueError, match=f"{fn}: give the transform inside the spec or as transform="):
        train(params, state, digits32, spec=spec, transform="tanh", **kw)
    with pytest.raises(TypeError, match=f"{fn}: randbet must be None or a RandBETConfig, got dict"):
        train(params, state, digits32, spec=spec, randbet={"p_train": 0.1}, **kw)
    with pytest.raises(TypeError, match=f"{fn}: data must be a tuple"):
        train(params, state, list(digits32), spec=spec, **kw)
    with pytest.raises(ValueError, match=f"{fn}: epochs must be in"):
        train(params, state, digits32, spec=spec, **{**kw, "epochs": -1})
    with pytest.raises(ValueError, match=f"{fn}: batch_size must be in"):
        train(params, state, digits32, spec=spec, batch_size=0, **kw)
    with pytest.raises(ValueError, match=f"{fn}: pad must be in"):
        train(params, state, digits32, spec=spec, pad=-1, **kw)
    with pytest.raises(ValueError, match=f"{fn}: eval_batch_size must be in"):
        train(params, state, digits32, spec=spec, eval_batch_size=0, **kw)
    with pytest.raises(ValueError, match=f"{fn}: nonfinite must be one of"):
        train(params, state, digits32, spec=spec, nonfinite="nan", **kw)
    with pytest.raises(TypeError, match=f"{fn}: label_smoothing must be a real number"):
        train(params, state, digits32, spec=spec, label_smoothing="0", **kw)
    with pytest.raises(ValueError, match=f"{fn}: augment must be one of"):
        train(params, state, digits32, spec=spec, augment="rotate", **kw)
    with pytest.raises(TypeError, match=f"{fn}: optimizer must be a saf_ref.train.optim.SGD"):
        train(params, state, digits32, spec=spec, optimizer="sgd", **kw)
    with pytest.raises(TypeError, match=f"{fn}: verbose must be a bool, got int"):
        train(params, state, digits32, spec=spec, **{**kw, "verbose": 1})
    with pytest.raises(TypeError, match=f"{fn}: rng must be a numpy.random.Generator"):
        train(params, state, digits32, spec=spec, **{**kw, "rng": None})
    with pytest.raises(TypeError, match=f"{fn}: callback must be callable or None, got int"):
        train(params, state, digits32, spec=spec, callback=3, **kw)
    with pytest.raises(ValueError, match=f"{fn}: model must be one of"):
        train(params, state, digits32, spec=spec, **{**kw, "model": "lenet"})


# ------------------------------------------------------------------------------ checkpoint and resume


def _ckpt_run(tmp_path, name, *, epochs, resume=False, init_seed=0, config=None, spec=None):
    from saf_ref.bits import Quantizer
    from saf_ref.data import load_digits
    from saf_ref.nn.small import init_small_cnn
    from saf_ref.protect import default_spec
    from saf_ref.train.loop import train
    from saf_ref.train.optim import SGD
    from saf_ref.train.randbet import RandBETConfig

    d = load_digits()
    data = (d.x_train[:160], d.y_train[:160], d.x_test[:60], d.y_test[:60])
    params, state = init_small_cnn(in_channels=1, num_classes=10, width=2, rng=init_seed)
    spec = spec or default_spec(Quantizer(8, margin=1e-3))
    # A curriculum threshold the first epoch's loss passes, so errors switch on mid-run: resuming must
    # restore that latch from the checkpoint.
    config = config or RandBETConfig(p_train=0.02, weight_clip=0.5, curriculum_loss=10.0, curriculum="epoch")
    return train(params, state, data, model="small_cnn", spec=spec, epochs=epochs, batch_size=32,
                 optimizer=SGD(0.05, momentum=0.9), randbet=config, augment=None, rng=3, verbose=False,
                 checkpoint=tmp_path / name, resume=resume)  # fmt: skip


def _ckpt_bits_equal(a, b):
    return list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_resume_equals_uninterrupted_run(tmp_path):
    p_full, s_full, h_full = _ckpt_run(tmp_path, "full.npz", epochs=3)
    assert [r["errors_on"] for r in h_full] == [False, True, True]  # the curriculum latch switched on
    _ckpt_run(tmp_path, "part.npz", epochs=2)
    # The given params (another init) are ignored: the run continues from the checkpoint.
    p_res, s_res, h_res = _ckpt_run(tmp_path, "part.npz", epochs=3, resume=True, init_seed=9)
    assert _ckpt_bits_equal(p_full, p_res) and _ckpt_bits_equal(s_full, s_res)
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in h_full] == [
        {k: v for k, v in r.items() if k not in drop} for r in h_res
    ]


def test_resume_refuses_another_spec_or_config(tmp_path):
    from saf_ref.protect import default_spec
    from saf_ref.train.randbet import RandBETConfig

    _ckpt_run(tmp_path, "ck.npz", epochs=1)
    with pytest.raises(ValueError, match="train: the checkpoint .* has spec"):
        _ckpt_run(tmp_path, "ck.npz", epochs=2, resume=True, spec=default_spec("float16"))
    with pytest.raises(ValueError, match="train: the checkpoint .* has config"):
        _ckpt_run(tmp_path, "ck.npz", epochs=2, resume=True, config=RandBETConfig(p_train=0.05))


def test_resume_needs_a_checkpoint_path():
    from saf_ref.data import load_digits
    from saf_ref.nn.small import init_small_cnn
    from saf_ref.protect import default_spec
    from saf_ref.train.loop import train

    d = load_digits()
    params, state = init_small_cnn(in_channels=1, num_classes=10, width=2, rng=0)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint path"):
        train(params, state, d, model="small_cnn", spec=default_spec(), epochs=1, rng=0, verbose=False,
              resume=True)  # fmt: skip
    with pytest.raises(TypeError, match="resume must be a bool"):
        train(params, state, d, model="small_cnn", spec=default_spec(), epochs=1, rng=0, verbose=False,
              resume=1)  # fmt: skip
