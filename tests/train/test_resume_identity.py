"""train(..., resume=True) refuses a checkpoint whose training settings or data differ from the call's.

A resumed run promises to equal an uninterrupted one bit for bit; a resume with another batch size,
optimizer, learning rate, augmentation, label smoothing, nonfinite policy, evaluation batch size or other
data used to be accepted silently and gave a run that was neither the old one nor a new one.

Every test interrupts a tiny MLP run on a slice of the shipped 8x8 digits after epoch 0 (a checkpoint
written by ``epochs=1``) and resumes it with ``epochs=2``; the reference is an uninterrupted 2-epoch
run with the same arguments.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from saf_ref.data import load_digits
from saf_ref.nn.small import init_mlp
from saf_ref.train import checkpoint as ckpt
from saf_ref.train.loop import train
from saf_ref.train.optim import SGD
from saf_ref.train.schedules import Constant, MultiStep


@pytest.fixture(scope="module")
def digits():
    d = load_digits(dtype=np.float64)
    return d.x_train[:64], d.y_train[:64], d.x_test[:24], d.y_test[:24]


# The settings of the interrupted run: every one of them is changed below.
BASE = dict(
    model="mlp", batch_size=16, optimizer=SGD(0.05, momentum=0.9, weight_decay=1e-3),
    schedule=MultiStep(0.05, milestones=(1,), gamma=0.5), augment="crop", pad=1, label_smoothing=0.0,
    nonfinite="propagate", eval_batch_size=500, rng=3, verbose=False,
)  # fmt: skip


def _mlp():
    return init_mlp(64, hidden=(16,), rng=0, dtype=np.float64)


def _train(data, **kw):
    params, state = _mlp()
    return train(params, state, data, **{**BASE, **kw})


def _same_bits(a, b):
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a
    )


def _without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history]


def _assert_same_run(got, want):
    assert _same_bits(got[0], want[0]) and _same_bits(got[1], want[1])
    assert _without_timing(got[2]) == _without_timing(want[2])


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory):
    """The uninterrupted 2-epoch run, and a checkpoint after its epoch 0 (never overwritten: tests copy)."""
    path = tmp_path_factory.mktemp("resume_identity") / "epoch0.npz"
    _train(digits, epochs=1, checkpoint=path)
    return _train(digits, epochs=2), path


@pytest.fixture
def part(runs, tmp_path):
    """A fresh copy of the checkpoint after epoch 0."""
    path = tmp_path / "part.npz"
    shutil.copyfile(runs[1], path)
    return path


def _changed_data(digits, which):
    x_train, y_train, x_test, y_test = (a.copy() for a in digits)
    if which == "x_train":
        x_train[5, 0, 3, 3] += 0.25
    elif which == "y_train":
        y_train[0] = (y_train[0] + 1) % 10
    elif which == "x_test":
        x_test, y_test = x_test[:-1], y_test[:-1]  # one sample fewer: another shape (x_test named first)
    elif which == "y_test":
        y_test[0] = (y_test[0] + 1) % 10
    return x_train, y_train, x_test, y_test


# (setting changed, its value in the call, the message's "<setting> <in checkpoint>, got <given>")
CHANGES = [
    ("batch_size", dict(batch_size=32), "batch_size 16, got 32"),
    ("optimizer.lr", dict(optimizer=SGD(0.02, momentum=0.9, weight_decay=1e-3)),
     "optimizer.lr 0.05, got 0.02"),
    ("optimizer.momentum", dict(optimizer=SGD(0.05, momentum=0.5, weight_decay=1e-3)),
     "optimizer.momentum 0.9, got 0.5"),
    ("optimizer.dampening", dict(optimizer=SGD(0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)),
     "optimizer.dampening 0.0, got 0.1"),
    ("optimizer.nesterov", dict(optimizer=SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
     "optimizer.nesterov False, got True"),
    ("optimizer.weight_decay", dict(optimizer=SGD(0.05, momentum=0.9)),
     "optimizer.weight_decay 0.001, got 0.0"),
    ("schedule", dict(schedule=Constant(0.04)), "the learning rate 0.05 at epoch 0 (from the schedule, "
     "or optimizer.lr without one), got 0.04"),
    ("no schedule", dict(schedule=None, optimizer=SGD(0.06, momentum=0.9, weight_decay=1e-3)),
     "optimizer.lr 0.05, got 0.06"),
    ("augment", dict(augment=None), "augment 'crop', got None"),
    ("pad", dict(pad=2), "pad 1, got 2"),
    ("label_smoothing", dict(label_smoothing=0.1), "label_smoothing 0.0, got 0.1"),
    ("nonfinite", dict(nonfinite="zero"), "nonfinite 'propagate', got 'zero'"),
    ("eval_batch_size", dict(eval_batch_size=7), "eval_batch_size 500, got 7"),
]  # fmt: skip


@pytest.mark.parametrize(("setting", "change", "message"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_changed_setting_is_refused_and_the_unchanged_resume_is_the_uninterrupted_run(
    digits, runs, part, setting, change, message
):
    before = part.read_bytes()
    expected = f"train: the checkpoint {part} has {message}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        _train(digits, epochs=2, checkpoint=part, resume=True, **change)
    assert part.read_bytes() == before  # refused before any training: the checkpoint is untouched
    _assert_same_run(_train(digits, epochs=2, checkpoint=part, resume=True), runs[0])


@pytest.mark.parametrize("which", ["x_train", "y_train", "x_test", "y_test", "no test split"])
def test_other_data_is_refused(digits, runs, part, which):
    if which == "no test split":
        data, name, got = digits[:2], "x_test", "None"
    else:
        data, name, got = _changed_data(digits, which), which, "'[0-9a-f]{64}'"
    expected = (
        rf"train: the checkpoint {re.escape(str(part))} has data {name} \(sha256 of its dtype, shape and "
        rf"bytes\) '[0-9a-f]{{64}}', got {got}$"
    )
    with pytest.raises(ValueError, match=expected):
        _train(data, epochs=2, checkpoint=part, resume=True)
    _assert_same_run(_train(digits, epochs=2, checkpoint=part, resume=True), runs[0])


def test_data_equal_in_value_but_not_in_layout_is_accepted(digits, part):
    """The digest is of the values (dtype, shape, bytes in C order), not of the memory layout."""
    x_train = np.asfortranarray(digits[0])
    assert not x_train.flags.c_contiguous
    _, _, history = _train((x_train, *digits[1:]), epochs=2, checkpoint=part, resume=True)
    assert [r["epoch"] for r in history] == [0, 1]


def test_a_checkpoint_without_training_settings_still_resumes(digits, runs, part):
    """Checkpoints written before the "training" entry existed resume unchecked, and the resumed call
    records the entry in the checkpoint it writes."""
    loaded = ckpt.load_checkpoint(part)
    assert "training" in loaded.metadata
    meta = {k: v for k, v in loaded.metadata.items() if k != "training"}
    ckpt.save_checkpoint(part, params=loaded.params, state=loaded.state,
                         optimizer_state=loaded.optimizer_state, metadata=meta)  # fmt: skip
    old = part.with_name("old.npz")
    shutil.copyfile(part, old)
    # Unchecked: another batch size is accepted (there is nothing to compare it with).
    _, _, history = _train(digits, epochs=2, checkpoint=old, resume=True, batch_size=32)
    assert [r["epoch"] for r in history] == [0, 1]
    assert ckpt.load_checkpoint(old).metadata["training"]["batch_size"] == 32
    # With the settings of the interrupted run it is that run.
    _assert_same_run(_train(digits, epochs=2, checkpoint=part, resume=True), runs[0])


def test_more_epochs_with_the_same_schedule_resume(digits, tmp_path):
    """A run of 2 epochs resumed to 3: the schedule's rates of the shared epochs 0 and 1 agree."""
    full = _train(digits, epochs=3)
    path = tmp_path / "two.npz"
    _train(digits, epochs=2, checkpoint=path)
    _assert_same_run(_train(digits, epochs=3, checkpoint=path, resume=True), full)


