"""Training-loop edge cases found in review: the transform= shorthand with a per-epoch curriculum, and
train_step's checks of a RandBET configuration without a spec.

Tiny MLPs on slices of the shipped 8x8 digits keep this file fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.data.shipped import load_digits
from saf_ref.nn.small import init_mlp
from saf_ref.protect.storage import default_spec
from saf_ref.train.loop import train, train_step
from saf_ref.train.optim import SGD, sgd_init
from saf_ref.train.randbet import RandBETConfig


@pytest.fixture(scope="module")
def digits():
    d = load_digits(dtype=np.float64)
    return d.x_train[:96], d.y_train[:96], d.x_test[:40], d.y_test[:40]


def _mlp():
    return init_mlp(64, hidden=(16,), rng=0, dtype=np.float64)


def _same_bits(a, b):
    return list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


# A threshold every clean loss of this run is below: the latch switches errors on after epoch 0.
EPOCH_LATCH = RandBETConfig(p_train=0.02, curriculum_loss=100.0, curriculum="epoch")
KW = dict(model="mlp", epochs=3, batch_size=32, augment=None, optimizer=SGD(0.05, momentum=0.9),
          nonfinite="zero", rng=0, verbose=False, randbet=EPOCH_LATCH)


# Float64 exponent flips make huge weights; a sum of them overflows (read back, inf becomes 0 or 1).
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_transform_shorthand_with_epoch_curriculum_equals_its_explicit_spec(digits, tmp_path):
    """transform="tanh" is documented as the spec default_spec(<dtype>, "tanh"): with the per-epoch latch
    the two runs must switch errors on at the same epoch and give the same bits (the shorthand used to
    keep errors off for ever: it never carried the latch from one epoch to the next)."""
    params, state = _mlp()
    ps, ss, hs = train(params, state, digits, spec=default_spec("float64", "tanh"), **KW)
    pt, st, ht = train(params, state, digits, transform="tanh", **KW)
    assert [r["errors_on"] for r in hs] == [False, True, True]
    assert [r["flips"] > 0 for r in hs] == [False, True, True]  # the errors really ran
    assert [r["errors_on"] for r in ht] == [False, True, True]
    assert _same_bits(ps, pt) and _same_bits(ss, st)
    assert [r["loss"] for r in ht] == [r["loss"] for r in hs]
    # Interrupted after epoch 0 (errors still off) and resumed: the latch comes back from the record.
    path = tmp_path / "shorthand.npz"
    train(params, state, digits, transform="tanh", checkpoint=path, **{**KW, "epochs": 1})
    pr, sr, _ = train(params, state, digits, transform="tanh", checkpoint=path, resume=True, **KW)
    assert _same_bits(pr, ps) and _same_bits(sr, ss)


def test_train_step_refuses_randbet_without_spec(digits):
    """Without a spec the perturbed pass cannot run: train() refuses that, and so must train_step (it
    used to return a plain step, errors_on False, as if p_train had been 0)."""
    params, state = _mlp()
    x, y = digits[0][:32], digits[1][:32]
    kw = dict(model="mlp", optimizer=SGD(0.1), rng=0)
    with pytest.raises(ValueError, match="train_step: randbet needs a storage spec"):
        train_step(params, state, sgd_init(params), x, y, randbet=RandBETConfig(p_train=0.1), **kw)
    with pytest.raises(TypeError, match="train_step: randbet must be None or a RandBETConfig, got dict"):
        train_step(params, state, sgd_init(params), x, y, spec=default_spec("float64"),
                   randbet={"p_train": 0.1}, **kw)  # fmt: skip
    with pytest.raises(TypeError, match="train_step: spec must be None or a StorageSpec, got str"):
        train_step(params, state, sgd_init(params), x, y, spec="float64", **kw)
    with pytest.raises(TypeError, match="train_step: errors_on must be a bool, got str"):
        train_step(params, state, sgd_init(params), x, y, errors_on="yes", **kw)


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_is_refused(digits, split):
    """No sample: an epoch took no step and recorded loss 0.0 and accuracy 0 (an empty sum over
    max(n, 1)), a perfect loss for a model that never trained or was never tested."""
    params, state = _mlp()
    x_train, y_train, x_test, y_test = digits
    if split == "train":
        x_train, y_train = x_train[:0], y_train[:0]
    else:
        x_test, y_test = x_test[:0], y_test[:0]
    data = (x_train, y_train, x_test, y_test)
    message = rf"train: x_{split} must hold at least one sample, got shape \(0, 1, 8, 8\)"
    with pytest.raises(ValueError, match=message):
        train(params, state, data, model="mlp", epochs=1, augment=None, rng=0, verbose=False)


def test_latents_a_spec_cannot_store_are_refused_in_trains_name(digits):
    """A quantizer stores float32 latents only: float64 ones used to be refused at the first step, by
    effective_weights (the message named a function the caller never called)."""
    from saf_ref.bits import Quantizer

    params, state = _mlp()
    spec = default_spec(Quantizer(8))
    with pytest.raises(TypeError, match=r"train: params\['fc1.weight'\] must be float32 to be stored with"):
        train(params, state, digits, model="mlp", spec=spec, epochs=1, augment=None, rng=0, verbose=False)
    f32 = {k: v.astype(np.float32) for k, v in params.items()}
    d32 = tuple(a.astype(np.float32) if a.dtype == np.float64 else a for a in digits)
    _, _, history = train(f32, state, d32, model="mlp", spec=spec, epochs=1, augment=None, rng=0,
                          verbose=False)
    assert np.isfinite(history[0]["loss"])


def _same_value(a, b):
    """Equal, NaN included (a NaN equals a NaN)."""
    both_nan = isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)
    return both_nan or (type(a) is type(b) and a == b)


def test_resumed_diverged_run_has_the_uninterrupted_history(digits, tmp_path):
    """A diverged run's NaN/inf losses go through the checkpoint's strict JSON; they used to come back as
    None, so a resumed run's history differed from the uninterrupted one (and its 'loss' was no number)."""
    params, state = _mlp()
    kw = dict(model="mlp", batch_size=32, augment=None, optimizer=SGD(1e300), rng=0, verbose=False)
    path = tmp_path / "diverged.npz"
    with np.errstate(all="ignore"):
        _, _, full = train(params, state, digits, epochs=2, **kw)
        train(params, state, digits, epochs=1, checkpoint=path, **kw)
        _, _, resumed = train(params, state, digits, epochs=2, checkpoint=path, resume=True, **kw)
    assert not np.isfinite(full[0]["loss"]) and not np.isfinite(full[0]["test_loss"])  # it did diverge
    for got, want in zip(resumed, full, strict=True):
        for key in want.keys() - {"seconds", "images_per_s"}:
            assert _same_value(got[key], want[key]), (key, got[key], want[key])
