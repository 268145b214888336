"""The training loop: determinism, learning, checkpoint resume, progress output, evaluation, validation.

Tiny models on small slices of the shipped 8x8 digits keep this file fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.data.shipped import load_digits
from saf_ref.nn.registry import ModelFns, model_fns
from saf_ref.nn.small import init_mlp, init_small_cnn, small_cnn_forward
from saf_ref.train.loop import evaluate, format_epoch, train, train_step
from saf_ref.train.optim import SGD, sgd_init
from saf_ref.train.schedules import Cosine


@pytest.fixture(scope="module")
def digits():
    d = load_digits(dtype=np.float64)
    return d.x_train[:240], d.y_train[:240], d.x_test[:120], d.y_test[:120]


def _cnn(seed=0):
    return init_small_cnn(in_channels=1, num_classes=10, width=2, rng=seed, dtype=np.float64)


def _run(data, *, epochs=2, seed=0, init_seed=0, model="small_cnn", **kw):
    params, state = (
        _cnn(init_seed)
        if model == "small_cnn"
        else init_mlp(64, hidden=(32,), rng=init_seed, dtype=np.float64)
    )
    kw.setdefault("optimizer", SGD(0.05, momentum=0.9, weight_decay=5e-4))
    kw.setdefault("augment", "crop" if model == "small_cnn" else None)
    return train(params, state, data, model=model, epochs=epochs, batch_size=32, pad=1, rng=seed,
                 verbose=False, **kw)  # fmt: skip


def _same_bits(a, b):
    return list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


def _without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history]


def test_deterministic_given_seed(digits):
    p1, s1, h1 = _run(digits, seed=3)
    p2, s2, h2 = _run(digits, seed=np.random.default_rng(3))
    assert _same_bits(p1, p2) and _same_bits(s1, s2)
    assert _without_timing(h1) == _without_timing(h2)
    p3, _, _ = _run(digits, seed=4)
    assert not _same_bits(p1, p3)


def test_loss_decreases_and_learns(digits):
    sched = Cosine(0.1, t_max=8)
    _, _, history = _run(digits, epochs=8, model="mlp", schedule=sched, optimizer=SGD(0.1, momentum=0.9))
    losses = [r["loss"] for r in history]
    assert losses[-1] < 0.3 * losses[0], losses
    assert history[-1]["test_acc"] > 0.8  # 10 classes: chance is 0.1
    assert [r["lr"] for r in history] == [sched.lr_at(e) for e in range(8)]
    assert [r["epoch"] for r in history] == list(range(8))


def test_checkpoint_resume_equals_uninterrupted(digits, tmp_path):
    full = tmp_path / "full.npz"
    part = tmp_path / "part.npz"
    p_full, s_full, h_full = _run(digits, epochs=3, seed=5, checkpoint=full)
    _run(digits, epochs=2, seed=5, checkpoint=part)
    # The resumed run starts from the checkpoint: the params given here (another init) are ignored.
    p_res, s_res, h_res = _run(digits, epochs=3, seed=5, init_seed=99, checkpoint=part, resume=True)
    assert _same_bits(p_full, p_res) and _same_bits(s_full, s_res)
    assert _without_timing(h_full) == _without_timing(h_res)
    # resume=True without an existing file starts from scratch.
    p_new, _, h_new = _run(digits, epochs=1, seed=5, checkpoint=tmp_path / "new.npz", resume=True)
    assert len(h_new) == 1
    # A checkpoint of another model is refused.
    with pytest.raises(ValueError, match="train: the checkpoint .* is of model 'small_cnn', got model 'mlp'"):
        _run(digits, epochs=3, model="mlp", checkpoint=part, resume=True)


def test_quiet_prints_nothing_and_verbose_prints_epochs(digits, capsys):
    _run(digits, epochs=1)
    assert capsys.readouterr().out == ""
    params, state = _cnn()
    train(params, state, digits, model="small_cnn", epochs=2, batch_size=64, rng=0, augment=None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2  lr 0.10000  loss ") and "img/s" in lines[0] and "test" in lines[0]


def test_format_epoch():
    rec = {"epoch": 2, "lr": 0.05, "loss": 0.43125, "train_acc": 0.872, "test_acc": 0.901, "seconds": 5.24,
           "images_per_s": 1234.4}  # fmt: skip
    assert format_epoch(rec, 10) == (
        "epoch  3/10  lr 0.05000  loss 0.4313  train  87.20%  test  90.10%     1234 img/s  5.2 s"
    )
    assert "test" not in format_epoch({**rec, "test_acc": None}, 10)


def test_callback_and_no_mutation(digits):
    params, state = _cnn()
    copies = [{k: v.copy() for k, v in d.items()} for d in (params, state)]
    data_copies = [a.copy() for a in digits]
    seen = []

    def callback(epoch, p, s, record):
        seen.append((epoch, record["loss"], len(p)))

    _, _, history = train(
        params,
        state,
        digits,
        model="small_cnn",
        epochs=2,
        batch_size=64,
        rng=0,
        verbose=False,
        callback=callback,
    )
    assert seen == [(0, history[0]["loss"], len(params)), (1, history[1]["loss"], len(params))]
    for before, now in zip(copies, (params, state), strict=True):
        assert all(np.array_equal(before[k], now[k]) for k in before)
    assert all(np.array_equal(a, b) for a, b in zip(data_copies, digits, strict=True))


def test_train_without_test_split(digits):
    _, _, history = _run(digits[:2], epochs=1)
    assert history[0]["test_acc"] is None and history[0]["test_loss"] is None


def test_evaluate_against_direct_forward(digits):
    params, state = _cnn()
    params, state, _ = _run(digits, epochs=1)
    x, y = digits[2], digits[3]
    logits, _, _ = small_cnn_forward(params, state, x, train=False)
    expected = np.argmax(logits, axis=1)
    for batch_size in (7, 500):
        res = evaluate(params, state, x, y, model="small_cnn", batch_size=batch_size)
        np.testing.assert_array_equal(res.predictions, expected)
        assert res.accuracy == np.mean(expected == y)
        z = logits - logits.max(axis=1, keepdims=True)
        nll = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]
        assert abs(res.loss - nll.mean()) < 1e-12


def test_transform_training(digits):
    """With a transform, params stay latents; the recorded test accuracy is that of the explicit weights
    tanh(u) (float64 tanh, rounded once) for the linear weights."""
    from saf_ref.protect.transforms import get_transform

    tanh = get_transform("tanh")
    params, state, history = _run(digits, epochs=3, model="mlp", transform=tanh)
    assert history[-1]["loss"] < history[0]["loss"]
    explicit = {
        k: (np.tanh(v.astype(np.float64)).astype(v.dtype) if v.ndim == 2 else v) for k, v in params.items()
    }
    b = evaluate(explicit, state, digits[2], digits[3], model="mlp")
    assert history[-1]["test_acc"] == b.accuracy and history[-1]["test_loss"] == b.loss


def test_train_step_and_model_fns(digits):
    params, state = _cnn()
    opt = SGD(0.1)
    x, y = digits[0][:16], digits[1][:16]
    p, s, o, info = train_step(params, state, sgd_init(params), x, y, model="small_cnn", optimizer=opt)
    assert int(o["step"]) == 1 and 0 <= info.n_correct <= 16 and info.loss > 0
    assert info.perturbed_loss is None and not info.errors_on and info.n_flips == 0
    assert not np.array_equal(p["conv1.weight"], params["conv1.weight"])
    fns = model_fns("resnet20")
    assert isinstance(fns, ModelFns) and fns.name == "resnet20" and model_fns(fns) is fns


def test_validation(digits, tmp_path):
    params, state = _cnn()
    kw = {"model": "small_cnn", "epochs": 1, "rng": 0, "verbose": False}
    with pytest.raises(TypeError, match=r"train: data must be a tuple \(x_train, y_train\)"):
        train(params, state, list(digits), **kw)
    with pytest.raises(TypeError, match="train: data must be a tuple .* of length 3"):
        train(params, state, digits[:3], **kw)
    with pytest.raises(
        TypeError, match=r"train: x_train.dtype \(=float32\) must equal the parameters' dtype"
    ):
        train(params, state, (digits[0].astype(np.float32), *digits[1:]), **kw)
    with pytest.raises(TypeError, match="train: y_train must be an integer numpy.ndarray"):
        train(params, state, (digits[0], digits[1].astype(float), *digits[2:]), **kw)
    with pytest.raises(
        ValueError, match=r"train: y_test.shape\[0\] \(=3\) must equal x_test.shape\[0\] \(=120\)"
    ):
        train(params, state, (*digits[:3], digits[3][:3]), **kw)
    with pytest.raises(ValueError, match="train: model must be one of"):
        train(params, state, digits, **{**kw, "model": "vgg"})
    with pytest.raises(TypeError, match="train: optimizer must be a saf_ref.train.optim.SGD"):
        train(params, state, digits, optimizer={"lr": 0.1}, **kw)
    with pytest.raises(TypeError, match="train: schedule must be None or have an lr_at"):
        train(params, state, digits, schedule=0.1, **kw)
    with pytest.raises(ValueError, match="train: augment must be one of"):
        train(params, state, digits, augment="rotate", **kw)
    with pytest.raises(
        ValueError, match=r"train: augment='crop' needs images x_train of shape \(N, C, H, W\)"
    ):
        train(params, state, (digits[0].reshape(240, 64), *digits[1:]), augment="crop", **kw)
    with pytest.raises(ValueError, match=r"train: epochs must be in \[0, inf\], got -1"):
        train(params, state, digits, **{**kw, "epochs": -1})
    with pytest.raises(ValueError, match="train: resume=True needs a checkpoint path"):
        train(params, state, digits, resume=True, **kw)
    with pytest.raises(TypeError, match="train: verbose must be a bool"):
        train(params, state, digits, **{**kw, "verbose": 1})
    with pytest.raises(TypeError, match="train: callback must be callable"):
        train(params, state, digits, callback=3, **kw)
    with pytest.raises(TypeError, match="train: rng must be a numpy.random.Generator"):
        train(params, state, digits, **{**kw, "rng": None})
    with pytest.raises(TypeError, match="train: params must be a non-empty dict"):
        train({}, state, digits, **kw)
    with pytest.raises(ValueError, match=r"evaluate: batch_size must be in \[1, inf\]"):
        evaluate(params, state, digits[2], digits[3], model="small_cnn", batch_size=0)
    with pytest.raises(ValueError, match="evaluate: x must have a leading sample axis"):
        evaluate(params, state, digits[2][0, 0, 0], digits[3], model="small_cnn")


def test_diverged_run_still_checkpoints(digits, tmp_path):
    """A learning rate that blows the loss up to NaN/inf must not lose the checkpoint (strict JSON)."""
    from saf_ref.train.checkpoint import load_checkpoint

    path = tmp_path / "diverged.npz"
    with np.errstate(all="ignore"):
        _, _, history = _run(digits, epochs=1, model="mlp", checkpoint=path, optimizer=SGD(1e300))
    assert not np.isfinite(history[-1]["loss"])  # the run really diverged
    saved = load_checkpoint(path).metadata["history"]
    # Tagged (strict JSON has no NaN or inf) and restored on resume (tests/train/test_loop_edges.py).
    assert saved[-1]["loss"] == {"nonfinite": repr(float(history[-1]["loss"]))}
    assert saved[-1]["epoch"] == history[-1]["epoch"]