class _Stop(Exception):
    pass


def _stop_after_epoch_0(epoch, params, state, record):
    raise _Stop


def test_the_learning_rates_of_the_epochs_both_calls_have_are_compared(digits, tmp_path):
    """A 3-epoch call interrupted after epoch 0 recorded the rates of epochs 0, 1, 2. A schedule that
    differs at epoch 2 is refused by a 3-epoch call (epoch 2 is shared, though not trained yet) and
    accepted by a 2-epoch call, which then equals the uninterrupted 2-epoch run with that schedule."""
    path = tmp_path / "three.npz"
    with pytest.raises(_Stop):
        _train(digits, epochs=3, checkpoint=path, callback=_stop_after_epoch_0)
    later = MultiStep(0.05, milestones=(1, 2), gamma=0.5)  # 0.05, 0.025, then 0.0125 instead of 0.025
    expected = f"train: the checkpoint {path} has the learning rate 0.025 at epoch 2 (from the schedule, "
    with pytest.raises(ValueError, match=re.escape(expected) + ".*got 0.0125$"):
        _train(digits, epochs=3, checkpoint=path, resume=True, schedule=later)
    _assert_same_run(_train(digits, epochs=2, checkpoint=path, resume=True, schedule=later),
                     _train(digits, epochs=2, schedule=later))  # fmt: skip


