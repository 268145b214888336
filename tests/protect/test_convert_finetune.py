"""SAF conversion of a *pretrained* network, then fine-tuning (the SAF paper's "adapt in a few epochs").

A small CNN is trained plain on the shipped digits (float32), converted with
:func:`saf_ref.protect.convert.convert_to_saf` and run with ``w = f(u)``:

- ``"inverse"``: for weights inside ``f``'s range, the effective weights ``f(f^{-1}(w))`` are within
  the transforms' documented round trip ``|f(f^{-1}(w)) - w| <= 2 eps |w|`` (eps = 2**-23), so the
  logits move by at most the first-order bound ``sum_w |d logit / d w| * 2 eps |w|``. The Jacobian is
  computed per example and class with the float64 backward pass, and both networks are evaluated in
  float64, so that rounding in the forward pass (about 1e-16) is negligible against this bound. Weights
  beyond the range (the trained classifier has some) are clipped just below it (tested separately), so
  the check uses an exactly equivalent network with every weight in range (:func:`_fold_into_bn3`);
- ``"copy"``: ``u = w``, so the network computes with ``f(w)``, checked against ``np.tanh`` in float64
  rounded once;
- fine-tuning with ``train(..., transform=f)`` is bit-for-bit deterministic and keeps the accuracy.

The network computes with the weights it is given: the latents become weights in
:func:`saf_ref.protect.effective_weights` (every tensor stored in float32, ``f`` on the conv/linear
weights), as in training and in fault campaigns.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.data.shipped import load_digits
from saf_ref.nn.small import init_small_cnn, small_cnn_backward, small_cnn_forward
from saf_ref.protect import default_spec, effective_weights, param_role
from saf_ref.protect.convert import convert_to_saf
from saf_ref.protect.transforms import get_transform
from saf_ref.train.loop import evaluate, train
from saf_ref.train.optim import SGD
from saf_ref.train.schedules import Cosine

EPS32 = 2.0**-23
# f and f^{-1} in float64, independent of saf_ref.
FORWARDS = {"tanh": np.tanh, "arctan": np.arctan, "softsign": lambda x: x / (1 + np.abs(x))}


@pytest.fixture(scope="module")
def digits():
    return load_digits()  # float32 images in [0, 1]


@pytest.fixture(scope="module")
def pretrained(digits):
    params, state = init_small_cnn(in_channels=1, num_classes=10, width=6, rng=0)
    params, state, _ = train(
        params, state, digits, model="small_cnn", epochs=3, batch_size=32,
        optimizer=SGD(0.1, momentum=0.9, weight_decay=5e-4), schedule=Cosine(0.1, 3),
        augment=None, rng=1, verbose=False,
    )  # fmt: skip
    accuracy = evaluate(params, state, digits.x_test, digits.y_test, model="small_cnn").accuracy
    assert accuracy > 0.9, "the pretrained network must be worth converting"
    return params, state, accuracy


def _fold_into_bn3(params):
    """The same network, bit for bit, with ``fc.weight`` inside ``(-0.5, 0.5)``.

    ``fc`` reads the pooled ``relu(bn3(.))``; ReLU is positively homogeneous, so multiplying bn3's weight
    and bias by ``s = 2**k`` and dividing ``fc.weight`` by ``s`` changes nothing, and with a power of
    two every one of these products is exact in floating point.
    """
    k = max(0, int(np.ceil(np.log2(np.max(np.abs(params["fc.weight"])) / 0.5))) + 1)
    s = np.float32(2.0**k)
    return {**params, "bn3.weight": params["bn3.weight"] * s, "bn3.bias": params["bn3.bias"] * s,
            "fc.weight": params["fc.weight"] / s}  # fmt: skip


def _effective(latents, f):
    """The weights the converted network computes with: ``f`` on conv/linear weights, float32 storage."""
    return effective_weights(latents, default_spec("float32", f))[0]


def _is_weight(name, params):
    """Whether ``f`` applies to ``name`` (a conv or linear weight)."""
    return param_role(name, {k: v.shape for k, v in params.items()}) == "weight"


def _f64(d):
    return {k: v.astype(np.float64) for k, v in d.items()}


def _logit_bound(params64, state64, x64, dweights):
    """``sum_w |d logit[n, k] / d w| * dweights[w]`` for every example n and class k (eval mode).

    Eval-mode batch norm treats examples independently, so one example at a time gives its own Jacobian.
    """
    n_classes = params64["fc.weight"].shape[0]
    bound = np.zeros((x64.shape[0], n_classes))
    for n in range(x64.shape[0]):
        _, _, cache = small_cnn_forward(params64, state64, x64[n : n + 1], train=False)
        for k in range(n_classes):
            onehot = np.zeros((1, n_classes))
            onehot[0, k] = 1.0
            grads = small_cnn_backward(onehot, cache).params
            bound[n, k] = sum(float(np.sum(np.abs(grads[name]) * dw)) for name, dw in dweights.items())
    return bound


@pytest.mark.parametrize("name", ["tanh", "arctan", "softsign"])
def test_inverse_conversion_reproduces_the_pretrained_network(pretrained, digits, name):
    trained, state, accuracy = pretrained
    params = _fold_into_bn3(trained)
    x = digits.x_test
    assert (small_cnn_forward(params, state, x, train=False)[0].tobytes()
            == small_cnn_forward(trained, state, x, train=False)[0].tobytes())  # fmt: skip
    f = get_transform(name)
    latents = convert_to_saf(params, f, mode="inverse")
    effective = _effective(latents, f)
    # Effective weights: within the documented round trip (every |w| is below the bound, so nothing is
    # clipped); every other parameter is used raw, unchanged.
    dweights = {}
    for k, w in params.items():
        if not _is_weight(k, params):
            assert latents[k].tobytes() == w.tobytes() and effective[k].tobytes() == w.tobytes(), k
            continue
        assert np.max(np.abs(w)) < 0.99 * f.bound  # inside the range: nothing is clipped
        err = np.abs(effective[k].astype(np.float64) - w)
        assert np.all(err <= 2 * EPS32 * np.abs(w)), (k, float(np.max(err / np.abs(w))))
        dweights[k] = 2 * EPS32 * np.abs(w.astype(np.float64))

    # Logits, in float64 so that the only difference is the weights': within the first-order bound.
    x64 = digits.x_test[:24].astype(np.float64)
    p64, s64 = _f64(params), _f64(state)
    ref = small_cnn_forward(p64, s64, x64, train=False)[0]
    got = small_cnn_forward(_f64(effective), s64, x64, train=False)[0]
    bound = _logit_bound(p64, s64, x64, dweights)
    diff = np.abs(got - ref)
    assert np.all(diff <= 1.01 * bound + 1e-13), float(np.max(diff - bound))
    assert np.max(diff) > 0  # the weights did change (the test is not vacuous) ...
    assert np.max(bound) < 1e-4  # ... by a rounding error, not more

    # float32, as the network is used: the same predictions wherever the float64 margin between the two
    # best classes exceeds that bound plus float32 rounding, and the same accuracy on the test set.
    pred = np.argmax(small_cnn_forward(params, state, digits.x_test, train=False)[0], axis=1)
    pred_conv = np.argmax(small_cnn_forward(effective, state, digits.x_test, train=False)[0], axis=1)
    full = np.sort(small_cnn_forward(p64, s64, digits.x_test.astype(np.float64), train=False)[0], axis=1)
    margin = full[:, -1] - full[:, -2]
    assert np.all((pred == pred_conv) | (margin < 1e-3))
    conv_acc = evaluate(effective, state, digits.x_test, digits.y_test, model="small_cnn").accuracy
    assert abs(conv_acc - accuracy) <= np.mean(margin < 1e-3)


@pytest.mark.parametrize("name", ["tanh", "arctan"])
def test_copy_conversion_computes_with_f_of_w(pretrained, digits, name):
    params, state, _ = pretrained
    f = get_transform(name)
    latents = convert_to_saf(params, f, mode="copy")
    effective = _effective(latents, f)
    explicit = {}  # f(w) computed independently of saf_ref
    for k, w in params.items():
        assert latents[k].tobytes() == w.tobytes(), k  # u = w
        explicit[k] = w
        if _is_weight(k, params):
            # f in float64, rounded once to float32 (the transforms' documented rounding).
            want = FORWARDS[name](w.astype(np.float64)).astype(np.float32)
            np.testing.assert_array_equal(effective[k], want, err_msg=k)
            explicit[k] = want
            assert np.all(np.abs(effective[k]) <= np.abs(w))  # f shrinks every weight ...
            big = np.abs(w) > 1e-3  # ... visibly in float32 once |w|**2 / 3 exceeds half an ulp
            assert np.all(np.abs(effective[k][big]) < np.abs(w[big]))
        else:
            assert effective[k].tobytes() == w.tobytes(), k
    # The converted network is the plain one with weights f(w): same logits, bit for bit.
    x = digits.x_test[:50]
    got = small_cnn_forward(effective, state, x, train=False)[0]
    assert got.tobytes() == small_cnn_forward(explicit, state, x, train=False)[0].tobytes()
    plain = small_cnn_forward(params, state, x, train=False)[0]
    assert not np.array_equal(got, plain)  # unlike "inverse", "copy" changes what the network computes


def _finetune(latents, state, data, f, *, rng):
    return train(
        latents, state, data, model="small_cnn", epochs=2, batch_size=32,
        optimizer=SGD(0.01, momentum=0.9, weight_decay=5e-4), schedule=Cosine(0.01, 2), transform=f,
        augment=None, rng=rng, verbose=False,
    )  # fmt: skip


def _without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history]


@pytest.mark.parametrize("mode", ["copy", "inverse"])
def test_short_finetune_is_deterministic_and_keeps_accuracy(pretrained, digits, mode):
    params, state, accuracy = pretrained
    f = get_transform("tanh")
    latents = convert_to_saf(params, f, mode=mode)
    before = {k: v.copy() for k, v in latents.items()}
    u1, s1, h1 = _finetune(latents, state, digits, f, rng=3)
    u2, s2, h2 = _finetune(latents, state, digits, f, rng=np.random.default_rng(3))
    assert all(u1[k].tobytes() == u2[k].tobytes() for k in u1)
    assert all(s1[k].tobytes() == s2[k].tobytes() for k in s1)
    assert _without_timing(h1) == _without_timing(h2)
    assert all(latents[k].tobytes() == before[k].tobytes() for k in latents)  # inputs untouched
    assert any(not np.array_equal(u1[k], latents[k]) for k in u1)  # it did train
    tuned = evaluate(_effective(u1, f), s1, digits.x_test, digits.y_test, model="small_cnn").accuracy
    assert tuned == h1[-1]["test_acc"]
    assert tuned >= accuracy - 0.02, (mode, accuracy, tuned)


def test_inverse_conversion_clips_weights_beyond_the_range(pretrained, digits):
    """The trained classifier has weights with |w| >= 1, which tanh cannot produce: they come back as
    +-tanh(u_max), just below 1 (the documented behaviour), so the logits move by more than rounding."""
    params, state, _ = pretrained
    f = get_transform("tanh")
    w = params["fc.weight"]
    outside = np.abs(w) >= 1
    assert outside.any()
    effective = _effective(convert_to_saf(params, f, mode="inverse"), f)["fc.weight"]
    assert np.all(np.sign(effective[outside]) == np.sign(w[outside]))
    assert np.all((np.abs(effective[outside]) < 1) & (np.abs(effective[outside]) >= 1 - 2**-23))
    inside = ~outside
    assert np.all(np.abs(effective[inside] - w[inside]) <= 2 * EPS32 * np.abs(w[inside]))