def test_a_schedule_differing_only_after_the_shared_epochs_is_accepted(digits, part):
    """The checkpoint of a 1-epoch call has the rate of epoch 0 only: a resumed call may choose any rate
    for epoch 1, and gives the uninterrupted run with its schedule."""
    other = MultiStep(0.05, milestones=(1,), gamma=0.1)  # epoch 0 as BASE, epoch 1 differs
    _assert_same_run(_train(digits, epochs=2, checkpoint=part, resume=True, schedule=other),
                     _train(digits, epochs=2, schedule=other))  # fmt: skip


def test_the_rates_are_compared_not_the_schedule_objects(digits, runs, part):
    """No schedule and optimizer.lr 0.05, or Constant(0.05): the same rates, the same run; but BASE's
    MultiStep gives 0.05 at epoch 0 too, and 0.025 at epoch 1 (not shared with the 1-epoch checkpoint)."""
    constant = _train(digits, epochs=2, schedule=Constant(0.05))
    _assert_same_run(_train(digits, epochs=2, checkpoint=part, resume=True, schedule=None), constant)
    assert not _same_bits(constant[0], runs[0][0])  # epoch 1's rate did differ from BASE's


def test_a_checkpoint_at_or_past_epochs_is_returned_as_it_is_and_still_checked(digits, runs, tmp_path):
    path = tmp_path / "two.npz"
    _train(digits, epochs=2, checkpoint=path)
    _assert_same_run(_train(digits, epochs=1, checkpoint=path, resume=True), runs[0])  # 2 records
    with pytest.raises(ValueError, match=re.escape(f"train: the checkpoint {path} has pad 1, got 0")):
        _train(digits, epochs=1, checkpoint=path, resume=True, pad=0)


def test_an_infinite_learning_rate_is_recorded_and_resumed(digits, tmp_path):
    """Strict JSON has no inf: the rate is stored tagged like a diverged loss, and compares equal."""
    kw = dict(optimizer=SGD(float("inf")), schedule=None, augment=None)
    path = tmp_path / "inf.npz"
    with np.errstate(all="ignore"):
        full = _train(digits, epochs=2, **kw)
        _train(digits, epochs=1, checkpoint=path, **kw)
        resumed = _train(digits, epochs=2, checkpoint=path, resume=True, **kw)
        message = f"train: the checkpoint {path} has optimizer.lr inf, got 1.0"
        with pytest.raises(ValueError, match=re.escape(message) + "$"):
            _train(digits, epochs=2, checkpoint=path, resume=True, **{**kw, "optimizer": SGD(1.0)})
    assert _same_bits(resumed[0], full[0]) and len(resumed[2]) == 2
